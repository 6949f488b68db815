"""The link: framing, CRC, inter-byte timeout, staging and the memory spaces. It knows no engine.

::

    rx ─► frame receiver ─► staging buffer ─► COPY ─► activation memory (arbiter port)
                │                                    └─► unit write spaces (weights, heads, ...)
                ├─► payload bytes ─► desc (broadcast to every unit)
                └─► RUN ─► ctl[i].start ... ctl[i].ack ─► response
    tx ◄─ response: header, IDENT table, STATUS snapshot, or bytes of a readable memory

The wire protocol (frames, opcodes, status codes, spaces, ``IDENT`` table) is
:mod:`amaformer.hdl.protocol`. The link sees the units only through their control ports
(:class:`~amaformer.hdl.unit.UnitControlSignature`), the payload broadcast and the write ports
of the spaces they declare; the memories only through its two arbiter ports.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.lib import stream
from amaranth.utils import ceil_log2, exact_log2

from . import protocol as P
from .common import MemWriteSignature
from .memories import ByteMemory, is_ice40_up, SPRAM_BYTES
from .unit import BytePortSignature, DescriptorBytesSignature, UnitControlSignature

__all__ = ["Link", "WriteSpace"]


class WriteSpace:
    """A unit's write space as the link sees it.

    Parameters
    ----------
    code : int
        The space's code on the wire (:func:`amaformer.hdl.protocol.unit_space`).
    signature : MemWriteSignature
        Its write port (``depth`` words).
    word_bytes : int
        Bytes per word on the wire (a power of two, at least the data width in bytes).
    """

    def __init__(self, code, signature, word_bytes):
        if not isinstance(signature, MemWriteSignature):
            raise TypeError(f"signature must be a MemWriteSignature, not {signature!r}")
        self.code = code
        self.signature = signature
        self.word_bytes = word_bytes

    @property
    def member(self):
        return f"space_{self.code:02x}"


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


class Link(wiring.Component):
    """Command processor of the top: frames in, responses out, memories and units behind.

    Parameters
    ----------
    ident : bytes
        The ``IDENT`` response payload (:func:`amaformer.hdl.protocol.pack_ident`).
    act_depth, out_depth : int
        Bytes of the activation and output memories.
    max_payload : int
        Bytes of the staging buffer: the longest ``WRITE`` payload.
    timeout_cycles : int
        Inter-byte timeout inside a frame.
    descriptor_bytes : list of int
        Per unit, the bytes of its ``RUN`` descriptor.
    spaces : list of WriteSpace
        The units' write spaces.
    spram : bool or None
        Staging buffer in SPRAM (``None``: on an iCE40 UltraPlus).

    Members
    -------
    rx : ``In(stream.Signature(8))``
        Request bytes. Not ready while the link answers or commits a frame.
    tx : ``Out(stream.Signature(8))``
    rx_error : ``In(1)``
        Pulse per framing error of the PHY (counted in ``STATUS``).
    busy : ``Out(1)``
        A unit runs a job.
    abort : ``Out(1)``
        One-cycle pulse: ``ABORT`` (the top resets the units one cycle later).
    act : ``Out(BytePortSignature(act_depth))``
    out : ``Out(BytePortSignature(out_depth))``
        The link's ports to the arbiter (used only while no unit is busy).
    desc : ``Out(DescriptorBytesSignature())``
        Every request payload byte, as it arrives.
    ctl : ``Out(UnitControlSignature()).array(units)``
    space_XX : ``Out(MemWriteSignature(...))``
        One per :class:`WriteSpace`, ``XX`` its code in hex.

    Timing: a ``WRITE`` of ``L`` bytes commits in ``L + 4`` cycles after its last byte; a
    response starts 2 cycles after its decision and its payload bytes are offered every 3
    cycles at the fastest; ``RUN`` raises the unit's ``start`` 2 cycles after the frame's last
    byte and answers 2 cycles after its ``ack``.
    """

    def __init__(self, *, ident, act_depth, out_depth, max_payload, timeout_cycles,
                 descriptor_bytes, spaces, spram=None):
        self.ident = bytes(ident)
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.max_payload = max_payload
        self.timeout_cycles = timeout_cycles
        self.descriptor_bytes = list(descriptor_bytes)
        self.spaces = list(spaces)
        self.spram = spram
        members = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "rx_error": In(1),
            "busy": Out(1),
            "abort": Out(1),
            "act": Out(BytePortSignature(act_depth)),
            "out": Out(BytePortSignature(out_depth)),
            "desc": Out(DescriptorBytesSignature()),
        }
        if self.descriptor_bytes:
            members["ctl"] = Out(UnitControlSignature()).array(len(self.descriptor_bytes))
        for sp in self.spaces:
            members[sp.member] = Out(sp.signature)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        n_units = len(self.descriptor_bytes)
        ctl = list(self.ctl) if n_units else []
        act, out = self.act, self.out

        # The staging buffer is written (PAYLOAD) and read (COPY) in different states, so one
        # single-port memory does; on iCE40 UltraPlus an SPRAM, which frees a block RAM.
        st_spram = is_ice40_up(platform) if self.spram is None else self.spram
        m.submodules.staging = staging = ByteMemory(
            -(-self.max_payload // SPRAM_BYTES) * SPRAM_BYTES if st_spram else self.max_payload,
            spram=st_spram)
        m.submodules.rx_crc = rx_crc = P.CRC16.create()
        m.submodules.tx_crc = tx_crc = P.CRC16.create()

        # ---------------------------------------------------------------- job state
        busy = Signal()
        started = Signal()
        done = Signal()
        m.d.comb += [busy.eq(Cat(c.busy for c in ctl).any() if ctl else 0),
                     started.eq(Cat(c.started for c in ctl).any() if ctl else 0),
                     done.eq(Cat(c.done for c in ctl).any() if ctl else 0),
                     self.busy.eq(busy)]
        cycles = Signal(32)
        last_cycles = Signal(32)
        jobs = Signal(16)
        aborted = Signal()
        with m.If(started):
            m.d.sync += [cycles.eq(1), aborted.eq(0)]
        with m.Elif(busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(done):
            m.d.sync += [last_cycles.eq(cycles), jobs.eq(jobs + 1)]
        with m.If(self.abort):
            m.d.sync += aborted.eq(busy)

        # ---------------------------------------------------------------- frame receiver
        # Request header fields, loaded byte by byte in HEADER (``addr``, narrowed, under
        # "checks"); ``length`` keeps the bits of ``max_payload`` (a longer frame is discarded)
        # and at least its low byte until the high one arrives.
        op = Signal(8)
        space = Signal(8)
        length = Signal(range(max(self.max_payload + 1, 256)))
        hdr_done = Signal()             # the header is complete (before, responses echo op 0)
        # The payload shifts in from the top: READ's count is its last two bytes.
        args = Signal(16)
        read_count = args
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
        spaces = {P.Space.ACT: (1, self.act_depth, True, True),
                  P.Space.OUT: (1, self.out_depth, False, True)}
        for sp in self.spaces:
            spaces[sp.code] = (sp.word_bytes, sp.signature.depth * sp.word_bytes, True, False)
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
            for code, (wb, size, writable, readable) in spaces.items():
                with m.Case(code):
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
        m.d.sync += [is_op[o].eq(op == o) for o in P.Op]
        len_is = {v: Signal(name=f"len_is_{v}") for v in {0, 2, *self.descriptor_bytes}}
        m.d.sync += [len_is[v].eq(length == v) for v in len_is]
        # RUN: the unit addressed by ``space``, and whether the length is its descriptor's
        unit_ok = Signal()
        unit_len_ok = Signal()
        m.d.sync += [unit_ok.eq(space < n_units), unit_len_ok.eq(0)]
        with m.Switch(space):
            for i, nb in enumerate(self.descriptor_bytes):
                with m.Case(i):
                    m.d.sync += unit_len_ok.eq(length == nb)
        unit_sel = Signal(range(max(n_units, 1)))

        # Copy (commit) state: staging bytes -> target write ports, one byte per cycle, each
        # byte written into its lane of the word (see _lane_write); no word register.
        cp_idx = cnt
        cp_valid = Signal()             # staging.rdata holds a byte this cycle
        cp_end = Signal()               # cp_idx > length, as a register (timing)
        cp_bc = Signal(range(max(wb for wb, *_ in spaces.values())))  # its byte in the word
        cp_wb_m1 = Signal.like(cp_bc)
        # Word address of COPY; READ's byte address (RSP_*).
        cp_addr = Signal(range(max(self.act_depth, self.out_depth,
                                   *(sp.signature.depth for sp in self.spaces)) + 1))
        rsp_ptr = cp_addr
        cp_strobe = Signal()            # the word's last byte: next word
        wr_ports = {sp.code: getattr(self, sp.member) for sp in self.spaces}
        # The bytes before staging.rdata, the last one on top (whole-word ports need them).
        cp_tail = Signal(8 * max([_lane_write_tail_bytes(wp) for wp in wr_ports.values()],
                                 default=0))
        with m.If(cp_valid):
            m.d.sync += cp_tail.eq(Cat(cp_tail[8:], staging.rdata))
        m.d.comb += [act.wdata.eq(staging.rdata),
                     act.we.eq(cp_strobe & (space == P.Space.ACT))]
        for code, wp in wr_ports.items():
            m.d.comb += [wp.addr.eq(cp_addr),
                         *_lane_write(wp, staging.rdata, cp_tail, cp_bc,
                                      cp_valid & (space == code))]

        m.d.comb += [self.desc.payload.byte.eq(rx_byte), self.desc.payload.index.eq(cnt)]

        with m.FSM(name="cmd"):
            with m.State("IDLE"):
                m.d.sync += [cnt.eq(0), *quiet_reset]
                with m.If(self.rx.valid & (rx_byte == P.REQ_SYNC)):
                    m.d.comb += rx_crc.start.eq(1)
                    m.d.sync += [hdr_done.eq(0), addr_high_zero.eq(1)]
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
                             staging.wdata.eq(rx_byte), staging.we.eq(rx_take),
                             self.desc.valid.eq(rx_take)]
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
                        m.d.sync += status_snap.eq(Cat(busy, aborted, C(0, 6),
                                                       last_cycles, jobs, rx_errors))
                        respond(P.Status.OK, SRC_STATUS)
                with m.Elif(is_op[P.Op.ABORT]):
                    with m.If(~len_is[0]):
                        respond(P.Status.LENGTH)
                    with m.Else():
                        m.d.comb += self.abort.eq(1)
                        respond(P.Status.OK)
                with m.Else():
                    m.next = "CHECK_OP"

            with m.State("CHECK_OP"):       # split from CHECK for timing: one cycle later
                with m.If(is_op[P.Op.WRITE]):
                    with m.If(busy):
                        respond(P.Status.BUSY)
                    with m.Elif(~wr_ok_q):
                        respond(P.Status.ADDRESS)
                    with m.Else():
                        with m.Switch(space):
                            for code, (wb, *_) in spaces.items():
                                with m.Case(code):
                                    m.d.sync += [cp_addr.eq(addr >> exact_log2(wb)),
                                                 cp_wb_m1.eq(wb - 1)]
                        m.d.sync += [cp_idx.eq(0), cp_valid.eq(0), cp_end.eq(0), cp_bc.eq(0)]
                        m.next = "COPY"
                with m.Elif(is_op[P.Op.READ]):
                    with m.If(~len_is[2]):
                        respond(P.Status.LENGTH)
                    with m.Elif(busy):
                        respond(P.Status.BUSY)
                    with m.Elif(~rd_ok_q):
                        respond(P.Status.ADDRESS)
                    with m.Else():
                        m.d.sync += [rsp_act.eq(space == P.Space.ACT), rsp_ptr.eq(addr)]
                        respond(P.Status.OK, SRC_MEM)
                with m.Elif(is_op[P.Op.RUN]):
                    with m.If(~unit_ok):
                        respond(P.Status.UNIT)
                    with m.Elif(~unit_len_ok):
                        respond(P.Status.LENGTH)
                    with m.Elif(busy):
                        respond(P.Status.BUSY)
                    with m.Else():
                        with m.Switch(space):
                            for i, c in enumerate(ctl):
                                with m.Case(i):
                                    m.d.comb += c.start.eq(1)
                        m.d.sync += unit_sel.eq(space)
                        m.next = "RUN_WAIT"
                with m.Else():
                    respond(P.Status.OPCODE)

            with m.State("RUN_WAIT"):       # the unit checks its descriptor
                if ctl:
                    acks = Array(c.ack for c in ctl)
                    accepted = Array(c.accepted for c in ctl)
                    with m.If(acks[unit_sel]):
                        respond(Mux(accepted[unit_sel], P.Status.OK, P.Status.DESCRIPTOR))

            with m.State("COPY"):
                # cycle i: read staging[i]; cycle i+1: write the byte into its word's lane.
                m.d.comb += [staging.addr.eq(cp_idx), act.addr.eq(cp_addr)]
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

            with m.State("RSP_START"):
                src_len = Array([0, len(self.ident), len(status_bytes) // 8,
                                 read_count])[rsp_src]
                m.d.sync += [rsp_len.eq(src_len), rsp_idx.eq(0)]
                with m.If(rsp_status != P.Status.OK):
                    m.d.sync += last_error.eq(rsp_status)
                m.d.comb += tx_crc.start.eq(1)
                m.d.sync += tx_on.eq(1)
                m.next = "RSP_HEAD"

            def after_byte(last):
                # after a sent byte: the CRC if it was the last, else fetch the next payload byte
                with m.If(last):
                    m.next = "RSP_CRC_HI"
                with m.Else():
                    m.d.sync += tx_on.eq(0)
                    m.next = "RSP_FETCH"

            with m.State("RSP_HEAD"):
                m.d.comb += self.tx.payload.eq(head.word_select(rsp_idx[:3], 8))
                with m.If(tx_take):
                    m.d.sync += rsp_idx.eq(rsp_idx + 1)
                    with m.If(rsp_idx == P.RSP_HEADER_BYTES - 1):
                        m.d.sync += rsp_idx.eq(0)
                        after_byte(rsp_len == 0)

            # Payload bytes, every source alike: address the memory, latch the byte (from the
            # memory, the ident ROM or the status snapshot), send it from the register (so
            # that no ROM or multiplexer lies between the response state and the TX CRC).
            with m.State("RSP_FETCH"):
                m.d.comb += [act.addr.eq(rsp_ptr), out.addr.eq(rsp_ptr)]
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
                    after_byte(rsp_len == 1)

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
