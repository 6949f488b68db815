"""Streaming softmax attention with an online softmax in fixed point; no N×N matrix is stored.

Dataflow of :class:`SoftmaxAttention` (``P = lanes`` queries per block, head dimension ``d``)::

    q ──► loader ──► Q banks (2 × P × d int8, double-buffered: block b+1 loads during block b)
    kv ─► A: scores, one key element per cycle, P score MACs ──► B: running max (integer, base 2),
          exp2 by table and shift ──► event queue ──► C: weighted sum of V, P MACs, one element per
          cycle, old sums rescaled by a shift ──► result banks ──► D: reciprocal (table + Newton)
          and requantization, one output per cycle ──► o

* Keys and values stream past a block of P queries once (``kv`` beats carry ``k[i]`` and
  ``v[i]`` together, ``d`` beats per key). A key that no row of the block keeps is simply not
  sent (the schedule :func:`amaformer.gen.attention.softmax_schedule` leaves it out), so causal
  and sparse masks skip work instead of computing and zeroing it; the beat's ``keep`` bits say
  which rows of the block keep the key.
* While C computes the weighted sum of key j, A already computes the scores of key j+1..j+3
  (four V banks). A block's results are drained by D while the next block computes.
* The arithmetic is bit-exact with :func:`amaformer.gen.attention.attention_softmax`.
"""

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .attention_units import Exp2Unit, ReciprocalUnit, rshift_round
from .common import MemWriteSignature, check_int, drive_write_port, job_ports, lane_memories
from .linear import lut_multiply

__all__ = ["SoftmaxAttention", "HeadParams", "kv_layout", "softmax_cycle_model"]

#: Per-head parameters: logit scale (``x = rs(s·score_mult, score_shift)``) and output scale.
HeadParams = data.StructLayout({
    "score_mult":  unsigned(16),
    "score_shift": unsigned(6),
    "out_mult":    unsigned(16),
    "out_shift":   unsigned(6),
})

VBANKS = 4          #: keys in flight between the score stage A and the weighted-sum stage C
C_MIN_PASS = 3      #: shortest weighted-sum pass (read-modify-write of the running sums)
A_TO_C = 8          #: cycles from the last beat of a key to the first weighted-sum read of it
RECIP_PHASE = ReciprocalUnit.LATENCY   #: cycles of D before its first output read, beyond lanes
OUT_LATENCY = 5     #: cycles from D's read of a result to the output beat


def kv_layout(lanes):
    """Payload of a ``kv`` beat: key and value elements, the rows that keep this key (sampled on
    the key's first beat) and ``last`` (the final beat of the block, sampled on a key's last
    beat)."""
    return data.StructLayout({"k": signed(8), "v": signed(8), "keep": unsigned(lanes),
                              "last": unsigned(1)})


