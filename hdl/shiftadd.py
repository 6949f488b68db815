"""Multiplication-free linear engines: ``shift`` (power-of-two weights) and ``bcq`` (binary-coded
weights, table query and add).

Both have the ports and job semantics of :class:`~amaformer.hdl.linear.LinearEngine` (``x``,
``y``, ``start``, ``m``, ``k``, ``n``, ``busy``, ``done``, ``w_wr``, ``p_wr``), so the top and the
host drive any of the three the same way; only the weight-buffer image differs
(:mod:`amaformer.gen.layout`). Neither instantiates a multiplier: the only ``*`` left is the
requantizer's one per engine (``acc · M``), shared with ``mul``.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.utils import ceil_log2

from .common import RequantParams, check_int, drive_write_port, linear_engine_ports
from .linear import LinearEngine, PipelinedRequantizer

__all__ = ["SHIFT_CODE_BITS", "ALPHA_TERMS", "ALPHA_EXP_MAX", "ALPHA_CODE_BITS",
           "ShiftEngine", "BcqEngine", "make_shiftadd_engine"]

#: ``shift`` weight code: bit 3 = negative, bits [0:3] = 0 for zero, ``c`` for ``±2^(c-1)``.
SHIFT_CODE_BITS = 4
#: ``bcq`` α: at most this many signed powers of two ...
ALPHA_TERMS = 3
#: ... with exponents 0 .. ALPHA_EXP_MAX. One term is 5 bits: [0:3] exponent, 3 negative,
#: 4 enable; term ``t`` sits at bits ``[5t, 5t+5)`` of a 16-bit α code.
ALPHA_EXP_MAX = 7
ALPHA_CODE_BITS = 16


class ShiftEngine(LinearEngine):
    """Streaming linear layer with power-of-two weights, ``shift`` encoding.

    Same ports, job semantics, dataflow and cycle count as
    :class:`~amaformer.hdl.linear.LinearEngine` (:func:`amaformer.gen.cost.linear_cycles`); each
    lane's multiplier is replaced by a barrel shifter and a conditional negation::

        acc[m, n] = Σ_k sign[k, n] · (X[m, k] << s[k, n]) + bias[n]
        Y[m, n]   = clamp((acc · mult[n] + R) >> shift[n])          (round half up)

    Weights are 4-bit codes (:data:`SHIFT_CODE_BITS`), ``lanes`` per weight-buffer word.

    Parameters
    ----------
    levels : int
        Weight magnitudes ``2^0 .. 2^(levels-1)``, 1 to 7. Products are ``act_bits + levels``
        bits signed; the accumulator ``act_bits + levels + ceil(log2 max_k)``.
    lanes, max_k, max_n, max_m, weight_depth, act_bits
        As for :class:`~amaformer.hdl.linear.LinearEngine`.
    """

    def __init__(self, *, lanes=8, max_k=512, max_n=512, max_m=4096, weight_depth=1024,
                 act_bits=8, levels=7):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 7:
            raise ValueError(f"levels must be an integer in [1, 7], not {levels!r}")
        self.levels = levels
        super().__init__(lanes=lanes, max_k=max_k, max_n=max_n, max_m=max_m,
                         weight_depth=weight_depth, act_bits=act_bits,
                         weight_bits=SHIFT_CODE_BITS, hw_lanes=0)

    def product_width(self):
        return self.act_bits + self.levels

    def lane_product(self, x, w, j):
        code = w.as_unsigned()
        mag, neg = code[:3], code[3]
        amount = (mag - 1)[:max(1, ceil_log2(self.levels))]
        shifted = Mux(mag == 0, 0, x << amount)
        return Mux(neg, -shifted, shifted)


class BcqEngine(wiring.Component):
    """Streaming linear layer with binary-coded weights, ``bcq`` encoding (ShiftAddLLM).

    Weights are ``W[k, n] = Σ_i α[i, n] · B[i, k, n]`` with ``B`` in {-1, +1} and each α a sum of
    at most :data:`ALPHA_TERMS` signed powers of two (one α per column, plane and chunk of
    ``8·slots`` inputs; repeat it over chunks for a per-row α)::

        acc[m, n] = Σ_chunks Σ_i α[i, c, n] · Σ_{k in c} B[i, k, n] · X[m, k] + bias[n]
        Y[m, n]   = clamp((acc · mult[n] + R) >> shift[n])                   (round half up)

    Dataflow, per row of X and per chunk of ``8·slots`` inputs:

    * **Build** (``8·slots + 255`` cycles): the chunk's activations stream in, input
      ``t·slots + s`` of the chunk being bit ``t`` of slot ``s``'s 8-input group (so every slot
      receives its bit-``t`` input in the same phase). After each phase ``t`` every slot extends
      its table of subset sums ``S_s[c] = Σ_{t: bit t of c} x_{s,t}`` with ``2^t`` new entries
      ``S_s[2^t + j] = S_s[j] + x_{s,t}`` (one block-RAM read and write per cycle, all slots in
      lockstep); inputs past K count as 0. One table per slot, 256 entries of ``act_bits + 3``
      bits: one iCE40 EBR each, written once and read by every output column.
    * **Query** (``N·q`` cycles): one weight word per (column, plane): a byte of plane bits per
      slot and the α code. Each byte addresses its slot's table; the sum over slots gives
      ``Σ_k B·x = 2·Σ_s S_s[byte_s] − Σ_k x``, which is shifted by α's exponents and added
      into the column's accumulator (an accumulator memory carries it across chunks). After the
      last chunk the column goes through the requantizer to ``y``.

    Parameters
    ----------
    slots : int
        Tables queried in parallel: ``8·slots/planes`` MAC-equivalents per query cycle.
    planes : int
        Bit planes q, 1 to 4 (a layer quantized with fewer planes pads with α = 0).
    max_k, max_n, max_m : int
        Largest job dimensions.
    weight_depth : int
        Weight buffer depth in words; a job needs ``ceil(K/(8·slots))·N·planes`` words.
    act_bits : int
        Signed width of activations (in and out).

    Members
    -------
    x, y, start, m, k, n, busy, done, p_wr
        As for :class:`~amaformer.hdl.linear.LinearEngine`.
    w_wr : ``In(MemWriteSignature(weight_depth, 8·slots + 16, 8))``
        Weight buffer write port. Word ``(c·N + n)·planes + i`` holds, in byte ``s``, the plane-i
        bits of column n for inputs ``c·8·slots + t·slots + s`` (bit t), and the α code in bits
        ``[8·slots, 8·slots + 16)`` (:func:`amaformer.gen.layout.pack_bcq_weights`).

    Latency: with X always valid and Y always ready, a job takes
    :func:`amaformer.gen.cost.bcq_cycles` cycles from ``start`` to ``done``.
    """

    def __init__(self, *, slots=8, planes=2, max_k=512, max_n=512, max_m=4096,
                 weight_depth=1024, act_bits=8):
        for name, value in (("slots", slots), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits)):
            check_int(name, value, 1)
        check_int("planes", planes, 1, 4)
        self.slots = self.lanes = slots
        self.planes = planes
        self.max_k = max_k
        self.max_n = max_n
        self.max_m = max_m
        self.weight_depth = weight_depth
        self.act_bits = act_bits
        self.chunk = 8 * slots
        self.entry_width = act_bits + 3
        self.acc_width = (act_bits + ceil_log2(max_k) + ALPHA_EXP_MAX
                          + ceil_log2(ALPHA_TERMS * planes) + 1)
        self.word_width = 8 * slots + ALPHA_CODE_BITS
        super().__init__(linear_engine_ports(
            act_bits=act_bits, max_m=max_m, max_k=max_k, max_n=max_n, weight_depth=weight_depth,
            weight_word=self.word_width, weight_granularity=8))

    def elaborate(self, platform):
        m = Module()
        S, Q = self.slots, self.planes
        ew = self.entry_width

        # --- memories ------------------------------------------------------------------------
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(self.word_width), depth=self.weight_depth, init=[])
        m.submodules.pmem = pmem = memory.Memory(shape=RequantParams, depth=self.max_n, init=[])
        m.submodules.amem = amem = memory.Memory(
            shape=signed(self.acc_width), depth=self.max_n, init=[])
        tables = []
        for s in range(S):
            tmem = memory.Memory(shape=signed(ew), depth=256, init=[])
            m.submodules[f"table{s}"] = tmem
            tables.append((tmem.read_port(), tmem.write_port()))

        w_w = wmem.write_port(granularity=8)
        drive_write_port(m, w_w, self.w_wr)
        p_w = pmem.write_port()
        drive_write_port(m, p_w, self.p_wr)
        w_r = wmem.read_port()
        p_r = pmem.read_port()
        a_r = amem.read_port()
        a_w = amem.write_port()

        # --- job registers and control state -------------------------------------------------
        IDLE, RECV, WRITE, QUERY, FIN = range(5)
        state = Signal(range(5))
        job_m = Signal.like(self.m)
        job_k = Signal.like(self.k)
        job_n = Signal.like(self.n)
        row = Signal.like(self.m)
        kcur = Signal(range(self.max_k + self.chunk + 1))  # next input of the row to receive
        first_chunk = Signal()
        t = Signal(3)                      # build phase (bit of the table index)
        s = Signal(range(S))               # slot receiving in this phase
        j = Signal(8)                      # table entry being extended
        xr = [Signal(signed(self.act_bits), name=f"xr{i}") for i in range(S)]
        xsum = Signal(signed(self.act_bits + ceil_log2(self.chunk) + 1))
        xsum_q = Signal.like(xsum)
        wa = Signal(range(self.weight_depth + 1))
        qn = Signal.like(self.n)
        qi = Signal(range(Q))

        # Pipeline valid flags (stage 1 .. 5), and the advance condition: only the output stage
        # can be held (by the requantizer / y back-pressure), which holds every stage behind it.
        v1, v2, v3, v4, v5 = (Signal(name=f"v{i}") for i in range(1, 6))
        m.submodules.rq = rq = PipelinedRequantizer(self.acc_width, self.act_bits)
        wiring.connect(m, rq.o, wiring.flipped(self.y))
        adv = Signal()
        m.d.comb += adv.eq(~v5 | rq.i.ready)

        # --- build: receive ------------------------------------------------------------------
        in_range = kcur < job_k
        xin = Mux(in_range, self.x.payload, 0)
        step = Signal()
        m.d.comb += [
            self.x.ready.eq((state == RECV) & in_range),
            step.eq((state == RECV) & (~in_range | self.x.valid)),
        ]
        with m.If(step):
            m.d.sync += [xr[i].eq(xr[i + 1]) for i in range(S - 1)]
            m.d.sync += [xr[S - 1].eq(xin), kcur.eq(kcur + 1)]
            m.d.sync += xsum.eq(Mux((t == 0) & (s == 0), xin, xsum + xin))
            with m.If(s == S - 1):
                m.d.sync += [s.eq(0), j.eq(0), state.eq(WRITE)]
            with m.Else():
                m.d.sync += s.eq(s + 1)

        # --- build: extend the tables (read j, write 2^t + j one cycle later) ---------------
        wv = Signal()
        waddr = Signal(8)
        go = (state == WRITE) & ~v1 & ~v2       # the last queries have read the tables
        m.d.sync += [wv.eq(go), waddr.eq(j | (C(1, 8) << t))]
        last_j = j == (C(1, 9) << t) - 1
        with m.If(go):
            with m.If(last_j):
                m.d.sync += j.eq(0)
                with m.If(t == 7):
                    m.d.sync += [t.eq(0), qn.eq(0), qi.eq(0), xsum_q.eq(xsum),
                                 state.eq(QUERY)]
                with m.Else():
                    m.d.sync += [t.eq(t + 1), state.eq(RECV)]
            with m.Else():
                m.d.sync += j.eq(j + 1)

        # --- query: stage 0 issues one weight word per (column, plane) -----------------------
        issue = (state == QUERY) & adv
        last_col = qn == job_n - 1
        last_plane = qi == Q - 1
        last_chunk = kcur >= job_k
        m.d.comb += [w_r.addr.eq(wa), w_r.en.eq(adv)]
        n1 = Signal.like(qn)
        f1 = Signal(4)    # first plane, last plane, first chunk, last chunk
        with m.If(adv):
            m.d.sync += [v1.eq(issue), n1.eq(qn),
                         f1.eq(Cat(qi == 0, last_plane, first_chunk, last_chunk))]
        with m.If(issue):
            m.d.sync += wa.eq(wa + 1)
            with m.If(last_plane):
                m.d.sync += qi.eq(0)
                with m.If(last_col):
                    m.d.sync += [first_chunk.eq(0), state.eq(RECV)]
                    with m.If(last_chunk):
                        m.d.sync += [row.eq(row + 1), kcur.eq(0), wa.eq(0), first_chunk.eq(1)]
                        with m.If(row == job_m - 1):
                            m.d.sync += state.eq(FIN)
                with m.Else():
                    m.d.sync += qn.eq(qn + 1)
            with m.Else():
                m.d.sync += qi.eq(qi + 1)

        # --- stage 1: weight word arrives; bytes address the tables --------------------------
        n2, f2 = Signal.like(n1), Signal.like(f1)
        alpha2 = Signal(ALPHA_CODE_BITS)
        with m.If(adv):
            m.d.sync += [v2.eq(v1), n2.eq(n1), f2.eq(f1),
                         alpha2.eq(w_r.data[8 * S:8 * S + ALPHA_CODE_BITS])]
        entries = []
        for i, (t_r, t_w) in enumerate(tables):
            m.d.comb += [
                t_r.addr.eq(Mux(go, j, w_r.data[8 * i:8 * i + 8])),
                t_r.en.eq(go | adv),
                t_w.addr.eq(waddr),
                t_w.data.eq(t_r.data + xr[i]),
                t_w.en.eq(wv),
            ]
            entries.append(t_r.data)

        # --- stage 2: table entries arrive; sum over slots -----------------------------------
        n3, f3 = Signal.like(n1), Signal.like(f1)
        alpha3 = Signal(ALPHA_CODE_BITS)
        sum3 = Signal(signed(ew + ceil_log2(S)))
        total = entries[0]
        for e in entries[1:]:
            total = total + e
        with m.If(adv):
            m.d.sync += [v3.eq(v2), n3.eq(n2), f3.eq(f2), alpha3.eq(alpha2), sum3.eq(total)]

        # --- stage 3: Σ B·x = 2·Σ S − Σ x; shift by α's exponents and add --------------------
        n4, f4 = Signal.like(n1), Signal.like(f1)
        p = Signal(signed(len(sum3) + 2))
        m.d.comb += p.eq((sum3 << 1) - xsum_q)
        contrib = 0
        for term in range(ALPHA_TERMS):
            code = alpha3[5 * term:5 * term + 5]
            sh = p << code[:3]
            contrib = contrib + Mux(code[4], Mux(code[3], -sh, sh), 0)
        contrib4 = Signal(signed(self.acc_width))
        with m.If(adv):
            m.d.sync += [v4.eq(v3), n4.eq(n3), f4.eq(f3), contrib4.eq(contrib)]
        m.d.comb += [a_r.addr.eq(n3), a_r.en.eq(adv)]

        # --- stage 4: accumulate over planes and chunks --------------------------------------
        racc = Signal(signed(self.acc_width))
        base = Mux(f4[0], Mux(f4[2], 0, a_r.data), racc)
        tot = Signal(signed(self.acc_width))
        m.d.comb += tot.eq(base + contrib4)
        acc5 = Signal(signed(self.acc_width))
        with m.If(adv):
            m.d.sync += [v5.eq(v4 & f4[1] & f4[3]), acc5.eq(tot)]
            with m.If(v4):
                m.d.sync += racc.eq(tot)
        m.d.comb += [
            a_w.addr.eq(n4), a_w.data.eq(tot), a_w.en.eq(adv & v4 & f4[1] & ~f4[3]),
            p_r.addr.eq(n4), p_r.en.eq(adv),
        ]

        # --- stage 5: requantizer -> y -------------------------------------------------------
        m.d.comb += [
            rq.i.valid.eq(v5),
            rq.i.payload.acc.eq(acc5),
            rq.i.payload.params.eq(p_r.data),
        ]

        # --- job control ---------------------------------------------------------------------
        pipe_empty = ~v1 & ~v2 & ~v3 & ~v4 & ~v5 & ~rq.busy & ~self.y.valid
        with m.If(~self.busy):
            with m.If(self.start):
                empty = (self.m == 0) | (self.k == 0) | (self.n == 0)
                m.d.sync += [
                    job_m.eq(self.m), job_k.eq(self.k), job_n.eq(self.n),
                    row.eq(0), kcur.eq(0), wa.eq(0), t.eq(0), s.eq(0), first_chunk.eq(1),
                    state.eq(Mux(empty, FIN, RECV)), self.busy.eq(1),
                ]
        with m.Elif((state == FIN) & pipe_empty):
            m.d.sync += [self.busy.eq(0), self.done.eq(1), state.eq(IDLE)]
        with m.If(self.done):
            m.d.sync += self.done.eq(0)
        return m


def make_shiftadd_engine(linear_cfg):
    """Create the ``shift`` or ``bcq`` engine a ``LinearConfig`` describes (read duck-typed:
    ``mode``, ``lanes``, ``max_k``, ``max_n``, ``max_m``, ``weight_depth``, ``act_bits``,
    ``shift_levels``, ``bcq_bits``).

    Raises
    ------
    ValueError
        ``mode`` is neither ``"shift"`` nor ``"bcq"``.
    """
    c = linear_cfg
    common = dict(max_k=c.max_k, max_n=c.max_n, max_m=c.max_m, weight_depth=c.weight_depth,
                  act_bits=c.act_bits)
    if c.mode == "shift":
        return ShiftEngine(lanes=c.lanes, levels=c.shift_levels, **common)
    if c.mode == "bcq":
        return BcqEngine(slots=c.lanes, planes=c.bcq_bits, **common)
    raise ValueError(f"mode must be one of 'shift', 'bcq', not {c.mode!r}")
