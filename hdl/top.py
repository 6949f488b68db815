"""Accelerator top: command processor, on-chip memories, job control, engine and UART.

Structure::

    UART RX ─► ┌──────────────────┐ ─► staging buffer ─► weights / params / activation memory
               │ command processor │
    UART TX ◄─ └──────────────────┘ ◄─ activation / output memory, status, ident ROM
                        │ RUN
                        ▼
    activation memory ─► feeder ─► engine.x    engine.y ─► output memory

The wire protocol (frames, opcodes, error codes, address spaces) is defined in
:mod:`amaformer.hdl.protocol`. :class:`AcceleratorCore` is everything except the UART PHY and
talks bytes on two streams (the simulated device drives those directly); :class:`Accelerator`
adds the PHY, on the platform's ``uart`` resource or on ports when there is no platform.

The configuration is read duck-typed (``config.linear.lanes``, ``config.uart.baud``, ...), so
this module imports nothing from ``amaformer.gen``.
"""

from amaranth import *
from amaranth.build import ResourceError
from amaranth.lib import fifo, io, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from . import protocol as P
from .attention_top import AttentionUnit
from .linear import LinearEngine
from .shiftadd import make_shiftadd_engine
from .uart import UARTRx, UARTTx, baud_divisor

__all__ = ["make_linear_engine", "ByteMemory", "AcceleratorCore", "Accelerator",
           "DEFAULT_ACT_DEPTH", "DEFAULT_OUT_DEPTH", "DEFAULT_MAX_PAYLOAD", "SPRAM_BYTES"]

SPRAM_BYTES = 32768             #: bytes of one iCE40 SB_SPRAM256KA (16K × 16 bit)
DEFAULT_ACT_DEPTH = 32768       #: activation memory, bytes (one SPRAM on iCE40 UltraPlus)
DEFAULT_OUT_DEPTH = 32768       #: output memory, bytes (one SPRAM on iCE40 UltraPlus)
DEFAULT_MAX_PAYLOAD = 256       #: staging buffer, bytes (one EBR, or an SPRAM on iCE40 UP)
#: Cycles the feeder runs ahead of the engine's ``start`` so that X is valid from the first
#: cycle; the job's cycle count then equals :func:`amaformer.gen.cost.linear_cycles`.
PREFILL_CYCLES = 2


