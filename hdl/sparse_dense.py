"""Sparse-dense coordinator (ViTCoD): a denser and a sparser softmax engine over a polarized
fixed mask, running concurrently, merged into one online softmax per row.

Dataflow of :class:`SparseDenseEngine` (one job = ``heads`` heads of ``tokens × dim`` int8 Q, K, V
in the activation memory, output in the same layout in the output memory)::

    act port ─► loader ─► Q, K, V buffers (qkv_buffers heads; Q read by every lane, K and V
                │         by the dense engine and by each sparse lane: one read port each)
                ▼
    dense_mem ─► dense sequencer ─► W_d lanes in lock step: per block of W_d rows its dense keys
    sparse_mem ─► W_s sparse sequencers ─► one lane each: its own (row, key) list
                ▼  per-row partial states (m, l, a[d]) in each lane's state banks (ping-pong)
    merge: per row, m = max m_k, l = Σ rs(l_k, m - m_k), a = Σ rs(a_k, m - m_k), reciprocal,
           requantization ─► output port (rows in the original token order)

The three phases are pipelined over heads: while the engines compute head h, the loader
fills the other bank with head h + 1 and the merge drains head h - 1. The loader needs
``3·tokens·dim`` reads of the byte-wide activation port per head (Q, K and V once each, the only
traffic on that port); the merge writes ``tokens·dim`` output bytes per head.

Lane arithmetic (one (row, key) pair every ``T = max(dim, 4)`` cycles) is the online softmax of
:class:`amaformer.hdl.attention.SoftmaxAttention`, with its units
(:class:`~amaformer.hdl.attention_units.Exp2Unit`,
:class:`~amaformer.hdl.attention_units.ReciprocalUnit`) and widths; the merge of partial states
is :func:`amaformer.gen.sparse_dense.merge_states`. The whole unit is bit-exact with
:func:`amaformer.gen.sparse_dense.sparse_dense_golden`; :func:`amaformer.gen.sparse_dense.
sparse_dense_cycles` is its exact cycle count.
"""

from amaranth import *
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .attention import HeadParams
from .attention_spec import SoftmaxFormat
from .attention_units import Exp2Unit, ReciprocalUnit, rshift_round
from .common import MemWriteSignature, check_int, drive_write_port

from .sparse_dense_spec import (LANE_DRAIN, MERGE_ROW, MERGE_TAIL, PAIR_MIN,  # noqa: F401
                                DESCRIPTOR as SDDescriptor, HEAD_PARAMS, dense_entry_layout,
                                sparse_entry_layout)

__all__ = ["SparseDenseEngine", "SDDescriptor", "SDHeadParams", "dense_entry_layout",
           "sparse_entry_layout", "PAIR_MIN", "LANE_DRAIN", "MERGE_ROW", "MERGE_TAIL"]

#: Per-head parameters: the softmax scales, :data:`amaformer.hdl.attention.HeadParams` itself.
SDHeadParams = HeadParams
assert list(SDHeadParams) == list(HEAD_PARAMS)          # the wire format (sparse_dense_spec)


class _LaneSignature(wiring.Signature):
    """Ports of one :class:`_Lane`, from the sequencer's side (``slots`` state slots)."""

    def __init__(self, max_dim, slots):
        super().__init__({
            "beat":  Out(1),
            "i":     Out(range(max_dim)),
            "q":     Out(signed(8)),
            "k":     Out(signed(8)),
            "v":     Out(signed(8)),
            "keep":  Out(1),
            "first": Out(1),
            "last":  Out(1),
            "slot":  Out(range(slots)),
        })


