"""Attention behind the top: descriptor checks, and a sequencer between the accelerator's
memories and the attention engine.

:class:`AttentionUnit` owns one engine (:class:`~amaformer.hdl.attention.SoftmaxAttention`,
:class:`~amaformer.hdl.attention_linear.LinearCausalAttention` or
:class:`~amaformer.hdl.attention_angular.LinearAngularAttention`) and, while a job runs, the
activation memory's single byte port and the output memory's write port::

    activation memory ─► generator (one byte read per cycle) ─► byte FIFO ─► assembler ─► engine
    (Q, K, V, sparse keep image)   address order of the schedule   (tagged)   q / kv / qkv beats
    engine.o ─► output memory (one byte per cycle, never stalled)

* ``softmax``: per head and per block of ``lanes`` query rows, the block's Q rows, then the keys
  the block keeps, ascending, each as ``dim`` ``kv`` beats: exactly the order of
  :func:`amaformer.gen.attention.softmax_schedule`. The causal mask is computed here (key ``j``
  is kept by row ``row0 + r`` iff ``j <= row0 + r``; keys after the block's last row are never
  read); a sparse mask is read from the image of :func:`amaformer.hdl.protocol.keep_mask_image`
  (per block: the last key to send, then one keep byte per key; a key whose byte is zero costs
  two cycles and is not sent).
* ``linear_causal``: per head, one engine job (new sequence, or the previous one continued), the
  ``qkv`` beats token by token.
* ``linear_angular``: per head, one engine job; the head's ``qkv`` beats are read twice (the
  kernel's two passes: ``k̂ᵀV``, then the outputs).

The activation memory is single-ported and byte-wide (SPRAM on iCE40), so a ``kv`` beat takes
two reads (K, V) and a ``qkv`` beat three: the engine is fed at most one ``kv`` beat every two
cycles. :func:`attention_job_cycles` is the exact cycle count of a job (checked against the RTL
through the top).
"""

from collections import deque

from amaranth import *
from amaranth.lib import data, fifo, memory, wiring

from . import attention_spec as S
from .attention import (A_TO_C, C_MIN_PASS, OUT_LATENCY, RECIP_PHASE, VBANKS, HeadParams,
                        SoftmaxAttention)
from .attention_angular import MAC_DRAIN, OUT_DRAIN, LinearAngularAttention
from .attention_linear import TOKEN_OVERHEAD, LinearCausalAttention
from .common import MemWriteSignature, drive_write_port
from .unit import Unit, receive_descriptor

__all__ = ["AttentionUnit", "attention_job_cycles", "RD_FIFO_DEPTH"]

#: Bytes read ahead of the engine (byte FIFO between the activation memory and the assembler).
RD_FIFO_DEPTH = 4
#: Supported engines (``attention.mode``).
UNIT_MODES = ("softmax", "linear_causal", "linear_angular")

_KIND_Q, _KIND_K, _KIND_V = 0, 1, 2

# HeadParams (hdl.attention) and the wire format (protocol.HEAD_PARAM_FIELDS) must agree.
assert [(n, Shape.cast(HeadParams.members[n]).width) for n in HeadParams.members] == \
    list(S.HEAD_PARAM_FIELDS)


