"""Causal linear attention, decode path: constant work per token whatever the context length.

:class:`LinearCausalAttention` keeps the running state ``S = Σ φ(k)ᵀv`` (d×d) and
``z = Σ φ(k)`` (d) on chip, with ``φ(x) = relu(x) + 1`` on int8 (so ``φ`` is in [1, 128]), and
per token computes ``num = φ(q)·S``, ``den = φ(q)·z`` and ``y = num/den`` requantized to int8:
bit-exact with :func:`amaformer.gen.attention.attention_linear_causal` (without convolution).
"""

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .attention_units import ReciprocalUnit, rshift_round
from .common import check_int

__all__ = ["LinearCausalAttention", "linear_causal_token_cycles", "linear_causal_job_cycles"]

#: cycles of a token beyond ``d`` (load) + ``d·ceil(d/lanes)`` (update) + ``d`` (outputs):
#: reciprocal (6) and output pipeline drain (5)
TOKEN_OVERHEAD = 11


def linear_causal_token_cycles(d, lanes):
    """Cycles per token of :class:`LinearCausalAttention`, streams never stalled:
    ``2·d + d·ceil(d/lanes) + TOKEN_OVERHEAD``, whatever the context length."""
    return 2 * d + d * -(-d // lanes) + TOKEN_OVERHEAD


def linear_causal_job_cycles(tokens, d, lanes):
    """Cycles from the ``start`` edge to the ``done`` edge of a job of ``tokens`` tokens."""
    if tokens <= 0 or d <= 0:
        return 1
    return tokens * linear_causal_token_cycles(d, lanes) + 1


class LinearCausalAttention(wiring.Component):
    """One head of causal linear attention, one token per step.

    Per token, in three phases: load ``d`` beats ``(q[i], k[i], v[i])``; update and read out
    the state in ``d·ceil(d/lanes)`` cycles (``lanes`` state-update MACs and ``lanes`` readout
    MACs, plus one MAC for ``z`` and ``den``); then ``d`` outputs through the reciprocal (table
    + Newton) and requantization, ``y = clamp(rs(rs(num·r, e + RB - G)·out_mult, out_shift))``.

    Widths: state ``16 + ceil(log2 max_context)`` bits signed (no overflow up to
    ``max_context`` tokens since the last clear), ``z`` ``8 + ceil(log2 max_context)`` bits.

    Parameters
    ----------
    lanes : int
        State columns updated in parallel.
    max_dim : int
        Largest head dimension d.
    max_context : int
        Largest number of tokens accumulated in the state.
    recip_table_bits, recip_bits, recip_mant_bits, guard_bits : int
        Reciprocal and output format (:class:`amaformer.gen.attention.SoftmaxFormat`).

    Members
    -------
    qkv : ``In(stream.Signature(StructLayout({"q", "k", "v": signed(8)})))``
        ``d`` beats per token.
    o : ``Out(stream.Signature(signed(8)))``
        ``d`` outputs per token.
    start : ``In(1)``
        Starts a job of ``tokens`` tokens with head dimension ``dim`` when high and not busy;
        ``clear`` high with ``start`` empties the state first (a new sequence); otherwise the
        job continues the previous sequence (decoding token by token).
    tokens, dim, clear, out_mult, out_shift : ``In(...)``
        Sampled with ``start``.
    busy, done : ``Out(1)``

    Latency: :func:`linear_causal_token_cycles` per token, independent of the context.
    """

    def __init__(self, *, lanes=4, max_dim=32, max_context=1024, recip_table_bits=6,
                 recip_bits=15, recip_mant_bits=16, guard_bits=8):
        check_int("lanes", lanes, 1, 64)
        check_int("max_dim", max_dim, 1, 256)
        check_int("max_context", max_context, 1, 1 << 20)
        check_int("guard_bits", guard_bits, 0, recip_bits - 1)
        if lanes > max_dim:
            raise ValueError(f"lanes must be at most max_dim ({max_dim}), not {lanes!r}")
        self.lanes = lanes
        self.max_dim = max_dim
        self.max_context = max_context
        self.recip_table_bits = recip_table_bits
        self.recip_bits = recip_bits
        self.recip_mant_bits = recip_mant_bits
        self.guard_bits = guard_bits
        lc = ceil_log2(max_context + 1)
        self.state_bits = 16 + lc
        self.z_bits = 8 + lc
        self.num_bits = self.state_bits + 8 + ceil_log2(max_dim) + 1
        self.den_bits = self.z_bits + 8 + ceil_log2(max_dim)
        super().__init__({
            "qkv":       In(stream.Signature(data.StructLayout(
                {"q": signed(8), "k": signed(8), "v": signed(8)}))),
            "o":         Out(stream.Signature(signed(8))),
            "start":     In(1),
            "tokens":    In(range(max_context + 1)),
            "dim":       In(range(max_dim + 1)),
            "clear":     In(1),
            "out_mult":  In(16),
            "out_shift": In(6),
            "busy":      Out(1),
            "done":      Out(1),
        })

    @classmethod
    def from_config(cls, att):
        """Build from an :class:`amaformer.gen.config.AttentionConfig` (duck-typed)."""
        return cls(lanes=min(att.lanes, att.head_dim), max_dim=att.head_dim,
                   max_context=att.max_tokens, recip_table_bits=att.recip_table_bits,
                   recip_bits=att.recip_bits, recip_mant_bits=att.recip_mant_bits,
                   guard_bits=att.guard_bits)

    def elaborate(self, platform):
        m = Module()
        L, D = self.lanes, self.max_dim
        G = -(-D // L)
        SW, ZW, NW, DW = self.state_bits, self.z_bits, self.num_bits, self.den_bits
        RB = self.recip_bits

        dim = Signal.like(self.dim)
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(dim - 1)
        groups_m1 = Signal(range(G))
        tokens_left = Signal.like(self.tokens)
        om = Signal(16)
        osh = Signal(6)
        clearing = Signal()

        smem = [memory.Memory(shape=signed(SW), depth=G * D, init=[]) for _ in range(L)]
        vmem = [memory.Memory(shape=signed(8), depth=G, init=[]) for _ in range(L)]
        nmem = [memory.Memory(shape=signed(NW), depth=G, init=[]) for _ in range(L)]
        for p in range(L):
            m.submodules[f"smem{p}"] = smem[p]
            m.submodules[f"vmem{p}"] = vmem[p]
            m.submodules[f"nmem{p}"] = nmem[p]
        m.submodules.fk = fkm = memory.Memory(shape=unsigned(8), depth=D, init=[])
        m.submodules.fq = fqm = memory.Memory(shape=unsigned(8), depth=D, init=[])
        m.submodules.z = zm = memory.Memory(shape=unsigned(ZW), depth=D, init=[])
        s_r = [mm.read_port() for mm in smem]
        s_w = [mm.write_port() for mm in smem]
        v_r = [mm.read_port() for mm in vmem]
        v_w = [mm.write_port() for mm in vmem]
        n_r = [mm.read_port() for mm in nmem]
        n_w = [mm.write_port() for mm in nmem]
        fk_r, fk_w = fkm.read_port(), fkm.write_port()
        fq_r, fq_w = fqm.read_port(), fqm.write_port()
        z_r, z_w = zm.read_port(), zm.write_port()

        # load phase counters
        li = Signal(range(D))
        lane_of = Signal(range(max(L, 2)))
        grp_of = Signal(range(max(G, 2)))
        # update phase counters
        ui = Signal(range(D))
        ug = Signal(range(max(G, 2)))
        # output phase
        oj_lane = Signal(range(max(L, 2)))
        oj_grp = Signal(range(max(G, 2)))
        oj = Signal(range(D))
        r_reg = Signal(RB + 1)
        e_reg = Signal(range(DW))
        den = Signal(DW)
        rc = Signal(range(ReciprocalUnit.LATENCY + 2))

        def phi(x):
            return Mux(x[-1], 1, x.as_unsigned() + 1)

        m.d.comb += [fk_w.addr.eq(li), fk_w.data.eq(phi(self.qkv.payload.k)),
                     fq_w.addr.eq(li), fq_w.data.eq(phi(self.qkv.payload.q))]
        for p in range(L):
            m.d.comb += [v_w[p].addr.eq(grp_of), v_w[p].data.eq(self.qkv.payload.v)]
        load_fire = Signal()
        m.d.comb += [load_fire.eq(self.qkv.valid & self.qkv.ready),
                     fk_w.en.eq(load_fire), fq_w.en.eq(load_fire)]
        for p in range(L):
            m.d.comb += v_w[p].en.eq(load_fire & (lane_of == p))

        # update pipeline: issue (ug, ui) -> stage 1 (data) -> stage 2 (write)
        issue = Signal()
        for p in range(L):
            m.d.comb += [s_r[p].addr.eq(ug * D + ui), v_r[p].addr.eq(ug)]
        m.d.comb += [fk_r.addr.eq(ui), fq_r.addr.eq(ui), z_r.addr.eq(ui)]
        u1_valid, u1_first, u1_last, u1_g0 = Signal(), Signal(), Signal(), Signal()
        u1_i = Signal.like(ui)
        u1_g = Signal.like(ug)
        m.d.sync += [u1_valid.eq(issue), u1_first.eq(ui == 0), u1_last.eq(ui == dm1),
                     u1_g0.eq(ug == 0), u1_i.eq(ui), u1_g.eq(ug)]
        nums = [Signal(signed(NW), name=f"num{p}") for p in range(L)]
        s_new = [Signal(signed(SW), name=f"snew{p}") for p in range(L)]
        z_new = Signal(ZW)
        base_s = [Mux(clearing, 0, s_r[p].data) for p in range(L)]
        m.d.comb += z_new.eq(Mux(clearing, 0, z_r.data) + fk_r.data)
        for p in range(L):
            m.d.comb += s_new[p].eq(base_s[p] + fk_r.data * v_r[p].data)
            m.d.comb += [s_w[p].addr.eq(u1_g * D + u1_i), s_w[p].data.eq(s_new[p]),
                         s_w[p].en.eq(u1_valid)]
            with m.If(u1_valid):
                m.d.sync += nums[p].eq(Mux(u1_first, 0, nums[p]) + fq_r.data * s_new[p])
        m.d.comb += [z_w.addr.eq(u1_i), z_w.data.eq(z_new), z_w.en.eq(u1_valid & u1_g0)]
        with m.If(u1_valid & u1_g0):
            m.d.sync += den.eq(Mux(u1_first, 0, den) + fq_r.data * z_new)
        u2_valid = Signal()
        u2_g = Signal.like(ug)
        m.d.sync += [u2_valid.eq(u1_valid & u1_last), u2_g.eq(u1_g)]
        for p in range(L):
            m.d.comb += [n_w[p].addr.eq(u2_g), n_w[p].data.eq(nums[p]), n_w[p].en.eq(u2_valid)]

        m.submodules.recip = recip = ReciprocalUnit(
            in_width=DW, mant_bits=self.recip_mant_bits, table_bits=self.recip_table_bits,
            recip_bits=RB)
        m.d.comb += [recip.en.eq(1), recip.l.eq(den)]

        # output pipeline with back-pressure: issue -> o1 (num) -> o2 (·r) -> o3 (round) ->
        # o4 (·M) -> o (round, clamp)
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        o_issue = Signal()
        for p in range(L):
            m.d.comb += [n_r[p].addr.eq(oj_grp), n_r[p].en.eq(en)]
        TW = NW + RB + 2
        o1_valid, o2_valid, o3_valid, o4_valid = (Signal(name=f"lo{n}_valid")
                                                   for n in range(1, 5))
        o1_lane = Signal.like(oj_lane)
        o2_prod = Signal(signed(TW))
        o3_t = Signal(signed(TW))
        o4_y = Signal(signed(TW + 17))
        sh1 = Signal(range(DW + RB + 1))
        m.d.comb += sh1.eq(e_reg + RB - self.guard_bits)
        y = Signal(signed(TW + 18))
        m.d.comb += y.eq(rshift_round(o4_y, osh, TW + 17))
        with m.If(en):
            m.d.sync += [o1_valid.eq(o_issue), o1_lane.eq(oj_lane),
                         o2_valid.eq(o1_valid),
                         o2_prod.eq(Array(n.data for n in n_r)[o1_lane] * r_reg),
                         o3_valid.eq(o2_valid), o3_t.eq(rshift_round(o2_prod, sh1, TW)),
                         o4_valid.eq(o3_valid), o4_y.eq(o3_t * om),
                         self.o.valid.eq(o4_valid),
                         self.o.payload.eq(Mux(y > 127, 127, Mux(y < -128, -128, y)))]
        drained = Signal()
        m.d.comb += drained.eq(~(o1_valid | o2_valid | o3_valid | o4_valid)
                               & (~self.o.valid | self.o.ready))

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += self.done.eq(0)
                with m.If(self.start):
                    m.d.sync += [dim.eq(self.dim), tokens_left.eq(self.tokens),
                                 om.eq(self.out_mult), osh.eq(self.out_shift),
                                 groups_m1.eq((self.dim + L - 1) // L - 1),
                                 li.eq(0), lane_of.eq(0), grp_of.eq(0)]
                    with m.If(self.clear):
                        m.d.sync += clearing.eq(1)
                    with m.If((self.tokens == 0) | (self.dim == 0)):
                        m.d.sync += self.done.eq(1)
                    with m.Else():
                        m.d.sync += self.busy.eq(1)
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.qkv.ready.eq(1)
                with m.If(load_fire):
                    m.d.sync += [li.eq(li + 1), lane_of.eq(lane_of + 1)]
                    with m.If(lane_of == L - 1):
                        m.d.sync += [lane_of.eq(0), grp_of.eq(grp_of + 1)]
                    with m.If(li == dm1):
                        m.d.sync += [li.eq(0), lane_of.eq(0), grp_of.eq(0), ui.eq(0),
                                     ug.eq(0)]
                        m.next = "UPDATE"
            with m.State("UPDATE"):
                m.d.comb += issue.eq(1)
                m.d.sync += ui.eq(ui + 1)
                with m.If(ui == dm1):
                    m.d.sync += [ui.eq(0), ug.eq(ug + 1)]
                    with m.If(ug == groups_m1):
                        m.d.sync += rc.eq(0)
                        m.next = "RECIP"
            with m.State("RECIP"):
                # den is final 2 cycles after the last issue; the reciprocal takes LATENCY
                m.d.sync += rc.eq(rc + 1)
                with m.If(rc == ReciprocalUnit.LATENCY + 1):
                    m.d.sync += [r_reg.eq(recip.r), e_reg.eq(recip.e), clearing.eq(0),
                                 oj.eq(0), oj_lane.eq(0), oj_grp.eq(0)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += o_issue.eq(en)
                with m.If(en):
                    m.d.sync += [oj.eq(oj + 1), oj_lane.eq(oj_lane + 1)]
                    with m.If(oj_lane == L - 1):
                        m.d.sync += [oj_lane.eq(0), oj_grp.eq(oj_grp + 1)]
                    with m.If(oj == dm1):
                        m.d.sync += tokens_left.eq(tokens_left - 1)
                        m.next = "NEXT"
            with m.State("NEXT"):
                # the output pipeline drains before the next token changes r, e and nmem
                with m.If(drained):
                    with m.If(tokens_left != 0):
                        m.next = "LOAD"
                    with m.Else():
                        m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
        return m
