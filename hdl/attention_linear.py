"""Causal linear attention, decode path: constant work per token whatever the context length.

:class:`LinearCausalAttention` keeps the running state ``S = Σ φ(k)ᵀv`` (d×d) and
``z = Σ φ(k)`` (d) on chip, with ``φ(x) = relu(x) + 1`` on int8 (so ``φ`` is in [1, 128]), and
per token computes ``num = φ(q)·S``, ``den = φ(q)·z`` and ``y = num/den`` requantized to int8,
plus an optional causal depthwise convolution of V (``conv_taps > 0``): bit-exact with
:func:`amaformer.gen.attention.attention_linear_causal`.
"""

from amaranth import *
from amaranth.lib import memory
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2

from .attention_conv import (LinearKernel, accept_job, conv_mac, conv_memories, count_lanes,
                             count_to, load_elements, sweep_groups)
from .attention_units import ReciprocalUnit, rshift_round
from .common import check_int, lane_memories
from .linear import lut_multiply

__all__ = ["LinearCausalAttention", "linear_causal_token_cycles", "linear_causal_job_cycles"]

#: cycles of a token beyond ``d`` (load) + ``d·ceil(d/lanes)`` (update) + ``d`` (outputs):
#: reciprocal (7) and output pipeline drain (5)
TOKEN_OVERHEAD = 12


