"""Accelerator top: the link, the memory arbiter and the units, with a UART in front.

Structure::

    UART RX ─► ┌──────┐ ─ payload bytes, ctl[i] ─► unit 0 (linear) ─┐   write spaces
               │ link │ ─ write spaces ──────────► unit 1 (attn)  ─┤◄─ (weights, heads, ...)
    UART TX ◄─ └──────┘                                              │
                  │ act/out ports          act/out ports while busy  │
                  ▼                                                   ▼
         arbiter ─► activation memory          arbiter ─► output memory

The link (:mod:`amaformer.hdl.link`) knows no engine; every engine is a unit
(:mod:`amaformer.hdl.unit`) whose kind is registered in :mod:`amaformer.hdl.registry`. The top
asks every registered kind for the units the configuration wants, numbers them in registry
order, gives each its arbiter ports and its write spaces, and packs the ``IDENT`` table. The
wire protocol is :mod:`amaformer.hdl.protocol`. :class:`AcceleratorCore` is everything except
the UART PHY and talks bytes on two streams (the simulated device drives those directly);
:class:`Accelerator` adds the PHY, on the platform's ``uart`` resource or on ports when there
is no platform.

The configuration is read duck-typed (``config.linear``, ``config.uart.baud``, ...), so this
module imports nothing from ``amaformer.gen``.
"""

from amaranth import *
from amaranth.build import ResourceError
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as P
from . import registry
from .arbiter import MemoryArbiter
from .link import Link, WriteSpace
from .memories import ByteMemory
from .uart import UARTRx, UARTTx, baud_divisor

__all__ = ["AcceleratorCore", "Accelerator", "units_from_config", "DEFAULT_ACT_DEPTH",
           "DEFAULT_OUT_DEPTH", "DEFAULT_MAX_PAYLOAD"]

DEFAULT_ACT_DEPTH = 32768       #: activation memory, bytes (one SPRAM on iCE40 UltraPlus)
DEFAULT_OUT_DEPTH = 32768       #: output memory, bytes (one SPRAM on iCE40 UltraPlus)
DEFAULT_MAX_PAYLOAD = 256       #: staging buffer, bytes (one EBR, or an SPRAM on iCE40 UP)


def units_from_config(config, *, act_depth, out_depth):
    """The units ``config`` asks for: every registered kind's, in registry order."""
    units = []
    for kind in registry.kinds():
        units += kind.gateware_class().from_config(config, act_depth=act_depth,
                                                   out_depth=out_depth)
    return units


