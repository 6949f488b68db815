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

from .simulated import SimulatedDevice

__all__ = ["BACKENDS", "SimulatedDevice", "SimTransport", "make_sim_transport",
           "default_backend"]

#: Names accepted by :func:`make_sim_transport` (``"auto"``: Verilator if it works).
BACKENDS = ("auto", "verilator", "amaranth")
#: Environment variable that sets the default backend of :func:`make_sim_transport`.
BACKEND_ENV = "AMAFORMER_SIM_BACKEND"


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
