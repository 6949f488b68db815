"""The linear unit: a linear engine (``mul``, ``shift`` or ``bcq``) behind the unit contract.

::

    desc ─► descriptor registers ─► checks (range, X and Y buffers, weight words) ─► ack
    activation memory ─► feeder (2-byte FIFO) ─► engine.x    engine.y ─► output memory

The descriptor is :data:`amaformer.hdl.linear_spec.DESCRIPTOR`; the write spaces are the
engine's weight buffer (``weights``) and per-column requantization words (``params``).
"""

from amaranth import *
from amaranth.lib import fifo, wiring

from . import linear_spec
from .linear import LinearEngine
from .shiftadd import make_shiftadd_engine
from .unit import Unit, receive_descriptor

__all__ = ["LinearUnit", "make_linear_engine", "PREFILL_CYCLES"]

#: Cycles the feeder runs ahead of the engine's ``start`` so that X is valid from the first
#: cycle; the job's cycle count then equals the engine's cycle model
#: (:func:`amaformer.gen.cost.linear_job_cycles`).
PREFILL_CYCLES = 2


def make_linear_engine(linear_cfg):
    """Create the engine for ``linear_cfg`` (a ``LinearConfig``, read duck-typed).

    Every engine has the ports of :func:`amaformer.hdl.common.linear_engine_ports`: ``x``/``y``
    streams, ``start``, ``m``, ``k``, ``n``, ``busy``, ``done``, and the write ports ``w_wr``
    and ``p_wr``.

    Raises
    ------
    ValueError
        Unknown ``mode``.
    """
    mode = linear_cfg.mode
    if mode == "mul":
        return LinearEngine(lanes=linear_cfg.lanes, max_k=linear_cfg.max_k,
                            max_n=linear_cfg.max_n, max_m=linear_cfg.max_m,
                            weight_depth=linear_cfg.weight_depth,
                            act_bits=linear_cfg.act_bits, weight_bits=linear_cfg.weight_bits,
                            hw_lanes=linear_cfg.hw_lanes)
    if mode in ("shift", "bcq"):
        return make_shiftadd_engine(linear_cfg)
    raise ValueError(f"linear.mode must be one of 'mul', 'shift', 'bcq', not {mode!r}")


