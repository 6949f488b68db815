"""Linear engine: ``Y = requant(X·W + b)`` with int8 operands, streaming in and out.

The engine is output-stationary over groups of ``lanes`` output columns. For each row of X it
walks the column groups; in each group every lane accumulates one output column over K.

* Group 0 of a row consumes the activation stream directly, one element per cycle, and writes
  it into the row buffer; later groups of the row re-read the row buffer. So no cycle is spent
  loading a row before compute, and the next row streams in while... it is needed (group 0).
* Weights sit in a buffer of ``weight_depth`` words of ``lanes`` weights: word ``g·K + k`` holds
  ``W[k, g·lanes + j]`` in byte lane ``j``. Per-column bias and requantization parameters sit in
  a parameter memory addressed by column.
* At the end of a group the lane accumulators are handed to a holding register and drained,
  one column per cycle, through the requantizer to the output stream, while the lanes start the
  next group. The output stream honours back-pressure; the lanes stall only when the holding
  register is still busy at the end of the next group.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.utils import ceil_log2

from .common import (RequantParams, Requantizer, check_int, drive_write_port,
                     linear_engine_ports, params_memory)

__all__ = ["LinearEngine", "PipelinedRequantizer", "lut_multiply", "drain_columns",
           "linear_job_control"]


def lut_multiply(a, b):
    """Signed ``a × b`` as a sum of shifted partial products, so synthesis builds it from logic
    (adders) instead of a hardware multiplier. Same value as ``a * b``.

    The partial products (the top one negated, as ``b`` is two's complement) are summed as a
    balanced tree, ``ceil(log2(len(b)))`` adders deep rather than a chain of ``len(b) - 1``:
    on iCE40 this is what lets logic lanes keep up with the DSP lanes' clock."""
    terms = [Mux(b[i], a.as_signed() << i, 0) for i in range(len(b) - 1)]
    terms.append(Mux(b[-1], -(a.as_signed() << (len(b) - 1)), 0))
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0][:len(a) + len(b)].as_signed()


def lut_multiply_partials(a, b):
    """Two half-sums of :func:`lut_multiply`'s partial products (bits ``0..h-1`` of ``b`` and
    the rest, ``h = len(b) // 2``): ``sum == a × b``. The engine registers them and adds them
    one stage later, so that a logic multiplier spans two pipeline stages."""
    h = len(b) // 2
    lo_terms = [Mux(b[i], a.as_signed() << i, 0) for i in range(h)] or [C(0, 1)]
    hi_terms = [Mux(b[i], a.as_signed() << i, 0) for i in range(h, len(b) - 1)]
    hi_terms.append(Mux(b[-1], -(a.as_signed() << (len(b) - 1)), 0))
    sums = []
    for terms in (lo_terms, hi_terms):
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                     for i in range(0, len(terms), 2)]
        sums.append(terms[0])
    return sums


def _all_sign(bits, sign):
    """1 when every bit of ``bits`` equals ``sign`` (also when ``bits`` is empty)."""
    if len(bits) == 0:
        return C(1, 1)
    return (bits ^ sign.replicate(len(bits))) == 0


def _window_shift_stage(value, sign, amount, log2_step, out_width):
    """One stage of a right shift that keeps only a low window of the result.

    ``value`` stands for a two's-complement number whose bits above ``len(value)`` are all
    ``sign``. Returns ``(window, fits)``: ``window`` is bits ``[0, out_width)`` of
    ``value >> (amount · 2^log2_step)`` (``amount`` is one bit, the shift arithmetic) and ``fits``
    is 1 when every dropped bit above the window is a copy of ``sign``.
    """
    step = 1 << log2_step
    ext = Cat(value, sign.replicate(max(0, step + out_width - len(value))))
    shifted, kept = ext[step:step + out_width], ext[:out_width]
    fits = Mux(amount, _all_sign(value[step + out_width:], sign),
               _all_sign(value[out_width:], sign))
    return Mux(amount, shifted, kept), fits


