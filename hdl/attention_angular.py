"""Linear-angular attention (Castling-ViT) with a centred depthwise convolution over V.

:class:`LinearAngularAttention` computes, for one head of ``N`` tokens,
``y = 0.5·V + (1/π)·q̂(k̂ᵀV) + dwconv(V)`` in integers, bit-exact with
:func:`amaformer.gen.attention.attention_linear_angular`. It is not causal: ``G = k̂ᵀV`` sums
over all tokens, so a job reads the head's tokens twice (pass 1 accumulates ``G``, pass 2
outputs token by token). The ``d×d`` matrix ``G`` is the only state: no ``N×N`` matrix and no
``N×d`` buffer (the convolution keeps a ring of ``conv_taps`` tokens of V).
"""

from amaranth import *
from amaranth.lib import memory
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2

from .attention_conv import (LinearKernel, accept_job, conv_mac, conv_memories, count_lanes,
                             count_to, load_elements, sweep_groups)
from .attention_units import RsqrtUnit, rshift_round
from .common import check_int, lane_memories

from .attention_spec import conv_bank_bits, conv_weight_writes   # the wire layout

__all__ = ["LinearAngularAttention", "linear_angular_job_cycles", "conv_weight_writes",
           "conv_bank_bits"]

#: cycles after the last multiply-accumulate issue of a step before its results are read
MAC_DRAIN = 4
#: cycles of the output pipeline after the last output issue of a token (o.ready high)
OUT_DRAIN = 4