class SoftmaxAttention(wiring.Component):
    """Multi-head softmax attention of int8 Q, K, V with an online softmax, streaming.

    For each head and each block of ``lanes`` consecutive query rows, the host streams the
    block's query rows on ``q`` and then the keys it keeps, with their values, on ``kv``;
    outputs leave on ``o`` in row order. Arithmetic (see :mod:`amaformer.gen.attention`): exact
    integer scores (``16 + ceil(log2 max_dim)`` bits), logits in base 2 with ``exp_frac_bits``
    fractional bits, running integer maximum, probabilities with ``p_bits`` fractional bits
    (round half up), running sums of ``p_bits + 3 + ceil(log2 max_tokens)`` bits and weighted
    sums 8 bits wider (no overflow), reciprocal with ``recip_bits`` fractional bits, output
    requantized with round half up and saturated to int8.

    Parameters
    ----------
    lanes : int
        Query rows per block ``P``; ``2·P`` MAC units (P for scores, P for the weighted sum).
    max_dim, max_tokens, max_heads : int
        Largest head dimension d, token count N and head count of a job.
    exp_frac_bits, p_bits, recip_table_bits, recip_bits, recip_mant_bits, guard_bits : int
        Fixed-point format (:class:`amaformer.gen.attention.SoftmaxFormat`).
    lut_macs : bool or str
        Build the lanes' multipliers (score, logit scaling, weighted sum) from logic
        (:func:`amaformer.hdl.linear.lut_multiply`) instead of DSP blocks, for devices with few
        DSPs (iCE40UP5K: 8); ``"scale"``: only the logit scaling (``score_bits × 17``, the
        widest), the two 8-bit products stay on DSPs (a one-lane kernel then uses all 8
        SB_MAC16s of an iCE40UP5K and about 400 logic cells fewer). Same arithmetic.

    Members
    -------
    q : ``In(stream.Signature(signed(8)))``
        Queries: per head, per block, the block's rows (``min(P, N - row0)`` of them), ``d``
        elements each. Blocks of a head are rows ``0, P, 2P, ...``; heads follow each other.
    kv : ``In(stream.Signature(kv_layout(lanes)))``
        Per block, the kept keys in ascending order, ``d`` beats each (``k[i]``, ``v[i]``);
        ``keep`` bit r = row ``row0 + r`` keeps the key; ``last`` on the block's final beat.
        A block must send at least one key.
    o : ``Out(stream.Signature(signed(8)))``
        ``heads·N·d`` outputs, head-major, row-major. A row that keeps no key outputs zeros.
    start : ``In(1)``
        Starts a job with ``heads``, ``tokens``, ``dim`` when high while ``busy`` is low; a zero
        dimension gives an empty job.
    heads, tokens, dim : ``In(unsigned(...))``
    busy, done : ``Out(1)``
        ``busy`` from the cycle after ``start`` until ``done`` (one-cycle pulse, after the last
        output beat has been transferred).
    hp_wr : ``In(MemWriteSignature(max_heads, HeadParams.size))``
        Writes the :data:`HeadParams` of a head.

    Latency: with streams never stalled, :func:`softmax_cycle_model` gives the cycles from
    ``start`` to ``done``; about ``max(d, 3)`` cycles per streamed key per block.

    Block RAM: no read of an address written in the same cycle is ever used (Q banks: the
    loader writes only a bank A does not read, ``qfull``; running sums: a pass lasts at least
    ``C_MIN_PASS = 3`` cycles, so a read follows the write of the same element; result banks:
    C writes them only after D has released them; V banks: A reuses a bank the cycle after C's
    last read of it; head parameters: written while idle), so synthesis may drop the
    read-during-write bypass (``COLLISION_X_MASK``, as ``scripts/bench_attention.py`` does).
    """

    def __init__(self, *, lanes=4, max_dim=64, max_tokens=256, max_heads=12, exp_frac_bits=6,
                 p_bits=12, recip_table_bits=6, recip_bits=15, recip_mant_bits=16,
                 guard_bits=8, lut_macs=False):
        check_int("lanes", lanes, 1, 64)
        check_int("max_dim", max_dim, 1, 1024)
        check_int("max_tokens", max_tokens, 1, 1 << 16)
        check_int("max_heads", max_heads, 1, 256)
        check_int("exp_frac_bits", exp_frac_bits, 1, 10)
        check_int("p_bits", p_bits, 4, 16)
        check_int("recip_table_bits", recip_table_bits, 2, 10)
        check_int("recip_bits", recip_bits, 8, 24)
        check_int("recip_mant_bits", recip_mant_bits, recip_table_bits + 2, 24)
        check_int("guard_bits", guard_bits, 0, recip_bits - 1)
        if lanes > max_tokens:
            raise ValueError(f"lanes must be at most max_tokens ({max_tokens}), not {lanes!r}")
        self.lanes = lanes
        self.max_dim = max_dim
        self.max_tokens = max_tokens
        self.max_heads = max_heads
        self.exp_frac_bits = exp_frac_bits
        self.p_bits = p_bits
        self.recip_table_bits = recip_table_bits
        self.recip_bits = recip_bits
        self.recip_mant_bits = recip_mant_bits
        self.guard_bits = guard_bits
        if lut_macs not in (False, True, "scale"):
            raise ValueError(f"lut_macs must be False, True or 'scale', not {lut_macs!r}")
        self.lut_macs = lut_macs
        self.score_bits = 16 + ceil_log2(max_dim)
        self.sum_bits = p_bits + 3 + ceil_log2(max_tokens)
        self.acc_bits = self.sum_bits + 8
        super().__init__({
            "q":      In(stream.Signature(signed(8))),
            "kv":     In(stream.Signature(kv_layout(lanes))),
            "o":      Out(stream.Signature(signed(8))),
            **job_ports(heads=max_heads, tokens=max_tokens, dim=max_dim),
            "hp_wr":  In(MemWriteSignature(max_heads, HeadParams.size)),
        })

    @classmethod
    def from_config(cls, att):
        """Build from an :class:`amaformer.gen.config.AttentionConfig` (duck-typed)."""
        return cls(lanes=att.lanes, max_dim=att.head_dim, max_tokens=att.max_tokens,
                   max_heads=att.heads, exp_frac_bits=att.exp_frac_bits, p_bits=att.p_bits,
                   recip_table_bits=att.recip_table_bits, recip_bits=att.recip_bits,
                   recip_mant_bits=att.recip_mant_bits, guard_bits=att.guard_bits,
                   lut_macs={"none": False, "scale": "scale", "all": True}[
                       getattr(att, "lut_macs", "none")])

    def elaborate(self, platform):
        m = Module()
        P, D = self.lanes, self.max_dim
        F, PB = self.exp_frac_bits, self.p_bits
        SW, LW, AW = self.score_bits, self.sum_bits, self.acc_bits
        XW = SW + 17
        SHMAX = AW

        # --- job and head parameters ---------------------------------------------------------
        running = Signal()
        nheads = Signal.like(self.heads)
        ntok = Signal.like(self.tokens)
        dim = Signal.like(self.dim)
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(dim - 1)
        m.d.comb += self.busy.eq(running)

        m.submodules.hpmem = hpmem = memory.Memory(shape=HeadParams, depth=self.max_heads,
                                                    init=[])
        hp_w = hpmem.write_port()
        drive_write_port(m, hp_w, self.hp_wr)
        hp_rb = hpmem.read_port()       # stage B, addressed one cycle ahead by a1_head
        hp_rd = hpmem.read_port()       # stage D, addressed by d_head (stable while draining)

        def block_counters(prefix):
            head = Signal(range(self.max_heads + 1), name=f"{prefix}_head")
            row0 = Signal(range(self.max_tokens + P), name=f"{prefix}_row0")
            rows = Signal(range(P + 1), name=f"{prefix}_rows")
            final = Signal(name=f"{prefix}_final")
            last_in_head = Signal(name=f"{prefix}_lih")
            m.d.comb += [
                last_in_head.eq(row0 + P >= ntok),
                rows.eq(Mux(last_in_head, ntok - row0, P)),
                final.eq(last_in_head & (head + 1 == nheads)),
            ]
            return head, row0, rows, final, last_in_head

        def next_block(head, row0, last_in_head):
            with m.If(last_in_head):
                m.d.sync += [row0.eq(0), head.eq(head + 1)]
            with m.Else():
                m.d.sync += row0.eq(row0 + P)

        with m.If(self.start & ~running):
            m.d.sync += [nheads.eq(self.heads), ntok.eq(self.tokens), dim.eq(self.dim)]
            with m.If((self.heads != 0) & (self.tokens != 0) & (self.dim != 0)):
                m.d.sync += running.eq(1)
            with m.Else():
                m.d.sync += self.done.eq(1)
        with m.Else():
            m.d.sync += self.done.eq(0)

        # --- memories --------------------------------------------------------------------------
        qmem_r, qmem_w = lane_memories(m, P, "qmem", signed(8), 2 * D)
        acc_r, acc_w = lane_memories(m, P, "accmem", signed(AW), D)
        out_r, out_w = lane_memories(m, P, "outmem", signed(AW), D)
        m.submodules.vbuf = vbuf = memory.Memory(shape=signed(8), depth=VBANKS * D, init=[])
        vbuf_w = vbuf.write_port()
        vbuf_r = vbuf.read_port()

        # --- loader: q stream into the Q bank of the next block -------------------------------
        qfull = Signal(2)
        qfull_set = Signal(2)
        qfull_clr = Signal(2)
        m.d.sync += qfull.eq((qfull | qfull_set) & ~qfull_clr)
        ld_head, ld_row0, ld_rows, _, ld_lih = block_counters("ld")
        ld_lane = Signal(range(max(P, 2)))
        ld_i = Signal(range(D))
        ld_bank = Signal()
        m.d.comb += self.q.ready.eq(running & (ld_head < nheads) & ~qfull.bit_select(ld_bank, 1))
        for p in range(P):
            m.d.comb += [qmem_w[p].addr.eq(ld_bank * D + ld_i), qmem_w[p].data.eq(self.q.payload),
                         qmem_w[p].en.eq(self.q.valid & self.q.ready & (ld_lane == p))]
        with m.If(self.q.valid & self.q.ready):
            m.d.sync += ld_i.eq(ld_i + 1)
            with m.If(ld_i == dm1):
                m.d.sync += [ld_i.eq(0), ld_lane.eq(ld_lane + 1)]
                with m.If(ld_lane == ld_rows - 1):
                    m.d.sync += [ld_lane.eq(0), ld_bank.eq(~ld_bank)]
                    next_block(ld_head, ld_row0, ld_lih)
        # (combinational strobes are whole expressions, not assigned under conditions: Icarus
        # does not run a conditional ``always @*`` block at time 0, which would leave them X)
        ld_blk = Signal()
        m.d.comb += [ld_blk.eq(self.q.valid & self.q.ready & (ld_i == dm1)
                               & (ld_lane == ld_rows - 1)),
                     qfull_set.eq(Cat(ld_blk & ~ld_bank, ld_blk & ld_bank))]

        # --- stage A: scores -------------------------------------------------------------------
        a_head, a_row0, a_rows, a_final, a_lih = block_counters("a")
        a_bank = Signal()
        a_i = Signal(range(D))
        vb_w = Signal(range(VBANKS))
        kif = Signal(range(VBANKS + 1))            # keys started by A, not yet released by C
        kif_inc, kif_dec = Signal(), Signal()
        m.d.sync += kif.eq(kif + kif_inc - kif_dec)
        keep_cur = Signal(P)
        rowmask = Signal(P)
        for p in range(P):
            m.d.comb += rowmask[p].eq(p < a_rows)
        m.d.comb += self.kv.ready.eq(running & (a_head < nheads) & qfull.bit_select(a_bank, 1)
                                     & ((a_i != 0) | (kif < VBANKS)))
        kv_fire = Signal()
        m.d.comb += kv_fire.eq(self.kv.valid & self.kv.ready)
        for p in range(P):
            m.d.comb += qmem_r[p].addr.eq(a_bank * D + a_i)
        m.d.comb += [vbuf_w.addr.eq(vb_w * D + a_i), vbuf_w.data.eq(self.kv.payload.v),
                     vbuf_w.en.eq(kv_fire)]
        keep_now = Signal(P)
        m.d.comb += keep_now.eq(Mux(a_i == 0, self.kv.payload.keep & rowmask, keep_cur))

        a1_valid, a1_first, a1_lastkey, a1_lastblk = Signal(), Signal(), Signal(), Signal()
        a1_k = Signal(signed(8))
        a1_keep = Signal(P)
        a1_head = Signal.like(a_head)
        a1_rows = Signal.like(a_rows)
        a1_final = Signal()
        a1_vb = Signal.like(vb_w)
        m.d.sync += a1_valid.eq(kv_fire)
        with m.If(kv_fire):
            last_beat = a_i == dm1
            m.d.sync += [a1_first.eq(a_i == 0), a1_lastkey.eq(last_beat),
                         a1_lastblk.eq(last_beat & self.kv.payload.last),
                         a1_k.eq(self.kv.payload.k),
                         a1_keep.eq(keep_now), a1_head.eq(a_head), a1_rows.eq(a_rows),
                         a1_final.eq(a_final), a1_vb.eq(vb_w), keep_cur.eq(keep_now),
                         a_i.eq(a_i + 1)]
            with m.If(last_beat):
                m.d.sync += [a_i.eq(0), vb_w.eq(Mux(vb_w == VBANKS - 1, 0, vb_w + 1))]
                with m.If(self.kv.payload.last):
                    m.d.sync += a_bank.eq(~a_bank)
                    next_block(a_head, a_row0, a_lih)
        a_blk = Signal()
        m.d.comb += [kif_inc.eq(kv_fire & (a_i == 0)),
                     a_blk.eq(kv_fire & (a_i == dm1) & self.kv.payload.last),
                     qfull_clr.eq(Cat(a_blk & ~a_bank, a_blk & a_bank))]

        s = [Signal(signed(SW), name=f"s{p}") for p in range(P)]
        b0_valid = Signal()
        b0 = {n: Signal.like(sig, name=f"b0_{n}") for n, sig in
              (("keep", a1_keep), ("lastblk", a1_lastblk), ("head", a1_head), ("rows", a1_rows),
               ("final", a1_final), ("vb", a1_vb))}
        m.d.sync += b0_valid.eq(a1_valid & a1_lastkey)
        with m.If(a1_valid):
            for p in range(P):
                prod = (lut_multiply(qmem_r[p].data, a1_k) if self.lut_macs is True
                        else qmem_r[p].data * a1_k)
                m.d.sync += s[p].eq(Mux(a1_first, 0, s[p]) + prod)
            m.d.sync += [b0["keep"].eq(a1_keep), b0["lastblk"].eq(a1_lastblk),
                         b0["head"].eq(a1_head), b0["rows"].eq(a1_rows),
                         b0["final"].eq(a1_final), b0["vb"].eq(a1_vb)]

        # --- stage B: running maximum and exp2 -------------------------------------------------
        def delay(sig, name):
            r = Signal.like(sig, name=name)
            m.d.sync += r.eq(sig)
            return r

        def delay_flags(flags, name):
            return {n: delay(v, f"{name}_{n}") for n, v in flags.items()}

        hp_b = hp_rb.data
        m.d.comb += hp_rb.addr.eq(a1_head)
        x1 = [Signal(signed(XW), name=f"x{p}") for p in range(P)]
        for p in range(P):
            scaled = (lut_multiply(s[p], Cat(hp_b.score_mult, C(0, 1))) if self.lut_macs
                      else s[p] * hp_b.score_mult)
            m.d.sync += x1[p].eq(rshift_round(scaled, hp_b.score_shift, XW))
        b1_valid = delay(b0_valid, "b1_valid")
        b1 = delay_flags(b0, "b1")

        mx = [Signal(signed(XW - F), name=f"m{p}") for p in range(P)]
        started = Signal(P)
        t2 = [Signal(signed(XW + 1), name=f"t{p}") for p in range(P)]
        sh2 = [Signal(range(SHMAX + 1), name=f"sh{p}") for p in range(P)]
        first2 = Signal(P)
        b2_valid = delay(b1_valid, "b2_valid")
        b2 = delay_flags(b1, "b2")
        started_next = Signal(P)
        for p in range(P):
            xi = Signal(signed(XW - F), name=f"xi{p}")
            m_new = Signal(signed(XW - F), name=f"mnew{p}")
            diff = Signal(signed(XW - F + 1), name=f"diff{p}")
            m.d.comb += [
                xi.eq(x1[p] >> F),
                m_new.eq(Mux(started[p] & (mx[p] > xi), mx[p], xi)),
                diff.eq(Mux(started[p], m_new - mx[p], 0)),
            ]
            m.d.sync += [t2[p].eq(x1[p] - (m_new << F)),
                         sh2[p].eq(Mux(diff > SHMAX, SHMAX, diff[:len(sh2[p])]))]
            m.d.sync += first2[p].eq(b1["keep"][p] & ~started[p])
            keep = b1_valid & b1["keep"][p]
            with m.If(keep):
                m.d.sync += mx[p].eq(m_new)
            m.d.comb += started_next[p].eq(started[p] | keep)
        with m.If(b1_valid & b1["lastblk"]):
            m.d.sync += started.eq(0)
        with m.Else():
            m.d.sync += started.eq(started_next)

        exps = []
        for p in range(P):
            u = Exp2Unit(in_width=XW + 1, frac_bits=F, p_bits=PB)
            m.submodules[f"exp2_{p}"] = u
            m.d.comb += [u.en.eq(1), u.t.eq(t2[p])]
            exps.append(u)
        b3_valid = delay(b2_valid, "b3_valid")
        b3 = delay_flags(dict(b2, first=first2, **{f"sh{p}": sh2[p] for p in range(P)}), "b3")
        b4_valid = delay(b3_valid, "b4_valid")
        b4 = delay_flags(b3, "b4")

        # event queue B -> C (at most VBANKS keys are in flight, so it never overflows)
        lane_ev = data.StructLayout({"p": unsigned(PB + 1), "sh": unsigned(len(sh2[0])),
                                     "first": unsigned(1), "keep": unsigned(1)})
        ev_layout = data.StructLayout({
            "lanes": data.ArrayLayout(lane_ev, P), "vb": unsigned(len(vb_w)),
            "lastblk": unsigned(1), "head": unsigned(len(a_head)), "rows": unsigned(len(a_rows)),
            "final": unsigned(1)})
        m.submodules.evq = evq = fifo.SyncFIFOBuffered(width=ev_layout.size, depth=VBANKS)
        ev_in = Signal(ev_layout)
        for p in range(P):
            m.d.comb += [ev_in.lanes[p].p.eq(Mux(b4["keep"][p], exps[p].p, 0)),
                         ev_in.lanes[p].sh.eq(Mux(b4["keep"][p], b4[f"sh{p}"], 0)),
                         ev_in.lanes[p].first.eq(b4["first"][p]),
                         ev_in.lanes[p].keep.eq(b4["keep"][p])]
        m.d.comb += [ev_in.vb.eq(b4["vb"]), ev_in.lastblk.eq(b4["lastblk"]),
                     ev_in.head.eq(b4["head"]), ev_in.rows.eq(b4["rows"]),
                     ev_in.final.eq(b4["final"]),
                     evq.w_data.eq(ev_in), evq.w_en.eq(b4_valid)]

        # --- stage C: weighted sum of V --------------------------------------------------------
        ev = Signal(ev_layout)
        c_active = Signal()
        c_i = Signal(range(max(D, C_MIN_PASS)))
        c_len_m1 = Signal.like(c_i)
        m.d.comb += c_len_m1.eq(Mux(dm1 < C_MIN_PASS - 1, C_MIN_PASS - 1, dm1))
        lsum = [Signal(LW, name=f"l{p}") for p in range(P)]
        lsnap = [Signal(LW, name=f"lsnap{p}") for p in range(P)]
        out_claim = Signal()
        out_ready = Signal()
        d_rows = Signal.like(a_rows)
        d_head = Signal.like(a_head)
        d_final = Signal()
        ev_next = Signal(ev_layout)
        m.d.comb += ev_next.eq(evq.r_data)
        can_pop = Signal()
        m.d.comb += can_pop.eq((~c_active | (c_i == c_len_m1)) & evq.r_rdy
                               & (~ev_next.lastblk | ~out_claim))
        out_release = Signal()
        m.d.comb += evq.r_en.eq(can_pop)
        # lanes that kept a key so far in the block; snapshot with the block's last key, so a
        # row that keeps no key outputs zeros instead of the sums it held before
        kept = Signal(P)
        kept_snap = Signal(P)
        kept_next = Signal(P)
        m.d.comb += kept_next.eq(kept | Cat(ev_next.lanes[p].keep for p in range(P)))
        with m.If(can_pop):
            m.d.sync += [ev.eq(ev_next), c_active.eq(1), c_i.eq(0),
                         kept.eq(Mux(ev_next.lastblk, 0, kept_next))]
            with m.If(ev_next.lastblk):
                m.d.sync += kept_snap.eq(kept_next)
            for p in range(P):
                le = ev_next.lanes[p]
                l_new = Mux(le.first, le.p, rshift_round(lsum[p], le.sh, LW + 1) + le.p)
                with m.If(le.keep):
                    m.d.sync += lsum[p].eq(l_new)
                with m.If(ev_next.lastblk):
                    m.d.sync += lsnap[p].eq(Mux(le.keep, l_new, lsum[p]))
            with m.If(ev_next.lastblk):
                m.d.sync += [out_claim.eq(1), d_rows.eq(ev_next.rows), d_head.eq(ev_next.head),
                             d_final.eq(ev_next.final)]
        with m.Elif(c_active):
            m.d.sync += c_i.eq(c_i + 1)
            with m.If(c_i == c_len_m1):
                m.d.sync += c_active.eq(0)
        with m.If(out_release):
            m.d.sync += out_claim.eq(0)

        issue = Signal()
        m.d.comb += issue.eq(c_active & (c_i <= dm1))
        m.d.comb += kif_dec.eq(issue & (c_i == dm1))
        m.d.comb += vbuf_r.addr.eq(ev.vb * D + c_i)
        for p in range(P):
            m.d.comb += acc_r[p].addr.eq(c_i)
        c1_valid = delay(issue, "c1_valid")
        c1_i = delay(c_i, "c1_i")
        c1_ev = delay(ev, "c1_ev")
        c2_valid = delay(c1_valid, "c2_valid")
        c2_i = delay(c1_i, "c2_i")
        c2_last = delay(c1_ev.lastblk, "c2_last")
        c2_new = [Signal(signed(AW), name=f"c2_new{p}") for p in range(P)]
        for p in range(P):
            le = c1_ev.lanes[p]
            acc = acc_r[p].data
            base = Mux(le.first, 0, rshift_round(acc, le.sh, AW + 1))
            pv = (lut_multiply(vbuf_r.data, Cat(le.p, C(0, 1))) if self.lut_macs is True
                  else le.p * vbuf_r.data)
            m.d.sync += c2_new[p].eq(Mux(le.keep, base + pv, acc))
            m.d.comb += [acc_w[p].addr.eq(c2_i), acc_w[p].data.eq(c2_new[p]),
                         acc_w[p].en.eq(c2_valid),
                         out_w[p].addr.eq(c2_i), out_w[p].data.eq(c2_new[p]),
                         out_w[p].en.eq(c2_valid & c2_last)]
        with m.If(c2_valid & c2_last & (c2_i == dm1)):
            m.d.sync += out_ready.eq(1)

        # --- stage D: reciprocal and output ----------------------------------------------------
        m.submodules.recip = recip = ReciprocalUnit(
            in_width=LW, mant_bits=self.recip_mant_bits, table_bits=self.recip_table_bits,
            recip_bits=self.recip_bits)
        RL = ReciprocalUnit.LATENCY
        r_reg = Array(Signal(self.recip_bits + 1, name=f"r{p}") for p in range(P))
        e_reg = Array(Signal(range(LW), name=f"e{p}") for p in range(P))
        d_recip = Signal()
        d_out = Signal()
        d_rc = Signal(range(P + RL + 1))
        d_lane = Signal(range(max(P, 2)))
        rc_in = Signal.like(d_lane)
        rc_out = Signal.like(d_lane)
        m.d.comb += [rc_in.eq(d_rc), rc_out.eq(d_rc - RL)]
        d_i = Signal(range(D))
        all_issued = Signal()
        m.d.comb += [recip.en.eq(1), recip.l.eq(Array(lsnap)[rc_in])]
        with m.If(out_ready & ~d_recip & ~d_out):
            m.d.sync += [d_recip.eq(1), d_rc.eq(0), out_ready.eq(0)]
        with m.If(d_recip):
            m.d.sync += d_rc.eq(d_rc + 1)
            with m.If(d_rc >= RL):
                m.d.sync += [r_reg[rc_out].eq(recip.r), e_reg[rc_out].eq(recip.e)]
            with m.If(d_rc == P + RL - 1):
                m.d.sync += [d_recip.eq(0), d_out.eq(1), d_lane.eq(0), d_i.eq(0)]

        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        d_issue = Signal()
        m.d.comb += d_issue.eq(d_out & en)
        for p in range(P):
            m.d.comb += [out_r[p].addr.eq(d_i), out_r[p].en.eq(en)]
        m.d.comb += out_release.eq(d_issue & (d_i == dm1) & (d_lane == d_rows - 1))
        hp_d = hp_rd.data
        m.d.comb += hp_rd.addr.eq(d_head)
        o1_valid, o2_valid, o3_valid, o4_valid = (Signal(name=f"o{n}_valid") for n in range(1, 5))
        o1_lane = Signal.like(d_lane)
        o1_r = Signal(self.recip_bits + 1)
        o1_e = Signal(range(LW))
        o1_hp = Signal(HeadParams)
        o1_kept, o2_kept, o3_kept, o4_kept = (Signal(name=f"o{n}_kept") for n in range(1, 5))
        o2_prod = Signal(signed(AW + self.recip_bits + 2))
        o2_sh = Signal(range(LW + self.recip_bits + 1))
        o2_hp = Signal(HeadParams)
        TW = AW + self.recip_bits + 2
        # t = a·r/l in V units with G guard bits: |a| <= 128·l, so |t| < 2^(G+7)·(1 + 2^-13) + 1
        o3_t = Signal(signed(self.guard_bits + 9))
        o3_hp = Signal(HeadParams)
        o4_y = Signal(signed(self.guard_bits + 26))
        o4_sh = Signal(6)
        out_rows = Array(r.data for r in out_r)
        y = Signal(signed(self.guard_bits + 27))
        m.d.comb += y.eq(rshift_round(o4_y, o4_sh, self.guard_bits + 26))
        with m.If(en):
            m.d.sync += [o1_valid.eq(d_issue), o1_lane.eq(d_lane), o1_r.eq(r_reg[d_lane]),
                         o1_e.eq(e_reg[d_lane]), o1_hp.eq(hp_d),
                         o1_kept.eq(kept_snap.bit_select(d_lane, 1)), o2_kept.eq(o1_kept),
                         o3_kept.eq(o2_kept), o4_kept.eq(o3_kept)]
            m.d.sync += [o2_valid.eq(o1_valid), o2_prod.eq(out_rows[o1_lane] * o1_r),
                         o2_sh.eq(o1_e + self.recip_bits - self.guard_bits), o2_hp.eq(o1_hp)]
            m.d.sync += [o3_valid.eq(o2_valid), o3_t.eq(rshift_round(o2_prod, o2_sh, TW)),
                         o3_hp.eq(o2_hp)]
            m.d.sync += [o4_valid.eq(o3_valid), o4_y.eq(o3_t * o3_hp.out_mult),
                         o4_sh.eq(o3_hp.out_shift)]
            m.d.sync += [self.o.valid.eq(o4_valid),
                         self.o.payload.eq(Mux(~o4_kept, 0,
                                               Mux(y > 127, 127, Mux(y < -128, -128, y))))]
        with m.If(d_issue):
            m.d.sync += d_i.eq(d_i + 1)
            with m.If(d_i == dm1):
                m.d.sync += [d_i.eq(0), d_lane.eq(d_lane + 1)]
                with m.If(d_lane == d_rows - 1):
                    m.d.sync += d_out.eq(0)
                    with m.If(d_final):
                        m.d.sync += all_issued.eq(1)

        # --- end of job --------------------------------------------------------------------
        with m.If(running & all_issued & ~(o1_valid | o2_valid | o3_valid | o4_valid)
                  & (~self.o.valid | self.o.ready)):
            m.d.sync += [running.eq(0), all_issued.eq(0), self.done.eq(1),
                         ld_head.eq(0), ld_row0.eq(0), ld_lane.eq(0), ld_i.eq(0),
                         a_head.eq(0), a_row0.eq(0), a_i.eq(0)]
        return m


