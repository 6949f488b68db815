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
    pipelined for a 30 MHz iCE40 clock; a response starts 2 cycles after its decision), then
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
        if self.linear_on:
            m.submodules.engine = ResetInserter(abort)(eng)

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
        job_m = Signal.like(eng.m)
        job_k = Signal.like(eng.k)
        job_n = Signal.like(eng.n)
        x_addr = Signal(range(self.act_depth))
        y_addr = Signal(range(self.out_depth))
        x_left = Signal(range(self.act_depth + 1))
        cycles = Signal(32)
        last_cycles = Signal(32)
        jobs = Signal(16)
        aborted = Signal()
        launch = Signal()
        launch_mk = Signal(range(self.act_depth + 1))
        launch_x = Signal(range(self.act_depth))
        launch_y = Signal(range(self.out_depth))
        prefill = Signal(range(PREFILL_CYCLES + 1))
        m.d.comb += self.busy.eq(job_active)

        m.submodules.xfifo = xfifo = ResetInserter(abort)(fifo.SyncFIFO(width=8, depth=2))
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
        m.d.comb += issue.eq(job_active & (x_left != 0)
                             & (xfifo.level + pending < 2 + consume))
        m.d.sync += pending.eq(issue & ~abort)
        with m.If(issue):
            m.d.sync += [x_addr.eq(x_addr + 1), x_left.eq(x_left - 1)]

        m.d.comb += eng.y.ready.eq(job_active)
        with m.If(eng.y.valid & eng.y.ready):
            m.d.sync += y_addr.eq(y_addr + 1)

        m.d.comb += [eng.m.eq(job_m), eng.k.eq(job_k), eng.n.eq(job_n)]
        with m.If(job_active):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(launch):
            m.d.sync += [job_active.eq(1), x_addr.eq(launch_x), y_addr.eq(launch_y),
                         x_left.eq(launch_mk), prefill.eq(PREFILL_CYCLES), aborted.eq(0)]
        with m.Elif(prefill != 0):
            m.d.sync += prefill.eq(prefill - 1)
            with m.If(prefill == 1):
                m.d.sync += cycles.eq(1)
        with m.Elif(job_active & eng.done):
            m.d.sync += [job_active.eq(0), last_cycles.eq(cycles), jobs.eq(jobs + 1)]
        # Not under the Elif: launch (prefill is 0 then) must not gate start (timing).
        m.d.comb += eng.start.eq(prefill == 1)
        att_job = Signal()              # the running job is the attention unit's
        if self.att is not None:
            att = self.att
            m.submodules.att = ResetInserter(abort)(att)
            m.d.comb += att.act_rdata.eq(act.rdata)
            with m.If(att.ack & att.accepted):      # its start edge: like eng.start above
                m.d.sync += [job_active.eq(1), att_job.eq(1), cycles.eq(1), aborted.eq(0)]
            with m.Elif(job_active & att_job & att.done):
                m.d.sync += [job_active.eq(0), att_job.eq(0), last_cycles.eq(cycles),
                             jobs.eq(jobs + 1)]
        with m.If(abort):
            m.d.sync += [job_active.eq(0), prefill.eq(0), x_left.eq(0),
                         aborted.eq(job_active), att_job.eq(0)]

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
        hdr = Signal(64)                # op, space, addr, len, shifted in LSB first
        op = Signal(8)
        space = Signal(8)
        addr = Signal(32)
        length = Signal(16)
        m.d.comb += Cat(op, space, addr, length).eq(hdr)
        # The payload shifts in from the top: a descriptor shorter than ``args`` (RUN's, when
        # RUN_ATTENTION's is longer) sits in its upper bytes.
        run_bytes = P.fields_size(P.DESCRIPTOR_FIELDS)
        att_bytes = P.fields_size(P.ATT_DESCRIPTOR_FIELDS) if self.att is not None else 0
        args = Signal(8 * max(run_bytes, att_bytes))
        desc = {name: args[len(args) - 8 * run_bytes:].word_select(i, 32)
                for i, (name, _) in enumerate(P.DESCRIPTOR_FIELDS)}
        if self.att is not None:
            pos = 0
            for name, fmt in P.ATT_DESCRIPTOR_FIELDS:
                width = 8 * P.fields_size(((name, fmt),))
                m.d.comb += getattr(self.att, name).eq(args[pos:pos + width])
                pos += width
        read_count = args[-16:]
        cnt = Signal(range(max(self.max_payload, P.REQ_HEADER_BYTES)))   # bytes received
        length_m1 = Signal(16)          # length - 1, a register set with the header (timing)
        quiet = Signal(range(self.timeout_cycles + 1))
        quiet_hit = Signal()            # quiet == timeout_cycles, kept as a register (timing)
        quiet_reset = [quiet.eq(0), quiet_hit.eq(0)]
        quiet_tick = [quiet.eq(quiet + 1), quiet_hit.eq(quiet == self.timeout_cycles - 1)]
        last_error = Signal(8)
        rx_errors = Signal(16)
        with m.If(self.rx_error & (rx_errors != 0xFFFF)):
            m.d.sync += rx_errors.eq(rx_errors + 1)

        rx_take = self.rx.valid & self.rx.ready
        rx_byte = self.rx.payload
        m.d.comb += [rx_crc.data.eq(rx_byte), rx_crc.valid.eq(rx_take)]

        # ---------------------------------------------------------------- response
        rsp_status = Signal(8)
        rsp_src = Signal(2)             # where the payload comes from, SRC_*
        rsp_op = op                     # the request header is stable while answering
        rsp_len = Signal(16)            # payload bytes, by source (set in RSP_START)
        rsp_len_m1 = Signal(16)         # rsp_len - 1, a register (timing)
        SRC_NONE, SRC_IDENT, SRC_STATUS, SRC_MEM = range(4)
        rsp_idx = Signal(16)
        rsp_space = Signal(8)
        rsp_ptr = Signal(range(max(self.act_depth, self.out_depth)))
        rsp_byte = Signal(8)
        status_bytes = Signal(8 * P.fields_size(P.STATUS_FIELDS))
        ident = Const(int.from_bytes(self.ident, "little"), 8 * len(self.ident))
        head = Cat(C(P.RSP_SYNC, 8), rsp_status, rsp_op, rsp_len)
        tx_take = self.tx.valid & self.tx.ready
        m.d.comb += [tx_crc.data.eq(self.tx.payload), tx_crc.valid.eq(tx_take)]

        def respond(status, src=SRC_NONE):
            # Only the status and the source here; RSP_START does the rest one cycle later,
            # which keeps the many callers' conditions off most registers' enables (timing).
            m.d.sync += [rsp_status.eq(status), rsp_src.eq(src)]
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
        # Two register stages (timing): the header and the payload are stable from the CRC
        # bytes on, at least three cycles before CHECK_OP reads wr_ok_q and rd_ok_q.
        end = Signal(max(ab, 16) + 1)
        addr_high_zero = Signal()
        m.d.sync += [end.eq(addr[:ab] + span), addr_high_zero.eq(addr[ab:] == 0)]
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

        # Copy (commit) state: staging bytes -> words -> target write port.
        cp_idx = Signal(range(self.max_payload + 2))
        cp_valid = Signal()             # staging.rdata holds a byte this cycle
        cp_end = Signal()               # cp_idx > length, as a register (timing)
        cp_bc = Signal(range(max(self.w_bytes, self.p_bytes, hp_bytes)))
        cp_wb_m1 = Signal.like(cp_bc)
        cp_addr = Signal(range(max(self.w_depth, self.p_depth, self.act_depth) + 1))  # word
        cp_word = Signal(8 * max(self.w_bytes, self.p_bytes, hp_bytes))
        cp_next = Signal.like(cp_word)
        m.d.comb += [cp_next.eq(cp_word), cp_next.word_select(cp_bc, 8).eq(staging.rdata)]
        cp_strobe = Signal()
        m.d.comb += [
            eng.w_wr.addr.eq(cp_addr), eng.w_wr.data.eq(cp_next[:self.w_width]),
            eng.w_wr.en.eq(Mux(cp_strobe & (space == P.Space.WEIGHTS), -1, 0)),
            eng.p_wr.addr.eq(cp_addr), eng.p_wr.data.eq(cp_next[:self.p_width]),
            eng.p_wr.en.eq(Mux(cp_strobe & (space == P.Space.PARAMS), -1, 0)),
            cmd_wdata.eq(staging.rdata),
            cmd_act_we.eq(cp_strobe & (space == P.Space.ACT)),
        ]
        if self.att is not None:
            hp_wr = self.att.hp_wr
            m.d.comb += [hp_wr.addr.eq(cp_addr), hp_wr.data.eq(cp_next[:len(hp_wr.data)]),
                         hp_wr.en.eq(cp_strobe & (space == P.Space.HEADS))]
            if self.att.conv_taps:
                cw_wr = self.att.cw_wr
                m.d.comb += [cw_wr.addr.eq(cp_addr), cw_wr.data.eq(cp_next[:8]),
                             cw_wr.en.eq(cp_strobe & (space == P.Space.CONV))]

        # Descriptor check (sequential shift-add products, no DSP).
        # Descriptor fields, narrowed once their high bits are known to be zero.
        d_m = Signal(range(lin.max_m + 1))
        d_k = Signal(range(lin.max_k + 1))
        d_n = Signal(range(lin.max_n + 1))
        d_x = Signal(range(self.act_depth))
        d_y = Signal(range(self.out_depth))
        prod_w = max(len(d_k), len(d_n)) + len(d_m)
        mul_a = Signal(prod_w)
        mul_b = Signal.like(d_m)
        mul_p = Signal(prod_w)
        x_over = Signal()               # the product's end passes a memory's end (registered)
        y_over = Signal()
        m.d.sync += [x_over.eq(d_x + mul_p > self.act_depth),
                     y_over.eq(d_y + mul_p > self.out_depth)]
        q_max = getattr(lin, "bcq_bits", 1)
        words = Signal(range(self.w_depth + max(lin.max_k, lin.max_n * q_max) + 1))
        colg = Signal(range(max(lin.max_n, lin.max_k) + 8 * self.lanes + 1))

        def fits(value, lo, hi):
            w = hi.bit_length()
            return (value[w:] == 0) & (value[:w] >= lo) & (value[:w] <= hi)

        # Registered (timing), like wr_ok_q: the descriptor is stable long before VAL_RANGE.
        range_ok = Signal()
        m.d.sync += range_ok.eq(
            fits(desc["m"], 1, lin.max_m) & fits(desc["k"], 1, lin.max_k)
            & fits(desc["n"], 1, lin.max_n) & fits(desc["x_addr"], 0, self.act_depth - 1)
            & fits(desc["y_addr"], 0, self.out_depth - 1))

        with m.FSM(name="cmd"):
            with m.State("IDLE"):
                m.d.comb += self.rx.ready.eq(1)
                m.d.sync += [cnt.eq(0), *quiet_reset]
                with m.If(self.rx.valid & (rx_byte == P.REQ_SYNC)):
                    m.d.comb += rx_crc.start.eq(1)
                    m.d.sync += hdr.eq(0)
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(rx_take):
                    new_hdr = Cat(hdr[8:], rx_byte)
                    new_len = new_hdr[48:64]
                    m.d.sync += [hdr.eq(new_hdr), cnt.eq(cnt + 1), *quiet_reset]
                    with m.If(cnt == P.REQ_HEADER_BYTES - 2):
                        m.d.sync += [cnt.eq(0), length_m1.eq(new_len - 1)]
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
                m.d.comb += [self.rx.ready.eq(1), staging.addr.eq(cnt),
                             staging.wdata.eq(rx_byte), staging.we.eq(rx_take)]
                with m.If(rx_take):
                    m.d.sync += [args.eq(Cat(args[8:], rx_byte)), cnt.eq(cnt + 1), *quiet_reset]
                    with m.If(cnt == length_m1):
                        m.next = "CRC0"
                with m.Elif(quiet_hit):
                    respond(P.Status.TRUNCATED)
                with m.Else():
                    m.d.sync += quiet_tick

            for state, nxt in (("CRC0", "CRC1"), ("CRC1", "CHECK")):
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(rx_take):
                        m.d.sync += quiet_reset
                        m.next = nxt
                    with m.Elif(quiet_hit):
                        respond(P.Status.TRUNCATED)
                    with m.Else():
                        m.d.sync += quiet_tick

            with m.State("DISCARD"):
                m.d.comb += self.rx.ready.eq(1)
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
                        m.d.sync += [
                            status_bytes.eq(Cat(job_active, aborted, C(0, 6), last_error,
                                                last_cycles, jobs, rx_errors)),
                            last_error.eq(0)]
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
                        m.d.sync += [rsp_space.eq(space), rsp_ptr.eq(addr)]
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
                # cycle i: read staging[i]; cycle i+1: merge the byte, write a full word.
                m.d.comb += [staging.addr.eq(cp_idx), cmd_act_addr.eq(cp_addr)]
                m.d.sync += [cp_valid.eq(cp_idx < length), cp_idx.eq(cp_idx + 1),
                             cp_end.eq(cp_idx >= length)]
                with m.If(cp_valid):
                    m.d.sync += cp_word.eq(cp_next)
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
                    m.d.sync += [d_m.eq(desc["m"]), d_k.eq(desc["k"]), d_n.eq(desc["n"]),
                                 d_x.eq(desc["x_addr"]), d_y.eq(desc["y_addr"]),
                                 mul_a.eq(desc["k"]), mul_b.eq(desc["m"]), mul_p.eq(0)]
                    m.next = "VAL_MK"

            with m.State("VAL_MK"):
                with m.If(mul_b != 0):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.Else():
                    m.next = "VAL_MK_END"

            with m.State("VAL_MK_END"):
                with m.If(x_over):
                    respond(P.Status.DESCRIPTOR)
                with m.Else():
                    m.d.sync += [launch_mk.eq(mul_p), mul_a.eq(d_n), mul_b.eq(d_m), mul_p.eq(0)]
                    m.next = "VAL_MN"

            with m.State("VAL_MN"):
                with m.If(mul_b != 0):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_p.eq(Mux(mul_b[0], mul_p + mul_a, mul_p))]
                with m.Else():
                    m.next = "VAL_MN_END"

            with m.State("VAL_MN_END"):
                with m.If(y_over):
                    respond(P.Status.DESCRIPTOR)
                with m.Else():
                    m.d.sync += [words.eq(0), colg.eq(0)]
                    m.next = "VAL_W"

            with m.State("VAL_W"):
                # words = K · ceil(N / lanes), accumulated one column group per cycle; bcq:
                # ceil(K / (8·lanes)) · N · q, one chunk of 8·lanes inputs per cycle.
                if lin.mode == "bcq":
                    q = lin.bcq_bits
                    w_limit, w_step = d_k, 8 * self.lanes
                    w_add = sum(d_n << i for i in range(q.bit_length()) if q >> i & 1)
                else:
                    w_limit, w_step, w_add = d_n, self.lanes, d_k
                with m.If(words > self.w_depth):
                    respond(P.Status.DESCRIPTOR)
                with m.Elif(colg < w_limit):
                    m.d.sync += [words.eq(words + w_add), colg.eq(colg + w_step)]
                with m.Else():
                    m.d.comb += launch.eq(1)
                    m.d.sync += [job_m.eq(d_m), job_k.eq(d_k), job_n.eq(d_n)]
                    m.d.comb += [launch_x.eq(d_x), launch_y.eq(d_y)]
                    respond(P.Status.OK)

            with m.State("RSP_START"):
                src_len = Array([0, len(self.ident), len(status_bytes) // 8,
                                 read_count])[rsp_src]
                m.d.sync += [rsp_len.eq(src_len), rsp_len_m1.eq(src_len - 1), rsp_idx.eq(0)]
                with m.If(rsp_status != P.Status.OK):
                    m.d.sync += last_error.eq(rsp_status)
                m.d.comb += tx_crc.start.eq(1)
                m.next = "RSP_HEAD"

            with m.State("RSP_HEAD"):
                m.d.comb += [self.tx.valid.eq(1),
                             self.tx.payload.eq(head.word_select(rsp_idx[:3], 8))]
                with m.If(tx_take):
                    m.d.sync += rsp_idx.eq(rsp_idx + 1)
                    with m.If(rsp_idx == P.RSP_HEADER_BYTES - 1):
                        m.d.sync += rsp_idx.eq(0)
                        with m.If(rsp_len == 0):
                            m.next = "RSP_CRC_HI"
                        with m.Elif(rsp_src == SRC_MEM):
                            m.next = "RSP_FETCH"
                        with m.Else():
                            m.next = "RSP_BODY"

            with m.State("RSP_BODY"):
                ident_byte = ident.word_select(rsp_idx[:ceil_log2(len(self.ident))], 8)
                status_byte = status_bytes.word_select(rsp_idx[:4], 8)
                body = Mux(rsp_src == SRC_IDENT, ident_byte, status_byte)
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(body)]
                with m.If(tx_take):
                    m.d.sync += rsp_idx.eq(rsp_idx + 1)
                    with m.If(rsp_idx == rsp_len_m1):
                        m.next = "RSP_CRC_HI"

            with m.State("RSP_FETCH"):
                m.d.comb += [cmd_act_addr.eq(rsp_ptr), cmd_out_addr.eq(rsp_ptr)]
                m.next = "RSP_LATCH"

            with m.State("RSP_LATCH"):
                m.d.sync += rsp_byte.eq(Mux(rsp_space == P.Space.ACT, act.rdata, out.rdata))
                m.next = "RSP_MEM"

            with m.State("RSP_MEM"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(rsp_byte)]
                with m.If(tx_take):
                    m.d.sync += [rsp_idx.eq(rsp_idx + 1), rsp_ptr.eq(rsp_ptr + 1)]
                    with m.If(rsp_idx == rsp_len_m1):
                        m.next = "RSP_CRC_HI"
                    with m.Else():
                        m.next = "RSP_FETCH"

            with m.State("RSP_CRC_HI"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[8:16]),
                             tx_crc.valid.eq(0)]
                with m.If(tx_take):
                    m.next = "RSP_CRC_LO"

            with m.State("RSP_CRC_LO"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[0:8]),
                             tx_crc.valid.eq(0)]
                with m.If(tx_take):
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
