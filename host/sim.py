"""The simulated device: the generated top behind the protocol bytes, in one of two simulators.

Two backends run the same top (:class:`~amaformer.hdl.top.AcceleratorCore` on byte streams, or
:class:`~amaformer.hdl.top.Accelerator` on its serial lines with ``uart=True``) cycle for cycle
alike, and both are :class:`~amaformer.host.transport.Transport`\\ s, so the same
:class:`~amaformer.host.device.Device` code drives a board or either simulation:

``"verilator"`` (:class:`~amaformer.host.verilator.VerilatorTransport`)
    the top written as Verilog and compiled by Verilator into a shared library (built once per
    design, then cached): about a thousand times faster. The default where it works.
``"amaranth"`` (:class:`SimTransport`)
    the top in Amaranth's Python simulator: no C++ build, a few thousand cycles per second;
    what to use for one-off runs and while changing the gateware.

:func:`make_sim_transport` picks one (``"auto"``: Verilator when its toolchain works, else one
line on stderr and the Amaranth simulator). Both backends give the same response bytes at the
same simulated cycles: a test runs the same exchanges on both and compares them.

This module imports the gateware (:mod:`amaformer.hdl.top`) because it *is* the device; the rest
of ``host`` imports only the shared protocol.
"""

import os
import sys
import time
from collections import deque

from .transport import Transport

__all__ = ["BACKENDS", "SimulatedDevice", "SimTransport", "make_sim_transport",
           "default_backend"]

#: Names accepted by :func:`make_sim_transport` (``"auto"``: Verilator if it works).
BACKENDS = ("auto", "verilator", "amaranth")
#: Environment variable that sets the default backend of :func:`make_sim_transport`.
BACKEND_ENV = "AMAFORMER_SIM_BACKEND"