class _Lane(wiring.Component):
    """One online-softmax lane: a (row, key) pair every ``T = max(dim, PAIR_MIN)`` cycles.

    A pair arrives as ``dim`` consecutive beats (``q[i]``, ``k[i]``, ``v[i]``, control held
    constant). Pipeline, cycles after the pair's last beat ``c0``: score ``s = Σ q·k`` complete
    (``c0+1``), logit ``x = rs(s·score_mult, score_shift)`` (``c0+2``), running maximum and
    ``t = x - (m << F)`` (``c0+3``), ``p = exp2(t)`` (``c0+5``), running sum, then the weighted
    sum ``a[i] = rs(a[i], sh) + p·v[i]`` read-modify-written from ``c0+6`` for ``dim`` cycles
    (last write at ``c0 + dim + 7``, :data:`LANE_DRAIN`). ``first`` restarts the row's state;
    ``keep`` low makes the pair a no-op; on ``last`` the row's ``(m, l)`` are stored at ``slot``
    and the slot is marked valid (``l = 0`` when the run kept nothing).

    The merge reads the states through ``st_addr``/``a_addr`` (latency 1, advanced by ``rd_en``)
    and clears a slot's valid bit with ``clr``. Slots ``0 .. slots/2 - 1`` belong to head parity
    0, the others to parity 1; the weighted sums of the two parities are in two banks, and while
    ``m_own`` is high the merge takes the read port of the bank its address falls in (the lane
    then only ever works on the other parity).
    """

    def __init__(self, *, max_dim, slots, fmt, lw, aw, sw):
        self.max_dim, self.slots, self.fmt = max_dim, slots, fmt
        self.lw, self.aw, self.sw = lw, aw, sw
        self.xw = sw + 17
        super().__init__({
            "inp":          In(_LaneSignature(max_dim, slots)),
            "dim":          In(range(max_dim + 1)),
            "score_mult":   In(16),
            "score_shift":  In(6),
            "rd_en":        In(1),
            "st_addr":      In(range(slots)),
            "st_m":         Out(signed(self.xw - fmt.exp_frac_bits)),
            "st_l":         Out(lw),
            "st_valid":     Out(1),
            "a_addr":       In(range(slots // 2 * max_dim)),
            "a_par":        In(1),
            "m_own":        In(1),
            "a_data":       Out(signed(aw)),
            "clr":          In(1),
            "clr_slot":     In(range(slots)),
            "idle":         Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        D, S = self.max_dim, self.slots
        F, PB = self.fmt.exp_frac_bits, self.fmt.p_bits
        LW, AW, XW = self.lw, self.aw, self.xw
        MW = XW - F
        SHMAX = AW
        b = self.inp
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(self.dim - 1)

        vbuf = memory.Memory(shape=signed(8), depth=4 * D, init=[])
        H2 = S // 2
        # the weighted sums, one bank per head parity: the lane read-modify-writes one bank
        # while the merge reads the other, so each bank needs one write and one read port
        abank = [memory.Memory(shape=signed(AW), depth=H2 * D, init=[]) for _ in range(2)]
        mlmem = memory.Memory(shape=data.StructLayout({"m": signed(MW), "l": unsigned(LW)}),
                              depth=S, init=[])
        m.submodules.vbuf, m.submodules.mlmem = vbuf, mlmem
        m.submodules.abank0, m.submodules.abank1 = abank
        self.state_memories = (mlmem, abank)        # for white-box tests
        vb_w, vb_r = vbuf.write_port(), vbuf.read_port()
        a_wp = [bk.write_port() for bk in abank]
        a_rp = [bk.read_port() for bk in abank]
        ml_w, ml_m = mlmem.write_port(), mlmem.read_port()
        valid = Signal(S)

        # --- S: score ------------------------------------------------------------------------
        s = Signal(signed(self.sw))
        bank = Signal(2)
        lastb = Signal()
        m.d.comb += lastb.eq(b.beat & (b.i == dm1))
        m.d.comb += [vb_w.addr.eq(bank * D + b.i), vb_w.data.eq(b.v), vb_w.en.eq(b.beat)]
        with m.If(b.beat):
            m.d.sync += s.eq(Mux(b.i == 0, 0, s) + b.q * b.k)
        with m.If(lastb):
            m.d.sync += bank.eq(bank + 1)
        ctl = data.StructLayout({"keep": 1, "first": 1, "last": 1, "slot": range(S),
                                 "bank": 2, "fresh": 1})

        def stage(name):
            return Signal(name=f"{name}_v"), Signal(ctl, name=f"{name}_c")

        xv, xc = stage("x")
        m.d.sync += xv.eq(lastb)
        with m.If(lastb):
            m.d.sync += [xc.keep.eq(b.keep), xc.first.eq(b.first), xc.last.eq(b.last),
                         xc.slot.eq(b.slot), xc.bank.eq(bank)]
        # --- X: logit --------------------------------------------------------------------------
        x = Signal(signed(XW))
        mv, mc = stage("m")
        m.d.sync += [x.eq(rshift_round(s * self.score_mult, self.score_shift, XW)),
                     mv.eq(xv), mc.eq(xc)]
        # --- M: running maximum ----------------------------------------------------------------
        mx = Signal(signed(MW))
        started = Signal()
        xi, m_new = Signal(signed(MW)), Signal(signed(MW))
        diff = Signal(signed(MW + 1))
        fresh = Signal()
        t = Signal(signed(XW + 1))
        sh = Signal(range(SHMAX + 1))
        ev, ec = stage("e")
        m.d.comb += [xi.eq(x >> F), fresh.eq(mc.first | ~started),
                     m_new.eq(Mux(~fresh & (mx > xi), mx, xi)),
                     diff.eq(Mux(fresh, 0, m_new - mx))]
        m.d.sync += [t.eq(x - (m_new << F)), sh.eq(Mux(diff > SHMAX, SHMAX, diff[:len(sh)])),
                     ev.eq(mv), ec.eq(mc), ec.fresh.eq(fresh)]
        with m.If(mv & mc.keep):
            m.d.sync += [mx.eq(m_new), started.eq(1)]
        with m.Elif(mv & mc.first):
            m.d.sync += started.eq(0)
        m.submodules.exp2 = exp2 = Exp2Unit(in_width=XW + 1, frac_bits=F, p_bits=PB)
        m.d.comb += [exp2.en.eq(1), exp2.t.eq(t)]
        e2v, e2c = stage("e2")
        lv, lc = stage("l")
        sh2, sh3 = Signal.like(sh), Signal.like(sh)
        m.d.sync += [e2v.eq(ev), e2c.eq(ec), lv.eq(e2v), lc.eq(e2c), sh2.eq(sh), sh3.eq(sh2)]
        # --- L: running sum, state store, launch of the weighted sum ----------------------------
        lsum = Signal(LW)
        p = exp2.p
        l_new = Signal(LW)
        m.d.comb += l_new.eq(Mux(lc.fresh, p, rshift_round(lsum, sh3, LW + 1) + p))
        l_fin = Signal(LW)
        m.d.comb += l_fin.eq(Mux(lc.keep, l_new, Mux(lc.first, 0, lsum)))
        with m.If(lv):
            m.d.sync += lsum.eq(l_fin)
        m.d.comb += [ml_w.addr.eq(lc.slot), ml_w.data.m.eq(mx), ml_w.data.l.eq(l_fin),
                     ml_w.en.eq(lv & lc.last)]
        set_mask = Signal(S)
        clr_mask = Signal(S)
        m.d.comb += [set_mask.eq(Mux(lv & lc.last, C(1, S) << lc.slot, 0)),
                     clr_mask.eq(Mux(self.clr, C(1, S) << self.clr_slot, 0))]
        m.d.sync += valid.eq((valid | set_mask) & ~clr_mask)

        w_active = Signal()
        w_i = Signal(range(D))
        w_p = Signal(PB + 1)
        w_sh = Signal.like(sh)
        w_fresh = Signal()
        w_slot = Signal(range(S))
        w_bank = Signal(2)
        with m.If(lv & lc.keep):
            m.d.sync += [w_active.eq(1), w_i.eq(0), w_p.eq(p), w_sh.eq(sh3),
                         w_fresh.eq(lc.fresh), w_slot.eq(lc.slot), w_bank.eq(lc.bank)]
        with m.Elif(w_active):
            m.d.sync += w_i.eq(w_i + 1)
            with m.If(w_i == dm1):
                m.d.sync += w_active.eq(0)
        # --- W: weighted sum of V, read-modify-write ---------------------------------------------
        w_par = Signal()
        w_off = Signal(range(H2 * D))
        m.d.comb += [w_par.eq(w_slot >= H2),
                     w_off.eq((w_slot - Mux(w_par, H2, 0)) * D + w_i),
                     vb_r.addr.eq(w_bank * D + w_i)]
        m_par = Signal()
        m_off = Signal(range(H2 * D))
        m_par_r = Signal()
        m.d.comb += [m_par.eq(self.a_par), m_off.eq(self.a_addr)]
        with m.If(self.rd_en):
            m.d.sync += m_par_r.eq(m_par)
        for bk in range(2):
            own = Signal(name=f"merge_owns{bk}")
            m.d.comb += [own.eq(self.m_own & (m_par == bk)),
                         a_rp[bk].addr.eq(Mux(own, m_off, w_off)),
                         a_rp[bk].en.eq(Mux(own, self.rd_en, 1))]
        c1v, c1_par, c1_off = Signal(), Signal(), Signal(range(H2 * D))
        c1_p, c1_sh, c1_fresh = Signal.like(w_p), Signal.like(w_sh), Signal()
        m.d.sync += [c1v.eq(w_active), c1_par.eq(w_par), c1_off.eq(w_off), c1_p.eq(w_p),
                     c1_sh.eq(w_sh), c1_fresh.eq(w_fresh)]
        c2v, c2_par, c2_off = Signal(), Signal(), Signal(range(H2 * D))
        c2_new = Signal(signed(AW))
        a_old = Mux(c1_par, a_rp[1].data, a_rp[0].data)
        base = Mux(c1_fresh, 0, rshift_round(a_old, c1_sh, AW + 1))
        m.d.sync += [c2v.eq(c1v), c2_par.eq(c1_par), c2_off.eq(c1_off),
                     c2_new.eq(base + c1_p * vb_r.data)]
        for bk in range(2):
            m.d.comb += [a_wp[bk].addr.eq(c2_off), a_wp[bk].data.eq(c2_new),
                         a_wp[bk].en.eq(c2v & (c2_par == bk))]
        m.d.comb += self.idle.eq(~(b.beat | xv | mv | ev | e2v | lv | w_active | c1v | c2v))

        # --- merge read ports -----------------------------------------------------------------
        m.d.comb += [ml_m.addr.eq(self.st_addr), ml_m.en.eq(self.rd_en),
                     self.st_m.eq(ml_m.data.m), self.st_l.eq(ml_m.data.l),
                     self.a_data.eq(Mux(m_par_r, a_rp[1].data, a_rp[0].data))]
        with m.If(self.rd_en):
            m.d.sync += self.st_valid.eq(valid.bit_select(self.st_addr, 1))
        return m


class SparseDenseEngine(wiring.Component):
    """Sparse-dense coordinator engine: descriptor in, memory sequencing, ``done`` out; runs
    softmax attention under a polarized fixed mask on two concurrent engines. Behind the top it
    is wrapped by :class:`amaformer.hdl.sparse_dense_unit.SparseDenseUnit` (the unit contract);
    alone it has stall inputs on both memory ports, for tests of back-pressure.

    Parameters
    ----------
    dense_lanes, sparse_lanes : int
        ``W_d`` lanes of the denser engine (lock step, ``W_d`` rows of a block against the
        head's global keys) and ``W_s`` lanes of the sparser engine (each its own pair list).
        Every lane has ``2`` multipliers (score and weighted sum) plus the logit scaling, as a
        :class:`~amaformer.hdl.attention.SoftmaxAttention` lane. Chosen by
        :func:`amaformer.gen.sparse_dense.lane_split`.
    max_dim, max_tokens, max_heads : int
        Largest head dimension, token count and head count of a job.
    dense_depth, sparse_depth : int
        Entries of the dense engine's memory, and of each sparse lane's bank (a power of two).
    act_depth, out_depth : int
        Bytes of the activation and output memories.
    qkv_buffers : int
        Heads of Q, K, V held on chip (2 to 8): the loader may run ``qkv_buffers - 1`` heads
        ahead of the engines, so that light heads (load-bound) and heavy heads (compute-bound)
        average out. Each buffer is ``3·(max_tokens + dense_lanes)·max_dim`` bytes, read
        through ``1 + sparse_lanes`` ports (Q: ``dense_lanes + sparse_lanes``).
    exp_frac_bits, p_bits, recip_table_bits, recip_bits, recip_mant_bits, guard_bits : int
        Fixed-point format (:class:`amaformer.gen.attention.SoftmaxFormat`).

    Members
    -------
    start : ``In(1)``
        Check ``descriptor`` (held stable until ``ack``) and, if good, start the job; only while
        ``busy`` is low.
    descriptor : ``In(SDDescriptor)``
    ack, accepted : ``Out(1)``
        ``ack`` pulses 2 cycles after ``start`` rises; ``accepted`` (same cycle) says whether
        the job started. A job needs ``1 <= heads <= max_heads``, ``1 <= tokens <=
        max_tokens``, ``1 <= dim <= max_dim``, Q, K, V inside the activation memory, the output
        inside the output memory, ``dense_addr < dense_depth``, ``sparse_addr < sparse_depth``.
    busy, done : ``Out(1)``
        ``busy`` from the ``ack`` edge to the ``done`` pulse (the last output byte written).
    cycles : ``Out(32)``
        Cycles of the last job, from ``ack`` to ``done`` (valid with ``done``).
    dense_beats, sparse_beats : ``Out(32)``
        Cycles in which the dense engine, and each sparse lane (summed), received a beat during
        the last job: the busy fractions are ``dense_beats / cycles`` and
        ``sparse_beats / (W_s·cycles)``.
    act_addr : ``Out(range(act_depth))``
    act_rdata : ``In(8)``
        Activation memory read port, latency 1.
    act_stall : ``In(1)``
        The arbiter did not grant the port this cycle: ``act_addr`` is not read.
    out_addr, out_wdata, out_we : ``Out(...)``
        Output memory write port.
    out_stall : ``In(1)``
        Back-pressure on the output port: while high the merge (and its write) waits.
    hp_wr : ``In(MemWriteSignature(max_heads, SDHeadParams.size))``
    dense_wr : ``In(MemWriteSignature(dense_depth, dense_entry_layout(...)))``
    sparse_wr : ``In(MemWriteSignature(sparse_lanes·sparse_depth, sparse_entry_layout(...)))``
        Lane ``s``'s bank at addresses ``s·sparse_depth ...``.

    Write spaces and descriptor are written while ``busy`` is low.
    Cycle count: :func:`amaformer.gen.sparse_dense.sparse_dense_cycles` (exact).
    """

    def __init__(self, *, dense_lanes=1, sparse_lanes=3, max_dim=32, max_tokens=128,
                 max_heads=12, dense_depth=4096, sparse_depth=8192, act_depth=65536,
                 out_depth=65536, qkv_buffers=2, exp_frac_bits=6, p_bits=12, recip_table_bits=6,
                 recip_bits=15, recip_mant_bits=16, guard_bits=8):
        check_int("dense_lanes", dense_lanes, 1, 32)
        check_int("sparse_lanes", sparse_lanes, 1, 32)
        check_int("max_dim", max_dim, 1, 1024)
        check_int("max_tokens", max_tokens, 2, 1 << 15)
        check_int("max_heads", max_heads, 1, 256)
        check_int("dense_depth", dense_depth, 1, 1 << 24)
        check_int("sparse_depth", sparse_depth, 2, 1 << 24)
        if sparse_depth & (sparse_depth - 1):
            raise ValueError(f"sparse_depth must be a power of two, not {sparse_depth!r}")
        check_int("act_depth", act_depth, 1, 1 << 31)
        check_int("qkv_buffers", qkv_buffers, 2, 8)
        self.qkv_buffers = qkv_buffers
        check_int("out_depth", out_depth, 1, 1 << 31)
        self.fmt = SoftmaxFormat(exp_frac_bits, p_bits, recip_table_bits, recip_bits,
                                 recip_mant_bits, guard_bits)
        self.dense_lanes, self.sparse_lanes = dense_lanes, sparse_lanes
        self.max_dim, self.max_tokens, self.max_heads = max_dim, max_tokens, max_heads
        self.dense_depth, self.sparse_depth = dense_depth, sparse_depth
        self.act_depth, self.out_depth = act_depth, out_depth
        # widths of SoftmaxAttention (same formulas)
        self.score_bits = 16 + ceil_log2(max_dim)
        self.sum_bits = self.fmt.sum_bits(max_tokens)
        self.acc_bits = self.fmt.acc_bits(max_tokens)
        self.dense_slots = -(-max_tokens // dense_lanes)
        super().__init__({
            "start": In(1), "descriptor": In(SDDescriptor),
            "ack": Out(1), "accepted": Out(1), "busy": Out(1), "done": Out(1),
            "cycles": Out(32), "dense_beats": Out(32), "sparse_beats": Out(32),
            "act_addr": Out(range(act_depth)), "act_rdata": In(8), "act_stall": In(1),
            "out_addr": Out(range(out_depth)), "out_wdata": Out(8), "out_we": Out(1),
            "out_stall": In(1),
            "hp_wr": In(MemWriteSignature(max_heads, SDHeadParams)),
            "dense_wr": In(MemWriteSignature(dense_depth,
                                             dense_entry_layout(max_tokens, dense_lanes))),
            "sparse_wr": In(MemWriteSignature(sparse_lanes * sparse_depth,
                                              sparse_entry_layout(max_tokens))),
        })

    def elaborate(self, platform):
        m = Module()
        Wd, Ws = self.dense_lanes, self.sparse_lanes
        D, N, H = self.max_dim, self.max_tokens, self.max_heads
        B = self.qkv_buffers
        NS = N + Wd                     # rows per parity in the Q/K/V banks
        Sd = self.dense_slots
        fmt = self.fmt
        LW, AW, SW = self.sum_bits, self.acc_bits, self.score_bits
        d = self.descriptor

        # ------------------------------------------------------------ descriptor check
        heads = Signal(range(H + 1))
        tokens = Signal(range(N + 1))
        dim = Signal(range(D + 1))
        dm1 = Signal(range(D))
        m.d.comb += dm1.eq(dim - 1)
        a_q, a_k, a_v = (Signal(range(self.act_depth + 1), name=f"a_{n}") for n in "qkv")
        a_o = Signal(range(self.out_depth + 1))
        a_dn = Signal(range(self.dense_depth))
        a_sp = Signal(range(self.sparse_depth))
        size = Signal(48)
        go = Signal()
        running = Signal()
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                with m.If(self.start & ~running):
                    m.d.sync += size.eq(d.heads * d.tokens * d.dim)
                    m.next = "CHECK"
            with m.State("CHECK"):
                ok = ((d.heads >= 1) & (d.heads <= H) & (d.tokens >= 1) & (d.tokens <= N)
                      & (d.dim >= 1) & (d.dim <= D)
                      & (d.q_addr + size <= self.act_depth)
                      & (d.k_addr + size <= self.act_depth)
                      & (d.v_addr + size <= self.act_depth)
                      & (d.o_addr + size <= self.out_depth)
                      & (d.dense_addr < self.dense_depth)
                      & (d.sparse_addr < self.sparse_depth))
                m.d.comb += [self.ack.eq(1), self.accepted.eq(ok), go.eq(ok)]
                with m.If(ok):
                    m.d.sync += [heads.eq(d.heads), tokens.eq(d.tokens), dim.eq(d.dim),
                                 a_q.eq(d.q_addr), a_k.eq(d.k_addr), a_v.eq(d.v_addr),
                                 a_o.eq(d.o_addr), a_dn.eq(d.dense_addr),
                                 a_sp.eq(d.sparse_addr)]
                m.next = "IDLE"
        m.d.comb += self.busy.eq(running)

        # ------------------------------------------------------------ head scoreboard
        HB = range(H + 1)
        ld_cnt, cp_cnt, mg_cnt = Signal(HB), Signal(HB), Signal(HB)
        ld_inc, cp_inc, mg_inc = Signal(), Signal(), Signal()
        finish = Signal()
        with m.If(go):
            m.d.sync += [running.eq(1), ld_cnt.eq(0), cp_cnt.eq(0), mg_cnt.eq(0),
                         self.cycles.eq(0), self.dense_beats.eq(0), self.sparse_beats.eq(0)]
        with m.Else():
            m.d.sync += [ld_cnt.eq(ld_cnt + ld_inc), cp_cnt.eq(cp_cnt + cp_inc),
                         mg_cnt.eq(mg_cnt + mg_inc)]
            with m.If(running):
                m.d.sync += self.cycles.eq(self.cycles + 1)
        m.d.sync += self.done.eq(finish)
        with m.If(finish):
            m.d.sync += running.eq(0)

        # ------------------------------------------------------------ memories
        def bank(name):
            mem = memory.Memory(shape=signed(8), depth=B * NS * D, init=[])
            m.submodules[name] = mem
            return mem
        qmem, kmem, vmem = bank("qmem"), bank("kmem"), bank("vmem")
        q_w, k_w, v_w = qmem.write_port(), kmem.write_port(), vmem.write_port()

        m.submodules.hpmem = hpmem = memory.Memory(shape=SDHeadParams, depth=H, init=[])
        drive_write_port(m, hpmem.write_port(), self.hp_wr)
        hp_c, hp_m = hpmem.read_port(), hpmem.read_port()

        de_lay = dense_entry_layout(N, Wd)
        se_lay = sparse_entry_layout(N)
        m.submodules.dmem = dmem = memory.Memory(shape=de_lay, depth=self.dense_depth, init=[])
        drive_write_port(m, dmem.write_port(), self.dense_wr)
        dm_r = dmem.read_port()
        smems = []
        sb = ceil_log2(self.sparse_depth)
        for s in range(Ws):
            sm = memory.Memory(shape=se_lay, depth=self.sparse_depth, init=[])
            m.submodules[f"smem{s}"] = sm
            w = sm.write_port()
            m.d.comb += [w.addr.eq(self.sparse_wr.addr[:sb]), w.data.eq(self.sparse_wr.data),
                         w.en.eq(self.sparse_wr.en & (self.sparse_wr.addr[sb:] == s))]
            smems.append(sm.read_port())

        # ------------------------------------------------------------ loader
        ld_active = Signal()
        ld_sec = Signal(2)              # 0 Q, 1 K, 2 V
        ld_r = Signal(range(N))
        ld_i = Signal(range(D))
        ld_buf = Signal(range(B))       # Q/K/V buffer of the head being loaded
        ptr = [Signal(range(self.act_depth + 1), name=f"ptr_{n}") for n in "qkv"]
        with m.If(go):
            m.d.sync += [ptr[0].eq(d.q_addr), ptr[1].eq(d.k_addr), ptr[2].eq(d.v_addr),
                         ld_active.eq(0)]
        ld_next = Signal(range(B))      # buffer of the next head to load
        with m.If(go):
            m.d.sync += ld_next.eq(0)
        can_load = Signal()
        m.d.comb += can_load.eq(running & ~ld_active & (ld_cnt < heads) & ~ld_inc
                                & (ld_cnt <= cp_cnt + B - 1))
        with m.If(can_load):
            m.d.sync += ld_next.eq(Mux(ld_next == B - 1, 0, ld_next + 1))
            m.d.sync += [ld_active.eq(1), ld_sec.eq(0), ld_r.eq(0), ld_i.eq(0),
                         ld_buf.eq(ld_next)]
        issue = Signal()
        m.d.comb += [issue.eq(ld_active & ~self.act_stall),
                     self.act_addr.eq(Array(ptr)[ld_sec])]
        ld_last = Signal()
        m.d.comb += ld_last.eq((ld_sec == 2) & (ld_r == tokens - 1) & (ld_i == dm1))
        with m.If(issue):
            m.d.sync += Array(ptr)[ld_sec].eq(Array(ptr)[ld_sec] + 1)
            m.d.sync += ld_i.eq(ld_i + 1)
            with m.If(ld_i == dm1):
                m.d.sync += [ld_i.eq(0), ld_r.eq(ld_r + 1)]
                with m.If(ld_r == tokens - 1):
                    m.d.sync += [ld_r.eq(0), ld_sec.eq(ld_sec + 1)]
            with m.If(ld_last):
                m.d.sync += ld_active.eq(0)
        w1, w1_sec = Signal(), Signal(2)
        w1_addr = Signal(range(B * NS * D))
        w1_last = Signal()
        m.d.sync += [w1.eq(issue), w1_sec.eq(ld_sec), w1_addr.eq((ld_buf * NS + ld_r) * D + ld_i),
                     w1_last.eq(issue & ld_last)]
        for sec, wp in enumerate((q_w, k_w, v_w)):
            m.d.comb += [wp.addr.eq(w1_addr), wp.data.eq(self.act_rdata),
                         wp.en.eq(w1 & (w1_sec == sec))]
        m.d.comb += ld_inc.eq(w1_last)

        # ------------------------------------------------------------ lanes
        all_idle = Signal()
        lane_kw = dict(max_dim=D, fmt=fmt, lw=LW, aw=AW, sw=SW)
        dl = [_Lane(slots=2 * Sd, **lane_kw) for _ in range(Wd)]
        sl = [_Lane(slots=2 * N, **lane_kw) for _ in range(Ws)]
        self.lanes = (dl, sl)                       # for white-box tests
        for n, ln in enumerate(dl):
            m.submodules[f"dlane{n}"] = ln
        for n, ln in enumerate(sl):
            m.submodules[f"slane{n}"] = ln
        m.d.comb += all_idle.eq(Cat(ln.idle for ln in dl + sl).all())
        for ln in dl + sl:
            m.d.comb += [ln.dim.eq(dim), ln.score_mult.eq(hp_c.data.score_mult),
                         ln.score_shift.eq(hp_c.data.score_shift)]

        # ------------------------------------------------------------ compute phase
        c_par = Signal()                # state parity of the head being computed
        c_buf = Signal(range(B))        # its Q/K/V buffer
        m.d.comb += [c_par.eq(cp_cnt[0]), hp_c.addr.eq(cp_cnt)]
        with m.If(go):
            m.d.sync += c_buf.eq(0)
        with m.Elif(cp_inc):
            m.d.sync += c_buf.eq(Mux(c_buf == B - 1, 0, c_buf + 1))
        c_state = Signal(2)             # 0 idle, 1 params, 2 run, 3 drain
        seq_go = Signal()
        d_busy = Signal()
        s_busy = Signal(Ws)
        T = Signal(range(max(D, PAIR_MIN) + 1))
        m.d.comb += T.eq(Mux(dim < PAIR_MIN, PAIR_MIN, dim))
        m.d.comb += cp_inc.eq(0)
        with m.Switch(c_state):
            with m.Case(0):
                with m.If(running & ~go & (cp_cnt < heads) & (ld_cnt > cp_cnt)
                          & (mg_cnt + 1 >= cp_cnt) & ~mg_inc & ~cp_inc):
                    m.d.sync += c_state.eq(1)
            with m.Case(1):
                m.d.comb += seq_go.eq(1)
                m.d.sync += c_state.eq(2)
            with m.Case(2):
                with m.If(~seq_go & ~d_busy & (s_busy == 0)):
                    m.d.sync += c_state.eq(3)
            with m.Case(3):
                with m.If(all_idle):
                    m.d.comb += cp_inc.eq(1)
                    m.d.sync += c_state.eq(0)

        def list_sequencer(name, rd, depth, init, busy):
            """Walk one entry list: an entry every ``T`` cycles, ``dim`` beats each, until an
            ``eoh`` entry. Returns ``(ent, st, beat)``: the current entry, the cycle within its
            period and the beat strobe (addresses are formed from them)."""
            ptr = Signal(range(depth), name=f"{name}_ptr")
            with m.If(go):
                m.d.sync += ptr.eq(init)
            m.d.comb += rd.addr.eq(ptr)
            st = Signal(range(max(D, PAIR_MIN)), name=f"{name}_t")
            fetch = Signal(name=f"{name}_fetch")
            cur = Signal.like(rd.data, name=f"{name}_cur")
            ent = Signal.like(rd.data, name=f"{name}_ent")
            with m.If(seq_go):
                m.d.sync += [busy.eq(1), fetch.eq(1), st.eq(0)]
            m.d.comb += ent.eq(Mux(st == 0, rd.data, cur))
            beat = Signal(name=f"{name}_beat")
            with m.If(busy & ~seq_go):
                with m.If(fetch):
                    m.d.sync += fetch.eq(0)
                with m.Else():
                    m.d.sync += st.eq(st + 1)
                    with m.If(st == 0):
                        m.d.sync += [cur.eq(rd.data), ptr.eq(ptr + 1)]
                        with m.If(rd.data.eoh):
                            m.d.sync += [busy.eq(0), st.eq(0)]
                    m.d.comb += beat.eq((st <= dm1) & ~ent.eoh)
                    with m.If(st == T - 1):
                        m.d.sync += st.eq(0)
            return ent, st, beat

        # dense sequencer: W_d lanes in lock step, one K/V read serves them all
        d_ent, d_t, d_beat = list_sequencer("d", dm_r, self.dense_depth, d.dense_addr, d_busy)
        kv_d_addr = Signal(range(B * NS * D))
        m.d.comb += kv_d_addr.eq((c_buf * NS + d_ent.key) * D + d_t)
        k_rd = kmem.read_port()
        v_rd = vmem.read_port()
        m.d.comb += [k_rd.addr.eq(kv_d_addr), v_rd.addr.eq(kv_d_addr)]
        # beats reach the lanes one cycle after the addresses (memory read latency)
        d_b1 = Signal()
        d_b1_i = Signal(range(D))
        d_b1_e = Signal(de_lay)
        d_b1_par = Signal()
        m.d.sync += [d_b1.eq(d_beat), d_b1_i.eq(d_t), d_b1_e.eq(d_ent), d_b1_par.eq(c_par)]
        with m.If(d_beat):
            m.d.sync += self.dense_beats.eq(self.dense_beats + 1)
        for p, ln in enumerate(dl):
            qr = qmem.read_port()
            m.d.comb += qr.addr.eq((c_buf * NS + d_ent.blk * Wd + p) * D + d_t)
            m.d.comb += [ln.inp.beat.eq(d_b1), ln.inp.i.eq(d_b1_i), ln.inp.q.eq(qr.data),
                         ln.inp.k.eq(k_rd.data), ln.inp.v.eq(v_rd.data),
                         ln.inp.keep.eq(d_b1_e.keep[p]), ln.inp.first.eq(d_b1_e.first),
                         ln.inp.last.eq(d_b1_e.last), ln.inp.slot.eq(d_b1_par * Sd + d_b1_e.blk)]

        # sparse sequencers: one list and one lane each
        sbeats = []
        for s, ln in enumerate(sl):
            ent, st, beat = list_sequencer(f"s{s}", smems[s], self.sparse_depth, d.sparse_addr,
                                           s_busy[s])
            sbeats.append(beat)
            addr_q = Signal(range(B * NS * D), name=f"s{s}_qa")
            addr_kv = Signal(range(B * NS * D), name=f"s{s}_kva")
            m.d.comb += [addr_q.eq((c_buf * NS + ent.row) * D + st),
                         addr_kv.eq((c_buf * NS + ent.key) * D + st)]
            qr, kr, vr = qmem.read_port(), kmem.read_port(), vmem.read_port()
            m.d.comb += [qr.addr.eq(addr_q), kr.addr.eq(addr_kv), vr.addr.eq(addr_kv)]
            b1 = Signal(name=f"s{s}_b1")
            b1_i = Signal(range(D), name=f"s{s}_b1i")
            b1_e = Signal(se_lay, name=f"s{s}_b1e")
            b1_par = Signal(name=f"s{s}_b1par")
            m.d.sync += [b1.eq(beat), b1_i.eq(st), b1_e.eq(ent), b1_par.eq(c_par)]
            m.d.comb += [ln.inp.beat.eq(b1), ln.inp.i.eq(b1_i), ln.inp.q.eq(qr.data),
                         ln.inp.k.eq(kr.data), ln.inp.v.eq(vr.data), ln.inp.keep.eq(1),
                         ln.inp.first.eq(b1_e.first), ln.inp.last.eq(b1_e.last),
                         ln.inp.slot.eq(b1_par * N + b1_e.row)]
        with m.If(~go & running):
            m.d.sync += self.sparse_beats.eq(self.sparse_beats + sum(sbeats))

        # ------------------------------------------------------------ merge
        en = Signal()
        m.d.comb += en.eq(~self.out_stall)
        m_par = Signal()
        m.d.comb += [m_par.eq(mg_cnt[0]), hp_m.addr.eq(mg_cnt), hp_m.en.eq(en)]
        mg_active = Signal()
        mg_hp = Signal()                # one cycle for the head parameters
        mg_tail = Signal()              # last row issued, its outputs still in the pipeline
        r = Signal(range(N + 1))
        r_lane = Signal(range(Wd))
        r_slot = Signal(range(Sd))
        ph = Signal(range(MERGE_ROW + D + 1))   # cycle within the row
        NK = 1 + Ws
        for ln in dl + sl:
            m.d.comb += [ln.rd_en.eq(en), ln.m_own.eq(mg_active | mg_tail)]
        with m.If(en):
            with m.If(~mg_active & ~mg_tail & running & ~go & (mg_cnt < heads)
                      & (cp_cnt > mg_cnt)):
                m.d.sync += [mg_active.eq(1), mg_hp.eq(1), r.eq(0), r_lane.eq(0), r_slot.eq(0),
                             ph.eq(0)]
            with m.If(mg_hp):
                m.d.sync += mg_hp.eq(0)
        # state reads at ph == 0; the valid bit is cleared at the same time
        rd_row = Signal()
        m.d.comb += rd_row.eq(en & mg_active & ~mg_hp & (ph == 0))
        dslot = Signal(range(2 * Sd))
        sslot = Signal(range(2 * N))
        m.d.comb += [dslot.eq(m_par * Sd + r_slot), sslot.eq(m_par * N + r)]
        for p, ln in enumerate(dl):
            m.d.comb += [ln.st_addr.eq(dslot), ln.clr.eq(rd_row & (r_lane == p)),
                         ln.clr_slot.eq(dslot)]
        for ln in sl:
            m.d.comb += [ln.st_addr.eq(sslot), ln.clr.eq(rd_row), ln.clr_slot.eq(sslot)]
        # ph 1: states
        MW = dl[0].xw - fmt.exp_frac_bits
        SHMAX = AW
        r1_lane = Signal.like(r_lane)
        ms = [Signal(signed(MW), name=f"mg_m{k}") for k in range(NK)]
        ls = [Signal(LW, name=f"mg_l{k}") for k in range(NK)]
        vs = Signal(NK)
        with m.If(en & (ph == 0)):
            m.d.sync += r1_lane.eq(r_lane)
        with m.If(en & (ph == 1)):
            dm_ = Array(ln.st_m for ln in dl)[r1_lane]
            dl_ = Array(ln.st_l for ln in dl)[r1_lane]
            dv_ = Array(ln.st_valid for ln in dl)[r1_lane]
            m.d.sync += [ms[0].eq(dm_), ls[0].eq(dl_), vs[0].eq(dv_ & (dl_ != 0))]
            for k, ln in enumerate(sl):
                m.d.sync += [ms[k + 1].eq(ln.st_m), ls[k + 1].eq(ln.st_l),
                             vs[k + 1].eq(ln.st_valid & (ln.st_l != 0))]
        # ph 2: maximum over the valid states
        mmax = Signal(signed(MW))
        with m.If(en & (ph == 2)):
            best = None
            for k in range(NK):
                v_k = Mux(vs[k], ms[k], -(1 << (MW - 1)))
                best = v_k if best is None else Mux(v_k > best, v_k, best)
            m.d.sync += mmax.eq(best)
        # ph 3: shifts
        shs = [Signal(range(SHMAX + 1), name=f"mg_sh{k}") for k in range(NK)]
        with m.If(en & (ph == 3)):
            for k in range(NK):
                df = Signal(signed(MW + 1), name=f"mg_df{k}")
                m.d.comb += df.eq(mmax - ms[k])
                m.d.sync += shs[k].eq(Mux(df > SHMAX, SHMAX, df[:len(shs[k])]))
        # ph 4: merged running sum
        lmerged = Signal(LW + 1)
        with m.If(en & (ph == 4)):
            m.d.sync += lmerged.eq(sum(Mux(vs[k], rshift_round(ls[k], shs[k], LW + 1), 0)
                                       for k in range(NK)))
        m.submodules.recip = recip = ReciprocalUnit(
            in_width=LW, mant_bits=fmt.recip_mant_bits, table_bits=fmt.recip_table_bits,
            recip_bits=fmt.recip_bits)
        RL = ReciprocalUnit.LATENCY
        m.d.comb += [recip.en.eq(en), recip.l.eq(lmerged)]
        rr = Signal(fmt.recip_bits + 1)
        re = Signal(range(LW))
        kept = Signal()
        with m.If(en & (ph == 5 + RL)):
            m.d.sync += [rr.eq(recip.r), re.eq(recip.e), kept.eq(lmerged != 0)]
        # element reads: ph = MERGE_ROW .. MERGE_ROW + dim - 1
        e_iss = Signal()
        e_i = Signal(range(D + MERGE_ROW + 1))
        m.d.comb += [e_iss.eq(mg_active & ~mg_hp & (ph >= MERGE_ROW)),
                     e_i.eq(Mux(ph >= MERGE_ROW, ph - MERGE_ROW, 0))]     # stays in the bank
        for ln in dl:
            m.d.comb += [ln.a_addr.eq(r_slot * D + e_i), ln.a_par.eq(m_par)]
        for ln in sl:
            m.d.comb += [ln.a_addr.eq(r * D + e_i), ln.a_par.eq(m_par)]
        row_end = Signal()
        m.d.comb += row_end.eq(e_iss & (e_i == dm1))
        with m.If(en & mg_active & ~mg_hp):
            m.d.sync += ph.eq(ph + 1)
            with m.If(row_end):
                m.d.sync += [ph.eq(0), r.eq(r + 1), r_lane.eq(r_lane + 1)]
                with m.If(r_lane == Wd - 1):
                    m.d.sync += [r_lane.eq(0), r_slot.eq(r_slot + 1)]
                with m.If(r == tokens - 1):
                    m.d.sync += [mg_active.eq(0), mg_tail.eq(1)]
        # element pipeline: e1 data, e2 merged a, e3 a·r, e4 t, e5 t·out_mult, then the write
        e1 = Signal()
        e1_sh = [Signal.like(shs[k], name=f"e1_sh{k}") for k in range(NK)]
        e1_vs = Signal(NK)
        e1_lane = Signal.like(r_lane)
        e1_rr, e1_re, e1_kept = Signal.like(rr), Signal.like(re), Signal()
        e1_last = Signal()
        TW = AW + fmt.recip_bits + 2
        e2, e3, e4, e5 = Signal(), Signal(), Signal(), Signal()
        e2_a = Signal(signed(AW + 3))
        e2_rr, e2_re, e2_kept = Signal.like(rr), Signal.like(re), Signal()
        e3_prod = Signal(signed(TW + 3))
        e3_sh = Signal(range(LW + fmt.recip_bits + 1))
        e3_kept = Signal()
        e4_t = Signal(signed(fmt.guard_bits + 9))
        e4_kept = Signal()
        e5_y = Signal(signed(fmt.guard_bits + 26))
        e5_kept = Signal()
        e_last = [Signal(name=f"e{n}_last") for n in range(2, 6)]
        hpd = hp_m.data
        with m.If(en):
            m.d.sync += [e1.eq(e_iss), e1_vs.eq(vs), e1_lane.eq(r1_lane), e1_rr.eq(rr),
                         e1_re.eq(re), e1_kept.eq(kept),
                         e1_last.eq(row_end & (r == tokens - 1))]
            m.d.sync += [e1_sh[k].eq(shs[k]) for k in range(NK)]
            da = Array(ln.a_data for ln in dl)[e1_lane]
            terms = [Mux(e1_vs[0], rshift_round(da, e1_sh[0], AW + 1), 0)]
            terms += [Mux(e1_vs[k + 1], rshift_round(ln.a_data, e1_sh[k + 1], AW + 1), 0)
                      for k, ln in enumerate(sl)]
            m.d.sync += [e2.eq(e1), e2_a.eq(sum(terms)), e2_rr.eq(e1_rr), e2_re.eq(e1_re),
                         e2_kept.eq(e1_kept), e_last[0].eq(e1_last)]
            m.d.sync += [e3.eq(e2), e3_prod.eq(e2_a * e2_rr),
                         e3_sh.eq(e2_re + fmt.recip_bits - fmt.guard_bits),
                         e3_kept.eq(e2_kept), e_last[1].eq(e_last[0])]
            m.d.sync += [e4.eq(e3), e4_t.eq(rshift_round(e3_prod, e3_sh, TW + 3)),
                         e4_kept.eq(e3_kept), e_last[2].eq(e_last[1])]
            m.d.sync += [e5.eq(e4), e5_y.eq(e4_t * hpd.out_mult), e5_kept.eq(e4_kept),
                         e_last[3].eq(e_last[2])]
        y = Signal(signed(fmt.guard_bits + 27))
        m.d.comb += y.eq(rshift_round(e5_y, hpd.out_shift, fmt.guard_bits + 26))
        optr = Signal(range(self.out_depth + 1))
        with m.If(go):
            m.d.sync += optr.eq(d.o_addr)
        m.d.comb += [self.out_addr.eq(optr), self.out_we.eq(en & e5),
                     self.out_wdata.eq(Mux(~e5_kept, 0,
                                           Mux(y > 127, 127, Mux(y < -128, -128, y))))]
        with m.If(en & e5):
            m.d.sync += optr.eq(optr + 1)
        m.d.comb += mg_inc.eq(en & e5 & e_last[3])
        with m.If(mg_inc):
            m.d.sync += mg_tail.eq(0)
        m.d.comb += finish.eq(mg_inc & (mg_cnt + 1 == heads))
        return m
