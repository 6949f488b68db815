"""Stream drivers for the cocotb benches (valid/ready, as ``amaranth.lib.stream``).

:class:`StreamSource` sends queued payloads with random idle cycles and never drops ``valid``
before the transfer; :class:`StreamSink` applies random back-pressure, checks that a stalled
``valid``/``payload`` does not change, and compares what it receives, in order, with its queue
of expected values. Ports are found by Amaranth's flattened names (``x__valid``, ...).
"""

from collections import deque

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

__all__ = ["StreamSource", "StreamSink", "bit"]


def bit(sig):
    """A one-bit signal as an int, X/Z read as 0 (Icarus leaves combinational outputs X at
    time 0 until one of their inputs changes)."""
    v = sig.value
    return int(v) if v.is_resolvable else 0


def _port(dut, name, member):
    return getattr(dut, f"{name}__{member}")


class StreamSource:
    """Drive stream ``name`` of ``dut`` from :attr:`queue`.

    Members
    -------
    queue : deque
        Payloads to send, in order (masked with ``mask`` if given).
    idle : float
        Probability of an idle cycle before each transfer; may change while running.
    sent : int
        Transfers so far.

    With ``reset`` (default), a payload being presented while ``rst`` is high is not
    counted as sent and is presented again afterwards.
    """

    def __init__(self, dut, name, rng, *, mask=None, reset=True):
        self.clk, self.rng, self.mask = dut.clk, rng, mask
        self.rst = dut.rst if reset else None
        self.valid, self.ready, self.payload = (_port(dut, name, m)
                                                for m in ("valid", "ready", "payload"))
        self.queue = deque()
        self.idle = 0.0
        self.sent = 0

    def start(self):
        return cocotb.start_soon(self._run())

    async def _run(self):
        presenting = False
        while True:
            await FallingEdge(self.clk)
            if not presenting and self.queue and self.rng.random() >= self.idle:
                presenting = True
                value = self.queue[0]
                self.payload.value = value if self.mask is None else value & self.mask
            if not self.queue:
                presenting = False
            self.valid.value = int(presenting)
            await ReadOnly()
            if (self.rst is not None and bit(self.rst)) or not self.queue:
                presenting = False
            elif presenting and bit(self.ready):
                self.queue.popleft()
                self.sent += 1
                presenting = False


class StreamSink:
    """Receive stream ``name`` of ``dut`` and check it against :attr:`expect`.

    Members
    -------
    expect : deque
        ``(where, value)`` pairs, in order; a mismatch appends
        ``"{where} = {got}, expected {value}"`` to ``errors``.
    stall : float
        Probability of ``ready`` low in a cycle; may change while running.
    received : int
        Transfers so far.

    Payloads are read as signed integers. With ``reset`` (default), cycles with ``rst`` high
    are ignored.
    """

    def __init__(self, dut, name, rng, errors, *, reset=True):
        self.clk, self.rng, self.errors, self.name = dut.clk, rng, errors, name
        self.rst = dut.rst if reset else None
        self.valid, self.ready, self.payload = (_port(dut, name, m)
                                                for m in ("valid", "ready", "payload"))
        self.expect = deque()
        self.stall = 0.0
        self.received = 0

    def start(self):
        return cocotb.start_soon(self._run())

    async def _run(self):
        stalled = None                  # payload of a valid transfer not yet taken
        while True:
            await FallingEdge(self.clk)
            ready = self.rng.random() >= self.stall
            self.ready.value = int(ready)
            await ReadOnly()
            if self.rst is not None and bit(self.rst):
                stalled = None
                continue
            valid = bit(self.valid)
            value = self.payload.value.to_signed() if valid else None
            if stalled is not None and value != stalled:
                self.errors.append(f"{self.name} changed while stalled: {stalled} -> {value}")
            stalled = value if valid and not ready else None
            if valid and ready:
                self.received += 1
                if not self.expect:
                    self.errors.append(f"unexpected output {value} on {self.name}")
                    continue
                where, exp = self.expect.popleft()
                if value != exp:
                    self.errors.append(f"{where} = {value}, expected {exp}")