class SimulatedDevice(Transport):
    """What both simulated devices share: the stepping rules, the waiting rule and the figures.

    Simulated time only passes inside :meth:`read`, :meth:`pause` and :meth:`step`; bytes given to
    :meth:`write` are fed to the device from then on, one per cycle (stream mode) or bit by bit on
    the serial line (``uart=True``). :meth:`step` simulates exactly the cycles asked for, and
    :meth:`read` simulates in steps of ``max(chunk, bytes still to send or receive × cycles per
    byte)`` cycles until it has ``n`` bytes or ``min(timeout · clk_hz, max_wait_cycles)`` cycles
    passed with nothing sent or received; so the same calls simulate the same cycles on every
    backend.

    Parameters
    ----------
    config : AcceleratorConfig
    uart : bool
        Simulate :class:`~amaformer.hdl.top.Accelerator` with its UART PHY and drive the serial
        lines (``10 · divisor`` cycles per byte); otherwise the byte streams of
        :class:`~amaformer.hdl.top.AcceleratorCore`.
    clk_hz : int
        Simulated clock (reported by ``IDENT``; with ``uart=True`` it sets the baud divisor).
    timeout_cycles : int
        The device's inter-byte timeout (shorter than on a board, so that truncated frames time
        out in reasonable simulation time).
    max_wait_cycles : int or None
        Longest simulated wait for the next response byte in :meth:`read` (default
        ``4 · timeout_cycles + 4096``; simulating the full ``timeout`` of a board link would take
        long).
    chunk : int
        Fewest cycles simulated between checks of the receive buffer in :meth:`read`.
    **core_kwargs
        Passed to the top (``act_depth``, ``out_depth``, ``max_payload``, ``spram``).

    Members
    -------
    backend : str
        ``"amaranth"`` or ``"verilator"``.
    cycles : int
        Simulated clock cycles so far.
    sim_seconds : float
        Wall time spent simulating.
    sim_cpu_seconds : float
        CPU time of the simulating thread in the same spans (steadier on a loaded machine).
    resync_seconds : float
        Silence after which the device has dropped a half-received frame.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range (message names it).
    """

    backend = None

    def __init__(self, config, *, uart=False, clk_hz=12_000_000, timeout_cycles=2000,
                 max_wait_cycles=None, chunk=16, **core_kwargs):
        for name, value, low in (("clk_hz", clk_hz, 1), ("timeout_cycles", timeout_cycles, 1),
                                 ("chunk", chunk, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if max_wait_cycles is not None and (not isinstance(max_wait_cycles, int)
                                            or max_wait_cycles < 1):
            raise ValueError(f"max_wait_cycles must be a positive integer or None, "
                             f"not {max_wait_cycles!r}")
        self.config = config
        self.uart = bool(uart)
        self.clk_hz = clk_hz
        self.chunk = chunk
        self.timeout_cycles = timeout_cycles
        self.core_kwargs = dict(core_kwargs)
        self.max_wait_cycles = (max_wait_cycles if max_wait_cycles is not None
                                else 4 * timeout_cycles + 4096)
        if self.uart:
            from ..hdl.uart import baud_divisor
            self.divisor = baud_divisor(clk_hz, config.uart.baud)
        else:
            self.divisor = None
        #: silence after which the device has dropped a half-received frame
        self.resync_seconds = 2 * timeout_cycles / clk_hz
        self.sim_seconds = 0.0
        self.sim_cpu_seconds = 0.0

    def _make_top(self):
        """The top to simulate, from the constructor's parameters."""
        from ..hdl.top import Accelerator, AcceleratorCore
        if self.uart:
            return Accelerator(self.config, clk_hz=self.clk_hz,
                               timeout_cycles=self.timeout_cycles, **self.core_kwargs)
        return AcceleratorCore(self.config, clk_hz=self.clk_hz,
                               timeout_cycles=self.timeout_cycles, **self.core_kwargs)

    def _read_budget(self, timeout):
        return min(int(timeout * self.clk_hz), self.max_wait_cycles)

    def _cycles_per_byte(self):
        return 10 * self.divisor if self.uart else 1

    # ------------------------------------------------------------------ for a serial bridge
    def feed(self, data):
        """Queue bytes for the device (same as :meth:`write`)."""
        self.write(data)

    def step(self, cycles):
        """Simulate ``max(1, int(cycles))`` clock cycles."""
        self._advance(cycles)

    def pause(self, seconds):
        self._advance(seconds * self.clk_hz)

    # ------------------------------------------------------------------ figures
    def summary(self):
        """One line for a terminal: backend, simulated cycles, time, speed."""
        fig = self.sim_figures()
        rate = fig["cycles_per_second"]
        return (f"{self.backend} backend: {fig['sim_cycles']:,} cycles simulated in "
                f"{fig['sim_seconds']:.2f} s" + (f" ({rate:,} cycles/s)" if rate else ""))

    def sim_figures(self):
        """``sim_backend``, ``sim_cycles``, ``sim_seconds`` and ``cycles_per_second`` so far,
        for a run's JSON."""
        return {"sim_backend": self.backend, "sim_cycles": self.cycles,
                "sim_seconds": round(self.sim_seconds, 3),
                "cycles_per_second": (round(self.cycles / self.sim_seconds)
                                      if self.sim_seconds > 0 else None)}


class SimTransport(SimulatedDevice):
    """The top in Amaranth's Python simulator (backend ``"amaranth"``).

    Slow (a few thousand cycles per second) but needs no C++ toolchain and no build. Parameters
    and behaviour: :class:`SimulatedDevice`.
    """

    backend = "amaranth"

    def __init__(self, config, **kwargs):
        from amaranth.sim import Simulator
        super().__init__(config, **kwargs)
        self.dut = self._make_top()
        self._to_dev = deque()
        self._from_dev = bytearray()
        self.cycles = 0
        period = 1 / self.clk_hz
        # The clock's rising edges, as Amaranth places them (femtoseconds): the first half a
        # period in, then every two half periods. ``_advance`` stops between edges.
        self._phase_fs = int(period / 2 * 1e15)
        self._half_fs = int(period * 1e15) // 2
        self.sim = Simulator(self.dut)
        self.sim.add_clock(period)
        self.sim.add_testbench(self._uart_bench if self.uart else self._stream_bench,
                               background=True)

    # ------------------------------------------------------------------ benches
    async def _stream_bench(self, ctx):
        dut = self.dut
        ctx.set(dut.tx.ready, 1)
        sending = False
        async for _, _, rx_ready, tx_valid, tx_byte in ctx.tick().sample(
                dut.rx.ready, dut.tx.valid, dut.tx.payload):
            self.cycles += 1
            if tx_valid:
                self._from_dev.append(tx_byte)
            if sending and rx_ready:
                self._to_dev.popleft()
            sending = bool(self._to_dev)
            if sending:
                ctx.set(dut.rx.payload, self._to_dev[0])
            ctx.set(dut.rx.valid, sending)

    async def _uart_bench(self, ctx):
        dut = self.dut
        div = self.divisor
        out_bits = deque()            # line levels still to drive, one per cycle
        rx_state, rx_timer, rx_bits, rx_byte = "idle", 0, 0, 0
        async for _, _, line in ctx.tick().sample(dut.uart_tx):
            self.cycles += 1
            if not out_bits and self._to_dev:
                byte = self._to_dev.popleft()
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    out_bits.extend([bit] * div)
            ctx.set(dut.uart_rx, out_bits.popleft() if out_bits else 1)
            # Receive: mid-bit sampling, as a real UART would.
            if rx_state == "idle":
                if not line:
                    rx_state, rx_timer, rx_bits, rx_byte = "data", div + div // 2 - 1, 0, 0
            elif rx_timer:
                rx_timer -= 1
            elif rx_state == "data":
                rx_byte |= line << rx_bits
                rx_bits += 1
                rx_timer = div - 1
                if rx_bits == 8:
                    rx_state = "stop"
            else:
                if line:
                    self._from_dev.append(rx_byte)
                rx_state = "idle"

    # ------------------------------------------------------------------ simulation control
    def _advance(self, cycles):
        t0, c0 = time.perf_counter(), time.thread_time()
        target = self.cycles + max(1, int(cycles))
        # a quarter period after the target's rising edge: nothing happens there
        deadline = self._phase_fs + 2 * self._half_fs * (target - 1) + self._half_fs // 2
        self.sim.run_until(deadline / 1e15)
        self.sim_seconds += time.perf_counter() - t0
        self.sim_cpu_seconds += time.thread_time() - c0
        if self.cycles != target:           # pragma: no cover - Amaranth's clock changed
            raise RuntimeError(f"simulated {self.cycles} cycles instead of {target}")

    # ------------------------------------------------------------------ Transport
    def write(self, data):
        self._to_dev.extend(bytes(data))

    def read(self, n, timeout):
        budget = self._read_budget(timeout)
        per_byte = self._cycles_per_byte()
        idle = 0
        have = len(self._from_dev)
        while len(self._from_dev) < n:
            # At least one cycle per byte still to send or to receive: no need to look sooner.
            step = max(self.chunk, (len(self._to_dev) + n - len(self._from_dev)) * per_byte)
            self._advance(step)
            if len(self._from_dev) > have or self._to_dev:
                have, idle = len(self._from_dev), 0
            else:
                idle += step
                if idle >= budget:
                    break
        out = bytes(self._from_dev[:n])
        del self._from_dev[:n]
        return out

    def take_output(self):
        """Return and forget every byte the device has sent so far."""
        out = bytes(self._from_dev)
        self._from_dev.clear()
        return out

    def reset_input(self):
        self._from_dev.clear()


def default_backend():
    """The backend :func:`make_sim_transport` uses when none is given: the environment
    variable ``AMAFORMER_SIM_BACKEND`` if set, else ``"auto"``.

    Raises
    ------
    ValueError
        The variable names no backend.
    """
    name = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name


def make_sim_transport(config, backend=None, *, cache_dir=None, verilator=None, progress=None,
                       quiet=False, **kwargs):
    """The simulated device of ``config`` on ``backend``.

    Parameters
    ----------
    config : AcceleratorConfig
    backend : str or None
        ``"verilator"`` (compiled, fast; built once per design and cached), ``"amaranth"``
        (Python simulator, no build) or ``"auto"``: Verilator, and if its toolchain is missing or
        fails, one line on stderr and the Amaranth simulator. ``None``: :func:`default_backend`.
    cache_dir, verilator, progress
        Verilator only (ignored by the Amaranth backend): see
        :class:`~amaformer.host.verilator.VerilatorTransport`.
    quiet : bool
        ``"auto"``: no line on stderr when falling back.
    **kwargs
        The same for both backends: ``uart``, ``clk_hz``, ``timeout_cycles``,
        ``max_wait_cycles``, ``chunk`` and the top's ``act_depth``, ``out_depth``,
        ``max_payload`` (:class:`SimulatedDevice`).

    Returns
    -------
    SimulatedDevice
        Its ``backend`` says which one runs; after a fallback, ``fallback_reason`` says why.

    Raises
    ------
    ValueError
        Unknown backend.
    amaformer.host.verilator.VerilatorUnavailable
        ``backend="verilator"`` and the toolchain is missing or the build failed.
    """
    if backend is None:
        backend = default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"not {backend!r}")
    if backend == "amaranth":
        return SimTransport(config, **kwargs)
    from .verilator import VerilatorTransport, VerilatorUnavailable
    try:
        return VerilatorTransport(config, cache_dir=cache_dir, verilator=verilator,
                                  progress=progress, **kwargs)
    except VerilatorUnavailable as e:
        if backend == "verilator":
            raise
        if not quiet:
            print(f"amaformer: {e}; using the Amaranth simulator instead", file=sys.stderr)
        tr = SimTransport(config, **kwargs)
        tr.fallback_reason = str(e)
        return tr