def linear_angular_job_cycles(tokens, d, lanes, conv_taps=0):
    """Cycles from the ``start`` edge to the ``done`` edge of a :class:`LinearAngularAttention`
    job, streams never stalled.

    Pass 1, per token: ``d`` (load) ``+ 3`` (1/sqrt) ``+ G·d + 4`` (``k̂ᵀv`` update and
    drain) ``+ 1``, ``G = ceil(d/lanes)``. Pass 2 has ``tokens + A`` steps (``A = taps - 1 -
    taps//2`` the convolution's look-ahead): step ``s`` loads token ``s`` if ``s < tokens``
    (``d + 3`` cycles), runs ``G·max(d_s, c_s) + 4`` multiply-accumulate cycles (``d_s = d``
    when it loaded, ``c_s = taps`` when it outputs), then outputs token ``s - A`` if
    ``s >= A`` (``d + 4`` cycles, the last 4 draining the output pipeline) or else ends with
    one cycle.
    """
    if tokens <= 0 or d <= 0:
        return 1
    g = -(-d // lanes)
    a = conv_taps - 1 - conv_taps // 2 if conv_taps else 0
    cyc = tokens * (d + 3 + g * d + MAC_DRAIN + 1)
    for s in range(tokens + a):
        load = s < tokens
        out = s >= a
        macs = max(d if load else 0, conv_taps if out else 0)
        cyc += (d + 3 if load else 0) + (g * macs + MAC_DRAIN if macs else 0)
        cyc += d + OUT_DRAIN if out else 1
    return cyc + 1


class LinearAngularAttention(LinearKernel):
    """One head of linear-angular attention, ``y = 0.5·V + (1/π)·q̂(k̂ᵀV) + dwconv(V)``.

    Arithmetic (bit-exact with :func:`amaformer.gen.attention.attention_linear_angular`):
    ``q̂``, ``k̂`` are integer unit vectors of norm about 127 (:class:`~amaformer.hdl.
    attention_units.RsqrtUnit`, 9 bits signed); ``G = Σ_t k̂_tᵀ v_t`` exact
    (``16 + ceil(log2 max_tokens)`` bits); per token ``num = q̂·G`` exact, ``conv[j] =
    Σ_τ w[τ][j]·v[t + τ - taps//2][j]`` (zero outside the sequence), and
    ``y = clamp(rs(v·half_mult, half_shift) + rs(num·ang_mult, ang_shift) +
    rs(conv·conv_mult, conv_shift))`` with round half up and saturation to int8.

    Beat order of a job of ``N = tokens`` tokens and dimension ``d`` (the sequencer sends the
    same ``N·d`` beats twice):

    1. pass 1: tokens ``0..N-1``, ``d`` beats each, ``(q[t][i], k[t][i], v[t][i])`` for
       ``i = 0..d-1``; ``k`` and ``v`` are used, ``q`` is ignored. No output.
    2. pass 2: the same beats again; ``q`` and ``v`` are used, ``k`` is ignored.

    Outputs: ``N·d`` beats on ``o``, token-major, ``y[t][j]`` for ``j = 0..d-1``. Token ``t``
    leaves after pass 2 has taken token ``min(t + A, N - 1)``, ``A = taps - 1 - taps//2``
    (the convolution's look-ahead; 0 without convolution). The ``qkv`` stream is not ready
    while the kernel computes, so the input may stall between tokens.

    Per step, in phases: load ``d`` beats (``Σx²`` on the fly), ``1/sqrt`` (3 cycles), then
    ``ceil(d/lanes)·max(d, taps)`` cycles of ``lanes`` multiply-accumulates (``G`` update in
    pass 1; ``q̂·G`` readout and, on ``lanes`` more MACs, the convolution in pass 2), then
    ``d`` outputs. Exact cycle count: :func:`linear_angular_job_cycles`.

    Parameters
    ----------
    lanes : int
        Columns of ``G`` processed in parallel (``lanes`` MACs, plus ``lanes`` for the
        convolution when ``conv_taps > 0``).
    max_dim, max_tokens : int
        Largest head dimension d and token count N.
    conv_taps : int
        Taps of the centred depthwise convolution (0: none). Weights ``taps×d`` int8 through
        ``cw_wr`` (layout: :func:`conv_weight_writes`); they stay loaded between jobs.
    rsqrt_table_bits, rsqrt_frac_bits : int
        ``TB`` and ``RB`` of :func:`amaformer.gen.attention.unit_int`.
    lut_macs : bool
        Build the multipliers with an 8-bit operand that are not on the ``G`` path (``Σx²``,
        the convolution's ``w·v``, the output's ``v·half_mult``) from logic
        (:func:`amaformer.hdl.linear.lut_multiply`), which keeps a one-lane kernel within the
        8 DSP blocks of an iCE40UP5K. Same arithmetic.

    Members
    -------
    qkv : ``In(stream.Signature(StructLayout({"q", "k", "v": signed(8)})))``
    o : ``Out(stream.Signature(signed(8)))``
    start : ``In(1)``
        Starts a job when high and not busy; ``tokens`` or ``dim`` zero: ``done`` only.
    tokens, dim, half_mult, half_shift, ang_mult, ang_shift : ``In(...)``
        Sampled with ``start`` (multipliers 16 bits unsigned, shifts 6 bits).
    conv_mult, conv_shift : ``In(16)``, ``In(6)``
        Only when ``conv_taps > 0``; sampled with ``start``.
    cw_wr : ``In(MemWriteSignature(lanes << conv_bank_bits(...), signed(8)))``
        Only when ``conv_taps > 0``.
    busy, done : ``Out(1)``
        ``busy`` from the cycle after ``start`` until ``done`` (one-cycle pulse after the last
        output was transferred).

    Block RAM: no read of an address written in the same cycle is ever used (``G``: written
    one cycle after its read, and the next read is another element; token buffers, V ring and
    partial results: written and read in different phases or slots; convolution weights:
    written while idle), so synthesis may drop the read-during-write bypass.
    """

    CONFIG_FIELDS = {"max_tokens": "max_tokens"}

    def __init__(self, *, lanes=4, max_dim=32, max_tokens=256, conv_taps=0,
                 rsqrt_table_bits=7, rsqrt_frac_bits=7, lut_macs=False):
        for name, value, lo, hi in (("lanes", lanes, 1, 64), ("max_dim", max_dim, 1, 256),
                                    ("max_tokens", max_tokens, 1, 1 << 16),
                                    ("conv_taps", conv_taps, 0, 64),
                                    ("rsqrt_table_bits", rsqrt_table_bits, 2, 12),
                                    ("rsqrt_frac_bits", rsqrt_frac_bits, 0, 16)):
            check_int(name, value, lo, hi)
        if lanes > max_dim:
            raise ValueError(f"lanes must be at most max_dim ({max_dim}), not {lanes!r}")
        if conv_taps > max_tokens:
            raise ValueError(f"conv_taps must be at most max_tokens ({max_tokens}), "
                             f"not {conv_taps!r}")
        self.lanes, self.max_dim, self.max_tokens, self.conv_taps = (lanes, max_dim, max_tokens,
                                                                     conv_taps)
        self.rsqrt_table_bits, self.rsqrt_frac_bits = rsqrt_table_bits, rsqrt_frac_bits
        self.lut_macs = bool(lut_macs)
        self.g_bits = 16 + ceil_log2(max_tokens)
        self.num_bits = self.g_bits + 8 + ceil_log2(max_dim)
        self.conv_bits = 17 + ceil_log2(max(conv_taps, 1))
        self.n2_bits = 15 + ceil_log2(max_dim)
        super().__init__(max_tokens, {"half_mult": In(16), "half_shift": In(6),
                                      "ang_mult": In(16), "ang_shift": In(6)})

    def elaborate(self, platform):
        m = Module()
        L, D, N = self.lanes, self.max_dim, self.max_tokens
        G = -(-D // L)
        TAPS = self.conv_taps
        T = max(TAPS, 1)                        # V ring depth in tokens
        A = TAPS - 1 - TAPS // 2 if TAPS else 0  # look-ahead of the centred kernel
        GW, NW, CW = self.g_bits, self.num_bits, self.conv_bits

        # --- job registers -----------------------------------------------------------------
        ntok = Signal.like(self.tokens)
        dim = Signal.like(self.dim)
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(dim - 1)
        groups_m1 = Signal(range(G))
        hm, hs, am, ash = Signal(16), Signal(6), Signal(16), Signal(6)
        cm, csh = Signal(16), Signal(6)
        pass2 = Signal()
        step = Signal(range(N + T + 1))
        has_load = Signal()
        t_valid = Signal()
        m.d.comb += [has_load.eq(~pass2 | (step < ntok)), t_valid.eq(pass2 & (step >= A))]
        wslot = Signal(range(T))            # ring slot of the token being loaded (pass 2)
        oslot = Signal(range(T))            # ring slot of the token being output
        cbase = Signal(range(T))            # ring slot of token t - taps//2
        ubase = Signal(signed(len(step) + 2))   # index of token t - taps//2
        NS = A + 1                          # num ring depth in tokens
        nwslot = Signal(range(NS))
        nrslot = Signal(range(NS))

        def inc_mod(sig, n):
            return Mux(sig == n - 1, 0, sig + 1)

        # --- memories ----------------------------------------------------------------------
        m.submodules.xbuf = xbuf = memory.Memory(shape=signed(8), depth=D, init=[])
        x_w, x_r = xbuf.write_port(), xbuf.read_port()
        g_r, g_w = lane_memories(m, L, "gmem", signed(GW), G * D)
        v_r, v_w = lane_memories(m, L, "vring", signed(8), T * G)
        n_r, n_w = lane_memories(m, L, "nmem", signed(NW), NS * G)
        c_r, c_w, w_r = [], [], []
        if TAPS:
            c_r, c_w, w_r = conv_memories(m, self.cw_wr, taps=TAPS, lanes=L, max_dim=D,
                                          groups=G, conv_width=CW)

        # --- load --------------------------------------------------------------------------
        li = Signal(range(D))
        lane_of = Signal(range(max(L, 2)))
        grp_of = Signal(range(max(G, 2)))
        load_fire = Signal()
        xin = Signal(signed(8))
        m.d.comb += [load_fire.eq(self.qkv.valid & self.qkv.ready),
                     xin.eq(Mux(pass2, self.qkv.payload.q, self.qkv.payload.k)),
                     x_w.addr.eq(li), x_w.data.eq(xin), x_w.en.eq(load_fire)]
        for p in range(L):
            m.d.comb += [v_w[p].addr.eq(Mux(pass2, wslot, 0) * G + grp_of),
                         v_w[p].data.eq(self.qkv.payload.v),
                         v_w[p].en.eq(load_fire & (lane_of == p))]
        n2 = Signal(self.n2_bits)
        with m.If(load_fire):
            m.d.sync += n2.eq(Mux(li == 0, 0, n2) + self._mul8(xin, xin).as_unsigned())

        m.submodules.rsqrt = rsq = RsqrtUnit(in_width=self.n2_bits,
                                             table_bits=self.rsqrt_table_bits,
                                             frac_bits=self.rsqrt_frac_bits)
        r_reg = Signal.like(rsq.r)
        s_reg = Signal.like(rsq.s)
        m.d.comb += [rsq.en.eq(1), rsq.n2.eq(n2)]

        # --- multiply-accumulate phase: counters and issue ----------------------------------
        mg = Signal(range(max(G, 2)))
        mi = Signal(range(max(D, TAPS, 2)))
        imax = Signal(range(max(D, TAPS, 2)))
        in_mac = Signal()
        rd_issue = Signal()
        cv_issue = Signal()
        m.d.comb += [rd_issue.eq(in_mac & has_load & (mi <= dm1)),
                     cv_issue.eq(in_mac & t_valid & (mi < TAPS) if TAPS else 0)]

        # x path: issue -> x1 (x) -> x2 (x·r) -> x3 (x̂, G/v data) -> x4 (num written)
        m.d.comb += x_r.addr.eq(mi)
        x1_valid, x2_valid, x3_valid, x4_valid = (Signal(name=f"x{n}_valid")
                                                  for n in range(1, 5))
        x1_first, x2_first, x3_first = Signal(), Signal(), Signal()
        x1_last, x2_last, x3_last = Signal(), Signal(), Signal()
        x1_g, x2_g, x3_g, x4_g = (Signal.like(mg, name=f"x{n}_g") for n in range(1, 5))
        x1_i, x2_i, x3_i = (Signal.like(mi, name=f"x{n}_i") for n in range(1, 4))
        x2_prod = Signal(signed(8 + len(r_reg) + 1))
        x3_xh = Signal(signed(10))
        m.d.sync += [x1_valid.eq(rd_issue), x1_first.eq(mi == 0), x1_last.eq(mi == dm1),
                     x1_g.eq(mg), x1_i.eq(mi),
                     x2_valid.eq(x1_valid), x2_first.eq(x1_first), x2_last.eq(x1_last),
                     x2_g.eq(x1_g), x2_i.eq(x1_i), x2_prod.eq(x_r.data * r_reg),
                     x3_valid.eq(x2_valid), x3_first.eq(x2_first), x3_last.eq(x2_last),
                     x3_g.eq(x2_g), x3_i.eq(x2_i),
                     x3_xh.eq(rshift_round(x2_prod, s_reg, len(x2_prod))),
                     x4_valid.eq(x3_valid & x3_last & pass2), x4_g.eq(x3_g)]
        clearing = Signal()
        m.d.comb += clearing.eq(~pass2 & (step == 0))
        nums = [Signal(signed(NW), name=f"num{p}") for p in range(L)]
        for p in range(L):
            m.d.comb += g_r[p].addr.eq(x2_g * D + x2_i)
            prod = Signal(signed(GW + 10), name=f"mac{p}")
            m.d.comb += prod.eq(x3_xh * Mux(pass2, g_r[p].data, v_r[p].data))
            m.d.comb += [g_w[p].addr.eq(x3_g * D + x3_i),
                         g_w[p].data.eq(Mux(clearing, 0, g_r[p].data) + prod),
                         g_w[p].en.eq(x3_valid & ~pass2)]
            with m.If(x3_valid & pass2):
                m.d.sync += nums[p].eq(Mux(x3_first, 0, nums[p]) + prod)
            m.d.comb += [n_w[p].addr.eq(nwslot * G + x4_g), n_w[p].data.eq(nums[p]),
                         n_w[p].en.eq(x4_valid)]

        # convolution path: issue -> c1 (w, v data) -> c2 (sum written)
        cslot = Signal(range(T))
        cslot_now = Signal(range(T))
        cu_ok = Signal()
        if TAPS:
            u = Signal(signed(len(ubase) + 1))
            m.d.comb += [cslot_now.eq(Mux(mi == 0, cbase, cslot)),
                         u.eq(ubase + mi), cu_ok.eq((u >= 0) & (u < ntok))]
            with m.If(cv_issue):
                m.d.sync += cslot.eq(inc_mod(cslot_now, T))
            conv_mac(m, issue=cv_issue, first=mi == 0, last=mi == TAPS - 1, ok=cu_ok, group=mg,
                     tap=mi, taps=TAPS, w_r=w_r, v_r=v_r, c_w=c_w, mul=self._mul8,
                     conv_width=CW)

        # --- output pipeline: issue -> o1 (data) -> o2 (products) -> o3 (sum) -> o (clamp) --
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        in_out = Signal()
        in_next = Signal()
        o_issue = Signal()
        m.d.comb += o_issue.eq(in_out & en)
        oj = Signal(range(D))
        oj_lane = Signal(range(max(L, 2)))
        oj_grp = Signal(range(max(G, 2)))
        for p in range(L):
            m.d.comb += [
                v_r[p].addr.eq(Mux(in_out | in_next, oslot * G + oj_grp,
                                   Mux(pass2, cslot_now * G + mg, x2_g))),
                v_r[p].en.eq(en),
                n_r[p].addr.eq(nrslot * G + oj_grp), n_r[p].en.eq(en)]
            if TAPS:
                m.d.comb += [c_r[p].addr.eq(oj_grp), c_r[p].en.eq(en)]
        o1_valid, o2_valid, o3_valid = (Signal(name=f"ao{n}_valid") for n in range(1, 4))
        o1_lane = Signal.like(oj_lane)
        o2_pv = Signal(signed(8 + 17))
        o2_pn = Signal(signed(NW + 17))
        o2_pc = Signal(signed(CW + 17))
        o3_y = Signal(signed(NW + 20))
        sel = lambda ports: Array(pt.data for pt in ports)[o1_lane]
        ysum = (rshift_round(o2_pv, hs, len(o2_pv)) + rshift_round(o2_pn, ash, len(o2_pn)))
        if TAPS:
            ysum = ysum + rshift_round(o2_pc, csh, len(o2_pc))
        with m.If(en):
            m.d.sync += [o1_valid.eq(o_issue), o1_lane.eq(oj_lane),
                         o2_valid.eq(o1_valid),
                         o2_pv.eq(self._mul8(sel(v_r), Cat(hm, C(0, 1)).as_signed())),
                         o2_pn.eq(sel(n_r) * am),
                         o3_valid.eq(o2_valid), o3_y.eq(ysum),
                         self.o.valid.eq(o3_valid),
                         self.o.payload.eq(Mux(o3_y > 127, 127, Mux(o3_y < -128, -128, o3_y)))]
            if TAPS:
                m.d.sync += o2_pc.eq(sel(c_r) * cm)
        drained = Signal()
        m.d.comb += drained.eq(~(o1_valid | o2_valid | o3_valid) & en)

        # --- control -----------------------------------------------------------------------
        rc = Signal(range(RsqrtUnit.LATENCY + 1))
        dc = Signal(range(MAC_DRAIN + 1))
        last_step = Signal()
        m.d.comb += last_step.eq(pass2 & (step == ntok - 1 + A))

        def begin_step(load, macs_conv):
            """Enter the first phase of a step: ``load`` it loads a token, ``macs_conv`` it
            outputs (and so convolves) without loading."""
            m.d.sync += [li.eq(0), lane_of.eq(0), grp_of.eq(0), mg.eq(0), mi.eq(0)]
            if load is True:
                m.next = "LOAD"
                return
            with m.If(load):
                m.next = "LOAD"
            with m.Elif(macs_conv):
                m.d.sync += imax.eq(TAPS - 1 if TAPS else 0)
                m.next = "MAC"
            with m.Else():
                m.next = "NEXT"

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += self.done.eq(0)
                with m.If(self.start):
                    m.d.sync += [ntok.eq(self.tokens), dim.eq(self.dim),
                                 groups_m1.eq((self.dim + L - 1) // L - 1),
                                 hm.eq(self.half_mult), hs.eq(self.half_shift),
                                 am.eq(self.ang_mult), ash.eq(self.ang_shift),
                                 pass2.eq(0), step.eq(0), li.eq(0), lane_of.eq(0),
                                 grp_of.eq(0)]
                    accept_job(m, self, (cm, csh) if TAPS else None, "LOAD")
            with m.State("LOAD"):
                with m.If(load_elements(m, self, load_fire, li, lane_of, grp_of, L, dm1)):
                    m.d.sync += rc.eq(0)
                    m.next = "RSQRT"
            with m.State("RSQRT"):
                with m.If(count_to(m, rc, RsqrtUnit.LATENCY)):
                    m.d.sync += [r_reg.eq(rsq.r), s_reg.eq(rsq.s), mg.eq(0), mi.eq(0)]
                    m.d.sync += imax.eq(Mux(t_valid & (dm1 < TAPS - 1), TAPS - 1, dm1)
                                        if TAPS else dm1)
                    m.next = "MAC"
            with m.State("MAC"):
                sweep_groups(m, in_mac, mi, imax, mg, groups_m1, then="DRAIN", clear=dc)
            with m.State("DRAIN"):
                with m.If(count_to(m, dc, MAC_DRAIN - 1)):
                    m.d.sync += [oj.eq(0), oj_lane.eq(0), oj_grp.eq(0)]
                    with m.If(t_valid):
                        m.next = "OUT"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("OUT"):
                m.d.comb += in_out.eq(1)
                with m.If(en):
                    count_lanes(m, oj, oj_lane, oj_grp, L)
                    with m.If(oj == dm1):
                        m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += in_next.eq(1)
                with m.If(drained):
                    with m.If(pass2):
                        m.d.sync += [wslot.eq(inc_mod(wslot, T)), cbase.eq(inc_mod(cbase, T)),
                                     ubase.eq(ubase + 1)]
                        with m.If(has_load):
                            m.d.sync += nwslot.eq(inc_mod(nwslot, NS))
                        with m.If(t_valid):
                            m.d.sync += [oslot.eq(inc_mod(oslot, T)),
                                         nrslot.eq(inc_mod(nrslot, NS))]
                    with m.If(last_step):
                        m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Elif(~pass2 & (step == ntok - 1)):
                        # pass 2 begins: ring pointers for token 0
                        m.d.sync += [pass2.eq(1), step.eq(0), wslot.eq(0), nwslot.eq(0),
                                     nrslot.eq(0), oslot.eq(0),
                                     cbase.eq((T - A - TAPS // 2) % T),
                                     ubase.eq(-A - TAPS // 2)]
                        begin_step(True, None)
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                        nxt = step + 1
                        begin_step(~pass2 | (nxt < ntok), pass2 & (nxt >= A))
        return m