def make_linear_engine(linear_cfg):
    """Create the engine for ``linear_cfg`` (a ``LinearConfig``, read duck-typed).

    Every engine has the ports of :class:`amaformer.hdl.linear.LinearEngine`: ``x``/``y``
    streams, ``start``, ``m``, ``k``, ``n``, ``busy``, ``done``, and the write ports ``w_wr``
    and ``p_wr`` whose signatures (depth, word width, enables) the top reads.

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


def _is_ice40_up(platform):
    return (platform is not None and str(getattr(platform, "family", "")).lower() == "ice40"
            and str(getattr(platform, "device", "")).upper().startswith("ICE40UP"))


class ByteMemory(wiring.Component):
    """Single-port byte memory: SB_SPRAM256KA on iCE40 UltraPlus, ``lib.memory`` elsewhere.

    Parameters
    ----------
    depth : int
        Bytes. With SPRAM, a multiple of :data:`SPRAM_BYTES` (one SPRAM per 32 KiB).
    spram : bool or None
        Use SPRAM; ``None`` picks it when the platform is an iCE40 UltraPlus and ``depth`` is a
        multiple of :data:`SPRAM_BYTES`.

    Members
    -------
    addr : ``In(range(depth))``
    wdata : ``In(8)``
    we : ``In(1)``
        Write ``wdata`` at ``addr`` at the next clock edge.
    rdata : ``Out(8)``
        The byte at the ``addr`` of the previous cycle (read latency 1); undefined after a write.
    """

    def __init__(self, depth, *, spram=None):
        if not isinstance(depth, int) or depth < 2:
            self._MustUse__silence = True       # never elaborated: no "unused" warning
            raise ValueError(f"depth must be an integer >= 2, not {depth!r}")
        if spram and depth % SPRAM_BYTES:
            self._MustUse__silence = True
            raise ValueError(f"depth must be a multiple of {SPRAM_BYTES} with SPRAM, "
                             f"not {depth!r}")
        self.depth = depth
        self.spram = spram
        super().__init__({
            "addr": In(range(depth)), "wdata": In(8), "we": In(1), "rdata": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        if self.spram is None:
            use_spram = _is_ice40_up(platform) and self.depth % SPRAM_BYTES == 0
        else:
            use_spram = self.spram
        if use_spram:
            banks = self.depth // SPRAM_BYTES
            lane_d = Signal()
            bank_d = Signal(range(banks))
            bank = self.addr[15:] if banks > 1 else C(0, 1)
            m.d.sync += [lane_d.eq(self.addr[0]), bank_d.eq(bank)]
            outs = []
            for i in range(banks):
                dout = Signal(16, name=f"spram{i}_dout")
                m.submodules[f"spram{i}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=self.addr[1:15], i_DATAIN=Cat(self.wdata, self.wdata),
                    i_MASKWREN=Mux(self.addr[0], 0b1100, 0b0011),
                    i_WREN=self.we & (bank == i), i_CHIPSELECT=1, i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=dout)
                outs.append(dout)
            word = Array(outs)[bank_d] if banks > 1 else outs[0]
            m.d.comb += self.rdata.eq(word.word_select(lane_d, 8))
        else:
            m.submodules.mem = mem = memory.Memory(shape=8, depth=self.depth, init=[])
            rd = mem.read_port()
            wr = mem.write_port()
            m.d.comb += [rd.addr.eq(self.addr), self.rdata.eq(rd.data),
                         wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we)]
        return m


def _port_info(engine, name):
    """(depth, data width, enable width) of an engine write port, from its signature."""
    sig = engine.signature.members[name].signature
    width = Shape.cast(sig.members["data"].shape).width
    en_width = Shape.cast(sig.members["en"].shape).width
    return sig.depth, width, en_width


def _lane_spans(port):
    """Per write enable of a ``MemWriteSignature`` port: (first byte, last byte) of its bits."""
    width = len(port.data)
    unit = width // len(port.en)
    return [(j * unit // 8, ((j + 1) * unit - 1) // 8) for j in range(len(port.en))]


def _lane_write_tail_bytes(port):
    """Bytes before the current one that :func:`_lane_write` needs to write ``port``."""
    return max(last - first for first, last in _lane_spans(port))


def _lane_write(port, byte, tail, bc, we):
    """Statements writing byte ``bc`` of a little-endian word to ``port`` (``MemWriteSignature``)
    at ``port.addr`` in the cycle ``we`` is high, without a word register.

    Every write unit (``width / len(en)`` bits, one enable) whose last bit is in this byte is
    written now: its data bits are a fixed slice of this byte and the bytes before it in
    ``tail`` (the last one in its top byte; at least :func:`_lane_write_tail_bytes` of them).
    With units that divide a byte this is the byte replicated into every lane and the byte's
    enables; a port with one enable is written whole at its last data byte. Bytes past the data
    width write nothing. Combinational (no latency).
    """
    spans = _lane_spans(port)
    unit = len(port.data) // len(spans)
    data = []
    for j, (first, last) in enumerate(spans):
        window = Cat(tail[len(tail) - 8 * (last - first):], byte)    # bytes first .. last
        lo = j * unit - 8 * first
        data.append(window[lo:lo + unit])
    sel = {last: we & (bc == last) for _, last in spans}
    return [port.data.eq(Cat(*data)), port.en.eq(Cat(sel[last] for _, last in spans))]


class AcceleratorCore(wiring.Component):
    """Command processor, memories, job control and engine, with byte-stream host ports.

    Parameters
    ----------
    config : AcceleratorConfig
        Read duck-typed: ``config.linear`` (engine parameters), ``config.uart.baud``,
        ``config.attention`` (with ``enabled``: an
        :class:`~amaformer.hdl.attention_top.AttentionUnit` behind ``RUN_ATTENTION`` and
        :attr:`~amaformer.hdl.protocol.Space.HEADS`).
    clk_hz : int
        Core clock, reported by ``IDENT`` and used for the default timeout.
    act_depth, out_depth : int
        Bytes of the activation input memory and of the output memory.
    max_payload : int
        Bytes of the staging buffer: the longest ``WRITE`` payload (at least 20).
    timeout_cycles : int or None
        Inter-byte timeout inside a frame; ``None`` means 50 ms at ``clk_hz``.
    spram : bool or None
        Put the activation and output memories and the staging buffer in SPRAM (``None``: when
        the platform is an iCE40 UltraPlus; the staging buffer then takes one SPRAM).

    Members
    -------
    rx : ``In(stream.Signature(8))``
        Request bytes. Not ready while the processor answers or commits a frame.
    tx : ``Out(stream.Signature(8))``
        Response bytes.
    rx_error : ``In(1)``
        Pulse per framing error of the PHY (counted in ``STATUS``).
    busy : ``Out(1)``
        A job is running.

    Timing: a ``WRITE`` of ``L`` bytes commits in ``L + 4`` cycles after its last byte; ``RUN``
    checks the descriptor in at most ``~105 + ceil(max_n / lanes)`` cycles (the checks are
    pipelined for a 30 MHz iCE40 clock; a response starts 2 cycles after its decision, and its
    payload bytes are offered every 3 cycles at the fastest, far faster than the UART), then
    starts the feeder :data:`PREFILL_CYCLES` cycles before the engine; the job's cycle count
    (``STATUS``) runs from the engine's start edge to its done edge. ``RUN_ATTENTION`` is
    checked by the attention unit in at most ``~50 + max_tokens / lanes`` cycles; its cycle
    count runs from the unit's start edge to its done edge
    (:func:`amaformer.gen.cost.attention_cycles`).
    """

    def __init__(self, config, *, clk_hz=12_000_000, act_depth=DEFAULT_ACT_DEPTH,
                 out_depth=DEFAULT_OUT_DEPTH, max_payload=DEFAULT_MAX_PAYLOAD,
                 timeout_cycles=None, spram=None):
        try:
            timeout_cycles = self._check(clk_hz, act_depth, out_depth, max_payload,
                                         timeout_cycles)
        except ValueError:
            self._MustUse__silence = True       # never elaborated: no "unused" warning
            raise
        self.config = config
        self.clk_hz = clk_hz
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.max_payload = max_payload
        self.timeout_cycles = timeout_cycles
        self.spram = spram
        self.engine = make_linear_engine(config.linear)
        # linear.enabled = false: the engine is never elaborated; its outputs stay 0 (never
        # ready, never done), RUN answers OPCODE and the weight/parameter spaces do not exist.
        self.linear_on = getattr(config.linear, "enabled", True)
        if not self.linear_on:
            self.engine._MustUse__silence = True
        lin = config.linear
        self.lanes = lin.lanes
        self.w_depth, self.w_width, _ = _port_info(self.engine, "w_wr")
        self.p_depth, self.p_width, _ = _port_info(self.engine, "p_wr")
        self.w_bytes = P.word_bytes(self.w_width)
        self.p_bytes = P.word_bytes(self.p_width)
        att = getattr(config, "attention", None)
        self.att = (AttentionUnit(att, act_depth=act_depth, out_depth=out_depth)
                    if getattr(att, "enabled", False) else None)
        att_ident = self.att.ident_fields() if self.att else {
            "att_mode": P.ATT_NONE, "att_lanes": 0, "att_masks": 0, "att_head_word_bytes": 0,
            "att_heads": 0, "att_head_dim": 0, "att_max_tokens": 0, "att_conv_taps": 0}
        self.ident = P.pack_fields(P.IDENT_FIELDS, {**att_ident,
            "magic": P.IDENT_MAGIC, "version": P.PROTOCOL_VERSION,
            "mode": P.MODE_CODES.get(lin.mode, 255) if self.linear_on else P.MODE_NONE,
            "lanes": lin.lanes,
            "act_bits": lin.act_bits,
            "weight_bits": lin.weight_code_bits,     # shift: 4; bcq: bit planes q
            "weight_word_bytes": self.w_bytes, "param_word_bytes": self.p_bytes,
            "max_k": lin.max_k, "max_n": lin.max_n, "max_m": lin.max_m,
            "weight_depth": self.w_depth, "act_depth": act_depth, "out_depth": out_depth,
            "max_payload": max_payload, "clk_hz": clk_hz, "baud": config.uart.baud,
            # shift: g products per lane and cycle (weight-word layout and count); else 1
            "lin_inputs": (getattr(lin, "shift_inputs", 1)
                           if self.linear_on and lin.mode == "shift" else 1),
        })
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "rx_error": In(1),
            "busy": Out(1),
        })

    @staticmethod
    def _check(clk_hz, act_depth, out_depth, max_payload, timeout_cycles):
        for name, value, lo in (("act_depth", act_depth, 2), ("out_depth", out_depth, 2),
                                ("max_payload", max_payload, 20)):
            if not isinstance(value, int) or not lo <= value < (1 << 24):
                raise ValueError(f"{name} must be an integer in [{lo}, 2**24), not {value!r}")
        if max_payload >= (1 << 16):
            raise ValueError(f"max_payload must be below 65536, not {max_payload!r}")
        if not isinstance(clk_hz, int) or clk_hz <= 0:
            raise ValueError(f"clk_hz must be a positive integer, not {clk_hz!r}")
        if timeout_cycles is None:
            timeout_cycles = clk_hz // 20
        if not isinstance(timeout_cycles, int) or timeout_cycles < 16:
            raise ValueError(f"timeout_cycles must be an integer >= 16, not {timeout_cycles!r}")
        return timeout_cycles

    def elaborate(self, platform):
        m = Module()
        eng = self.engine
        lin = self.config.linear
        abort = Signal()
        # The engines' and the feeder FIFO's reset: abort one cycle later, from a register
        # (timing: a high fan-out net). Harmless: abort clears job_active at once, and no state
        # of the top looks at the engines until it is set again.
        unit_reset = Signal()
        m.d.sync += unit_reset.eq(abort)
        if self.linear_on:
            m.submodules.engine = ResetInserter(unit_reset)(eng)

        m.submodules.act = act = ByteMemory(self.act_depth, spram=self.spram)
        m.submodules.out = out = ByteMemory(self.out_depth, spram=self.spram)
        # The staging buffer is written (PAYLOAD) and read (COPY) in different states, so one
        # single-port memory does; on iCE40 UltraPlus an SPRAM, which frees a block RAM.
        st_spram = _is_ice40_up(platform) if self.spram is None else self.spram
        m.submodules.staging = staging = ByteMemory(
            -(-self.max_payload // SPRAM_BYTES) * SPRAM_BYTES if st_spram else self.max_payload,
            spram=st_spram)

        m.submodules.rx_crc = rx_crc = P.CRC16.create()
        m.submodules.tx_crc = tx_crc = P.CRC16.create()

        # ---------------------------------------------------------------- job control
        job_active = Signal()           # feeder/writer own the act/out memories
        # The feeder reads X from x_addr up to x_end (exclusive); the engine samples m, k, n
        # (the checked descriptor, stable until the next request's payload) with its start.
        x_addr = Signal(range(self.act_depth + 1))
        x_end = Signal(range(self.act_depth + 1))
        y_addr = Signal(range(self.out_depth))
        cycles = Signal(32)
        last_cycles = Signal(32)
        jobs = Signal(16)
        aborted = Signal()
        launch = Signal()
        launch_x = Signal(range(self.act_depth))
        launch_y = Signal(range(self.out_depth))
        prefill = Signal(range(PREFILL_CYCLES + 1))
        m.d.comb += self.busy.eq(job_active)

        m.submodules.xfifo = xfifo = ResetInserter(unit_reset)(
            fifo.SyncFIFO(width=8, depth=2))
        pending = Signal()
        consume = Signal()
        m.d.comb += [
            consume.eq(eng.x.valid & eng.x.ready),
            eng.x.valid.eq(xfifo.r_rdy),
            eng.x.payload.eq(xfifo.r_data),
            xfifo.r_en.eq(eng.x.ready),
            xfifo.w_data.eq(act.rdata),
            xfifo.w_en.eq(pending),
        ]
        issue = Signal()
        att_job = Signal()              # the running job is the attention unit's
        m.d.comb += issue.eq(job_active & ~att_job & (x_addr != x_end)
                             & (xfifo.level + pending < 2 + consume))
        m.d.sync += pending.eq(issue & ~abort)
        with m.If(issue):
            m.d.sync += x_addr.eq(x_addr + 1)

        m.d.comb += eng.y.ready.eq(job_active)
        with m.If(eng.y.valid & eng.y.ready):
            m.d.sync += y_addr.eq(y_addr + 1)

        with m.If(job_active):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(launch):
            m.d.sync += [job_active.eq(1), x_addr.eq(launch_x), y_addr.eq(launch_y),
                         prefill.eq(PREFILL_CYCLES), aborted.eq(0)]
        with m.Elif(prefill != 0):
            m.d.sync += prefill.eq(prefill - 1)
            with m.If(prefill == 1):
                m.d.sync += cycles.eq(1)
        with m.Elif(job_active & eng.done):
            m.d.sync += [job_active.eq(0), last_cycles.eq(cycles), jobs.eq(jobs + 1)]
        # Not under the Elif: launch (prefill is 0 then) must not gate start (timing).
        m.d.comb += eng.start.eq(prefill == 1)
        if self.att is not None:
            att = self.att
            m.submodules.att = ResetInserter(unit_reset)(att)
            m.d.comb += att.act_rdata.eq(act.rdata)
            with m.If(att.ack & att.accepted):      # its start edge: like eng.start above
                m.d.sync += [job_active.eq(1), att_job.eq(1), cycles.eq(1), aborted.eq(0)]
            with m.Elif(job_active & att_job & att.done):
                m.d.sync += [job_active.eq(0), att_job.eq(0), last_cycles.eq(cycles),
                             jobs.eq(jobs + 1)]
        with m.If(abort):
            m.d.sync += [job_active.eq(0), prefill.eq(0), aborted.eq(job_active),
                         att_job.eq(0)]

        # ---------------------------------------------------------------- memory port owners
        cmd_act_addr = Signal.like(act.addr)
        cmd_act_we = Signal()
        cmd_wdata = Signal(8)
        cmd_out_addr = Signal.like(out.addr)
        with m.If(job_active):
            m.d.comb += [act.addr.eq(x_addr),
                         out.addr.eq(y_addr), out.wdata.eq(eng.y.payload.as_unsigned()),
                         out.we.eq(eng.y.valid & eng.y.ready)]
        with m.Else():
            m.d.comb += [act.addr.eq(cmd_act_addr), act.wdata.eq(cmd_wdata),
                         act.we.eq(cmd_act_we), out.addr.eq(cmd_out_addr)]
        if self.att is not None:        # an attention job owns the ports instead (overrides)
            with m.If(job_active & att_job):
                m.d.comb += [act.addr.eq(self.att.act_addr),
                             out.addr.eq(self.att.out_addr), out.wdata.eq(self.att.out_wdata),
                             out.we.eq(self.att.out_we)]

        # ---------------------------------------------------------------- frame receiver
        # Request header fields, loaded byte by byte in HEADER (``addr``, narrowed, under
        # "checks"); ``length`` keeps the bits of ``max_payload`` (a longer frame is discarded)
        # and at least its low byte until the high one arrives.
        op = Signal(8)
        space = Signal(8)
        length = Signal(range(max(self.max_payload + 1, 256)))
        hdr_done = Signal()             # the header is complete (before, responses echo op 0)
        # The payload shifts in from the top of ``args``: the last payload bytes are its upper
        # bytes (READ's count; with an attention unit, its whole descriptor). RUN's descriptor
        # is parsed as it arrives, into the narrow ``d_*`` registers below.
        run_bytes = P.fields_size(P.DESCRIPTOR_FIELDS)
        att_bytes = P.fields_size(P.ATT_DESCRIPTOR_FIELDS) if self.att is not None else 0
        args = Signal(8 * max(2, att_bytes))
        if self.att is not None:
            pos = 0
            for name, fmt in P.ATT_DESCRIPTOR_FIELDS:
                width = 8 * P.fields_size(((name, fmt),))
                m.d.comb += getattr(self.att, name).eq(args[pos:pos + width])
                pos += width
        read_count = args[-16:]
        # Bytes received (HEADER, PAYLOAD), or the staging byte read (COPY: up to length + 1).
        cnt = Signal(range(max(self.max_payload + 2, P.REQ_HEADER_BYTES)))
        length_m1 = Signal.like(cnt)    # length - 1, a register set with the header (timing)
        quiet = Signal(range(self.timeout_cycles + 1))
        quiet_hit = Signal()            # quiet == timeout_cycles, kept as a register (timing)
        quiet_reset = [quiet.eq(0), quiet_hit.eq(0)]
        quiet_tick = [quiet.eq(quiet + 1), quiet_hit.eq(quiet == self.timeout_cycles - 1)]
        last_error = Signal(8)
        rx_errors = Signal(16)
        with m.If(self.rx_error & (rx_errors != 0xFFFF)):
            m.d.sync += rx_errors.eq(rx_errors + 1)

        # rx.ready and tx.valid are registers (timing: not decoded from the state), equal to
        # "in IDLE, HEADER, PAYLOAD, CRC0, CRC1 or DISCARD" and "in RSP_HEAD, RSP_MEM,
        # RSP_CRC_HI or RSP_CRC_LO": set and cleared on the transitions in and out.
        rx_on = Signal(init=1)
        tx_on = Signal()
        m.d.comb += [self.rx.ready.eq(rx_on), self.tx.valid.eq(tx_on)]
        rx_take = self.rx.valid & rx_on
        rx_byte = self.rx.payload
        m.d.comb += [rx_crc.data.eq(rx_byte), rx_crc.valid.eq(rx_take)]

        # ---------------------------------------------------------------- response
        rsp_status = Signal(8)
        rsp_src = Signal(2)             # where the payload comes from, SRC_*
        rsp_op = Mux(hdr_done, op, 0)   # the request header is stable while answering
        # Payload bytes, by source (set in RSP_START); after the header, the bytes left.
        rsp_len = Signal(16)
        SRC_NONE, SRC_IDENT, SRC_STATUS, SRC_MEM = range(4)
        # STATUS: a snapshot of every field but last_error, which no other state changes while
        # STATUS answers; it is cleared once sent.
        status_snap = Signal(8 * P.fields_size(P.STATUS_FIELDS) - 8)
        status_bytes = Cat(status_snap[:8], last_error, status_snap[8:])
        rsp_idx = Signal(range(max(len(self.ident), len(status_bytes) // 8,
                                   P.RSP_HEADER_BYTES)))    # byte of the header / ident / status
        rsp_act = Signal()              # READ from Space.ACT (else OUT)
        rsp_byte = Signal(8)
        ident = Const(int.from_bytes(self.ident, "little"), 8 * len(self.ident))
        head = Cat(C(P.RSP_SYNC, 8), rsp_status, rsp_op, rsp_len)
        tx_take = tx_on & self.tx.ready
        m.d.comb += [tx_crc.data.eq(self.tx.payload), tx_crc.valid.eq(tx_take)]

        def respond(status, src=SRC_NONE):
            # Only the status and the source here; RSP_START does the rest one cycle later,
            # which keeps the many callers' conditions off most registers' enables (timing).
            m.d.sync += [rsp_status.eq(status), rsp_src.eq(src), rx_on.eq(0)]
            m.next = "RSP_START"

        # ---------------------------------------------------------------- checks
        # Per space: word bytes, size in bytes, writable, readable.
        spaces = {
            **({P.Space.WEIGHTS: (self.w_bytes, self.w_depth * self.w_bytes, True, False),
                P.Space.PARAMS: (self.p_bytes, self.p_depth * self.p_bytes, True, False)}
               if self.linear_on else {}),
            P.Space.ACT: (1, self.act_depth, True, True),
            P.Space.OUT: (1, self.out_depth, False, True),
        }
        hp_bytes = 1
        if self.att is not None:
            hp_bytes = self.att.ident_fields()["att_head_word_bytes"]
            spaces[P.Space.HEADS] = (hp_bytes, self.att.max_heads * hp_bytes, True, False)
            if self.att.conv_taps:
                spaces[P.Space.CONV] = (1, self.att.cw_wr.signature.depth, True, False)
        wr_ok = Signal()
        rd_ok = Signal()
        span = Mux(op == P.Op.READ, read_count, length)
        # addr + span <= size without a 32-bit adder: the high address bits must be zero and
        # the low ones plus the span must not pass the end of the space.
        ab = max(size for _, size, _, _ in spaces.values()).bit_length()
        addr = Signal(ab)               # the low bits of the header's addr
        addr_high_zero = Signal()       # the others are zero (set in HEADER)
        # Two register stages (timing): the header and the payload are stable from the CRC
        # bytes on, at least three cycles before CHECK_OP reads wr_ok_q and rd_ok_q.
        end = Signal(max(ab, 16) + 1)
        m.d.sync += end.eq(addr + span)
        with m.Switch(space):
            for sp, (wb, size, writable, readable) in spaces.items():
                with m.Case(sp):
                    in_range = addr_high_zero & (end <= size)
                    if writable:
                        m.d.comb += wr_ok.eq((addr[:exact_log2(wb)] == 0)
                                             & (length[:exact_log2(wb)] == 0) & in_range)
                    if readable:
                        m.d.comb += rd_ok.eq(in_range)
        wr_ok_q = Signal()
        rd_ok_q = Signal()
        m.d.sync += [wr_ok_q.eq(wr_ok), rd_ok_q.eq(rd_ok)]
        is_op = {o: Signal(name=f"is_{o.name.lower()}") for o in P.Op}
        len_is = {v: Signal(name=f"len_is_{v}") for v in (0, 2, run_bytes, att_bytes)}
        m.d.sync += [is_op[o].eq(op == o) for o in P.Op]
        m.d.sync += [len_is[v].eq(length == v) for v in len_is]

        # Copy (commit) state: staging bytes -> target write ports, one byte per cycle, each
        # byte written into its lane of the word (see _lane_write); no word register.
        cp_idx = cnt
        cp_valid = Signal()             # staging.rdata holds a byte this cycle
        cp_end = Signal()               # cp_idx > length, as a register (timing)
        cp_bc = Signal(range(max(self.w_bytes, self.p_bytes, hp_bytes)))  # its byte in the word
        cp_wb_m1 = Signal.like(cp_bc)
        # Word address of COPY; READ's byte address (RSP_*).
        cp_addr = Signal(range(max(self.w_depth, self.p_depth, self.act_depth,
                                   self.out_depth) + 1))
        rsp_ptr = cp_addr
        cp_strobe = Signal()            # the word's last byte: next word
        wr_ports = {P.Space.ACT: None}
        if self.linear_on:
            wr_ports[P.Space.WEIGHTS] = eng.w_wr
            wr_ports[P.Space.PARAMS] = eng.p_wr
        if self.att is not None:
            wr_ports[P.Space.HEADS] = self.att.hp_wr
            if self.att.conv_taps:
                wr_ports[P.Space.CONV] = self.att.cw_wr
        # The bytes before staging.rdata, the last one on top (whole-word ports need them).
        cp_tail = Signal(8 * max([_lane_write_tail_bytes(wp) for wp in wr_ports.values()
                                  if wp is not None], default=0))
        with m.If(cp_valid):
            m.d.sync += cp_tail.eq(Cat(cp_tail[8:], staging.rdata))
        m.d.comb += [cmd_wdata.eq(staging.rdata),
                     cmd_act_we.eq(cp_strobe & (space == P.Space.ACT))]
        for sp, wp in wr_ports.items():
            if wp is not None:
                m.d.comb += [wp.addr.eq(cp_addr),
                             *_lane_write(wp, staging.rdata, cp_tail, cp_bc,
                                          cp_valid & (space == sp))]

        # Descriptor check (sequential shift-add products, no DSP).
        # RUN's descriptor fields, each as wide as its limit, loaded byte by byte as the payload
        # arrives (any frame's payload: only RUN's is used); a set bit above a field's width
        # sets d_high, which fails the range check.
        d_m = Signal(range(lin.max_m + 1))
        d_k = Signal(range(lin.max_k + 1))
        d_n = Signal(range(lin.max_n + 1))
        d_x = Signal(range(self.act_depth))
        d_y = Signal(range(self.out_depth))
        d_high = Signal()
        d_regs = dict(zip((name for name, _ in P.DESCRIPTOR_FIELDS), (d_m, d_k, d_n, d_x, d_y)))
        assert all(fmt == "I" for _, fmt in P.DESCRIPTOR_FIELDS)

        # Per payload byte of the descriptor: the bits above its field's width (a flat table, so
        # that d_high is one AND-OR of the byte, not a chain of per-byte conditions: timing).
        high_masks = []
        for name, _ in P.DESCRIPTOR_FIELDS:
            for b in range(4):
                keep = min(8, max(0, len(d_regs[name]) - 8 * b))
                high_masks.append((0xFF << keep) & 0xFF)
        idx_w = ceil_log2(len(high_masks))
        high_mask = Signal(8)
        m.d.comb += high_mask.eq(Mux(cnt[idx_w:] == 0,
                                     Array(C(v, 8) for v in high_masks
                                           + [0] * ((1 << idx_w) - len(high_masks)))[cnt[:idx_w]],
                                     0))

        def parse_descriptor_byte():
            """Statements taking ``rx_byte``, payload byte ``cnt``, into the ``d_*`` fields."""
            m.d.sync += d_high.eq(d_high | (rx_byte & high_mask).any())
            with m.Switch(cnt):
                for i, (name, _) in enumerate(P.DESCRIPTOR_FIELDS):
                    reg = d_regs[name]
                    for b in range(4):
                        keep = min(8, max(0, len(reg) - 8 * b))     # bits of this byte kept
                        if keep:
                            with m.Case(4 * i + b):
                                m.d.sync += reg[8 * b:8 * b + keep].eq(rx_byte[:keep])
        m.d.comb += [eng.m.eq(d_m), eng.k.eq(d_k), eng.n.eq(d_n)]
        # One shift-add datapath for the three checks: VAL_MK and VAL_MN multiply mul_a by
        # mul_b into mul_p, which starts at the buffer's address and so ends at the buffer's
        # end address; VAL_W accumulates the weight words in mul_p and the columns (or inputs)
        # covered in mul_b.
        prod_w = max(len(d_k), len(d_n)) + len(d_m)
        q_max = getattr(lin, "bcq_bits", 1)
        words_w = (self.w_depth + max(lin.max_k, lin.max_n * q_max)).bit_length()
        colg_w = (max(lin.max_n, lin.max_k) + 8 * self.lanes).bit_length()
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

        # Registered (timing), like wr_ok_q: the descriptor is stable long before VAL_RANGE.
        range_ok = Signal()
        m.d.sync += range_ok.eq(
            ~d_high & (d_m >= 1) & (d_m <= lin.max_m) & (d_k >= 1) & (d_k <= lin.max_k)
            & (d_n >= 1) & (d_n <= lin.max_n) & (d_x <= self.act_depth - 1)
            & (d_y <= self.out_depth - 1))

        with m.FSM(name="cmd"):
            with m.State("IDLE"):
                m.d.sync += [cnt.eq(0), *quiet_reset]
                with m.If(self.rx.valid & (rx_byte == P.REQ_SYNC)):
                    m.d.comb += rx_crc.start.eq(1)
                    m.d.sync += [hdr_done.eq(0), addr_high_zero.eq(1), d_high.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                with m.If(rx_take):
                    m.d.sync += [cnt.eq(cnt + 1), *quiet_reset]
                    with m.Switch(cnt):             # op, space, addr (4), len (2)
                        with m.Case(0):
                            m.d.sync += op.eq(rx_byte)
                        with m.Case(1):
                            m.d.sync += space.eq(rx_byte)
                        for b in range(4):
                            keep = min(8, max(0, ab - 8 * b))     # bits of this byte kept
                            with m.Case(2 + b):
                                if keep:
                                    m.d.sync += addr[8 * b:8 * b + keep].eq(rx_byte[:keep])
                                if keep < 8:
                                    with m.If(rx_byte[keep:] != 0):
                                        m.d.sync += addr_high_zero.eq(0)
                        with m.Case(6):
                            m.d.sync += length.eq(rx_byte)
                    new_len = Cat(length[:8], rx_byte)
                    with m.If(cnt == P.REQ_HEADER_BYTES - 2):
                        m.d.sync += [cnt.eq(0), length.eq(new_len), length_m1.eq(new_len - 1),
                                     hdr_done.eq(1)]
                        with m.If(new_len > self.max_payload):
                            m.next = "DISCARD"
                        with m.Elif(new_len == 0):
                            m.next = "CRC0"
                        with m.Else():
                            m.next = "PAYLOAD"
                with m.Elif(quiet_hit):
                    respond(P.Status.TRUNCATED)
                with m.Else():
                    m.d.sync += quiet_tick

            with m.State("PAYLOAD"):
                m.d.comb += [staging.addr.eq(cnt),
                             staging.wdata.eq(rx_byte), staging.we.eq(rx_take)]
                with m.If(rx_take):
                    m.d.sync += [args.eq(Cat(args[8:], rx_byte)), cnt.eq(cnt + 1), *quiet_reset]
                    if self.linear_on:
                        parse_descriptor_byte()
                    with m.If(cnt == length_m1):
                        m.next = "CRC0"
                with m.Elif(quiet_hit):
                    respond(P.Status.TRUNCATED)
                with m.Else():
                    m.d.sync += quiet_tick

            for state, nxt in (("CRC0", "CRC1"), ("CRC1", "CHECK")):
                with m.State(state):
                    with m.If(rx_take):
                        m.d.sync += quiet_reset
                        if nxt == "CHECK":
                            m.d.sync += rx_on.eq(0)
                        m.next = nxt
                    with m.Elif(quiet_hit):
                        respond(P.Status.TRUNCATED)
                    with m.Else():
                        m.d.sync += quiet_tick

            with m.State("DISCARD"):
                with m.If(rx_take):
                    m.d.sync += quiet_reset
                with m.Elif(quiet_hit):
                    respond(P.Status.LENGTH)
                with m.Else():
                    m.d.sync += quiet_tick

            with m.State("CHECK"):
                with m.If(~rx_crc.match_detected):
                    respond(P.Status.CRC)
                with m.Elif(is_op[P.Op.IDENT]):
                    with m.If(~len_is[0]):
                        respond(P.Status.LENGTH)
                    with m.Else():
                        respond(P.Status.OK, SRC_IDENT)
                with m.Elif(is_op[P.Op.STATUS]):
                    with m.If(~len_is[0]):
                        respond(P.Status.LENGTH)
                    with m.Else():
                        m.d.sync += status_snap.eq(Cat(job_active, aborted, C(0, 6),
                                                       last_cycles, jobs, rx_errors))
                        respond(P.Status.OK, SRC_STATUS)
                with m.Elif(is_op[P.Op.ABORT]):
                    with m.If(~len_is[0]):
                        respond(P.Status.LENGTH)
                    with m.Else():
                        m.d.comb += abort.eq(1)
                        respond(P.Status.OK)
                with m.Else():
                    m.next = "CHECK_OP"

            with m.State("CHECK_OP"):       # split from CHECK for timing: one cycle later
                with m.If(is_op[P.Op.WRITE]):
                    with m.If(job_active):
                        respond(P.Status.BUSY)
                    with m.Elif(~wr_ok_q):
                        respond(P.Status.ADDRESS)
                    with m.Else():
                        with m.Switch(space):
                            for sp, (wb, *_) in spaces.items():
                                with m.Case(sp):
                                    m.d.sync += [cp_addr.eq(addr >> exact_log2(wb)),
                                                 cp_wb_m1.eq(wb - 1)]
                        m.d.sync += [cp_idx.eq(0), cp_valid.eq(0), cp_end.eq(0), cp_bc.eq(0)]
                        m.next = "COPY"
                with m.Elif(is_op[P.Op.READ]):
                    with m.If(~len_is[2]):
                        respond(P.Status.LENGTH)
                    with m.Elif(job_active):
                        respond(P.Status.BUSY)
                    with m.Elif(~rd_ok_q):
                        respond(P.Status.ADDRESS)
                    with m.Else():
                        m.d.sync += [rsp_act.eq(space == P.Space.ACT), rsp_ptr.eq(addr)]
                        respond(P.Status.OK, SRC_MEM)
                with m.Elif(is_op[P.Op.RUN] if self.linear_on else C(0, 1)):
                    with m.If(~len_is[run_bytes]):
                        respond(P.Status.LENGTH)
                    with m.Elif(job_active):
                        respond(P.Status.BUSY)
                    with m.Else():
                        m.next = "VAL_RANGE"
                if self.att is not None:
                    with m.Elif(is_op[P.Op.RUN_ATTENTION]):
                        with m.If(~len_is[att_bytes]):
                            respond(P.Status.LENGTH)
                        with m.Elif(job_active):
                            respond(P.Status.BUSY)
                        with m.Else():
                            m.d.comb += self.att.start.eq(1)
                            m.next = "ATT_CHECK"
                with m.Else():
                    respond(P.Status.OPCODE)

            if self.att is not None:
                with m.State("ATT_CHECK"):      # AttentionUnit checks the descriptor
                    with m.If(self.att.ack):
                        respond(Mux(self.att.accepted, P.Status.OK, P.Status.DESCRIPTOR))

            with m.State("COPY"):
                # cycle i: read staging[i]; cycle i+1: write the byte into its word's lane.
                m.d.comb += [staging.addr.eq(cp_idx), cmd_act_addr.eq(cp_addr)]
                m.d.sync += [cp_valid.eq(cp_idx < length), cp_idx.eq(cp_idx + 1),
                             cp_end.eq(cp_idx >= length)]
                with m.If(cp_valid):
                    with m.If(cp_bc == cp_wb_m1):
                        m.d.comb += cp_strobe.eq(1)
                        m.d.sync += [cp_bc.eq(0), cp_addr.eq(cp_addr + 1)]
                    with m.Else():
                        m.d.sync += cp_bc.eq(cp_bc + 1)
                with m.If(~cp_valid & cp_end):     # cp_idx > length
                    respond(P.Status.OK)

            with m.State("VAL_RANGE"):
                with m.If(~range_ok):
                    respond(P.Status.DESCRIPTOR)
                with m.Else():
                    m.d.sync += [mul_a.eq(d_k), mul_b.eq(d_m), mul_p.eq(d_x)]
                    m.next = "VAL_MK"

            # The shift-add steps need no condition (timing: the enables are the state alone):
            # once mul_b is 0 they leave mul_p as it is.
            with m.State("VAL_MK"):
                m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                             mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.If(mul_b == 0):
                    m.next = "VAL_MK_END"

            with m.State("VAL_MK_END"):
                with m.If(x_over):
                    respond(P.Status.DESCRIPTOR)
                with m.Else():
                    m.d.sync += [x_end.eq(mul_p), mul_a.eq(d_n), mul_b.eq(d_m), mul_p.eq(d_y)]
                    m.next = "VAL_MN"

            with m.State("VAL_MN"):
                m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                             mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.If(mul_b == 0):
                    m.next = "VAL_MN_END"

            def start_val_w(w_add):
                w_limit = d_k if lin.mode == "bcq" else d_n
                m.d.sync += [mul_p.eq(-(self.w_depth + 1)), mul_b.eq(w_limit - 1),
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
                    respond(P.Status.DESCRIPTOR)
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
                w_step = 8 * self.lanes if lin.mode == "bcq" else self.lanes
                # Accumulates unconditionally (timing); the values are unused once it leaves.
                words = (mul_p + mul_a)[:len(mul_p)]
                left = (mul_b - w_step)[:len(mul_b)]
                m.d.sync += [mul_p.eq(words), mul_b.eq(left),
                             w_over.eq(~words[-1]), w_more.eq(~left[-1])]
                with m.If(w_over):
                    respond(P.Status.DESCRIPTOR)
                with m.Elif(~w_more):
                    m.d.comb += [launch.eq(1), launch_x.eq(d_x), launch_y.eq(d_y)]
                    respond(P.Status.OK)

            with m.State("RSP_START"):
                src_len = Array([0, len(self.ident), len(status_bytes) // 8,
                                 read_count])[rsp_src]
                m.d.sync += [rsp_len.eq(src_len), rsp_idx.eq(0)]
                with m.If(rsp_status != P.Status.OK):
                    m.d.sync += last_error.eq(rsp_status)
                m.d.comb += tx_crc.start.eq(1)
                m.d.sync += tx_on.eq(1)
                m.next = "RSP_HEAD"

            with m.State("RSP_HEAD"):
                m.d.comb += self.tx.payload.eq(head.word_select(rsp_idx[:3], 8))
                with m.If(tx_take):
                    m.d.sync += rsp_idx.eq(rsp_idx + 1)
                    with m.If(rsp_idx == P.RSP_HEADER_BYTES - 1):
                        m.d.sync += rsp_idx.eq(0)
                        with m.If(rsp_len == 0):
                            m.next = "RSP_CRC_HI"
                        with m.Else():
                            m.d.sync += tx_on.eq(0)
                            m.next = "RSP_FETCH"

            # Payload bytes, every source alike: address the memory, latch the byte (from the
            # memory, the ident ROM or the status snapshot), send it from the register (so
            # that no ROM or multiplexer lies between the response state and the TX CRC).
            with m.State("RSP_FETCH"):
                m.d.comb += [cmd_act_addr.eq(rsp_ptr), cmd_out_addr.eq(rsp_ptr)]
                m.next = "RSP_LATCH"

            with m.State("RSP_LATCH"):
                ident_byte = ident.word_select(rsp_idx[:ceil_log2(len(self.ident))], 8)
                status_byte = status_bytes.word_select(rsp_idx[:4], 8)
                mem_byte = Mux(rsp_act, act.rdata, out.rdata)
                m.d.sync += [
                    rsp_byte.eq(Mux(rsp_src == SRC_MEM, mem_byte,
                                    Mux(rsp_src == SRC_IDENT, ident_byte, status_byte))),
                    tx_on.eq(1)]
                m.next = "RSP_MEM"

            with m.State("RSP_MEM"):
                m.d.comb += self.tx.payload.eq(rsp_byte)
                with m.If(tx_take):
                    m.d.sync += [rsp_len.eq(rsp_len - 1), rsp_ptr.eq(rsp_ptr + 1),
                                 rsp_idx.eq(rsp_idx + 1)]
                    with m.If((rsp_src == SRC_STATUS) & (rsp_idx == 1)):    # last_error sent
                        m.d.sync += last_error.eq(0)
                    with m.If(rsp_len == 1):
                        m.next = "RSP_CRC_HI"
                    with m.Else():
                        m.d.sync += tx_on.eq(0)
                        m.next = "RSP_FETCH"

            with m.State("RSP_CRC_HI"):
                m.d.comb += [self.tx.payload.eq(tx_crc.crc[8:16]),
                             tx_crc.valid.eq(0)]
                with m.If(tx_take):
                    m.next = "RSP_CRC_LO"

            with m.State("RSP_CRC_LO"):
                m.d.comb += [self.tx.payload.eq(tx_crc.crc[0:8]),
                             tx_crc.valid.eq(0)]
                with m.If(tx_take):
                    m.d.sync += [tx_on.eq(0), rx_on.eq(1)]
                    m.next = "IDLE"
        return m


class Accelerator(wiring.Component):
    """The top a board build wraps: :class:`AcceleratorCore` behind a UART.

    With a platform, the UART is ``platform.request("uart", 0)`` and the baud divisor comes
    from ``platform.default_clk_frequency``; the ports below are then unused. Without a
    platform (simulation) the serial lines are the ports and the clock is ``clk_hz``.

    Parameters
    ----------
    config : AcceleratorConfig
        Read duck-typed (``config.linear``, ``config.uart.baud``).
    clk_hz : int or None
        Clock frequency without a platform (default 12 MHz); ignored with a platform.
    **core_kwargs
        Passed to :class:`AcceleratorCore` (``act_depth``, ``out_depth``, ``max_payload``,
        ``timeout_cycles``, ``spram``).

    Members
    -------
    uart_rx : ``In(1)``
        Serial input (idle high).
    uart_tx : ``Out(1)``
        Serial output (idle high).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def __init__(self, config, *, clk_hz=None, **core_kwargs):
        self.config = config
        self.clk_hz = clk_hz
        self.core_kwargs = core_kwargs
        try:
            baud_divisor(clk_hz or 12_000_000, config.uart.baud)   # fail early on a bad rate
        except ValueError:
            self._MustUse__silence = True
            raise
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        if platform is not None:
            clk_hz = int(platform.default_clk_frequency)
        else:
            clk_hz = self.clk_hz or 12_000_000
        div = baud_divisor(clk_hz, self.config.uart.baud)
        m.submodules.core = core = AcceleratorCore(self.config, clk_hz=clk_hz,
                                                   **self.core_kwargs)
        m.submodules.uart_rx = rx = UARTRx(div)
        m.submodules.uart_tx = tx = UARTTx(div)
        wiring.connect(m, rx.o, core.rx)
        wiring.connect(m, core.tx, tx.i)
        m.d.comb += core.rx_error.eq(rx.framing_error)
        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
            m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
            m.d.comb += [rx.rx.eq(rx_buf.i), tx_buf.o.eq(tx.tx)]
            try:    # ULX3S: the FTDI's TX line is only driven when enabled
                tx_en = platform.request("uart_tx_enable", 0, dir="-")
            except ResourceError:
                pass
            else:
                m.submodules.uart_tx_en_buf = en_buf = io.Buffer("o", tx_en)
                m.d.comb += en_buf.o.eq(1)
        else:
            m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]
        return m
