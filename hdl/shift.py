"""``shift`` linear engine: power-of-two weights, lanes of shifters and adders, no multiplier.

Same ports, job semantics, dataflow and cycle count as
:class:`~amaformer.hdl.linear.LinearEngine` (output-stationary over groups of ``lanes`` columns,
:func:`amaformer.gen.cost.shift_cycles`), with a lane built for small FPGAs. An iCE40 logic cell
(LC) is a LUT4, a carry and a flip-flop, and the flip-flop is free only when its input is that
LUT's sole load. Measured per lane (Yosys ``synth_ice40``, ``acc_width`` 24): 88 LUT4s and 66
flip-flops, where the first version (``LinearEngine`` with a shifter for a multiplier) took
about 100 LUT4s, 90 flip-flops and 24 unpaired accumulator flip-flops, plus a ``lanes``-to-one
drain multiplexer. So:

* the weight code holds the shift amount itself (no decoding) and zero as shift 7;
* a three-level logarithmic shifter (by 4, by 2, by 1): the zero gate is folded into the first
  level, the first two levels end in the pipeline register, and the negation is folded into the
  last (``x XOR neg``, the ``+1`` of the two's complement being the adder's carry-in);
* the adder's sum feeds only the accumulator. At the first k of a group it passes the product
  through (a free input of the sum LUT) and the dropped ``+1`` of a negative first weight
  waits in a one-bit flag, added once per column in the drain;
* the holding register that drains a group while the next accumulates is a shift chain
  (``hold[j] <- hold[j+1]``, one LC per bit) loaded from the accumulators, instead of a
  ``lanes``-to-one multiplexer.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.utils import ceil_log2

from .common import RequantParams, check_int, drive_write_port, linear_engine_ports
from .linear import PipelinedRequantizer

__all__ = ["SHIFT_CODE_BITS", "SHIFT_ZERO", "ShiftEngine"]

#: ``shift`` weight code: bits [0:3] = ``s`` for ``±2^s`` (``s`` < levels) or
#: :data:`SHIFT_ZERO` for a zero weight; bit 3 = negative.
SHIFT_CODE_BITS = 4
#: Shift field of a zero weight.
SHIFT_ZERO = 7


class ShiftEngine(wiring.Component):
    """Streaming linear layer with power-of-two weights, ``shift`` encoding.

    Computes, for a job of ``M×K`` activations X and ``K×N`` weight codes in the weight buffer::

        acc[m, n] = Σ_k sign[k, n] · (X[m, k] << s[k, n]) + bias[n]     (no wrap-around)
        Y[m, n]   = clamp((acc · mult[n] + R) >> shift[n])               (round half up)

    Parameters
    ----------
    lanes : int
        Output columns accumulated in parallel, one shift-add per lane per cycle.
    max_k, max_n, max_m : int
        Largest job dimensions.
    weight_depth : int
        Weight buffer depth in words of ``lanes`` codes; at least ``max_k``.
    act_bits : int
        Signed width of activations (in and out).
    levels : int
        Weight magnitudes ``2^0 .. 2^(levels-1)``, 1 to 7. Products are ``act_bits + levels``
        bits signed, accumulators ``act_bits + levels + ceil(log2 max_k)``.

    Members
    -------
    x, y, start, m, k, n, busy, done, p_wr
        As for :class:`~amaformer.hdl.linear.LinearEngine`.
    w_wr : ``In(MemWriteSignature(weight_depth, 4·lanes, 4))``
        Weight buffer write port: word ``g·K + k`` holds the code of ``W[k, g·lanes + j]`` in
        bits ``[4j, 4j + 4)`` (:data:`SHIFT_CODE_BITS`,
        :func:`amaformer.gen.layout.pack_shift_weights`).

    Latency: with X always valid and Y always ready, a job takes
    :func:`amaformer.gen.cost.shift_cycles` cycles from ``start`` to ``done`` (the pipeline
    has the depth of ``LinearEngine``'s: issue; operands; shift by 4 and 2; shift by 1, negate
    and accumulate; hand-over to the holding chain; then per column a fetch stage, which adds
    the deferred ``+1``, and the six-stage requantizer).
    """

    def __init__(self, *, lanes=8, max_k=512, max_n=512, max_m=4096, weight_depth=1024,
                 act_bits=8, levels=7):
        for name, value in (("lanes", lanes), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits)):
            check_int(name, value, 1)
        check_int("levels", levels, 1, 7)
        if weight_depth < max_k:
            raise ValueError(f"weight_depth must be at least max_k ({max_k}), "
                             f"not {weight_depth!r}")
        self.lanes = lanes
        self.max_k = max_k
        self.max_n = max_n
        self.max_m = max_m
        self.weight_depth = weight_depth
        self.act_bits = act_bits
        self.levels = levels
        self.weight_bits = SHIFT_CODE_BITS
        self.product_width = act_bits + levels
        self.acc_width = self.product_width + ceil_log2(max_k)
        self.params_layout = RequantParams
        super().__init__(linear_engine_ports(
            act_bits=act_bits, max_m=max_m, max_k=max_k, max_n=max_n, weight_depth=weight_depth,
            weight_word=lanes * SHIFT_CODE_BITS, weight_granularity=SHIFT_CODE_BITS))

    def elaborate(self, platform):
        m = Module()
        L = self.lanes

        # --- memories ------------------------------------------------------------------------
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(L * SHIFT_CODE_BITS), depth=self.weight_depth, init=[])
        m.submodules.xbuf = xbuf = memory.Memory(
            shape=signed(self.act_bits), depth=self.max_k, init=[])
        m.submodules.pmem = pmem = memory.Memory(shape=RequantParams, depth=self.max_n, init=[])

        w_w = wmem.write_port(granularity=SHIFT_CODE_BITS)
        drive_write_port(m, w_w, self.w_wr)
        p_w = pmem.write_port()
        drive_write_port(m, p_w, self.p_wr)
        w_r = wmem.read_port()
        x_w = xbuf.write_port()
        x_r = xbuf.read_port()

        # --- job registers (as in LinearEngine) ---------------------------------------------
        job_k = Signal.like(self.k)
        job_n = Signal.like(self.n)
        kk = Signal(range(self.max_k + 1))
        col = Signal(range(self.max_n + L))
        wbase = Signal(range(self.weight_depth + self.max_k))
        issuing = Signal()
        k_left = Signal.like(self.k)
        n_left = Signal.like(self.n)
        m_left = Signal.like(self.m)
        last_k = Signal()
        last_group = Signal()
        last_row = Signal()
        group0 = Signal()
        k_is_1 = Signal()
        n_in_1 = Signal()

        hold_resv = Signal()
        hold_full = Signal()
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
                # the holding register is free (``hold_resv`` was low): label it now
                m.d.sync += [kk.eq(0), k_left.eq(job_k), last_k.eq(k_is_1), hold_resv.eq(1),
                             hold_col.eq(col), hold_cnt.eq(Mux(last_group, n_left, L))]
                with m.If(last_group):
                    m.d.sync += [col.eq(0), wbase.eq(0), n_left.eq(job_n), group0.eq(1),
                                 last_group.eq(n_in_1), m_left.eq(m_left - 1),
                                 last_row.eq(m_left == 2)]
                    with m.If(last_row):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [col.eq(col + L), wbase.eq(wbase + job_k),
                                 n_left.eq(n_left - L), group0.eq(0),
                                 last_group.eq(n_left <= 2 * L)]
            with m.Else():
                m.d.sync += [kk.eq(kk + 1), k_left.eq(k_left - 1), last_k.eq(k_left == 2)]

        # --- stage 1: operands arrive (memory read latency 1) --------------------------------
        v1, first1, last1, g0_1 = Signal(), Signal(), Signal(), Signal()
        x_d = Signal(signed(self.act_bits))
        m.d.sync += [v1.eq(issue), first1.eq(kk == 0), last1.eq(last_k), g0_1.eq(group0),
                     x_d.eq(self.x.payload)]
        x1 = Signal(signed(self.act_bits))
        m.d.comb += x1.eq(Mux(g0_1, x_d, x_r.data))

        # --- stage 1 -> 2a: shift by 4 (zero gate folded in) and by 2 ------------------------
        # --- stage 2a -> 2: shift by 1, ones' complement for negative weights, accumulate ----
        # The ``+1`` of a negative weight's two's complement is the adder's carry-in, except at
        # the first k of a group, where the adder passes the product through; that ``+1`` is
        # kept in a flag (``nf``) and added once per column in the drain.
        # --- stage 2 -> 3:  the group's accumulators move into the holding chain -------------
        v2a, first2a, last2a, v2, last2 = Signal(), Signal(), Signal(), Signal(), Signal()
        m.d.sync += [v2a.eq(v1), first2a.eq(first1), last2a.eq(last1),
                     v2.eq(v2a), last2.eq(last2a)]

        take = Signal()
        load = Signal()
        m.d.comb += load.eq(v2 & last2)
        sb = ceil_log2(self.levels)                 # shift-amount bits in use
        lanes = []
        for j in range(L):
            code = w_r.data[j * SHIFT_CODE_BITS:(j + 1) * SHIFT_CODE_BITS]
            s, neg = code[:3], code[3]
            # levels <= 4: shifts are < 4, so bit 2 alone flags the zero code 7
            zero = code[2] if sb <= 2 else (s == SHIFT_ZERO)
            a = Mux(zero, 0, Mux(s[2], x1 << 4, x1) if sb > 2 else x1)
            b = Mux(s[1], a << 2, a) if sb > 1 else a
            b2a = Signal(signed(self.act_bits + self.levels - 1), name=f"sh{j}",
                         reset_less=True)
            s0_2a = Signal(name=f"s0_{j}", reset_less=True)
            neg2a = Signal(name=f"neg2a_{j}", reset_less=True)
            m.d.sync += [b2a.eq(b), s0_2a.eq(s[0]), neg2a.eq(neg)]

            c = Mux(s0_2a, b2a << 1, b2a) if sb > 0 else b2a
            prod = Signal(signed(self.product_width - 1), name=f"prod{j}")
            m.d.comb += prod.eq(c ^ neg2a.replicate(len(prod)))
            # Reset-less: the first k of every group overwrites them. The adder's sum feeds
            # only ``acc``, so each sum LUT and its flip-flop share one logic cell.
            acc = Signal(signed(self.acc_width), name=f"acc{j}", reset_less=True)
            nf = Signal(name=f"nf{j}", reset_less=True)
            with m.If(v2a):
                m.d.sync += acc.eq(Mux(first2a, prod, acc + prod + neg2a))
                with m.If(first2a):
                    m.d.sync += nf.eq(neg2a)
            h = Signal(signed(self.acc_width), name=f"hold{j}", reset_less=True)
            h_nf = Signal(name=f"hold_nf{j}", reset_less=True)
            lanes.append((h, h_nf, acc, nf))
        for j, (h, h_nf, acc, nf) in enumerate(lanes):
            with m.If(load):
                m.d.sync += [h.eq(acc), h_nf.eq(nf)]
            if j + 1 < L:
                with m.Elif(take):
                    m.d.sync += [h.eq(lanes[j + 1][0]), h_nf.eq(lanes[j + 1][1])]
        with m.If(load):
            m.d.sync += hold_full.eq(1)

        # --- drain: hold[0] -> fetch (parameters) -> requantizer -> y ------------------------
        m.submodules.rq = rq = PipelinedRequantizer(self.acc_width, self.act_bits)
        wiring.connect(m, rq.o, wiring.flipped(self.y))
        di = Signal(range(L))
        f_valid = Signal()
        f_acc = Signal(signed(self.acc_width))
        f_adv = ~f_valid | rq.i.ready
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
            m.d.sync += [f_valid.eq(hold_full), f_acc.eq(lanes[0][0] + lanes[0][1])]
        with m.If(take):
            with m.If(di == hold_cnt - 1):
                m.d.sync += [di.eq(0), hold_full.eq(0), hold_resv.eq(0)]
            with m.Else():
                m.d.sync += di.eq(di + 1)

        # --- job control ---------------------------------------------------------------------
        idle_pipe = (~issuing & ~v1 & ~v2a & ~v2 & ~hold_resv & ~f_valid & ~rq.busy
                     & ~self.y.valid)
        with m.If(~self.busy):
            with m.If(self.start):
                empty = (self.m == 0) | (self.k == 0) | (self.n == 0)
                m.d.sync += [
                    job_k.eq(self.k), job_n.eq(self.n),
                    kk.eq(0), col.eq(0), wbase.eq(0),
                    issuing.eq(~empty), self.busy.eq(1),
                    k_left.eq(self.k), n_left.eq(self.n), m_left.eq(self.m),
                    last_k.eq(self.k == 1), k_is_1.eq(self.k == 1),
                    last_group.eq(self.n <= L), n_in_1.eq(self.n <= L),
                    last_row.eq(self.m == 1), group0.eq(1),
                ]
        with m.Elif(idle_pipe):
            m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.If(self.done):
            m.d.sync += self.done.eq(0)
        return m