class AcceleratorCore(wiring.Component):
    """Link, memories, arbiters and units, with byte-stream host ports.

    Parameters
    ----------
    config : AcceleratorConfig
        Read duck-typed by the units' ``from_config`` (``config.linear``,
        ``config.attention``, ...) and for ``config.uart.baud``.
    clk_hz : int
        Core clock, reported by ``IDENT`` and used for the default timeout.
    act_depth, out_depth : int
        Bytes of the activation input memory and of the output memory.
    max_payload : int
        Bytes of the staging buffer: the longest ``WRITE`` payload (at least 20, and at least
        every unit's descriptor).
    timeout_cycles : int or None
        Inter-byte timeout inside a frame; ``None`` means 50 ms at ``clk_hz``.
    spram : bool or None
        Put the activation and output memories and the staging buffer in SPRAM (``None``: when
        the platform is an iCE40 UltraPlus; the staging buffer then takes one SPRAM).

    Members
    -------
    rx : ``In(stream.Signature(8))``
        Request bytes. Not ready while the link answers or commits a frame.
    tx : ``Out(stream.Signature(8))``
        Response bytes.
    rx_error : ``In(1)``
        Pulse per framing error of the PHY (counted in ``STATUS``).
    busy : ``Out(1)``
        A job is running.
    units : list of Unit
        In ``IDENT`` order (unit ``i`` answers ``RUN`` with ``space = i``).

    Timing: see :class:`~amaformer.hdl.link.Link` and each unit. ``ABORT`` resets the units one
    cycle after the request checks (from a register: a high fan-out net).
    """

    def __init__(self, config, *, clk_hz=12_000_000, act_depth=DEFAULT_ACT_DEPTH,
                 out_depth=DEFAULT_OUT_DEPTH, max_payload=DEFAULT_MAX_PAYLOAD,
                 timeout_cycles=None, spram=None):
        try:
            timeout_cycles = self._check(clk_hz, act_depth, out_depth, max_payload,
                                         timeout_cycles)
            self.units = units_from_config(config, act_depth=act_depth, out_depth=out_depth)
            if not self.units:
                raise ValueError("config must enable at least one unit (linear.enabled, "
                                 "attention.enabled or sparse_dense.enabled), not none")
            if len(self.units) > 14:
                raise ValueError(f"units must be at most 14, not {len(self.units)}")
            for u in self.units:
                nbytes = registry.descriptor_bytes(u.kind.descriptor)
                if nbytes > max_payload:
                    raise ValueError(f"max_payload must be at least {nbytes} (the "
                                     f"{u.kind.name} descriptor), not {max_payload}")
        except ValueError:
            self._MustUse__silence = True       # never elaborated: no "unused" warning
            for u in getattr(self, "units", []):
                u.discard()
            raise
        self.config = config
        self.clk_hz = clk_hz
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.max_payload = max_payload
        self.timeout_cycles = timeout_cycles
        self.spram = spram
        self.ident = P.pack_ident(
            {"act_depth": act_depth, "out_depth": out_depth, "max_payload": max_payload,
             "clk_hz": clk_hz, "baud": config.uart.baud},
            [(u.kind.code, P.pack_fields(u.kind.record, u.ident_record())) for u in self.units])
        self.write_spaces = []          # (unit, space name, WriteSpace)
        for i, u in enumerate(self.units):
            for j, name in enumerate(u.kind.spaces):
                if name in u.spaces:
                    self.write_spaces.append((u, name, WriteSpace(
                        P.unit_space(i, j), getattr(u, name).signature.flip(),
                        u.space_word_bytes(name))))
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "rx_error": In(1),
            "busy": Out(1),
        })

    @staticmethod
    def _check(clk_hz, act_depth, out_depth, max_payload, timeout_cycles):
        for name, value, lo in (("act_depth", act_depth, 2), ("out_depth", out_depth, 2),
                                ("max_payload", max_payload, 20)):
            if not isinstance(value, int) or not lo <= value < (1 << 24):
                raise ValueError(f"{name} must be an integer in [{lo}, 2**24), not {value!r}")
        if max_payload >= (1 << 16):
            raise ValueError(f"max_payload must be below 65536, not {max_payload!r}")
        if not isinstance(clk_hz, int) or clk_hz <= 0:
            raise ValueError(f"clk_hz must be a positive integer, not {clk_hz!r}")
        if timeout_cycles is None:
            timeout_cycles = clk_hz // 20
        if not isinstance(timeout_cycles, int) or timeout_cycles < 16:
            raise ValueError(f"timeout_cycles must be an integer >= 16, not {timeout_cycles!r}")
        return timeout_cycles

    def unit_paths(self):
        """Per unit, its submodule name inside the core (``unit0``, ``unit1``, ...)."""
        return [f"unit{i}" for i in range(len(self.units))]

    def elaborate(self, platform):
        m = Module()
        units = self.units
        m.submodules.link = link = Link(
            ident=self.ident, act_depth=self.act_depth, out_depth=self.out_depth,
            max_payload=self.max_payload, timeout_cycles=self.timeout_cycles,
            descriptor_bytes=[registry.descriptor_bytes(u.kind.descriptor) for u in units],
            spaces=[ws for _, _, ws in self.write_spaces], spram=self.spram)
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        m.d.comb += [link.rx_error.eq(self.rx_error), self.busy.eq(link.busy)]

        m.submodules.act = act = ByteMemory(self.act_depth, spram=self.spram)
        m.submodules.out = out = ByteMemory(self.out_depth, spram=self.spram)
        m.submodules.act_arbiter = act_arb = MemoryArbiter(self.act_depth, len(units))
        m.submodules.out_arbiter = out_arb = MemoryArbiter(self.out_depth, len(units))
        for arb, mem in ((act_arb, act), (out_arb, out)):
            m.d.comb += [mem.addr.eq(arb.mem.addr), mem.wdata.eq(arb.mem.wdata),
                         mem.we.eq(arb.mem.we), arb.mem.rdata.eq(mem.rdata),
                         arb.grant.eq(Cat(u.ctl.busy for u in units))]
        wiring.connect(m, link.act, act_arb.req[0])
        wiring.connect(m, link.out, out_arb.req[0])

        # The units' reset: ABORT one cycle later, from a register (timing: a high fan-out
        # net). Harmless: the link answers ABORT and touches no memory in that cycle.
        unit_reset = Signal()
        m.d.sync += unit_reset.eq(link.abort)
        for i, (u, path) in enumerate(zip(units, self.unit_paths())):
            m.submodules[path] = ResetInserter(unit_reset)(u)
            wiring.connect(m, link.ctl[i], u.ctl)
            wiring.connect(m, u.act, act_arb.req[i + 1])
            wiring.connect(m, u.out, out_arb.req[i + 1])
            # the payload bytes go to every unit (a broadcast: never stalled, so no ready)
            m.d.comb += [u.desc.valid.eq(link.desc.valid), u.desc.payload.eq(link.desc.payload)]
        for u, name, ws in self.write_spaces:
            wiring.connect(m, getattr(link, ws.member), getattr(u, name))
        return m


