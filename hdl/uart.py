"""UART physical layer: 8N1 receiver and transmitter with byte streams."""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "baud_divisor"]


def baud_divisor(clk_hz, baud):
    """Clock cycles per bit, rounded to nearest; error must stay below 2 % for 8N1.

    Raises
    ------
    ValueError
        The divisor is below 4 or the rate error exceeds 2 %.
    """
    if not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    div = int(round(clk_hz / baud))
    if div < 4:
        raise ValueError(f"baud must be at most clk_hz / 4 = {clk_hz / 4:g}, not {baud!r}")
    err = abs(clk_hz / div - baud) / baud
    if err > 0.02:
        raise ValueError(f"baud {baud} is {err:.1%} off at {clk_hz:g} Hz (divisor {div}); "
                         f"at most 2 % is allowed")
    return div


class _UART8N1(wiring.Component):
    """Common constructor of :class:`UARTRx` and :class:`UARTTx`: one bit time is ``divisor``
    clock cycles (at least 4, checked here; ``ValueError`` naming the value otherwise)."""

    def __init__(self, divisor):
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
            self._MustUse__silence = True       # never elaborated: no "unused" warning
            raise ValueError(f"divisor must be an integer >= 4, not {divisor!r}")
        self.divisor = divisor
        super().__init__()


class UARTRx(_UART8N1):
    """8N1 receiver.

    The line is synchronized with two flip-flops. A falling edge starts a frame; the start bit
    is checked again half a bit later (a glitch shorter than that is ignored), then each data
    bit is sampled in the middle of its bit time, LSB first, then the stop bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4); the start bit is checked after ``divisor // 2``.

    Members
    -------
    rx : ``In(1)``
        Serial line (idle high).
    o : ``Out(stream.Signature(8))``
        Received bytes. The receiver cannot be paused: ``o.valid`` stays high until taken, and a
        byte that completes while the previous one is still held replaces it (``overrun``).
    framing_error : ``Out(1)``
        One-cycle pulse when a stop bit is 0; the byte is dropped.
    overrun : ``Out(1)``
        One-cycle pulse when an untaken byte is replaced.

    Latency: ``o.valid`` rises 9.5 bit times after the start edge plus 3 cycles.
    """

    o: Out(stream.Signature(8))
    rx: In(1, init=1)
    framing_error: Out(1)
    overrun: Out(1)

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        bits = Signal(range(10))
        shreg = Signal(8)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"         # glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bits.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(self.divisor - 1),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.d.comb += self.overrun.eq(self.o.valid & ~self.o.ready)
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                    m.next = "IDLE"
                    with m.If(~rx):         # framing error or break: wait for the line to idle
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(_UART8N1):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4), start and stop bits included.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send; one is taken whenever the transmitter is idle.
    tx : ``Out(1)``
        Serial line (idle high).

    Throughput: one byte per ``10 · divisor`` cycles, back to back.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))

        # Ready while idle, or in the last cycle of a stop bit: bytes go back to back.
        m.d.comb += self.i.ready.eq((bits == 0) | ((bits == 1) & (timer == 0)))
        m.d.comb += self.tx.eq(shreg[0])
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(C(0, 1), self.i.payload, C(1, 1))), bits.eq(10),
                         timer.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], C(1, 1))), bits.eq(bits - 1),
                             timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
