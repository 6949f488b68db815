"""The sparse-dense coordinator behind the top: :class:`SparseDenseUnit` puts
:class:`~amaformer.hdl.sparse_dense.SparseDenseEngine` behind the unit contract
(:mod:`amaformer.hdl.unit`).

The engine already checks its descriptor and sequences its own reads and writes; this unit
keeps the descriptor bytes the link broadcasts (:func:`~amaformer.hdl.unit.receive_descriptor`,
full wire widths: the engine checks them), hands ``start`` to the engine and its ``ack``,
``accepted``, ``busy`` and ``done`` back to the link, and connects the engine's activation read
port and output write port to the arbiters (never stalled: the unit owns both memories while
busy) and its three write ports to the link's spaces ``heads``, ``dense`` and ``sparse``.
"""

from amaranth import *

from . import sparse_dense_spec as S
from .common import MemWriteSignature
from .sparse_dense import SparseDenseEngine
from .unit import Unit, receive_descriptor

__all__ = ["SparseDenseUnit"]


class SparseDenseUnit(Unit):
    """Sparse-dense coordinator (ViTCoD) as a unit of the top.

    Parameters
    ----------
    sd : SparseDenseConfig
        Read duck-typed: ``dense_lanes``, ``sparse_lanes``, ``heads``, ``head_dim``,
        ``max_tokens``, ``dense_depth``, ``sparse_depth``, ``qkv_buffers`` and the fixed-point
        fields (``exp_frac_bits``, ``p_bits``, ``recip_table_bits``, ``recip_bits``,
        ``recip_mant_bits``, ``guard_bits``).
    act_depth, out_depth : int
        Bytes of the activation and output memories.

    Members
    -------
    The :class:`~amaformer.hdl.unit.UnitSignature`: ``ctl``, ``desc``
    (:data:`amaformer.hdl.sparse_dense_spec.DESCRIPTOR`), ``act`` (Q, K, V: ``3·tokens·dim``
    reads per head, one per cycle at most), ``out`` (one byte per cycle at most), and the spaces
    ``heads``, ``dense``, ``sparse`` (:mod:`amaformer.hdl.sparse_dense_spec`).

    Timing: ``ack`` two cycles after ``start`` (also the job's start edge when accepted);
    ``busy`` from then through the ``done`` pulse. The link's cycle count of a job is
    :func:`amaformer.gen.sparse_dense.sparse_dense_job_cycles` (exact). The descriptor rules are
    the engine's.
    """

    kind = S.SPARSE_DENSE

    def __init__(self, sd, *, act_depth, out_depth):
        self.sd = sd
        self.act_depth, self.out_depth = act_depth, out_depth
        self.engine = SparseDenseEngine(
            dense_lanes=sd.dense_lanes, sparse_lanes=sd.sparse_lanes, max_dim=sd.head_dim,
            max_tokens=sd.max_tokens, max_heads=sd.heads, dense_depth=sd.dense_depth,
            sparse_depth=sd.sparse_depth, act_depth=act_depth, out_depth=out_depth,
            qkv_buffers=sd.qkv_buffers, exp_frac_bits=sd.exp_frac_bits, p_bits=sd.p_bits,
            recip_table_bits=sd.recip_table_bits, recip_bits=sd.recip_bits,
            recip_mant_bits=sd.recip_mant_bits, guard_bits=sd.guard_bits)
        eng = self.engine
        # plain widths on the wire side (the link writes bytes); the engine's ports carry the
        # same bits as layouts
        spaces = {name: MemWriteSignature(port.signature.depth,
                                          unsigned(Shape.cast(port.signature.members["data"]
                                                              .shape).width))
                  for name, port in (("heads", eng.hp_wr), ("dense", eng.dense_wr),
                                     ("sparse", eng.sparse_wr))}
        assert [Shape.cast(lay).width for lay in (
            S.HEAD_PARAMS, S.dense_entry_layout(sd.max_tokens, sd.dense_lanes),
            S.sparse_entry_layout(sd.max_tokens))] == [
            s.members["data"].shape.width for s in spaces.values()]
        super().__init__(act_depth=act_depth, out_depth=out_depth, spaces=spaces)

    def ident_record(self):
        e = self.engine
        return {"dense_lanes": e.dense_lanes, "sparse_lanes": e.sparse_lanes,
                "qkv_buffers": e.qkv_buffers, "head_word_bytes": self.space_word_bytes("heads"),
                "dense_word_bytes": self.space_word_bytes("dense"),
                "sparse_word_bytes": self.space_word_bytes("sparse"),
                "heads": e.max_heads, "head_dim": e.max_dim, "max_tokens": e.max_tokens,
                "dense_depth": e.dense_depth, "sparse_depth": e.sparse_depth}

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        d, _ = receive_descriptor(m, self.desc, self.kind.descriptor)      # full widths
        for name, _field in self.kind.descriptor:
            m.d.comb += eng.descriptor[name].eq(d[name])
        ctl = self.ctl
        m.d.comb += [eng.start.eq(ctl.start),
                     ctl.ack.eq(eng.ack), ctl.accepted.eq(eng.accepted),
                     ctl.started.eq(eng.ack & eng.accepted),
                     # the engine's busy drops with its done pulse; the contract keeps
                     # the memories owned through it
                     ctl.busy.eq(eng.busy | eng.done)]
        m.d.comb += ctl.done.eq(eng.done)
        m.d.comb += [self.act.addr.eq(eng.act_addr), eng.act_rdata.eq(self.act.rdata),
                     eng.act_stall.eq(0), self.act.we.eq(0), self.act.wdata.eq(0),
                     self.out.addr.eq(eng.out_addr), self.out.wdata.eq(eng.out_wdata),
                     self.out.we.eq(eng.out_we), eng.out_stall.eq(0)]
        for space, port in ((self.heads, eng.hp_wr), (self.dense, eng.dense_wr),
                            (self.sparse, eng.sparse_wr)):
            m.d.comb += [port.addr.eq(space.addr), port.data.as_value().eq(space.data),
                         port.en.eq(space.en)]
        return m