class Accelerator(wiring.Component):
    """The top a board build wraps: :class:`AcceleratorCore` behind a UART.

    With a platform, the UART is ``platform.request("uart", 0)`` and the baud divisor comes
    from ``platform.default_clk_frequency``; the ports below are then unused. Without a
    platform (simulation) the serial lines are the ports and the clock is ``clk_hz``.

    Parameters
    ----------
    config : AcceleratorConfig
        Read duck-typed (``config.linear``, ``config.uart.baud``).
    clk_hz : int or None
        Clock frequency without a platform (default 12 MHz); ignored with a platform.
    **core_kwargs
        Passed to :class:`AcceleratorCore` (``act_depth``, ``out_depth``, ``max_payload``,
        ``timeout_cycles``, ``spram``).

    Members
    -------
    uart_rx : ``In(1)``
        Serial input (idle high).
    uart_tx : ``Out(1)``
        Serial output (idle high).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def __init__(self, config, *, clk_hz=None, **core_kwargs):
        self.config = config
        self.clk_hz = clk_hz
        self.core_kwargs = core_kwargs
        try:
            baud_divisor(clk_hz or 12_000_000, config.uart.baud)   # fail early on a bad rate
        except ValueError:
            self._MustUse__silence = True
            raise
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        if platform is not None:
            clk_hz = int(platform.default_clk_frequency)
        else:
            clk_hz = self.clk_hz or 12_000_000
        div = baud_divisor(clk_hz, self.config.uart.baud)
        m.submodules.core = core = AcceleratorCore(self.config, clk_hz=clk_hz,
                                                   **self.core_kwargs)
        m.submodules.uart_rx = rx = UARTRx(div)
        m.submodules.uart_tx = tx = UARTTx(div)
        wiring.connect(m, rx.o, core.rx)
        wiring.connect(m, core.tx, tx.i)
        m.d.comb += core.rx_error.eq(rx.framing_error)
        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
            m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
            m.d.comb += [rx.rx.eq(rx_buf.i), tx_buf.o.eq(tx.tx)]
            try:    # ULX3S: the FTDI's TX line is only driven when enabled
                tx_en = platform.request("uart_tx_enable", 0, dir="-")
            except ResourceError:
                pass
            else:
                m.submodules.uart_tx_en_buf = en_buf = io.Buffer("o", tx_en)
                m.d.comb += en_buf.o.eq(1)
        else:
            m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]
        return m