def linear_causal_token_cycles(d, lanes, conv_taps=0):
    """Cycles per token of :class:`LinearCausalAttention`, streams never stalled:
    ``2·d + ceil(d/lanes)·u + TOKEN_OVERHEAD`` with ``u = d`` (``u = max(d, conv_taps + 1)``
    with a convolution), whatever the context length."""
    u = max(d, conv_taps + 1) if conv_taps else d
    return 2 * d + u * -(-d // lanes) + TOKEN_OVERHEAD


def linear_causal_job_cycles(tokens, d, lanes, conv_taps=0):
    """Cycles from the ``start`` edge to the ``done`` edge of a job of ``tokens`` tokens."""
    if tokens <= 0 or d <= 0:
        return 1
    return tokens * linear_causal_token_cycles(d, lanes, conv_taps) + 1


class LinearCausalAttention(LinearKernel):
    """One head of causal linear attention, one token per step.

    Note for the top's sequencer: ``conv_taps = 0`` (the default) keeps the ports unchanged;
    ``conv_taps > 0`` adds ``conv_mult``, ``conv_shift`` and ``cw_wr``.

    Per token, in three phases: load ``d`` beats ``(q[i], k[i], v[i])``; update and read out
    the state in ``d·ceil(d/lanes)`` cycles (``lanes`` state-update MACs and ``lanes`` readout
    MACs, plus one MAC for ``z`` and ``den``); then ``d`` outputs through the reciprocal (table
    + Newton) and requantization, ``y = clamp(rs(rs(num·r, e + RB - G)·out_mult, out_shift)
    + rs(conv·conv_mult, conv_shift))``. The convolution ``conv[j] = Σ_τ w[τ][j]·v[t-τ][j]``
    (tokens before the last ``clear`` count as zero) runs on ``lanes`` more MACs during the
    update, from a ring of the last ``conv_taps`` tokens of V; the update phase then takes
    ``ceil(d/lanes)·max(d, conv_taps + 1)`` cycles.

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
    conv_taps : int
        Taps of the causal depthwise convolution over V (0: none). Weights ``taps×d`` int8
        through ``cw_wr``, laid out as :func:`amaformer.hdl.attention_angular.
        conv_weight_writes` says; they stay loaded between jobs.
    lut_macs : bool
        Build the multipliers with an 8-bit operand (``φ(k)·v``, ``φ(q)·S``, ``φ(q)·z``, the
        convolution's ``w·v``) and the convolution's scaling from logic
        (:func:`amaformer.hdl.linear.lut_multiply`), which keeps a one-lane kernel within the
        8 DSP blocks of an iCE40UP5K (the reciprocal and output scaling keep theirs). Same
        arithmetic.

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
    conv_mult, conv_shift : ``In(16)``, ``In(6)``
        Only when ``conv_taps > 0``; sampled with ``start``.
    cw_wr : ``In(MemWriteSignature(lanes << conv_bank_bits(...), signed(8)))``
        Only when ``conv_taps > 0``.
    busy, done : ``Out(1)``

    Latency: :func:`linear_causal_token_cycles` per token, independent of the context.

    Block RAM: no read of an address written in the same cycle is ever used (the state, ``z``:
    written one cycle after their read, and the next read is another element; the token
    buffers and partial results: written and read in different phases; convolution weights:
    written while idle), so synthesis may drop the read-during-write bypass.
    """

    CONFIG_FIELDS = {"max_context": "max_tokens", "recip_table_bits": "recip_table_bits",
                     "recip_bits": "recip_bits", "recip_mant_bits": "recip_mant_bits",
                     "guard_bits": "guard_bits"}

    def __init__(self, *, lanes=4, max_dim=32, max_context=1024, recip_table_bits=6,
                 recip_bits=15, recip_mant_bits=16, guard_bits=8, conv_taps=0,
                 lut_macs=False):
        check_int("lanes", lanes, 1, 64)
        check_int("max_dim", max_dim, 1, 256)
        check_int("max_context", max_context, 1, 1 << 20)
        check_int("guard_bits", guard_bits, 0, recip_bits - 1)
        check_int("conv_taps", conv_taps, 0, 64)
        if lanes > max_dim:
            raise ValueError(f"lanes must be at most max_dim ({max_dim}), not {lanes!r}")
        self.conv_taps = conv_taps
        self.lut_macs = bool(lut_macs)
        self.conv_bits = 17 + ceil_log2(max(conv_taps, 1))
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
        super().__init__(max_context, {"clear": In(1), "out_mult": In(16), "out_shift": In(6)})

    def elaborate(self, platform):
        m = Module()
        L, D = self.lanes, self.max_dim
        G = -(-D // L)
        SW, ZW, NW, DW = self.state_bits, self.z_bits, self.num_bits, self.den_bits
        RB = self.recip_bits
        TAPS = self.conv_taps
        T = max(TAPS, 1)                    # V ring depth in tokens
        CW = self.conv_bits

        dim = Signal.like(self.dim)
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(dim - 1)
        groups_m1 = Signal(range(G))
        tokens_left = Signal.like(self.tokens)
        om = Signal(16)
        osh = Signal(6)
        clearing = Signal()

        s_r, s_w = lane_memories(m, L, "smem", signed(SW), G * D)
        v_r, v_w = lane_memories(m, L, "vmem", signed(8), T * G)
        n_r, n_w = lane_memories(m, L, "nmem", signed(NW), G)
        m.submodules.fk = fkm = memory.Memory(shape=unsigned(8), depth=D, init=[])
        m.submodules.fq = fqm = memory.Memory(shape=unsigned(8), depth=D, init=[])
        m.submodules.z = zm = memory.Memory(shape=unsigned(ZW), depth=D, init=[])
        fk_r, fk_w = fkm.read_port(), fkm.write_port()
        fq_r, fq_w = fqm.read_port(), fqm.write_port()
        z_r, z_w = zm.read_port(), zm.write_port()
        c_r, c_w, w_r = [], [], []
        if TAPS:
            c_r, c_w, w_r = conv_memories(m, self.cw_wr, taps=TAPS, lanes=L, max_dim=D,
                                          groups=G, conv_width=CW)
        cur_slot = Signal(range(T))         # ring slot of the current token's V
        hist = Signal(range(T))             # tokens of V before it since the last clear

        # load phase counters
        li = Signal(range(D))
        lane_of = Signal(range(max(L, 2)))
        grp_of = Signal(range(max(G, 2)))
        # update phase counters
        ui = Signal(range(max(D, TAPS + 1)))
        umax = Signal.like(ui)
        ug = Signal(range(max(G, 2)))
        # output phase
        oj_lane = Signal(range(max(L, 2)))
        oj_grp = Signal(range(max(G, 2)))
        oj = Signal(range(D))
        r_reg = Signal(RB + 1)
        e_reg = Signal(range(DW))
        den = Signal(DW)
        rc = Signal(range(ReciprocalUnit.LATENCY + 3))

        def phi(x):
            return Mux(x[-1], 1, x.as_unsigned() + 1)

        m.d.comb += [fk_w.addr.eq(li), fk_w.data.eq(phi(self.qkv.payload.k)),
                     fq_w.addr.eq(li), fq_w.data.eq(phi(self.qkv.payload.q))]
        for p in range(L):
            m.d.comb += [v_w[p].addr.eq(cur_slot * G + grp_of),
                         v_w[p].data.eq(self.qkv.payload.v)]
        load_fire = Signal()
        m.d.comb += [load_fire.eq(self.qkv.valid & self.qkv.ready),
                     fk_w.en.eq(load_fire), fq_w.en.eq(load_fire)]
        for p in range(L):
            m.d.comb += v_w[p].en.eq(load_fire & (lane_of == p))

        # update pipeline: issue (ug, ui) -> stage 1 (data) -> stage 2 (write)
        issue = Signal()
        in_update = Signal()
        m.d.comb += issue.eq(in_update & (ui <= dm1))
        cslot = Signal(range(T))
        cslot_now = Signal(range(T))
        for p in range(L):
            # v of the current token is read at the group's first update issue and latched;
            # the other cycles read the convolution's taps (slot of token t - (ui - 1))
            m.d.comb += [s_r[p].addr.eq(ug * D + ui),
                         v_r[p].addr.eq(Mux(ui == 0, cur_slot, cslot_now) * G + ug)]
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
        fk9 = Cat(fk_r.data, C(0, 1)).as_signed()      # φ in [1, 128]: 9 bits signed
        fq9 = Cat(fq_r.data, C(0, 1)).as_signed()
        v_cur = [v_r[p].data for p in range(L)]
        if TAPS:
            vlatch = [Signal(signed(8), name=f"vlatch{p}") for p in range(L)]
            v_cur = [Mux(u1_first, v_r[p].data, vlatch[p]) for p in range(L)]
            for p in range(L):
                with m.If(u1_valid & u1_first):
                    m.d.sync += vlatch[p].eq(v_r[p].data)
        # stage 2 (readout): the new state and z registered, so that the update's and the
        # readout's multiplies are in different cycles
        u2_valid, u2_first, u2_last, u2_g0 = Signal(), Signal(), Signal(), Signal()
        u2_g = Signal.like(ug)
        fq2 = Signal(signed(9))
        s2 = [Signal(signed(SW), name=f"s2_{p}") for p in range(L)]
        z2 = Signal(ZW)
        m.d.sync += [u2_valid.eq(u1_valid), u2_first.eq(u1_first), u2_last.eq(u1_last),
                     u2_g0.eq(u1_g0), u2_g.eq(u1_g), fq2.eq(fq9), z2.eq(z_new)]
        for p in range(L):
            m.d.comb += s_new[p].eq(base_s[p] + self._mul8(v_cur[p], fk9))
            m.d.comb += [s_w[p].addr.eq(u1_g * D + u1_i), s_w[p].data.eq(s_new[p]),
                         s_w[p].en.eq(u1_valid)]
            m.d.sync += s2[p].eq(s_new[p])
            with m.If(u2_valid):
                m.d.sync += nums[p].eq(Mux(u2_first, 0, nums[p]) + self._mul8(fq2, s2[p]))
        m.d.comb += [z_w.addr.eq(u1_i), z_w.data.eq(z_new), z_w.en.eq(u1_valid & u1_g0)]
        with m.If(u2_valid & u2_g0):
            m.d.sync += den.eq(Mux(u2_first, 0, den)
                               + self._mul8(fq2, Cat(z2, C(0, 1)).as_signed()))
        u3_valid = Signal()
        u3_g = Signal.like(ug)
        m.d.sync += [u3_valid.eq(u2_valid & u2_last), u3_g.eq(u2_g)]
        for p in range(L):
            m.d.comb += [n_w[p].addr.eq(u3_g), n_w[p].data.eq(nums[p]), n_w[p].en.eq(u3_valid)]

        # causal convolution, during the update: issue (ug, tap ui - 1) -> c1 (w, v) -> c2
        if TAPS:
            cv_issue = Signal()
            tau = Signal.like(ui)
            m.d.comb += [tau.eq(ui - 1), cv_issue.eq(in_update & (ui != 0) & (ui <= TAPS)),
                         cslot_now.eq(Mux(ui == 1, cur_slot, cslot))]
            with m.If(cv_issue):
                m.d.sync += cslot.eq(Mux(cslot_now == 0, T - 1, cslot_now - 1))
            conv_mac(m, issue=cv_issue, first=ui == 1, last=ui == TAPS, ok=tau <= hist,
                     group=ug, tap=tau, taps=TAPS, w_r=w_r, v_r=v_r, c_w=c_w, mul=self._mul8,
                     conv_width=CW)

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
            if TAPS:
                m.d.comb += [c_r[p].addr.eq(oj_grp), c_r[p].en.eq(en)]
        TW = NW + RB + 2
        o1_valid, o2_valid, o3_valid, o4_valid = (Signal(name=f"lo{n}_valid")
                                                   for n in range(1, 5))
        o1_lane = Signal.like(oj_lane)
        o2_prod = Signal(signed(TW))
        # t = num·r/den in V units with G guard bits: num/den is a weighted mean of v (weights
        # φ(q)·φ(k) > 0), so |t| < 2^(G+7)·(1 + 2^-12) + 1 fits G + 9 bits
        o3_t = Signal(signed(self.guard_bits + 9))
        o4_y = Signal(signed(self.guard_bits + 26))
        sh1 = Signal(range(DW + RB + 1))
        m.d.comb += sh1.eq(e_reg + RB - self.guard_bits)
        y = Signal(signed(max(self.guard_bits + 27, CW + 19)))
        if TAPS:
            cm, csh = Signal(16), Signal(6)
            o2_c = Signal(signed(CW + 17))
            o3_c = Signal.like(o2_c)
            o4_c = Signal(signed(CW + 18))
            with m.If(en):
                cdata = Array(c.data for c in c_r)[o1_lane]
                cprod = (lut_multiply(cdata, Cat(cm, C(0, 1)).as_signed()) if self.lut_macs
                         else cdata * cm)
                m.d.sync += [o2_c.eq(cprod), o3_c.eq(o2_c),
                             o4_c.eq(rshift_round(o3_c, csh, CW + 17))]
            m.d.comb += y.eq(rshift_round(o4_y, osh, len(o4_y)) + o4_c)
        else:
            m.d.comb += y.eq(rshift_round(o4_y, osh, len(o4_y)))
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
                        m.d.sync += [clearing.eq(1), hist.eq(0)]
                    accept_job(m, self, (cm, csh) if TAPS else None, "LOAD")
            with m.State("LOAD"):
                with m.If(load_elements(m, self, load_fire, li, lane_of, grp_of, L, dm1)):
                    m.d.sync += [li.eq(0), lane_of.eq(0), grp_of.eq(0), ui.eq(0), ug.eq(0),
                                 umax.eq(Mux(dm1 < TAPS, TAPS, dm1) if TAPS else dm1)]
                    m.next = "UPDATE"
            with m.State("UPDATE"):
                sweep_groups(m, in_update, ui, umax, ug, groups_m1, then="RECIP", clear=rc)
            with m.State("RECIP"):
                # den is final 3 cycles after the last issue; the reciprocal takes LATENCY
                with m.If(count_to(m, rc, ReciprocalUnit.LATENCY + 2)):
                    m.d.sync += [r_reg.eq(recip.r), e_reg.eq(recip.e), clearing.eq(0),
                                 oj.eq(0), oj_lane.eq(0), oj_grp.eq(0)]
                    if TAPS:
                        m.d.sync += [cur_slot.eq(Mux(cur_slot == T - 1, 0, cur_slot + 1)),
                                     hist.eq(Mux(hist == T - 1, hist, hist + 1))]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += o_issue.eq(en)
                with m.If(en):
                    count_lanes(m, oj, oj_lane, oj_grp, L)
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
