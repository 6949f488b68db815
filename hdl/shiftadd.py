"""Multiplication-free linear engines: ``shift`` (power-of-two weights) and ``bcq`` (binary-coded
weights, table query and add).

Both have the ports and job semantics of :class:`~amaformer.hdl.linear.LinearEngine` (``x``,
``y``, ``start``, ``m``, ``k``, ``n``, ``busy``, ``done``, ``w_wr``, ``p_wr``), so the top and the
host drive any of the three the same way; only the weight-buffer image differs
(:mod:`amaformer.hdl.linear_layout`). Neither instantiates a multiplier: the only ``*`` left is the
requantizer's one per engine (``acc · M``), shared with ``mul``.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.utils import ceil_log2

from .memories import SPRAM_WORDS, is_ice40_up, spram_block
from .common import check_int, drive_write_port, linear_engine_ports, params_memory
from .linear import PipelinedRequantizer
from .linear_spec import ALPHA_CODE_BITS, ALPHA_EXP_MAX, ALPHA_TERMS   # the α code
from .shift import SHIFT_CODE_BITS, SHIFT_ZERO, ShiftEngine

__all__ = ["SHIFT_CODE_BITS", "SHIFT_ZERO", "ALPHA_TERMS", "ALPHA_EXP_MAX", "ALPHA_CODE_BITS",
           "ShiftEngine", "BcqEngine", "make_shiftadd_engine"]



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
    spram : bool or None
        Keep the α codes in an iCE40 ``SB_SPRAM256KA`` (16K × 16 bit, single port: the host
        writes it while the engine is idle, the engine only reads it) instead of block RAM,
        which saves one EBR per 256 words. ``None``: when the platform is an iCE40 UltraPlus
        and ``weight_depth`` is at most :data:`SPRAM_WORDS`.

    Members
    -------
    x, y, start, m, k, n, busy, done, p_wr
        As for :class:`~amaformer.hdl.linear.LinearEngine`.
    w_wr : ``In(MemWriteSignature(weight_depth, 8·slots + 16, 8))``
        Weight buffer write port. Word ``(c·N + n)·planes + i`` holds, in byte ``s``, the plane-i
        bits of column n for inputs ``c·8·slots + t·slots + s`` (bit t), and the α code in bits
        ``[8·slots, 8·slots + 16)`` (:func:`amaformer.hdl.linear_layout.pack_bcq_weights`).

    Latency: with X always valid and Y always ready, a job takes
    :func:`amaformer.gen.cost.bcq_cycles` cycles from ``start`` to ``done``.
    """

    def __init__(self, *, slots=8, planes=2, max_k=512, max_n=512, max_m=4096,
                 weight_depth=1024, act_bits=8, spram=None):
        for name, value in (("slots", slots), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits)):
            check_int(name, value, 1)
        check_int("planes", planes, 1, 4)
        if spram is not None and not isinstance(spram, bool):
            raise TypeError(f"spram must be True, False or None, not {spram!r}")
        if spram and weight_depth > SPRAM_WORDS:
            raise ValueError(f"weight_depth must be at most {SPRAM_WORDS} with spram, "
                             f"not {weight_depth!r}")
        self.spram = spram
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

    def uses_spram(self, platform):
        """Whether the α codes go to an iCE40 ``SB_SPRAM256KA`` (see ``spram``)."""
        if self.spram is None:
            return is_ice40_up(platform) and self.weight_depth <= SPRAM_WORDS
        return self.spram

    def elaborate(self, platform):
        m = Module()
        S, Q = self.slots, self.planes
        ew = self.entry_width
        spram = self.uses_spram(platform)

        # --- memories ------------------------------------------------------------------------
        # With ``spram`` the block RAM holds only the plane bytes and the α codes (16 bits, one
        # per word) live in a single-port SPRAM: the host writes it only while the engine is
        # idle, and the engine only reads it.
        plane_bits = 8 * S if spram else self.word_width
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(plane_bits), depth=self.weight_depth, init=[])
        m.submodules.amem = amem = memory.Memory(
            shape=signed(self.acc_width), depth=self.max_n, init=[])
        tables = []
        for s in range(S):
            tmem = memory.Memory(shape=signed(ew), depth=256, init=[])
            m.submodules[f"table{s}"] = tmem
            tables.append((tmem.read_port(), tmem.write_port()))

        w_w = wmem.write_port(granularity=8)
        if spram:
            m.d.comb += [w_w.addr.eq(self.w_wr.addr), w_w.data.eq(self.w_wr.data[:plane_bits]),
                         w_w.en.eq(self.w_wr.en[:S])]
        else:
            drive_write_port(m, w_w, self.w_wr)
        pmem = params_memory(m, self)
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
        job_n_m1 = Signal.like(self.n)          # job_n - 1 (timing)
        row = Signal.like(self.m)
        kcur = Signal(range(self.max_k + self.chunk + 1))  # next input of the row to receive
        first_chunk = Signal()
        t = Signal(3)                      # build phase (bit of the table index)
        s = Signal(range(S))               # slot receiving in this phase
        j = Signal(8)                      # table entry being extended
        j_left = Signal(8)                 # entries of this phase left after j (timing)
        xr = [Signal(signed(self.act_bits), name=f"xr{i}") for i in range(S)]
        xsum = Signal(signed(self.act_bits + ceil_log2(self.chunk) + 1))
        xsum_q = Signal.like(xsum)
        wa = Signal(range(self.weight_depth + 1))
        qn = Signal.like(self.n)
        qi = Signal(range(Q))

        # Pipeline valid flags (stage 1 .. 7), and the advance condition: only the output stage
        # can be held (by the requantizer / y back-pressure), which holds every stage behind it.
        v1, v2, v3, v4, v5, v6, v7 = (Signal(name=f"v{i}") for i in range(1, 8))
        m.submodules.rq = rq = PipelinedRequantizer(self.acc_width, self.act_bits)
        wiring.connect(m, rq.o, wiring.flipped(self.y))
        adv = Signal()
        m.d.comb += adv.eq(~v7 | rq.i.ready)

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
                m.d.sync += [s.eq(0), j.eq(0), j_left.eq((C(1, 9) << t) - 1), state.eq(WRITE)]
            with m.Else():
                m.d.sync += s.eq(s + 1)

        # --- build: extend the tables (read j, write 2^t + j one cycle later) ---------------
        wv = Signal()
        waddr = Signal(8)
        go = (state == WRITE) & ~v1 & ~v2       # the last queries have read the tables
        m.d.sync += [wv.eq(go), waddr.eq(j | (C(1, 8) << t))]
        last_j = j_left == 0                    # j == 2^t - 1
        with m.If(go):
            with m.If(last_j):
                m.d.sync += j.eq(0)
                with m.If(t == 7):
                    m.d.sync += [t.eq(0), qn.eq(0), qi.eq(0), xsum_q.eq(xsum),
                                 state.eq(QUERY)]
                with m.Else():
                    m.d.sync += [t.eq(t + 1), state.eq(RECV)]
            with m.Else():
                m.d.sync += [j.eq(j + 1), j_left.eq(j_left - 1)]

        # --- query: stage 0 issues one weight word per (column, plane) -----------------------
        issue = (state == QUERY) & adv
        last_col = qn == job_n_m1
        last_plane = qi == Q - 1
        last_chunk = Signal()                   # kcur >= job_k (kcur holds during QUERY)
        m.d.sync += last_chunk.eq(kcur >= job_k)
        m.d.comb += [w_r.addr.eq(wa), w_r.en.eq(adv)]
        alpha1 = Signal(ALPHA_CODE_BITS)        # α code of the word read in stage 0
        if spram:
            a_en = self.w_wr.en[S:S + 2]
            a_we = a_en.any()
            sp_addr = Signal(14)
            m.d.comb += sp_addr.eq(Mux(a_we, self.w_wr.addr, wa))
            m.submodules.alpha_spram = spram_block(
                addr=sp_addr, data_in=self.w_wr.data[8 * S:8 * S + ALPHA_CODE_BITS],
                mask=Cat(a_en[0], a_en[0], a_en[1], a_en[1]), we=a_we, select=a_we | adv,
                data_out=alpha1)
        else:
            m.d.comb += alpha1.eq(w_r.data[8 * S:8 * S + ALPHA_CODE_BITS])
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
                         alpha2.eq(alpha1)]
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

        # --- stage 3: Σ B·x = 2·Σ S − Σ x -----------------------------------------------------
        n4, f4 = Signal.like(n1), Signal.like(f1)
        alpha4 = Signal(ALPHA_CODE_BITS)
        p4 = Signal(signed(len(sum3) + 2))
        with m.If(adv):
            m.d.sync += [v4.eq(v3), n4.eq(n3), f4.eq(f3), alpha4.eq(alpha3),
                         p4.eq((sum3 << 1) - xsum_q)]

        # --- stage 4: shift by α's exponents (−v as ~v + 1, the +1s counted apart) ----------
        n5, f5 = Signal.like(n1), Signal.like(f1)
        terms5 = [Signal(signed(self.acc_width), name=f"term5_{i}") for i in range(ALPHA_TERMS)]
        ones5 = Signal(range(ALPHA_TERMS + 1))
        terms, ones = [], 0
        for term in range(ALPHA_TERMS):
            code = alpha4[5 * term:5 * term + 5]
            sh = Signal(signed(self.acc_width), name=f"sh{term}")
            m.d.comb += sh.eq(p4 << code[:3])
            terms.append(Mux(code[4], Mux(code[3], ~sh, sh), 0))
            ones = ones + (code[4] & code[3])
        with m.If(adv):
            m.d.sync += [v5.eq(v4), n5.eq(n4), f5.eq(f4), ones5.eq(ones)]
            m.d.sync += [reg.eq(term) for reg, term in zip(terms5, terms)]

        # --- stage 5: add the terms ----------------------------------------------------------
        n6, f6 = Signal.like(n1), Signal.like(f1)
        contrib6 = Signal(signed(self.acc_width))
        with m.If(adv):
            m.d.sync += [v6.eq(v5), n6.eq(n5), f6.eq(f5),
                         contrib6.eq((terms5[0] + terms5[1]) + (terms5[2] + ones5))]
        m.d.comb += [a_r.addr.eq(n5), a_r.en.eq(adv)]

        # --- stage 6: accumulate over planes and chunks --------------------------------------
        racc = Signal(signed(self.acc_width))
        base = Mux(f6[0], Mux(f6[2], 0, a_r.data), racc)
        tot = Signal(signed(self.acc_width))
        m.d.comb += tot.eq(base + contrib6)
        acc7 = Signal(signed(self.acc_width))
        with m.If(adv):
            m.d.sync += [v7.eq(v6 & f6[1] & f6[3]), acc7.eq(tot)]
            with m.If(v6):
                m.d.sync += racc.eq(tot)
        m.d.comb += [
            a_w.addr.eq(n6), a_w.data.eq(tot), a_w.en.eq(adv & v6 & f6[1] & ~f6[3]),
            p_r.addr.eq(n6), p_r.en.eq(adv),
        ]

        # --- stage 7: requantizer -> y -------------------------------------------------------
        m.d.comb += [
            rq.i.valid.eq(v7),
            rq.i.payload.acc.eq(acc7),
            rq.i.payload.params.eq(p_r.data),
        ]

        # --- job control ---------------------------------------------------------------------
        pipe_empty = (~v1 & ~v2 & ~v3 & ~v4 & ~v5 & ~v6 & ~v7 & ~rq.busy & ~self.y.valid)
        with m.If(~self.busy):
            with m.If(self.start):
                empty = (self.m == 0) | (self.k == 0) | (self.n == 0)
                m.d.sync += [
                    job_m.eq(self.m), job_k.eq(self.k), job_n.eq(self.n), job_n_m1.eq(self.n - 1),
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
    ``shift_levels``, ``shift_inputs``, ``bcq_bits``).

    Raises
    ------
    ValueError
        ``mode`` is neither ``"shift"`` nor ``"bcq"``.
    """
    c = linear_cfg
    common = dict(max_k=c.max_k, max_n=c.max_n, max_m=c.max_m, weight_depth=c.weight_depth,
                  act_bits=c.act_bits)
    if c.mode == "shift":
        return ShiftEngine(lanes=c.lanes, inputs=c.shift_inputs,
                           levels=c.shift_levels, **common)
    if c.mode == "bcq":
        return BcqEngine(slots=c.lanes, planes=c.bcq_bits, **common)
    raise ValueError(f"mode must be one of 'shift', 'bcq', not {c.mode!r}")