class LinearUnit(Unit):
    """``Y = requant(X·W + b)`` jobs: descriptor checks, feeder and engine.

    Parameters
    ----------
    linear : LinearConfig
        Read duck-typed (``mode``, ``lanes``, ``max_m``, ``max_k``, ``max_n``, ...).
    act_depth, out_depth : int
        Bytes of the activation and output memories.

    Descriptor rules (otherwise ``ack`` with ``accepted`` low): ``1 <= m <= max_m``,
    ``1 <= k <= max_k``, ``1 <= n <= max_n``; X (``m·k`` bytes from ``x_addr``) inside the
    activation memory, Y (``m·n`` bytes from ``y_addr``) inside the output memory; the job's
    weight words inside the weight buffer (``mul``: ``k·ceil(n/lanes)``; ``shift`` with g
    inputs: ``ceil(k/g)·ceil(n/lanes)``; ``bcq``: ``ceil(k/(8·lanes))·n·q``).

    Timing: the check takes at most ``~35 + log2(max_m)·2 + ceil(max_n / lanes)`` cycles
    (shift-add products, no DSP); on acceptance the feeder starts :data:`PREFILL_CYCLES`
    cycles before the engine, whose ``start`` is the job's start edge (``ctl.started``);
    ``done`` is the engine's.
    """

    kind = linear_spec.LINEAR

    def __init__(self, linear, *, act_depth, out_depth):
        self.linear = linear
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.engine = make_linear_engine(linear)
        members = self.engine.signature.members
        super().__init__(act_depth=act_depth, out_depth=out_depth, spaces={
            "weights": members["w_wr"].signature.flip(),
            "params": members["p_wr"].signature.flip()})

    @classmethod
    def from_config(cls, config, *, act_depth, out_depth):
        """The configuration's linear units: ``[linear]``, then ``[linear2]`` (a second unit
        with an encoding of its own) when enabled, each read duck-typed."""
        sections = [getattr(config, name, None) for name in ("linear", "linear2")]
        return [cls(s, act_depth=act_depth, out_depth=out_depth) for s in sections
                if s is not None and getattr(s, "enabled", True)]

    def ident_record(self):
        lin = self.linear
        return {
            "mode": linear_spec.MODE_CODES[lin.mode], "lanes": lin.lanes,
            "act_bits": lin.act_bits,
            "weight_bits": lin.weight_code_bits,     # shift: 4; bcq: bit planes q
            "weight_word_bytes": self.space_word_bytes("weights"),
            "param_word_bytes": self.space_word_bytes("params"),
            # shift: g products per lane and cycle (weight-word layout and count); else 1
            "lin_inputs": getattr(lin, "shift_inputs", 1) if lin.mode == "shift" else 1,
            "max_k": lin.max_k, "max_n": lin.max_n, "max_m": lin.max_m,
            "weight_depth": self.engine.w_wr.signature.depth,
        }

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        lin = self.linear
        lanes = lin.lanes
        w_depth = eng.w_wr.signature.depth
        wiring.connect(m, wiring.flipped(self.weights), eng.w_wr)
        wiring.connect(m, wiring.flipped(self.params), eng.p_wr)
        ctl = self.ctl

        # ---------------------------------------------------------------- descriptor
        d, d_high = receive_descriptor(m, self.desc, self.kind.descriptor, {
            "m": lin.max_m, "k": lin.max_k, "n": lin.max_n,
            "x_addr": self.act_depth - 1, "y_addr": self.out_depth - 1})
        d_m, d_k, d_n, d_x, d_y = (d[f] for f in ("m", "k", "n", "x_addr", "y_addr"))
        m.d.comb += [eng.m.eq(d_m), eng.k.eq(d_k), eng.n.eq(d_n)]

        # ---------------------------------------------------------------- job control
        job_active = Signal()           # the feeder and the writer own the memories
        # The feeder reads X from x_addr up to x_end (exclusive); the engine samples m, k, n
        # (the checked descriptor, stable until the next request's payload) with its start.
        x_addr = Signal(range(self.act_depth + 1))
        x_end = Signal(range(self.act_depth + 1))
        y_addr = Signal(range(self.out_depth))
        launch = Signal()
        prefill = Signal(range(PREFILL_CYCLES + 1))
        m.d.comb += ctl.busy.eq(job_active)

        m.submodules.xfifo = xfifo = fifo.SyncFIFO(width=8, depth=2)
        pending = Signal()
        consume = Signal()
        # (the FIFO's w_stream.ready is not needed: a read is issued only when there is room)
        m.d.comb += [
            consume.eq(eng.x.valid & eng.x.ready),
            eng.x.valid.eq(xfifo.r_stream.valid),
            eng.x.payload.eq(xfifo.r_stream.payload),
            xfifo.r_stream.ready.eq(eng.x.ready),
            xfifo.w_stream.payload.eq(self.act.rdata),
            xfifo.w_stream.valid.eq(pending),
        ]
        issue = Signal()
        m.d.comb += issue.eq(job_active & (x_addr != x_end)
                             & (xfifo.level + pending < 2 + consume))
        m.d.sync += pending.eq(issue)
        with m.If(issue):
            m.d.sync += x_addr.eq(x_addr + 1)

        m.d.comb += eng.y.ready.eq(job_active)
        with m.If(eng.y.valid & eng.y.ready):
            m.d.sync += y_addr.eq(y_addr + 1)
        m.d.comb += [self.act.addr.eq(x_addr),
                     self.out.addr.eq(y_addr), self.out.wdata.eq(eng.y.payload.as_unsigned()),
                     self.out.we.eq(eng.y.valid & eng.y.ready)]

        with m.If(launch):
            m.d.sync += [job_active.eq(1), x_addr.eq(d_x), y_addr.eq(d_y),
                         prefill.eq(PREFILL_CYCLES)]
        with m.Elif(prefill != 0):
            m.d.sync += prefill.eq(prefill - 1)
        with m.Elif(job_active & eng.done):
            m.d.sync += job_active.eq(0)
            m.d.comb += ctl.done.eq(1)
        # Not under the Elif: launch (prefill is 0 then) must not gate start (timing).
        m.d.comb += [eng.start.eq(prefill == 1), ctl.started.eq(prefill == 1)]

        # ---------------------------------------------------------------- descriptor checks
        # One shift-add datapath for the three checks: VAL_MK and VAL_MN multiply mul_a by
        # mul_b into mul_p, which starts at the buffer's address and so ends at the buffer's
        # end address; VAL_W accumulates the weight words in mul_p and the columns (or inputs)
        # covered in mul_b.
        prod_w = max(len(d_k), len(d_n)) + len(d_m)
        q_max = getattr(lin, "bcq_bits", 1)
        words_w = (w_depth + max(lin.max_k, lin.max_n * q_max)).bit_length()
        colg_w = (max(lin.max_n, lin.max_k) + 8 * lanes).bit_length()
        mul_a = Signal(max(prod_w, len(d_k), len(d_n) + 3))
        mul_b = Signal(max(len(d_m), colg_w) + 1)
        mul_p = Signal(max(prod_w + 1, len(d_x) + 1, len(d_y) + 1, words_w + 1))
        x_over = Signal()               # the buffer's end passes its memory's end (registered)
        y_over = Signal()
        m.d.sync += [x_over.eq(mul_p > self.act_depth), y_over.eq(mul_p > self.out_depth)]
        # VAL_W counts with offsets, so that both tests are sign bits (timing): mul_p holds
        # words - (w_depth + 1) (w_over: it is >= 0), mul_b holds limit - 1 - covered (w_more:
        # it is >= 0), limit being the columns (bcq: inputs) to cover.
        w_over = Signal()
        w_more = Signal()

        # Registered (timing): the descriptor is stable long before VAL_RANGE.
        range_ok = Signal()
        m.d.sync += range_ok.eq(
            ~d_high & (d_m >= 1) & (d_m <= lin.max_m) & (d_k >= 1) & (d_k <= lin.max_k)
            & (d_n >= 1) & (d_n <= lin.max_n) & (d_x <= self.act_depth - 1)
            & (d_y <= self.out_depth - 1))

        def reject():
            m.d.comb += ctl.ack.eq(1)
            m.next = "IDLE"

        with m.FSM(name="check"):
            with m.State("IDLE"):
                with m.If(ctl.start):
                    m.next = "VAL_RANGE"

            with m.State("VAL_RANGE"):
                with m.If(~range_ok):
                    reject()
                with m.Else():
                    m.d.sync += [mul_a.eq(d_k), mul_b.eq(d_m), mul_p.eq(d_x)]
                    m.next = "VAL_MK"

            def shift_add_state(state, then):
                # mul_p += mul_a · mul_b, one bit of mul_b per cycle. The steps need no
                # condition (timing: the enables are the state alone): once mul_b is 0 they
                # leave mul_p as it is.
                with m.State(state):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                    with m.If(mul_b == 0):
                        m.next = then

            shift_add_state("VAL_MK", "VAL_MK_END")

            with m.State("VAL_MK_END"):
                with m.If(x_over):
                    reject()
                with m.Else():
                    m.d.sync += [x_end.eq(mul_p), mul_a.eq(d_n), mul_b.eq(d_m), mul_p.eq(d_y)]
                    m.next = "VAL_MN"

            shift_add_state("VAL_MN", "VAL_MN_END")

            def start_val_w(w_add):
                w_limit = d_k if lin.mode == "bcq" else d_n
                m.d.sync += [mul_p.eq(-(w_depth + 1)), mul_b.eq(w_limit - 1),
                             mul_a.eq(w_add), w_over.eq(0), w_more.eq(1)]  # d_n, d_k >= 1
                m.next = "VAL_W"

            # shift with g inputs per lane: a column group takes ceil(K/g) words (a shift for a
            # power of two g, else counted in VAL_KC, one chunk per cycle)
            g = getattr(lin, "shift_inputs", 1) if lin.mode == "shift" else 1
            count_chunks = g > 1 and g & (g - 1) != 0
            if count_chunks:
                kc = Signal(range(lin.max_k + 1))       # ceil(K/g) when VAL_KC ends
                kr = Signal(range(lin.max_k + g + 1))   # g·kc
            with m.State("VAL_MN_END"):
                with m.If(y_over):
                    reject()
                with m.Else():
                    if count_chunks:
                        m.d.sync += [kc.eq(0), kr.eq(0)]
                        m.next = "VAL_KC"
                    elif lin.mode == "bcq":
                        q = lin.bcq_bits
                        start_val_w(sum(d_n << i for i in range(q.bit_length()) if q >> i & 1))
                    elif g > 1:
                        start_val_w((d_k + (g - 1)) >> (g.bit_length() - 1))
                    else:
                        start_val_w(d_k)

            if count_chunks:
                with m.State("VAL_KC"):
                    with m.If(kr < d_k):
                        m.d.sync += [kr.eq(kr + g), kc.eq(kc + 1)]
                    with m.Else():
                        start_val_w(kc)

            with m.State("VAL_W"):
                # words = K · ceil(N / lanes) (shift: ceil(K/g) · ceil(N / lanes)), accumulated
                # one column group per cycle; bcq: ceil(K / (8·lanes)) · N · q, one chunk of
                # 8·lanes inputs per cycle.
                w_step = 8 * lanes if lin.mode == "bcq" else lanes
                # Accumulates unconditionally (timing); the values are unused once it leaves.
                words = (mul_p + mul_a)[:len(mul_p)]
                left = (mul_b - w_step)[:len(mul_b)]
                m.d.sync += [mul_p.eq(words), mul_b.eq(left),
                             w_over.eq(~words[-1]), w_more.eq(~left[-1])]
                with m.If(w_over):
                    reject()
                with m.Elif(~w_more):
                    m.d.comb += [launch.eq(1), ctl.ack.eq(1), ctl.accepted.eq(1)]
                    m.next = "IDLE"
        return m
