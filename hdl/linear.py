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
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .common import MemWriteSignature, RequantParams, Requantizer

__all__ = ["LinearEngine", "lut_multiply"]


def lut_multiply(a, b):
    """Signed ``a × b`` as a sum of shifted partial products, so synthesis builds it from logic
    (adders) instead of a hardware multiplier. Same value as ``a * b``."""
    terms = [Mux(b[i], a.as_signed() << i, 0) for i in range(len(b) - 1)]
    top = Mux(b[-1], a.as_signed() << (len(b) - 1), 0)
    total = terms[0] if terms else C(0, 1)
    for t in terms[1:]:
        total = total + t
    return (total - top)[:len(a) + len(b)].as_signed()


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
    ``DRAIN_LATENCY + lanes`` cycles.
    """

    #: cycles from issuing the last k of a group to its first value entering the requantizer
    HANDOFF_LATENCY = 3

    def __init__(self, *, lanes=8, max_k=512, max_n=1536, max_m=4096, weight_depth=1024,
                 act_bits=8, weight_bits=8, hw_lanes=None):
        for name, value in (("lanes", lanes), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits), ("weight_bits", weight_bits)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if weight_depth < max_k:
            raise ValueError(f"weight_depth must be at least max_k ({max_k}), "
                             f"not {weight_depth!r}")
        if hw_lanes is None:
            hw_lanes = lanes
        if not isinstance(hw_lanes, int) or not 0 <= hw_lanes <= lanes:
            raise ValueError(f"hw_lanes must be an integer in [0, {lanes}], not {hw_lanes!r}")
        self.lanes = lanes
        self.max_k = max_k
        self.max_n = max_n
        self.max_m = max_m
        self.weight_depth = weight_depth
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.hw_lanes = hw_lanes
        self.acc_width = act_bits + weight_bits + ceil_log2(max_k)
        self.params_layout = RequantParams
        super().__init__({
            "x":     In(stream.Signature(signed(act_bits))),
            "y":     Out(stream.Signature(signed(act_bits))),
            "start": In(1),
            "m":     In(range(max_m + 1)),
            "k":     In(range(max_k + 1)),
            "n":     In(range(max_n + 1)),
            "busy":  Out(1),
            "done":  Out(1),
            "w_wr":  In(MemWriteSignature(weight_depth, lanes * weight_bits, weight_bits)),
            "p_wr":  In(MemWriteSignature(max_n, RequantParams.size)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes

        # --- memories ------------------------------------------------------------------------
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(L * self.weight_bits), depth=self.weight_depth, init=[])
        m.submodules.xbuf = xbuf = memory.Memory(
            shape=signed(self.act_bits), depth=self.max_k, init=[])
        m.submodules.pmem = pmem = memory.Memory(
            shape=self.params_layout, depth=self.max_n, init=[])

        w_w = wmem.write_port(granularity=self.weight_bits)
        m.d.comb += [w_w.addr.eq(self.w_wr.addr), w_w.data.eq(self.w_wr.data),
                     w_w.en.eq(self.w_wr.en)]
        p_w = pmem.write_port()
        m.d.comb += [p_w.addr.eq(self.p_wr.addr), p_w.data.eq(self.p_wr.data),
                     p_w.en.eq(self.p_wr.en)]
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

        last_k = kk == job_k - 1
        last_group = col + L >= job_n
        group0 = col == 0

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
                m.d.sync += [kk.eq(0), hold_resv.eq(1)]
                with m.If(last_group):
                    m.d.sync += [col.eq(0), wbase.eq(0), row.eq(row + 1)]
                    with m.If(row == job_m - 1):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [col.eq(col + L), wbase.eq(wbase + job_k)]
            with m.Else():
                m.d.sync += kk.eq(kk + 1)

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
            cnt1.eq(Mux(last_group, job_n - col, L)), x_d.eq(self.x.payload),
        ]
        x1 = Mux(g0_1, x_d, x_r.data)
        w1 = [w_r.data[j * self.weight_bits:(j + 1) * self.weight_bits].as_signed()
              for j in range(L)]

        # --- stage 2: products registered ----------------------------------------------------
        v2 = Signal()
        first2 = Signal()
        last2 = Signal()
        col2 = Signal.like(col)
        cnt2 = Signal.like(cnt1)
        prod = [Signal(signed(self.act_bits + self.weight_bits), name=f"prod{j}")
                for j in range(L)]
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1), col2.eq(col1),
                     cnt2.eq(cnt1)]
        for j in range(L):
            p = x1 * w1[j] if j < self.hw_lanes else lut_multiply(x1, w1[j])
            m.d.sync += prod[j].eq(p)

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

        # --- drain: holding register -> requantizer -> y -------------------------------------
        m.submodules.rq = rq = Requantizer(self.acc_width, self.act_bits)
        wiring.connect(m, rq.o, wiring.flipped(self.y))
        # Fetch stage: picks column ``di`` of the holding register and reads its parameters
        # (synchronous read, so they can live in block RAM).
        di = Signal(range(L))
        f_valid = Signal()
        f_acc = Signal(signed(self.acc_width))
        f_adv = ~f_valid | rq.i.ready
        take = hold_full & f_adv
        p_r = pmem.read_port()
        m.d.comb += [
            p_r.addr.eq(hold_col + di),
            p_r.en.eq(f_adv),
            rq.i.valid.eq(f_valid),
            rq.i.payload.acc.eq(f_acc),
            rq.i.payload.params.eq(p_r.data),
        ]
        with m.If(f_adv):
            m.d.sync += [f_valid.eq(hold_full), f_acc.eq(Array(hold)[di])]
        with m.If(take):
            with m.If(di == hold_cnt - 1):
                m.d.sync += [di.eq(0), hold_full.eq(0), hold_resv.eq(0)]
            with m.Else():
                m.d.sync += di.eq(di + 1)

        # --- job control ---------------------------------------------------------------------
        idle_pipe = ~issuing & ~v1 & ~v2 & ~hold_resv & ~f_valid & ~rq.busy & ~self.y.valid
        with m.If(~self.busy):
            with m.If(self.start):
                empty = (self.m == 0) | (self.k == 0) | (self.n == 0)
                m.d.sync += [
                    job_m.eq(self.m), job_k.eq(self.k), job_n.eq(self.n),
                    row.eq(0), kk.eq(0), col.eq(0), wbase.eq(0),
                    issuing.eq(~empty), self.busy.eq(1),
                ]
        with m.Elif(idle_pipe):
            m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.If(self.done):
            m.d.sync += self.done.eq(0)
        return m