class AttentionUnit(Unit):
    """Attention engine with descriptor checks and the memory sequencer of the top.

    Parameters
    ----------
    att : AttentionConfig
        Read duck-typed: ``mode`` (``"softmax"``, ``"linear_causal"`` or
        ``"linear_angular"``), ``heads``, ``head_dim``, ``max_tokens``, ``lanes``, the
        fixed-point fields, ``sparse``, ``conv_taps`` (``linear_causal`` only: the weights
        arrive on ``conv``, the scale per head in the HEADS word's score fields).
    act_depth, out_depth : int
        Bytes of the activation and output memories.

    Members
    -------
    The :class:`~amaformer.hdl.unit.UnitSignature`: ``ctl``, ``desc`` (the descriptor,
    :data:`amaformer.hdl.attention_spec.DESCRIPTOR`), ``act`` (reads Q, K, V and the keep
    image, one byte per cycle), ``out`` (one output byte per cycle, never stalled), and the
    spaces:

    heads : ``In(MemWriteSignature(heads, HeadParams.size))``
        Per-head parameters (:data:`amaformer.hdl.attention.HeadParams`).
    conv : ``In(MemWriteSignature(...))``
        ``linear_causal`` with ``conv_taps > 0`` only: the engine's convolution weight port
        (:func:`amaformer.hdl.attention_angular.conv_weight_writes` gives the addresses); the
        weights stay loaded and serve every head of every job.

    ``ctl.ack`` comes at most ``~50 + tokens / lanes`` cycles after ``ctl.start``; on
    acceptance that edge is also the job's start edge (``ctl.started``); ``ctl.done`` pulses
    when the last output byte is in the output memory.

    Descriptor rules (otherwise ``ack`` with ``accepted`` low): ``1 <= heads <= att.heads``,
    ``1 <= tokens <= att.max_tokens``, ``1 <= dim <= att.head_dim``; Q, K, V
    (``heads·tokens·dim`` bytes each) inside the activation memory and the output inside the
    output memory; ``mask``: softmax dense or causal, sparse if ``att.sparse`` (then
    ``lanes <= 8`` and the keep image inside the activation memory); linear_causal causal only;
    linear_angular dense only; ``flags`` zero, except bit 0 for linear_causal: one head, a
    sequence open (a previous job since reset or ``ABORT``) and at most ``att.max_tokens``
    tokens in it altogether.

    Raises
    ------
    ValueError
        ``att.mode`` unknown, or ``att.conv_taps`` not 0 in ``linear_angular``.
    """

    kind = S.ATTENTION

    def __init__(self, att, *, act_depth, out_depth):
        if att.mode not in UNIT_MODES:
            self._MustUse__silence = True
            raise ValueError(f"attention.mode must be one of {', '.join(map(repr, UNIT_MODES))} "
                             f"behind the top, not {att.mode!r}")
        self.mode = att.mode
        self.att = att
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.max_heads = att.heads
        self.max_tokens = att.max_tokens
        self.max_dim = att.head_dim
        self.conv_taps = getattr(att, "conv_taps", 0)
        if self.conv_taps and att.mode != "linear_causal":
            self._MustUse__silence = True
            raise ValueError(f"attention.conv_taps must be 0 for {att.mode} behind the top "
                             f"(convolution through the top: linear_causal), "
                             f"not {att.conv_taps!r}")
        self.sparse = False
        if att.mode == "softmax":
            self.engine = SoftmaxAttention.from_config(att)
            self.sparse = bool(att.sparse) and att.lanes <= 8
            masks = {"dense", "causal"} | ({"sparse"} if self.sparse else set())
        elif att.mode == "linear_causal":
            self.engine = LinearCausalAttention.from_config(att)
            masks = {"causal"}
        else:
            self.engine = LinearAngularAttention.from_config(att)
            masks = {"dense"}
        self.lanes = self.engine.lanes
        self.mask_bits = sum(1 << S.MASKS[k] for k in masks)
        spaces = {"heads": MemWriteSignature(att.heads, HeadParams.size)}
        if self.conv_taps:
            spaces["conv"] = MemWriteSignature(self.engine.cw_wr.signature.depth, signed(8))
        super().__init__(act_depth=act_depth, out_depth=out_depth, spaces=spaces)

    def ident_record(self):
        return {"mode": S.MODE_CODES[self.mode], "lanes": self.lanes,
                "masks": self.mask_bits, "head_word_bytes": self.space_word_bytes("heads"),
                "heads": self.max_heads, "head_dim": self.max_dim,
                "max_tokens": self.max_tokens, "conv_taps": self.conv_taps}

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        softmax = self.mode == "softmax"
        Pl, Hm, Nm, Dm = self.lanes, self.max_heads, self.max_tokens, self.max_dim

        def fits(value, lo, hi):
            w = max(hi.bit_length(), 1)
            return (value[w:] == 0) & (value[:w] >= lo) & (value[:w] <= hi)

        # ------------------------------------------------------------ job registers
        heads = Signal(range(Hm + 1))
        tokens = Signal(range(Nm + 1))
        dim = Signal(range(Dm + 1))
        mask = Signal(2)
        cont = Signal()
        a_q, a_k, a_v, a_m = (Signal(range(self.act_depth), name=f"a_{n}") for n in "qkvm")
        a_o = Signal(range(self.out_depth))
        size_w = len(heads) + len(tokens) + len(dim)
        nd = Signal(len(tokens) + len(dim))
        size = Signal(size_w)
        mul_a = Signal(size_w)
        mul_b = Signal(max(len(dim), len(heads)))
        mul_p = Signal(size_w)
        msize = Signal(range((Nm + 2) * Nm + 1))
        mrow = Signal(range(Nm + Pl + 1))
        ctx_tokens = Signal(range(Nm + 1))          # linear_causal: tokens in the open sequence
        d, _ = receive_descriptor(m, self.desc, self.kind.descriptor)     # full widths

        gen_go = Signal()           # pulse: the generator starts (the job's start edge)

        # ------------------------------------------------------------ per-head parameters
        if softmax:
            wiring.connect(m, wiring.flipped(self.heads), eng.hp_wr)
        else:
            m.submodules.hpmem = hpmem = memory.Memory(shape=HeadParams, depth=Hm, init=[])
            drive_write_port(m, hpmem.write_port(), self.heads)
            hp_rd = hpmem.read_port()
        if self.conv_taps:
            wiring.connect(m, wiring.flipped(self.conv), eng.cw_wr)

        # ------------------------------------------------------------ control
        e_head = Signal(range(Hm + 1))              # linear modes: head of the engine job
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.next = "CHECK"
            with m.State("CHECK"):
                if softmax:
                    mask_ok = (d["mask"] < 8) & Const(self.mask_bits, 8).bit_select(
                        d["mask"][:3], 1)
                    flags_ok = d["flags"] == 0
                elif self.mode == "linear_angular":
                    mask_ok = d["mask"] == S.MASKS["dense"]
                    flags_ok = d["flags"] == 0
                else:
                    mask_ok = d["mask"] == S.MASKS["causal"]
                    flags_ok = ((d["flags"] == 0)
                                | ((d["flags"] == S.FLAG_CONTINUE) & (d["heads"] == 1)
                                   & (ctx_tokens != 0)
                                   & (ctx_tokens + d["tokens"] <= Nm)))
                ok = (fits(d["heads"], 1, Hm) & fits(d["tokens"], 1, Nm) & fits(d["dim"], 1, Dm)
                      & mask_ok & flags_ok
                      & fits(d["q_addr"], 0, self.act_depth - 1)
                      & fits(d["k_addr"], 0, self.act_depth - 1)
                      & fits(d["v_addr"], 0, self.act_depth - 1)
                      & fits(d["mask_addr"], 0, self.act_depth - 1)
                      & fits(d["o_addr"], 0, self.out_depth - 1))
                with m.If(~ok):
                    m.d.comb += self.ctl.ack.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [heads.eq(d["heads"]), tokens.eq(d["tokens"]), dim.eq(d["dim"]),
                                 mask.eq(d["mask"]), cont.eq(d["flags"][0]),
                                 a_q.eq(d["q_addr"]), a_k.eq(d["k_addr"]),
                                 a_v.eq(d["v_addr"]), a_m.eq(d["mask_addr"]),
                                 a_o.eq(d["o_addr"]),
                                 mul_a.eq(d["tokens"]), mul_b.eq(d["dim"]), mul_p.eq(0)]
                    m.next = "MUL_ND"
            with m.State("MUL_ND"):                 # nd = tokens·dim, shift and add
                with m.If(mul_b != 0):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.Else():
                    m.d.sync += [nd.eq(mul_p), mul_a.eq(mul_p), mul_b.eq(heads), mul_p.eq(0)]
                    m.next = "MUL_H"
            with m.State("MUL_H"):                  # size = heads·nd
                with m.If(mul_b != 0):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.Else():
                    m.d.sync += [size.eq(mul_p), msize.eq(0), mrow.eq(0)]
                    m.next = "BOUNDS"
            with m.State("BOUNDS"):
                inside = ((a_q + size <= self.act_depth) & (a_k + size <= self.act_depth)
                          & (a_v + size <= self.act_depth) & (a_o + size <= self.out_depth))
                with m.If(~inside):
                    m.d.comb += self.ctl.ack.eq(1)
                    m.next = "IDLE"
                with m.Elif(mask == S.MASKS["sparse"]):
                    m.next = "MSIZE"
                with m.Else():
                    m.next = "ACCEPT"
            with m.State("MSIZE"):                  # keep image: ceil(N/P)·(2 + N) bytes
                with m.If(mrow < tokens):
                    m.d.sync += [msize.eq(msize + 2 + tokens), mrow.eq(mrow + Pl)]
                with m.Elif(a_m + msize > self.act_depth):
                    m.d.comb += self.ctl.ack.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ACCEPT"
            with m.State("ACCEPT"):
                m.d.comb += [self.ctl.ack.eq(1), self.ctl.accepted.eq(1),
                             self.ctl.started.eq(1), gen_go.eq(1)]
                m.d.sync += self.ctl.busy.eq(1)
                if softmax:
                    m.d.comb += eng.start.eq(1)
                    m.next = "RUN"
                else:
                    m.d.sync += [e_head.eq(0),
                                 ctx_tokens.eq(Mux(cont, ctx_tokens + tokens, tokens))]
                    m.next = "START"
            if softmax:
                with m.State("RUN"):
                    with m.If(eng.done):
                        m.d.comb += self.ctl.done.eq(1)
                        m.d.sync += self.ctl.busy.eq(0)
                        m.next = "IDLE"
            else:
                m.d.comb += hp_rd.addr.eq(e_head)
                with m.State("HP"):                 # read the next head's parameters
                    m.next = "START"
                with m.State("START"):
                    m.d.comb += eng.start.eq(1)
                    if self.mode == "linear_causal":
                        m.d.comb += [eng.clear.eq(~cont), eng.out_mult.eq(hp_rd.data.out_mult),
                                     eng.out_shift.eq(hp_rd.data.out_shift)]
                        if self.conv_taps:
                            m.d.comb += [eng.conv_mult.eq(hp_rd.data.score_mult),
                                         eng.conv_shift.eq(hp_rd.data.score_shift)]
                    else:                   # HEADS word: (half, ang) in (score, out)
                        m.d.comb += [eng.half_mult.eq(hp_rd.data.score_mult),
                                     eng.half_shift.eq(hp_rd.data.score_shift),
                                     eng.ang_mult.eq(hp_rd.data.out_mult),
                                     eng.ang_shift.eq(hp_rd.data.out_shift)]
                    m.next = "WAIT"
                with m.State("WAIT"):
                    with m.If(eng.done):
                        with m.If(e_head == heads - 1):
                            m.d.comb += self.ctl.done.eq(1)
                            m.d.sync += [self.ctl.busy.eq(0), e_head.eq(0)]
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += e_head.eq(e_head + 1)
                            m.next = "HP"
        m.d.comb += [eng.tokens.eq(tokens), eng.dim.eq(dim)]
        if softmax:
            m.d.comb += eng.heads.eq(heads)

        # ------------------------------------------------------------ output writer
        o_ptr = Signal(range(self.out_depth + 1))
        m.d.comb += [eng.o.ready.eq(1), self.out.addr.eq(o_ptr),
                     self.out.wdata.eq(eng.o.payload.as_unsigned()), self.out.we.eq(eng.o.valid)]
        with m.If(gen_go):
            m.d.sync += o_ptr.eq(a_o)
        with m.Elif(eng.o.valid):
            m.d.sync += o_ptr.eq(o_ptr + 1)

        # ------------------------------------------------------------ read FIFO and assembler
        entry = data.StructLayout({"byte": 8, "kind": 2, "keep": Pl, "last": 1})
        m.submodules.rdq = rdq = fifo.SyncFIFO(width=entry.size, depth=RD_FIFO_DEPTH)
        head = Signal(entry)
        m.d.comb += head.eq(rdq.r_data)
        kreg = Signal(signed(8))
        qreg = Signal(signed(8))
        pop = Signal()
        if softmax:
            m.d.comb += [
                eng.q.valid.eq(rdq.r_rdy & (head.kind == _KIND_Q)),
                eng.q.payload.eq(head.byte),
                eng.kv.valid.eq(rdq.r_rdy & (head.kind == _KIND_V)),
                eng.kv.payload.k.eq(kreg), eng.kv.payload.v.eq(head.byte),
                eng.kv.payload.keep.eq(head.keep), eng.kv.payload.last.eq(head.last),
                pop.eq(rdq.r_rdy & (((head.kind == _KIND_Q) & eng.q.ready)
                                    | (head.kind == _KIND_K)
                                    | ((head.kind == _KIND_V) & eng.kv.ready))),
            ]
        else:
            m.d.comb += [
                eng.qkv.valid.eq(rdq.r_rdy & (head.kind == _KIND_V)),
                eng.qkv.payload.q.eq(qreg), eng.qkv.payload.k.eq(kreg),
                eng.qkv.payload.v.eq(head.byte),
                pop.eq(rdq.r_rdy & ((head.kind != _KIND_V) | eng.qkv.ready)),
            ]
            with m.If(pop & (head.kind == _KIND_Q)):
                m.d.sync += qreg.eq(head.byte)
        with m.If(pop & (head.kind == _KIND_K)):
            m.d.sync += kreg.eq(head.byte)
        m.d.comb += rdq.r_en.eq(pop)

        # ------------------------------------------------------------ generator
        want = Signal()             # the generator's state wants a data read this cycle
        issue = Signal()
        pend = Signal()             # a data read issued last cycle: its byte is on act_rdata
        tag = Signal(entry)         # kind, keep, last of the read being issued
        pend_tag = Signal(entry)
        m.d.comb += issue.eq(want & (rdq.level + pend < RD_FIFO_DEPTH + pop))
        m.d.sync += [pend.eq(issue), pend_tag.eq(tag)]
        wr = Signal(entry)
        m.d.comb += [wr.eq(pend_tag), wr.byte.eq(self.act.rdata),
                     rdq.w_data.eq(wr), rdq.w_en.eq(pend)]
        addr = Signal(range(self.act_depth))
        m.d.comb += self.act.addr.eq(addr)

        g_i = Signal(range(Dm))
        last_i = Signal()
        m.d.comb += last_i.eq(g_i == dim - 1)
        if softmax:
            self._softmax_generator(m, dict(
                heads=heads, tokens=tokens, dim=dim, mask=mask, want=want, issue=issue,
                tag=tag, addr=addr, g_i=g_i, last_i=last_i, gen_go=gen_go, nd=nd, a_q=a_q,
                a_k=a_k, a_v=a_v, a_m=a_m))
        else:
            # (q, k, v) bytes of every element, head after head; linear_angular reads each
            # head twice (its two passes)
            off = Signal(size_w)
            h_off = Signal(size_w)              # offset of the head's first element
            h_end = Signal(size_w + 1)
            pass2 = Signal()
            sel = Signal(2)
            base = Array([a_q, a_k, a_v, a_v])[sel]
            m.d.comb += [addr.eq(base + off), tag.kind.eq(sel), h_end.eq(h_off + nd)]
            with m.FSM(name="gen"):
                with m.State("IDLE"):
                    with m.If(gen_go):
                        m.d.sync += [off.eq(0), h_off.eq(0), sel.eq(0), pass2.eq(0)]
                        m.next = "QKV"
                with m.State("QKV"):
                    m.d.comb += want.eq(1)
                    with m.If(issue):
                        m.d.sync += sel.eq(Mux(sel == 2, 0, sel + 1))
                        with m.If(sel == 2):
                            m.d.sync += off.eq(off + 1)
                            if self.mode == "linear_angular":
                                with m.If(off + 1 == h_end):
                                    m.d.sync += pass2.eq(~pass2)
                                    with m.If(~pass2):
                                        m.d.sync += off.eq(h_off)
                                    with m.Else():
                                        m.d.sync += h_off.eq(h_end)
                            with m.If((off == size - 1)
                                      & (pass2 | (self.mode != "linear_angular"))):
                                m.next = "IDLE"
        return m

    def _softmax_generator(self, m, v):
        """Read order of a softmax job (see the module docstring); ``v``: the job registers
        and generator signals of :meth:`elaborate`."""
        Pl = self.lanes
        heads, tokens, dim, mask = v["heads"], v["tokens"], v["dim"], v["mask"]
        want, issue, tag, addr, g_i, last_i = (v[n] for n in
                                               ("want", "issue", "tag", "addr", "g_i", "last_i"))
        rdata = self.act.rdata
        g_h = Signal.like(heads)
        row0 = Signal(range(self.max_tokens + Pl))
        rows = Signal(range(Pl + 1))
        last_blk = Signal()
        m.d.comb += [last_blk.eq(row0 + Pl >= tokens),
                     rows.eq(Mux(last_blk, tokens - row0, Pl))]
        rowmask = Signal(Pl)
        m.d.comb += rowmask.eq(Cat(r < rows for r in range(Pl)))
        g_r = Signal(range(Pl))
        q_ptr = Signal(range(self.act_depth + 1))
        k_head = Signal(range(2 * self.act_depth))
        v_head = Signal.like(k_head)
        k_row = Signal.like(k_head)
        v_row = Signal.like(k_head)
        j = Signal(range(self.max_tokens + 1))
        last_key = Signal(16)
        is_last = Signal()
        m.d.comb += is_last.eq((j == last_key) | (j == tokens - 1))
        kv_v = Signal()             # the next read of the element is V
        keep_r = Signal(Pl)
        blk_base = Signal(range(2 * self.act_depth))
        causal_keep = Signal(Pl)
        m.d.comb += causal_keep.eq(Cat((row0 + r >= j) & (r < rows) for r in range(Pl)))
        keep = Array([rowmask, causal_keep, keep_r, keep_r])[mask]
        sparse = mask == S.MASKS["sparse"]

        def to_keys():
            m.d.sync += [j.eq(0), k_row.eq(k_head), v_row.eq(v_head), kv_v.eq(0), g_i.eq(0)]
            with m.If(mask == S.MASKS["causal"]):
                m.d.sync += last_key.eq(row0 + rows - 1)
            with m.Else():
                m.d.sync += last_key.eq(tokens - 1)

        def next_key():
            m.d.sync += [j.eq(j + 1), k_row.eq(k_row + dim), v_row.eq(v_row + dim)]

        with m.FSM(name="gen"):
            with m.State("IDLE"):
                with m.If(v["gen_go"]):
                    m.d.sync += [g_h.eq(0), row0.eq(0), g_r.eq(0), g_i.eq(0),
                                 q_ptr.eq(v["a_q"]), k_head.eq(v["a_k"]), v_head.eq(v["a_v"]),
                                 blk_base.eq(v["a_m"])]
                    m.next = "Q"
            with m.State("Q"):
                m.d.comb += [want.eq(1), addr.eq(q_ptr), tag.kind.eq(_KIND_Q)]
                with m.If(issue):
                    m.d.sync += [q_ptr.eq(q_ptr + 1), g_i.eq(g_i + 1)]
                    with m.If(last_i):
                        m.d.sync += [g_i.eq(0), g_r.eq(g_r + 1)]
                        with m.If(g_r == rows - 1):
                            m.d.sync += g_r.eq(0)
                            to_keys()
                            if self.sparse:
                                with m.If(sparse):
                                    m.next = "HDR0"
                                with m.Else():
                                    m.next = "KV"
                            else:
                                m.next = "KV"
            if self.sparse:
                with m.State("HDR0"):
                    m.d.comb += addr.eq(blk_base)
                    m.next = "HDR1"
                with m.State("HDR1"):
                    m.d.comb += addr.eq(blk_base + 1)
                    m.d.sync += last_key[:8].eq(rdata)
                    m.next = "HDR2"
                with m.State("HDR2"):
                    m.d.sync += last_key[8:].eq(rdata)
                    m.next = "MASK"
                with m.State("MASK"):
                    m.d.comb += addr.eq(blk_base + 2 + j)
                    m.next = "MDEC"
                with m.State("MDEC"):
                    mk = rdata[:Pl] & rowmask
                    with m.If((mk != 0) | is_last):
                        m.d.sync += keep_r.eq(mk)
                        m.next = "KV"
                    with m.Else():
                        next_key()
                        m.next = "MASK"
            with m.State("KV"):
                m.d.comb += [want.eq(1), addr.eq(Mux(kv_v, v_row, k_row) + g_i),
                             tag.kind.eq(Mux(kv_v, _KIND_V, _KIND_K)), tag.keep.eq(keep),
                             tag.last.eq(is_last & last_i)]
                with m.If(issue):
                    m.d.sync += kv_v.eq(~kv_v)
                    with m.If(kv_v):
                        m.d.sync += g_i.eq(g_i + 1)
                        with m.If(last_i):
                            m.d.sync += g_i.eq(0)
                            with m.If(is_last):             # end of the block
                                m.d.sync += blk_base.eq(blk_base + 2 + tokens)
                                with m.If(last_blk):
                                    m.d.sync += [row0.eq(0), g_h.eq(g_h + 1),
                                                 k_head.eq(k_head + v["nd"]),
                                                 v_head.eq(v_head + v["nd"]),
                                                 blk_base.eq(v["a_m"])]
                                    with m.If(g_h == heads - 1):
                                        m.next = "IDLE"
                                    with m.Else():
                                        m.next = "Q"
                                with m.Else():
                                    m.d.sync += row0.eq(row0 + Pl)
                                    m.next = "Q"
                            with m.Else():
                                next_key()
                                if self.sparse:
                                    with m.If(sparse):
                                        m.next = "MASK"


