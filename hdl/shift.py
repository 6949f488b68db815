"""``shift`` linear engine: power-of-two weights, lanes of shifters and adders, no multiplier.

Output-stationary over groups of ``lanes`` columns like :class:`~amaformer.hdl.linear.LinearEngine`,
with lanes built for small FPGAs and widened to ``inputs`` = g products per lane and cycle
(``lanes·g`` MAC-equivalents per cycle). The accumulator and the drain register of a lane, which
dominate a one-product lane, are shared by its g products. An iCE40 logic cell (LC) is a LUT4, a
carry and a flip-flop, and the flip-flop is free only when its input is that LUT's sole load. So:

* the weight code holds the shift amount itself (no decoding) and zero as shift 7;
* a logarithmic shifter (by 4, by 2, by 1, as ``levels`` needs) with the zero gate folded into
  its first level and the negation into its last (``x XOR neg``), registered: one to three
  LUT4s per bit, whose flip-flops are the register;
* a registered adder tree of g - 1 adders; the ``+1`` of a negative product's two's complement is
  the carry-in of the adder that consumes it (so a zero code contributes exactly 0 whatever its
  sign bit: ``0 XOR -1`` plus the carry is 0);
* the accumulator's sum feeds only the accumulator. At the first chunk of a group it passes the
  tree's sum through (a free input of the sum LUT) and the tree's last ``+1`` waits in a one-bit
  flag, added once per column in the drain;
* the holding register that drains a group while the next accumulates is a shift chain
  (``hold[j] <- hold[j+1]``, one LC per bit) loaded from the accumulators, instead of a
  ``lanes``-to-one multiplexer.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.utils import ceil_log2

from .common import (RequantParams, check_int, drive_write_port, linear_engine_ports,
                     params_memory)
from .linear import drain_columns, linear_job_control

from .linear_spec import SHIFT_CODE_BITS, SHIFT_ZERO      # the weight code (wire format)

__all__ = ["SHIFT_CODE_BITS", "SHIFT_ZERO", "ShiftEngine"]



class ShiftEngine(wiring.Component):
    """Streaming linear layer with power-of-two weights, ``shift`` encoding.

    Computes, for a job of ``M×K`` activations X and ``K×N`` weight codes in the weight buffer::

        acc[m, n] = Σ_k sign[k, n] · (X[m, k] << s[k, n]) + bias[n]     (no wrap-around)
        Y[m, n]   = clamp((acc · mult[n] + R) >> shift[n])               (round half up)

    Dataflow, per row of X: ``C = ceil(K/g)`` chunks of g inputs. The row buffer (words of g
    bytes) has two halves of ``2^ceil(log2 C)`` words, one per row: every activation taken from
    ``x`` (one per cycle) is written into its byte of the half of its row. While the column
    groups of row ``r`` read their half, one chunk per cycle, row ``r + 1`` streams into the
    other half (prefetch); row ``r + 2`` waits for the last issue of row ``r``. A row's first
    group may run into the chunks still streaming in (always so for the job's first row): a
    chunk issues no earlier than the cycle after its last byte is written, so the buffer is
    never read and written at one address in a cycle whose read is used. An issued chunk reads
    one weight word: the lanes' g codes for its g inputs. Inputs of the last chunk past K meet
    the zero code (padding), so they contribute exactly 0 whatever the buffer holds there.
    A row thus costs about ``max(K, groups·C)`` cycles (the first one ``K + 1``).

    Parameters
    ----------
    lanes : int
        Output columns accumulated in parallel.
    inputs : int
        g, products summed per lane and cycle, 1 to 64.
    max_k, max_n, max_m : int
        Largest job dimensions.
    weight_depth : int
        Weight buffer depth in words of ``lanes·g`` codes; at least ``ceil(max_k/g)``.
    act_bits : int
        Signed width of activations (in and out).
    levels : int
        Weight magnitudes ``2^0 .. 2^(levels-1)``, 1 to 7. Products are ``act_bits + levels``
        bits signed (kept as ``act_bits + levels - 1`` bits of ones' complement and a carry),
        tree sums one bit wider per level, accumulators ``act_bits + levels + ceil(log2 max_k)``.

    Members
    -------
    x, y, start, m, k, n, busy, done, p_wr
        As for :class:`~amaformer.hdl.linear.LinearEngine`.
    w_wr : ``In(MemWriteSignature(weight_depth, 4·lanes·g, 4))``
        Weight buffer write port: word ``grp·ceil(K/g) + c`` holds the code of
        ``W[c·g + i, grp·lanes + j]`` in bits ``[4(j·g + i), 4(j·g + i) + 4)``
        (:data:`SHIFT_CODE_BITS`), the zero code past K and past N
        (:func:`amaformer.hdl.linear_layout.pack_shift_weights`).

    Latency: with X always valid and Y always ready, a job takes
    :func:`amaformer.gen.cost.shift_cycles` cycles from ``start`` to ``done`` (input-bound at
    ``K`` cycles per row when ``groups·C < K``, issue-bound otherwise). Pipeline: issue
    (buffer and weight reads); shifters; ``ceil(log2 g)`` tree levels; accumulate; hand-over to
    the holding chain; then per column a fetch stage, which adds the deferred ``+1``, and the
    six-stage requantizer.
    """

    def __init__(self, *, lanes=8, inputs=1, max_k=512, max_n=512, max_m=4096,
                 weight_depth=1024, act_bits=8, levels=7):
        for name, value in (("lanes", lanes), ("max_k", max_k), ("max_n", max_n),
                            ("max_m", max_m), ("weight_depth", weight_depth),
                            ("act_bits", act_bits)):
            check_int(name, value, 1)
        check_int("inputs", inputs, 1, 64)
        check_int("levels", levels, 1, 7)
        chunks = -(-max_k // inputs)
        if weight_depth < chunks:
            what = "max_k" if inputs == 1 else "ceil(max_k/inputs)"
            raise ValueError(f"weight_depth must be at least {what} ({chunks}), "
                             f"not {weight_depth!r}")
        self.lanes = lanes
        self.inputs = inputs
        self.max_k = max_k
        self.max_n = max_n
        self.max_m = max_m
        self.max_chunks = chunks
        self.weight_depth = weight_depth
        self.act_bits = act_bits
        self.levels = levels
        self.weight_bits = SHIFT_CODE_BITS
        self.product_width = act_bits + levels
        self.acc_width = self.product_width + ceil_log2(max_k)
        self.tree_levels = ceil_log2(inputs)
        self.params_layout = RequantParams
        super().__init__(linear_engine_ports(
            act_bits=act_bits, max_m=max_m, max_k=max_k, max_n=max_n, weight_depth=weight_depth,
            weight_word=lanes * inputs * SHIFT_CODE_BITS, weight_granularity=SHIFT_CODE_BITS))

    def elaborate(self, platform):
        m = Module()
        L, G = self.lanes, self.inputs
        ab = self.act_bits

        # --- memories ------------------------------------------------------------------------
        m.submodules.wmem = wmem = memory.Memory(
            shape=unsigned(L * G * SHIFT_CODE_BITS), depth=self.weight_depth, init=[])
        # two halves of ``2^cb >= ceil(max_k/g)`` words: word ``Cat(chunk, half)``
        cb = ceil_log2(self.max_chunks)
        m.submodules.xbuf = xbuf = memory.Memory(
            shape=unsigned(G * ab), depth=2 << cb, init=[])

        w_w = wmem.write_port(granularity=SHIFT_CODE_BITS)
        drive_write_port(m, w_w, self.w_wr)
        pmem = params_memory(m, self)
        w_r = wmem.read_port()
        x_w = xbuf.write_port(granularity=ab)
        x_r = xbuf.read_port()

        # --- job registers -------------------------------------------------------------------
        job_k = Signal.like(self.k)
        job_n = Signal.like(self.n)
        k_is_1 = Signal()
        n_in_1 = Signal()
        # issue side: one chunk of the current group per issue
        ci = Signal(range(self.max_chunks + 1))        # chunk index in the group
        c_left = Signal(range(self.max_chunks + 1))    # chunks left (groups after the first)
        last_c = Signal()                              # ci is the last chunk (idem)
        col = Signal(range(self.max_n + L))
        wbase = Signal(range(self.weight_depth + self.max_chunks))
        issuing = Signal()
        n_left = Signal.like(self.n)
        m_left = Signal.like(self.m)
        last_group = Signal()
        last_row = Signal()
        group0 = Signal()                              # first column group of the row
        row0 = Signal()                                # first row of the job
        rh = Signal()                                  # buffer half of the issued row
        # write side: activation bytes of the issued row or of the next one into the buffer
        wi = Signal(range(G))                          # byte of the chunk
        wc = Signal(range(self.max_chunks + 1))        # chunk being written
        wk_left = Signal.like(self.k)                  # bytes of the row left
        wlast = Signal()                               # the next byte is the row's last
        wh = Signal()                                  # buffer half of the written row
        ahead = Signal()                               # the issued row is all written, the
                                                       # writer is on the next one (wh != rh)
        wfull = Signal()                               # ... and has written it all too
        wactive = Signal()                             # the writer's row is one of the job

        hold_resv = Signal()
        hold_full = Signal()
        hold_col = Signal.like(col)
        hold_cnt = Signal(range(L + 1))

        # --- issue ---------------------------------------------------------------------------
        # In the job's first group the issue follows the writer chunk by chunk, so the chunk
        # it waits on when the writer finishes the row (``ahead`` rises) is the row's last;
        # ``c_left``/``last_c`` know the chunk count from then on.
        last = Mux(group0 & row0, ahead, last_c)
        can_take = issuing & (~last | ~hold_resv)
        issue = Signal()
        advance = Signal()                             # the row's last issue
        m.d.comb += [issue.eq(can_take & (~group0 | ahead | (ci != wc))),
                     advance.eq(issue & last & last_group)]
        m.d.comb += [w_r.addr.eq(wbase + ci), x_r.addr.eq(Cat(ci[:cb], rh))]
        with m.If(issue):
            with m.If(last):
                # the holding register is free (``hold_resv`` was low): label it now
                m.d.sync += [ci.eq(0), c_left.eq(ci + 1), last_c.eq(ci == 0), hold_resv.eq(1),
                             hold_col.eq(col), hold_cnt.eq(Mux(last_group, n_left, L))]
                with m.If(last_group):
                    m.d.sync += [col.eq(0), wbase.eq(0), n_left.eq(job_n), group0.eq(1),
                                 last_group.eq(n_in_1), m_left.eq(m_left - 1),
                                 last_row.eq(m_left == 2), row0.eq(0), rh.eq(~rh)]
                    with m.If(last_row):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [col.eq(col + L), wbase.eq(wbase + ci + 1),
                                 n_left.eq(n_left - L), group0.eq(0),
                                 last_group.eq(n_left <= 2 * L)]
            with m.Else():
                m.d.sync += [ci.eq(ci + 1), c_left.eq(c_left - 1), last_c.eq(c_left == 2)]

        # --- write side: X into the buffer, the issued row's half or (prefetch) the other ----
        # The writer fills the issued row's half while ``ahead`` is low (the group issues chunk
        # ``ci`` once ``ci != wc``: written in an earlier cycle), then the other half with the
        # next row, and waits (``wfull``) until the issue leaves the row whose half comes next.
        # So the buffer is never read and written at one address in a cycle whose read is used.
        m.d.comb += self.x.ready.eq(wactive & ~wfull)
        accept = self.x.valid & self.x.ready
        complete = Signal()
        row_written = Signal()
        m.d.comb += [
            complete.eq(accept & (wlast | (wi == G - 1))),
            row_written.eq(accept & wlast),
            x_w.addr.eq(Cat(wc[:cb], wh)),
            x_w.data.eq(Cat(self.x.payload for _ in range(G))),
            x_w.en.eq(Mux(accept, C(1, G) << wi, 0)),
        ]
        with m.If(complete):
            m.d.sync += [wi.eq(0), wc.eq(wc + 1)]
        with m.If(accept):
            m.d.sync += [wk_left.eq(wk_left - 1), wlast.eq(wk_left == 2)]
            with m.If(~complete):
                m.d.sync += wi.eq(wi + 1)
        with m.If(row_written & ~ahead):
            m.d.sync += ahead.eq(1)
        with m.Elif(advance & ~wfull & ~row_written):
            m.d.sync += ahead.eq(0)
        with m.If(row_written & ahead & ~advance):
            m.d.sync += wfull.eq(1)
        # the writer starts a row in the other half: after the issued row (a row before the
        # job's last), or as the issue leaves the row that held that half
        with m.If(row_written & (~ahead | advance) | advance & wfull):
            m.d.sync += [wh.eq(~wh), wfull.eq(0), wi.eq(0), wc.eq(0), wk_left.eq(job_k),
                         wlast.eq(k_is_1), wactive.eq(Mux(advance, m_left != 2, ~last_row))]

        # --- lane pipeline: stage 1 memory outputs, 2 shifted products, 2 + t tree level t,
        # ``S = 2 + T`` accumulate, ``S + 1`` hand-over to the holding chain -----------------
        T = self.tree_levels
        S = 2 + T
        vs = [Signal(name=f"v{i}") for i in range(1, S + 2)]
        firsts = [Signal(name=f"first{i}") for i in range(1, S + 2)]
        lasts = [Signal(name=f"last{i}") for i in range(1, S + 2)]
        m.d.sync += [vs[0].eq(issue), firsts[0].eq(ci == 0), lasts[0].eq(last)]
        for i in range(1, S + 1):
            m.d.sync += [vs[i].eq(vs[i - 1]), firsts[i].eq(firsts[i - 1]),
                         lasts[i].eq(lasts[i - 1])]
        v_acc, first_acc = vs[S - 1], firsts[S - 1]
        load = Signal()
        m.d.comb += load.eq(vs[S] & lasts[S])
        take = Signal()

        sb = ceil_log2(self.levels)                 # shift-amount bits in use
        pw = self.product_width - 1                 # ones' complement product width
        xs = [x_r.data[ab * i:ab * (i + 1)].as_signed() for i in range(G)]
        lanes = []
        for j in range(L):
            terms = []
            for i in range(G):
                base = SHIFT_CODE_BITS * (j * G + i)
                code = w_r.data[base:base + SHIFT_CODE_BITS]
                s, neg = code[:3], code[3]
                # levels <= 4: shifts are < 4, so bit 2 alone flags the zero code 7
                zero = code[2] if sb <= 2 else (s == SHIFT_ZERO)
                x = xs[i]
                a = Mux(zero, 0, Mux(s[2], x << 4, x) if sb > 2 else x)
                b = Mux(s[1], a << 2, a) if sb > 1 else a
                c = Mux(s[0], b << 1, b) if sb > 0 else b
                mag = Signal(signed(pw), name=f"mag{j}_{i}")
                m.d.comb += mag.eq(c)
                p = Signal(signed(pw), name=f"p{j}_{i}", reset_less=True)
                n = Signal(name=f"n{j}_{i}", reset_less=True)
                m.d.sync += [p.eq(mag ^ neg.replicate(pw)), n.eq(neg)]
                terms.append((p, n))
            lvl = 0
            while len(terms) > 1:
                nxt = []
                for t in range(0, len(terms), 2):
                    if t + 1 < len(terms):
                        (pa, na), (pb, nb) = terms[t], terms[t + 1]
                        sm = Signal(signed(max(len(pa), len(pb)) + 1),
                                    name=f"s{j}_{lvl}_{t // 2}", reset_less=True)
                        nn = Signal(name=f"sn{j}_{lvl}_{t // 2}", reset_less=True)
                        m.d.sync += [sm.eq(pa + pb + na), nn.eq(nb)]
                    else:
                        (pa, na), = terms[t:]
                        sm = Signal(signed(len(pa) + 1), name=f"s{j}_{lvl}_{t // 2}",
                                    reset_less=True)
                        nn = Signal(name=f"sn{j}_{lvl}_{t // 2}", reset_less=True)
                        m.d.sync += [sm.eq(pa), nn.eq(na)]
                    nxt.append((sm, nn))
                terms = nxt
                lvl += 1
            (tsum, tn), = terms
            # Reset-less: the first chunk of every group overwrites them. The adder's sum feeds
            # only ``acc``, so each sum LUT and its flip-flop share one logic cell.
            acc = Signal(signed(self.acc_width), name=f"acc{j}", reset_less=True)
            nf = Signal(name=f"nf{j}", reset_less=True)
            with m.If(v_acc):
                m.d.sync += acc.eq(Mux(first_acc, tsum, acc + tsum + tn))
                with m.If(first_acc):
                    m.d.sync += nf.eq(tn)
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

        # --- drain: hold[0] (the chain's head, plus its deferred +1) -> fetch -> requantizer ----
        draining = drain_columns(m, self, pmem=pmem, column=lambda di: lanes[0][0] + lanes[0][1],
                                 hold_full=hold_full, hold_col=hold_col, hold_cnt=hold_cnt,
                                 hold_resv=hold_resv, take=take)

        # --- job control ---------------------------------------------------------------------
        # ``hold_resv`` is raised by the job's last issue and drops only after its drain.
        linear_job_control(
            m, self, issuing=issuing, in_flight=[hold_resv, *draining],
            sample=[job_k.eq(self.k), job_n.eq(self.n), ci.eq(0), col.eq(0), wbase.eq(0)],
            flags=lambda empty: [
                n_left.eq(self.n), m_left.eq(self.m),
                k_is_1.eq(self.k == 1),
                last_group.eq(self.n <= L), n_in_1.eq(self.n <= L),
                last_row.eq(self.m == 1), group0.eq(1), row0.eq(1), rh.eq(0),
                wi.eq(0), wc.eq(0), wk_left.eq(self.k), wlast.eq(self.k == 1),
                wh.eq(0), ahead.eq(0), wfull.eq(0), wactive.eq(~empty),
            ])
        return m
