"""The simulated device: the generated top in Amaranth's simulator behind the protocol bytes.

:class:`SimTransport` is a :class:`~amaformer.host.transport.Transport`, so the same
:class:`~amaformer.host.device.Device` code drives a board or the simulation. It imports the
gateware (:mod:`amaformer.hdl.top`) because it *is* the device; the rest of ``host`` imports only
the shared protocol.
"""

import time
from collections import deque

from .transport import Transport

__all__ = ["SimTransport"]


class SimTransport(Transport):
    """Run :class:`~amaformer.hdl.top.AcceleratorCore` (or the full UART top) in simulation.

    Simulated time only passes inside :meth:`read` and :meth:`pause`; bytes given to
    :meth:`write` are fed to the device from then on, one per cycle (stream mode) or bit by bit
    on the serial line (``uart=True``).

    Parameters
    ----------
    config : AcceleratorConfig
    uart : bool
        Simulate :class:`~amaformer.hdl.top.Accelerator` with its UART PHY and drive the serial
        lines (slow: ``10 · divisor`` cycles per byte); otherwise the byte streams of
        :class:`~amaformer.hdl.top.AcceleratorCore`.
    clk_hz : int
        Simulated clock (reported by ``IDENT``; with ``uart=True`` it sets the baud divisor).
    timeout_cycles : int
        The device's inter-byte timeout (shorter than on a board, so that truncated frames time
        out in reasonable simulation time).
    max_wait_cycles : int
        Longest simulated wait for the next response byte in :meth:`read` (simulating the full
        ``timeout`` of a board link would take minutes).
    chunk : int
        Cycles simulated between checks of the receive buffer.
    **core_kwargs
        Passed to the top (``act_depth``, ``out_depth``, ``max_payload``).

    Members
    -------
    cycles : int
        Simulated clock cycles so far.
    sim_seconds : float
        Wall time spent inside the simulator.
    """

    def __init__(self, config, *, uart=False, clk_hz=12_000_000, timeout_cycles=2000,
                 max_wait_cycles=None, chunk=16, **core_kwargs):
        from amaranth.sim import Simulator

        from ..hdl.top import Accelerator, AcceleratorCore
        from ..hdl.uart import baud_divisor
        self.config = config
        self.uart = uart
        self.clk_hz = clk_hz
        self.chunk = chunk
        self.timeout_cycles = timeout_cycles
        self.max_wait_cycles = (max_wait_cycles if max_wait_cycles is not None
                                else 4 * timeout_cycles + 4096)
        if uart:
            self.divisor = baud_divisor(clk_hz, config.uart.baud)
            self.dut = Accelerator(config, clk_hz=clk_hz, timeout_cycles=timeout_cycles,
                                   **core_kwargs)
        else:
            self.dut = AcceleratorCore(config, clk_hz=clk_hz, timeout_cycles=timeout_cycles,
                                       **core_kwargs)
        #: silence after which the device has dropped a half-received frame
        self.resync_seconds = 2 * timeout_cycles / clk_hz
        self._to_dev = deque()
        self._from_dev = bytearray()
        self.cycles = 0
        self.sim_seconds = 0.0
        self._period = 1 / clk_hz
        self.sim = Simulator(self.dut)
        self.sim.add_clock(self._period)
        self.sim.add_testbench(self._uart_bench if uart else self._stream_bench,
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
        t0 = time.perf_counter()
        target = self.cycles + max(1, int(cycles))
        self.sim.run_until((target + 0.5) * self._period)
        self.sim_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ Transport
    def write(self, data):
        self._to_dev.extend(bytes(data))

    def read(self, n, timeout):
        budget = min(int(timeout * self.clk_hz), self.max_wait_cycles)
        idle = 0
        have = len(self._from_dev)
        while len(self._from_dev) < n:
            # At least one cycle per byte still to send or to receive: no need to look sooner.
            per_byte = 10 * self.divisor if self.uart else 1
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

    # ------------------------------------------------------------------ for a serial bridge
    def feed(self, data):
        """Queue bytes for the device (same as :meth:`write`)."""
        self.write(data)

    def step(self, cycles):
        """Simulate ``cycles`` clock cycles."""
        self._advance(cycles)

    def take_output(self):
        """Return and forget every byte the device has sent so far."""
        out = bytes(self._from_dev)
        self._from_dev.clear()
        return out

    def reset_input(self):
        self._from_dev.clear()

    def pause(self, seconds):
        self._advance(seconds * self.clk_hz)
