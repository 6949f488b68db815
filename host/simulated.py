"""The base of both simulated devices (:class:`~amaformer.host.sim.SimTransport` on Amaranth's
simulator, :class:`~amaformer.host.verilator.VerilatorTransport` on Verilator): the stepping
rules, the waiting rule and the figures they share, and the top they elaborate (the gateware,
imported when a simulation starts: the simulated device *is* the hardware).
"""


from .transport import Transport

__all__ = ["SimulatedDevice"]


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