def softmax_cycle_model(n, d, lanes, heads, schedule):
    """Cycles from the ``start`` edge to the ``done`` edge of :class:`SoftmaxAttention`.

    Exact for streams that are never stalled (``q``, ``kv`` always valid, ``o`` always ready).
    ``schedule`` is :func:`amaformer.gen.attention.softmax_schedule` for one head (the same for
    every head). The model follows the pipeline at the granularity of keys: the loader fills a
    Q bank in ``rows·d`` cycles; stage A takes ``d`` cycles per key and may run ``VBANKS`` keys
    ahead of stage C; C takes ``max(d, C_MIN_PASS)`` cycles per key and starts ``A_TO_C``
    cycles after A's last beat of the key; D takes ``lanes + RECIP_PHASE + rows·d`` cycles per
    block and must finish before C begins the last key of the next-but-one block.
    """
    if min(n, d, lanes, heads) <= 0:
        return 1
    plen = max(d, C_MIN_PASS)
    blocks = [(rows, keys) for _ in range(heads) for _, rows, keys in schedule]
    a_last_blk = []                  # cycle of A's last beat, per block
    ld_end = 0                       # cycle of the loader's last beat of the previous block
    a_end = 0                        # cycle of A's last beat of the previous key
    pops, releases = [], []          # per key: C's pop cycle; cycle A may reuse its V bank
    c_pop = None
    d_last = 0                       # cycle of D's last read of the previous block
    for b, (rows, keys) in enumerate(blocks):
        ld_start = max(ld_end + 1, a_last_blk[b - 2] + 1 if b >= 2 else 1)
        ld_end = ld_start + rows * d - 1
        for idx, _ in enumerate(keys):
            start = max(a_end + 1, ld_end + 1)
            if len(pops) >= VBANKS:
                start = max(start, releases[-VBANKS])
            a_end = start + d - 1
            ready = a_end + A_TO_C
            pop = ready if c_pop is None else max(ready, c_pop + plen)
            if idx == len(keys) - 1 and b > 0:
                pop = max(pop, d_last + 1)
            c_pop = pop
            pops.append(pop)
            releases.append(pop + d + 1)
        a_last_blk.append(a_end)
        d_start = max(c_pop + d + 3, d_last + 1)
        d_last = d_start + lanes + RECIP_PHASE + rows * d
    return d_last + OUT_LATENCY + 1