def attention_job_cycles(mode, heads, tokens, dim, lanes, schedule=None, sparse=False,
                         conv_taps=0):
    """Cycles of one attention job, from its start edge (``ack``) to ``done``: exact.

    A cycle-level model of the generator (one read per cycle, at most ``RD_FIFO_DEPTH`` bytes
    ahead; the header and key-mask reads of a sparse image take a cycle each plus a decision
    cycle per key), the assembler (a ``kv`` beat every two FIFO bytes, a ``qkv`` beat every
    three) and the engine's acceptance of beats. The engine's own pipeline comes from its
    key-level model (:func:`amaformer.hdl.attention.softmax_cycle_model`) or its token timing
    (:func:`~amaformer.hdl.attention_linear.linear_causal_token_cycles`,
    :func:`~amaformer.hdl.attention_angular.linear_angular_job_cycles`): only the length of
    the load phases changes when the beats arrive slower than one per cycle.

    Parameters
    ----------
    mode : str
        ``"softmax"``, ``"linear_causal"`` or ``"linear_angular"``.
    lanes : int
        The engine's lanes (``AttentionUnit.lanes``, ``IDENT`` ``att_lanes``).
    schedule : list
        ``softmax``: :func:`amaformer.gen.attention.softmax_schedule` of the job's mask (one
        head; :func:`amaformer.gen.cost.attention_cycles` builds it).
    sparse : bool
        ``softmax``: the mask is a sparse keep image (header and key-mask reads).
    conv_taps : int
        ``linear_causal``: the unit's convolution taps (``IDENT`` ``att_conv_taps``).
    """
    if mode == "softmax":
        return _softmax_job_cycles(heads, tokens, dim, lanes, schedule, sparse)
    g = -(-dim // lanes)
    if mode == "linear_causal":
        u = max(dim, conv_taps + 1) if conv_taps else dim
        return _linear_job_cycles(heads, tokens, dim, [u * g + dim + TOKEN_OVERHEAD + 1])
    if mode == "linear_angular":
        return _linear_job_cycles(heads, tokens, dim,
                                  [3 + g * dim + MAC_DRAIN + 2,
                                   3 + g * dim + MAC_DRAIN + dim + OUT_DRAIN + 1])
    raise ValueError(f"mode must be 'softmax', 'linear_causal' or 'linear_angular', "
                     f"not {mode!r}")


class _ReadPipe:
    """Cycle model of the generator's reads into the read FIFO, shared by the job models.

    Each cycle the generator takes the next of ``ops``: ``None`` (a cycle without a data read)
    is skipped; a read is issued when the FIFO, counting the read in flight and the byte that
    leaves this cycle, has room (``RD_FIFO_DEPTH`` bytes). An issued read enters the FIFO one
    cycle later (``pend``), so the FIFO head is visible two cycles after the issue.
    """

    def __init__(self, ops):
        self.ops = ops
        self.idx = 0
        self.fifo = deque()
        self.pend = None

    def clock(self, pop):
        """The generator's decision of this cycle, then the clock edge; ``pop``: the FIFO head
        was taken this cycle."""
        issued = None
        if self.idx < len(self.ops):
            op = self.ops[self.idx]
            if op is None:
                self.idx += 1
            elif len(self.fifo) + (self.pend is not None) < RD_FIFO_DEPTH + pop:
                issued = op
                self.idx += 1
        if pop:
            self.fifo.popleft()
        if self.pend is not None:
            self.fifo.append(self.pend)
        self.pend = issued

    def drained(self):
        """Every read issued and taken."""
        return self.idx == len(self.ops) and not self.fifo and self.pend is None


def _softmax_ops(heads, d, schedule, sparse):
    """Generator steps: ``("Q", block)`` and ``("K"|"V", block, key, elem)`` data reads, ``None``
    for a cycle without one (sparse header and key-mask reads); and per block (rows, keys)."""
    ops, blocks = [], []
    for _ in range(heads):
        for _, rows, keys in schedule:
            b = len(blocks)
            ops += [("Q", b)] * (rows * d)
            keylist = [j for j, _ in keys]
            if sparse:                  # keys 0..last are scanned; the last one is always sent
                last = keylist[-1] if keylist else 0
                keylist = sorted(set(keylist) | {last})
                ops += [None] * 3
                for j in range(last + 1):
                    ops += [None, None]
                    if j in keylist:
                        ops += [(kv, b, j, i) for i in range(d) for kv in "KV"]
            else:
                ops += [(kv, b, j, i) for j in keylist for i in range(d) for kv in "KV"]
            blocks.append((rows, keylist))
    return ops, blocks


def _softmax_job_cycles(heads, n, d, lanes, schedule, sparse):
    ops, blocks = _softmax_ops(heads, d, schedule, sparse)
    plen = max(d, C_MIN_PASS)
    nb = len(blocks)
    ld_cnt = [0] * nb
    ld_end = [None] * nb
    a_last_blk = [None] * nb
    key_first = {}                  # (block, key) -> global key index
    for b, (_, keylist) in enumerate(blocks):
        for j in keylist:
            key_first[(b, j)] = len(key_first)
    releases, c_pop, d_last = [], None, 0
    rd, c = _ReadPipe(ops), 0
    n_keys = len(key_first)
    keys_done = 0
    while True:
        c += 1
        # assembler and engine: does the FIFO head leave this cycle?
        pop = False
        if rd.fifo:
            op = rd.fifo[0]
            if op[0] == "Q":
                b = op[1]
                pop = b < 2 or (a_last_blk[b - 2] is not None and c >= a_last_blk[b - 2] + 1)
                if pop:
                    ld_cnt[b] += 1
                    if ld_cnt[b] == blocks[b][0] * d:
                        ld_end[b] = c
            elif op[0] == "K":
                pop = True
            else:
                _, b, j, i = op
                k = key_first[(b, j)]
                if i == 0:
                    pop = (ld_end[b] is not None and c >= ld_end[b] + 1
                           and (k < VBANKS or c >= releases[k - VBANKS]))
                else:
                    pop = True
                if pop and i == d - 1:
                    rows, keylist = blocks[b]
                    ready = c + A_TO_C
                    pop_c = ready if c_pop is None else max(ready, c_pop + plen)
                    last_in_blk = j == keylist[-1]
                    if last_in_blk and b > 0:
                        pop_c = max(pop_c, d_last + 1)
                    c_pop = pop_c
                    releases.append(pop_c + d + 1)
                    keys_done += 1
                    if last_in_blk:
                        a_last_blk[b] = c
                        d_start = max(c_pop + d + 3, d_last + 1)
                        d_last = d_start + lanes + RECIP_PHASE + rows * d
        rd.clock(pop)
        if keys_done == n_keys and rd.drained():
            return d_last + OUT_LATENCY + 1


def _linear_job_cycles(heads, n, d, after_load):
    """``after_load[p]``: cycles from the last beat of a token in pass ``p`` to the engine's
    next LOAD (or ``done``); one entry per pass over the head's tokens."""
    passes = len(after_load)
    rd, c = _ReadPipe(["Q", "K", "V"] * (heads * passes * n * d)), 0
    load_at = 2                     # LOAD entry of the current token (ack 0, START 1)
    beats = tok = hd = ps = 0
    while True:
        c += 1
        pop = False
        if rd.fifo:
            if rd.fifo[0] != "V":
                pop = True
            elif load_at is not None and c >= load_at:
                pop = True
                beats += 1
                if beats == d:
                    beats, tok = 0, tok + 1
                    nxt = c + after_load[ps]
                    if tok == n:
                        tok, ps = 0, ps + 1
                    if ps == passes:
                        ps, hd = 0, hd + 1
                        if hd == heads:
                            return nxt
                        nxt += 3            # HP, START, then LOAD
                    load_at = nxt
        rd.clock(pop)
