"""The memory arbiter: grants the activation and output memories to one requester at a time."""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .unit import BytePortSignature

__all__ = ["MemoryArbiter"]


class MemoryArbiter(wiring.Component):
    """Multiplexes ``requesters`` byte ports onto one memory port.

    Requester 0 is the link, the default owner; requester ``i + 1`` is unit ``i``, which owns
    the memory while its ``grant[i]`` (the unit's ``busy``) is high. At most one unit is busy at
    a time (the link starts a job only while none is), so the grant needs no priority.
    ``rdata`` goes to every requester. Combinational (no latency).

    Parameters
    ----------
    depth : int
        Bytes of the memory.
    units : int
        Units behind it (requesters besides the link).

    Members
    -------
    req : ``In(BytePortSignature(depth)).array(units + 1)``
    grant : ``In(units)``
    mem : ``Out(BytePortSignature(depth))``
        To the memory (a :class:`~amaformer.hdl.memories.ByteMemory`'s ports).
    """

    def __init__(self, depth, units):
        self.depth = depth
        self.units = units
        super().__init__({
            "req": In(BytePortSignature(depth)).array(units + 1),
            "grant": In(max(units, 1)),
            "mem": Out(BytePortSignature(depth)),
        })

    def elaborate(self, platform):
        m = Module()
        for req in self.req:
            m.d.comb += req.rdata.eq(self.mem.rdata)
        link = self.req[0]
        with m.If(self.grant == 0):
            m.d.comb += [self.mem.addr.eq(link.addr), self.mem.wdata.eq(link.wdata),
                         self.mem.we.eq(link.we)]
        for i in range(self.units):
            req = self.req[i + 1]
            with m.If(self.grant[i]):
                m.d.comb += [self.mem.addr.eq(req.addr), self.mem.wdata.eq(req.wdata),
                             self.mem.we.eq(req.we)]
        return m