def _coarse_fits(value, sign, shift, base):
    """``fits`` of the stages ``k = 5, 4, 3`` of :func:`_window_shift_stage` (shift bits
    ``shift[3:6]``, windows of ``base + 2^k`` bits), computed on the unshifted ``value``.

    Stage ``k`` with its bit clear drops ``value[o + base + 2^k : o + base + 2^(k+1)]``, where
    ``o`` is the shift of the stages above it; these runs are whole 8-bit segments from bit
    ``base``, so one sign check per segment, shared by every stage, and a small select by the
    higher shift bits replace a check per stage on the shifted values (5 LUT4s fewer on iCE40
    with a 33-bit ``s``). Bits at ``base + 64`` and above are always dropped.
    """
    n_seg = max(8, -(-(len(value) - base) // 8))
    seg = [_all_sign(value[base + 8 * i:base + 8 * i + 8], sign) for i in range(n_seg)]
    fits = Cat(*seg[8:]).all() if n_seg > 8 else C(1, 1)
    for k in (5, 4, 3):
        higher = shift[k + 1:6]
        checks = []
        for o in range(1 << len(higher)):
            first = (o << (k + 1)) // 8 + (1 << (k - 3))
            run = seg[first:first + (1 << (k - 3))]
            checks.append(Cat(*run).all() if run else C(1, 1))
        check = checks[0] if len(checks) == 1 else Array(checks)[higher]
        fits = fits & (shift[k] | check)
    return fits


class PipelinedRequantizer(Requantizer):
    """:class:`~amaformer.hdl.common.Requantizer` in six pipeline stages instead of three.

    Same ports, arithmetic, rounding (half up), saturation and stall behaviour; only the
    latency differs: ``LATENCY = 6`` cycles from an ``i`` transfer to ``o.valid``. With
    ``B = out_bits``, ``s = acc + bias`` (``max(acc_width, 32) + 1`` bits, so any 32-bit bias is
    exact), ``p = s·mult`` and ``t = 2p >> shift`` (arithmetic), the result is
    ``y = (t + 1) >> 1``, saturated: ``((2p >> S) + 1) >> 1 = (p + 2^(S-1)) >> S`` for ``S >= 1`` and ``p`` for
    ``S = 0``, so round half up needs no wide rounding adder. ``t`` itself is never built: only
    its low ``B + 1`` bits ``u`` and whether all its higher bits are copies of its sign
    (``fits``). ``y`` is in range (``t`` in ``[-2^B - 1, 2^B - 2]``) exactly when ``fits`` holds
    and ``u >= 2^B - 1`` is true for a negative ``t``, false for a non-negative one; it is then
    ``(u + 1) >> 1`` taken to ``B`` bits, else the rail of ``t``'s sign.

    1. ``s = acc + bias``
    2. ``lo = s[0:16]·mult`` (one ``SB_MAC16`` on iCE40, its output register included)
    3. ``q = s[16:32]·mult + lo[16:32]`` (the second ``SB_MAC16``, with its post-adder; 32 bits
       unsigned, no overflow); ``s[32:]·mult``, the rows above the DSPs, in logic
    4. ``p[32:] = q[16:32] + s[32:]·mult``; coarse shift of ``2p`` (``max(acc_width, 32) + 18``
       bits) by ``shift & 56``, keeping ``B + 8`` bits, and whether the dropped bits are sign
       copies (:func:`_coarse_fits`)
    5. fine shift by ``shift & 7`` to ``u`` (``B + 1`` bits); range flag; ``(u + 1) >> 1``
    6. ``y`` or the rail

    All data registers are reset-less (so that Yosys packs the multipliers' operand, output and
    post-adder registers into the ``SB_MAC16``); only the valid bits are reset. Yosys
    ``synth_ice40 -dsp``, ``acc_width`` 24 (33): two ``SB_MAC16``, 224 (247) LUT4s and 145 (163)
    flip-flops, against 468 (414, and three ``SB_MAC16``) LUT4s and 258 (262) flip-flops for a
    full 51-bit shifter and 51-bit compares.
    """

    LATENCY = 6

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        ob = self.out_bits
        sum_w = max(self.acc_width, 32) + 1
        top_w = sum_w - 32                   # rows of s above the two 16-bit DSP operands
        win = ob + 1                         # bits of t kept: u
        valid = [Signal(name=f"v{i}") for i in range(1, 6)]

        def reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        s1, mult1, shift1 = reg(signed(sum_w), "s1"), reg(16, "mult1"), reg(6, "shift1")
        lo2, mid2, top2 = reg(32, "lo2"), reg(16, "mid2"), reg(signed(top_w), "top2")
        mult2, shift2 = reg(16, "mult2"), reg(6, "shift2")
        q3, plo3, shift3 = reg(32, "q3"), reg(16, "plo3"), reg(6, "shift3")
        # s[32:]·mult = pos - neg: the sign row ``neg`` (weight -2^(top_w-1)) and the others
        pos3, neg3 = reg(16 + top_w - 1, "pos3"), reg(16, "neg3")
        v4, shift4 = reg(win + 7, "v4"), reg(3, "shift4")
        sign4, fits4 = reg(1, "sign4"), reg(1, "fits4")
        r5, sat5, sign5 = reg(ob, "r5"), reg(1, "sat5"), reg(1, "sign5")
        y_max, y_min = (1 << (ob - 1)) - 1, -(1 << (ob - 1))

        # stage 4: the top rows, then the coarse shift
        p_top = Signal(signed(top_w + 16))
        m.d.comb += p_top.eq(q3[16:] + pos3 - (neg3 << (top_w - 1)))
        p2 = Cat(C(0, 1), plo3, q3[:16], p_top)            # 2p, sum_w + 17 bits
        sign = p_top[-1]
        v = p2
        for k in (5, 4, 3):
            v, _ = _window_shift_stage(v, sign, shift3[k], k, win + (1 << k) - 1)
        fits = _coarse_fits(p2, sign, shift3, win - 1)
        # stage 5: the fine shift, the range check and the rounding
        u, fits5 = v4, fits4
        for k in (2, 1, 0):
            u, ok = _window_shift_stage(u, sign4, shift4[k], k, win + (1 << k) - 1)
            fits5 = fits5 & ok
        ge = u[ob] | u[:ob].all()                          # u >= 2^B - 1

        with m.If(en):
            par = self.i.payload.params
            m.d.sync += [valid[0].eq(self.i.valid)]
            m.d.sync += [valid[i].eq(valid[i - 1]) for i in range(1, 5)]
            m.d.sync += [
                s1.eq(self.i.payload.acc + par.bias), mult1.eq(par.mult), shift1.eq(par.shift),
                lo2.eq(s1[:16] * mult1), mid2.eq(s1[16:32]), top2.eq(s1[32:]),
                mult2.eq(mult1), shift2.eq(shift1),
                q3.eq(mid2 * mult2 + lo2[16:]), plo3.eq(lo2[:16]), shift3.eq(shift2),
                pos3.eq(sum(Mux(top2[j], mult2 << j, 0) for j in range(top_w - 1))),
                neg3.eq(Mux(top2[-1], mult2, 0)),
                v4.eq(v), sign4.eq(sign), fits4.eq(fits), shift4.eq(shift3[:3]),
                r5.eq(u[1:] + u[0]), sat5.eq(~fits5 | (ge ^ sign4)), sign5.eq(sign4),
                self.o.valid.eq(valid[4]),
                self.o.payload.eq(Mux(sat5, Mux(sign5, y_min, y_max), r5)),
            ]
        m.d.comb += self.busy.eq(Cat(*valid).any())
        return m


def drain_columns(m, engine, *, pmem, column, hold_full, hold_col, hold_cnt, hold_resv,
                  take=None):
    """Drain a linear engine's holding register to ``engine.y``, one column per cycle.

    A fetch stage takes ``column(di)`` (the accumulator of output column ``hold_col + di``,
    ``engine.acc_width`` bits signed) while it reads that column's ``RequantParams`` from
    ``pmem`` (a synchronous read port, so the parameters may live in block RAM), then a
    :class:`PipelinedRequantizer` (``m.submodules.rq``) feeds ``engine.y`` with back-pressure.
    A column leaves the holding register when it is full and the fetch stage advances; when
    the last of ``hold_cnt`` columns leaves, ``hold_full`` and ``hold_resv`` fall. ``take``, a
    ``Signal`` of the caller if given, is driven high in those cycles (a shift chain's enable).

    Latency: ``1 + PipelinedRequantizer.LATENCY`` (7) cycles from ``take`` to ``y.valid``, one
    column per cycle while ``y`` is ready.

    Returns
    -------
    tuple of Value
        The drain's valid flags (fetch stage, requantizer, ``y``): all low when it holds no
        column.
    """
    m.submodules.rq = rq = PipelinedRequantizer(engine.acc_width, engine.act_bits)
    wiring.connect(m, rq.o, wiring.flipped(engine.y))
    di = Signal(range(engine.lanes))
    f_valid = Signal()
    f_acc = Signal(signed(engine.acc_width))
    f_adv = ~f_valid | rq.i.ready
    if take is None:
        take = hold_full & f_adv
    else:
        m.d.comb += take.eq(hold_full & f_adv)
    p_r = pmem.read_port()
    m.d.comb += [
        p_r.addr.eq(hold_col + di),
        p_r.en.eq(f_adv),
        rq.i.valid.eq(f_valid),
        rq.i.payload.acc.eq(f_acc),
        rq.i.payload.params.eq(p_r.data),
    ]
    with m.If(f_adv):
        m.d.sync += [f_valid.eq(hold_full), f_acc.eq(column(di))]
    with m.If(take):
        with m.If(di == hold_cnt - 1):
            m.d.sync += [di.eq(0), hold_full.eq(0), hold_resv.eq(0)]
        with m.Else():
            m.d.sync += di.eq(di + 1)
    return f_valid, rq.busy, engine.y.valid


def linear_job_control(m, engine, *, issuing, in_flight, sample, flags):
    """The ``start``/``busy``/``done`` handshake of a linear engine (no latency of its own).

    While ``busy`` is low, ``start`` high samples the job at the next edge: the statements
    ``sample`` (job registers, counters), ``issuing`` (rows remain to be issued) set unless the
    job is empty (``m``, ``k`` or ``n`` is 0), ``busy`` set, and the statements
    ``flags(empty)`` (position flags). Once busy, in the first cycle ``issuing`` and the flags
    ``in_flight`` (pipeline stages, holding register, drain) are all low, ``busy`` falls and
    ``done`` is high for one cycle; an empty job so ends two cycles after ``start``.
    """
    idle = ~issuing
    for flag in in_flight:
        idle = idle & ~flag
    with m.If(~engine.busy):
        with m.If(engine.start):
            empty = (engine.m == 0) | (engine.k == 0) | (engine.n == 0)
            m.d.sync += [*sample, issuing.eq(~empty), engine.busy.eq(1), *flags(empty)]
    with m.Elif(idle):
        m.d.sync += [engine.busy.eq(0), engine.done.eq(1)]
    with m.If(engine.done):
        m.d.sync += engine.done.eq(0)


class LinearEngine(wiring.Component):
    """Streaming int8 linear layer, ``mul`` weight encoding.

    Computes, for a job of ``M×K`` activations X and ``K×N`` weights W already in the weight
    buffer::

        acc[m, n] = Σ_k X[m, k] · W[k, n] + bias[n]                   (acc_width bits, no wrap)
        Y[m, n]   = clamp((acc[m, n] · mult[n] + R) >> shift[n])     (act_bits, round half up)

    Parameters
    ----------
    lanes : int
        Parallel multiply-accumulate units (output columns per group).
    max_k, max_n, max_m : int
        Largest job dimensions.
    weight_depth : int
        Weight buffer depth, in words of ``lanes`` weights.
    act_bits, weight_bits : int
        Signed widths of activations (in and out) and weights.
    hw_lanes : int or None
        Lanes whose multiplier is a ``$mul`` cell (DSP blocks); the rest use :func:`lut_multiply`.

    Members
    -------
    x : ``In(stream.Signature(signed(act_bits)))``
        Activations, row-major, ``M·K`` transfers per job.
    y : ``Out(stream.Signature(signed(act_bits)))``
        Outputs, row-major, ``M·N`` transfers per job.
    start : ``In(1)``
        Starts a job with dimensions ``m``, ``k``, ``n`` when asserted while ``busy`` is low.
        A dimension of 0 makes an empty job (``done`` on the next cycle).
    m, k, n : ``In(unsigned(...))``
        Job dimensions, sampled with ``start``. ``k·ceil(n/lanes) <= weight_depth`` is the
        caller's responsibility (:meth:`LinearConfig.check_job` checks it on the host).
    busy : ``Out(1)``
        High from the cycle after ``start`` until the last output has been transferred.
    done : ``Out(1)``
        One-cycle pulse when the job ends.
    w_wr : ``In(MemWriteSignature(...))``
        Weight buffer write port, ``lanes`` byte enables.
    p_wr : ``In(MemWriteSignature(...))``
        Parameter memory write port, one :data:`RequantParams` word (as bits) per column.

    Latency: with X always valid and Y always ready, a job takes the number of cycles given by
    :func:`amaformer.gen.cost.linear_cycles` from ``start`` to ``done``: ``M·ceil(N/lanes)·K``
    issue cycles plus stalls when ``K`` is shorter than the drain of a group, plus a tail of
    ``LINEAR_TAIL + lanes`` cycles (:mod:`amaformer.gen.cost`).

    Pipeline (for fmax on small FPGAs): issue; operands from memory; partial products
    (:meth:`lane_partials`); product; accumulate; then, per column, fetch and the six-stage
    :class:`PipelinedRequantizer`. The issue decision reads only registered flags.
    """

    #: cycles from issuing the last k of a group to its first value entering the requantizer
    HANDOFF_LATENCY = 4

    def __init__(self, *, lanes=8, max_k=512, max_n=1536, max_m=4096, weight_depth=1024,
                 act_bits=8, weight_bits=8, hw_lanes=None):
        for name, value in (("lanes", lanes), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits), ("weight_bits", weight_bits)):
            check_int(name, value, 1)
        if weight_depth < max_k:
            raise ValueError(f"weight_depth must be at least max_k ({max_k}), "
                             f"not {weight_depth!r}")
        if hw_lanes is None:
            hw_lanes = lanes
        check_int("hw_lanes", hw_lanes, 0, lanes)
        self.lanes = lanes
        self.max_k = max_k
        self.max_n = max_n
        self.max_m = max_m
        self.weight_depth = weight_depth
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.hw_lanes = hw_lanes
        self.acc_width = self.product_width() + ceil_log2(max_k)
        self.params_layout = RequantParams
        super().__init__(linear_engine_ports(
            act_bits=act_bits, max_m=max_m, max_k=max_k, max_n=max_n, weight_depth=weight_depth,
            weight_word=lanes * weight_bits, weight_granularity=weight_bits))

    def product_width(self):
        """Signed width of one lane's product (subclasses with other weight codes override)."""
        return self.act_bits + self.weight_bits

    def lane_product(self, x, w, j):
        """Product of activation ``x`` and weight code ``w`` in lane ``j`` (a hook for
        subclasses with other weight encodings, e.g. ``shiftadd.ShiftEngine``)."""
        return x * w if j < self.hw_lanes else lut_multiply(x, w)

    def lane_partials(self, x, w, j):
        """Terms whose sum is lane ``j``'s product: registered in one pipeline stage, added in
        the next. Logic-multiplier lanes give two half-sums (:func:`lut_multiply_partials`);
        DSP lanes, and subclasses that override :meth:`lane_product`, give one term."""
        if j >= self.hw_lanes and type(self).lane_product is LinearEngine.lane_product:
            return lut_multiply_partials(x, w)
        return [self.lane_product(x, w, j)]

    def elaborate(self, platform):
        m = Module()
        L = self.lanes

        # --- memories ------------------------------------------------------------------------
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(L * self.weight_bits), depth=self.weight_depth, init=[])
        m.submodules.xbuf = xbuf = memory.Memory(
            shape=signed(self.act_bits), depth=self.max_k, init=[])

        w_w = wmem.write_port(granularity=self.weight_bits)
        drive_write_port(m, w_w, self.w_wr)
        pmem = params_memory(m, self)
        w_r = wmem.read_port()
        x_w = xbuf.write_port()
        x_r = xbuf.read_port()

        # --- job registers -------------------------------------------------------------------
        job_m = Signal.like(self.m)
        job_k = Signal.like(self.k)
        job_n = Signal.like(self.n)
        row = Signal.like(self.m)              # current row
        kk = Signal(range(self.max_k + 1))     # current k within the group
        col = Signal(range(self.max_n + L))    # first column of the current group
        wbase = Signal(range(self.weight_depth + self.max_k))  # word address of (group, k=0)
        issuing = Signal()                     # rows remain to be issued

        # Position flags, kept as registers so that the issue decision does not wait on adders
        # and comparators (the engine's critical path otherwise). Down-counters of what is
        # left make each next flag a comparison with a constant.
        k_left = Signal.like(self.k)           # k values left in the group, this one included
        n_left = Signal.like(self.n)           # columns left in the row, this group included
        m_left = Signal.like(self.m)           # rows left, this one included
        last_k = Signal()                      # k_left == 1
        last_group = Signal()                  # n_left <= L
        last_row = Signal()                    # m_left == 1
        group0 = Signal()                      # col == 0
        k_is_1 = Signal()                      # job_k == 1
        n_in_1 = Signal()                      # job_n <= L (a single group per row)

        # Holding register: reserved when the last k of a group issues, full when it lands,
        # free again when the drain has taken its last column.
        hold_resv = Signal()
        hold_full = Signal()
        hold = [Signal(signed(self.acc_width), name=f"hold{j}") for j in range(L)]
        hold_col = Signal.like(col)
        hold_cnt = Signal(range(L + 1))

        # --- issue stage ---------------------------------------------------------------------
        can_take = issuing & (~last_k | ~hold_resv)
        m.d.comb += self.x.ready.eq(can_take & group0)
        issue = Signal()
        m.d.comb += issue.eq(can_take & (~group0 | self.x.valid))

        m.d.comb += [
            w_r.addr.eq(wbase + kk),
            x_r.addr.eq(kk),
            x_w.addr.eq(kk),
            x_w.data.eq(self.x.payload),
            x_w.en.eq(issue & group0),
        ]

        with m.If(issue):
            with m.If(last_k):
                m.d.sync += [kk.eq(0), k_left.eq(job_k), last_k.eq(k_is_1), hold_resv.eq(1)]
                with m.If(last_group):
                    m.d.sync += [col.eq(0), wbase.eq(0), row.eq(row + 1),
                                 n_left.eq(job_n), group0.eq(1), last_group.eq(n_in_1),
                                 m_left.eq(m_left - 1), last_row.eq(m_left == 2)]
                    with m.If(last_row):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [col.eq(col + L), wbase.eq(wbase + job_k),
                                 n_left.eq(n_left - L), group0.eq(0),
                                 last_group.eq(n_left <= 2 * L)]
            with m.Else():
                m.d.sync += [kk.eq(kk + 1), k_left.eq(k_left - 1), last_k.eq(k_left == 2)]

        # --- stage 1: operands arrive (memory read latency 1) --------------------------------
        v1 = Signal()
        first1 = Signal()
        last1 = Signal()
        g0_1 = Signal()
        col1 = Signal.like(col)
        cnt1 = Signal(range(L + 1))
        x_d = Signal(signed(self.act_bits))
        m.d.sync += [
            v1.eq(issue), first1.eq(kk == 0), last1.eq(last_k), g0_1.eq(group0), col1.eq(col),
            cnt1.eq(Mux(last_group, n_left, L)), x_d.eq(self.x.payload),
        ]
        x1 = Mux(g0_1, x_d, x_r.data)
        w1 = [w_r.data[j * self.weight_bits:(j + 1) * self.weight_bits].as_signed()
              for j in range(L)]

        # --- stage 2a: partial products registered -------------------------------------------
        v2a = Signal()
        first2a = Signal()
        last2a = Signal()
        col2a = Signal.like(col)
        cnt2a = Signal.like(cnt1)
        m.d.sync += [v2a.eq(v1), first2a.eq(first1), last2a.eq(last1), col2a.eq(col1),
                     cnt2a.eq(cnt1)]
        parts = []
        for j in range(L):
            regs = []
            for i, term in enumerate(self.lane_partials(x1, w1[j], j)):
                reg = Signal(signed(len(term) + 1), name=f"part{j}_{i}")
                m.d.sync += reg.eq(term)
                regs.append(reg)
            parts.append(regs)

        # --- stage 2: products registered ----------------------------------------------------
        v2 = Signal()
        first2 = Signal()
        last2 = Signal()
        col2 = Signal.like(col)
        cnt2 = Signal.like(cnt1)
        prod = [Signal(signed(self.product_width()), name=f"prod{j}")
                for j in range(L)]
        m.d.sync += [v2.eq(v2a), first2.eq(first2a), last2.eq(last2a), col2.eq(col2a),
                     cnt2.eq(cnt2a)]
        for j in range(L):
            total = parts[j][0]
            for reg in parts[j][1:]:
                total = total + reg
            m.d.sync += prod[j].eq(total)

        # --- stage 3: accumulate; hand the group to the holding register ---------------------
        acc = [Signal(signed(self.acc_width), name=f"acc{j}") for j in range(L)]
        with m.If(v2):
            for j in range(L):
                total = Mux(first2, prod[j], acc[j] + prod[j])
                m.d.sync += acc[j].eq(total)
                with m.If(last2):
                    m.d.sync += hold[j].eq(total)
            with m.If(last2):
                m.d.sync += [hold_full.eq(1), hold_col.eq(col2), hold_cnt.eq(cnt2)]

        # --- drain: holding register -> fetch (column ``di``) -> requantizer -> y --------------
        draining = drain_columns(m, self, pmem=pmem, column=lambda di: Array(hold)[di],
                                 hold_full=hold_full, hold_col=hold_col, hold_cnt=hold_cnt,
                                 hold_resv=hold_resv)

        # --- job control ---------------------------------------------------------------------
        linear_job_control(
            m, self, issuing=issuing, in_flight=[v1, v2a, v2, hold_resv, *draining],
            sample=[job_m.eq(self.m), job_k.eq(self.k), job_n.eq(self.n),
                    row.eq(0), kk.eq(0), col.eq(0), wbase.eq(0)],
            flags=lambda empty: [
                k_left.eq(self.k), n_left.eq(self.n), m_left.eq(self.m),
                last_k.eq(self.k == 1), k_is_1.eq(self.k == 1),
                last_group.eq(self.n <= L), n_in_1.eq(self.n <= L),
                last_row.eq(self.m == 1), group0.eq(1),
            ])
        return m
