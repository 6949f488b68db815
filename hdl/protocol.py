"""Wire protocol between the host driver and the accelerator top, defined once.

Imported by the gateware (:mod:`amaformer.hdl.top`) and by the host driver
(:mod:`amaformer.host`), so that opcodes, error codes, address spaces, frame layout and the CRC
cannot drift apart.

Frames
------
Every field is little-endian except the CRC, which is sent most significant byte first (so that
the receiver's CRC register reaches the residue 0 after the last byte).

Request (host → device), ``REQ_HEADER_BYTES + len + 2`` bytes::

    0xA5 | op:u8 | space:u8 | addr:u32 | len:u16 | payload[len] | crc16 (big-endian)

Response (device → host), ``RSP_HEADER_BYTES + len + 2`` bytes::

    0x5A | status:u8 | op:u8 | len:u16 | payload[len] | crc16 (big-endian)

``len`` always counts the payload bytes that follow the header, for every opcode. The CRC is
CRC-16/CCITT-FALSE (:data:`CRC16`: polynomial 0x1021, initial value 0xFFFF, no reflection, no
final XOR) over every byte of the frame from the sync byte to the end of the payload.

Opcodes (:class:`Op`)
---------------------
``IDENT``
    No payload. Response payload: :data:`IDENT_FIELDS` (magic, version, the key parameters of
    the design), so the host can check that it talks to the design it expects.
``WRITE``
    Payload = bytes to write at byte address ``addr`` of ``space``. Word spaces (weights,
    params) need ``addr`` and ``len`` to be multiples of the space's word size in bytes.
    The payload is staged on chip and committed only after the CRC of the whole frame checks.
``READ``
    Payload = ``count:u16``. Response payload: ``count`` bytes from ``addr`` of ``space``
    (readable spaces: activations, outputs).
``RUN``
    Payload = :data:`DESCRIPTOR_FIELDS` (m, k, n, x_addr, y_addr as u32). Checks the descriptor,
    starts the job and answers at once; poll ``STATUS`` until ``busy`` clears. A design without
    a linear engine (``IDENT`` ``mode`` = :data:`MODE_NONE`) answers :attr:`Status.OPCODE`.
``STATUS``
    No payload. Response payload: :data:`STATUS_FIELDS`.
``ABORT``
    No payload. Resets the engines and the job state (memories keep their contents; an open
    ``linear_causal`` sequence is closed).
``RUN_ATTENTION``
    Payload = :data:`ATT_DESCRIPTOR_FIELDS`. Only on a design with an attention unit (``IDENT``
    ``att_mode`` != :data:`ATT_NONE`; otherwise :attr:`Status.OPCODE`). Q, K, V are
    ``heads×tokens×dim`` int8, head-major then row-major, at ``q_addr``, ``k_addr``, ``v_addr`` of
    :attr:`Space.ACT`; the output (same shape) goes to ``o_addr`` of :attr:`Space.OUT`. Per-head
    parameters come from :attr:`Space.HEADS` (:data:`HEAD_PARAM_FIELDS`); ``mask`` is one of
    :data:`ATT_MASKS` (sparse: the image of :func:`keep_mask_image` at ``mask_addr`` of
    :attr:`Space.ACT`); ``flags`` bit 0 (``linear_causal`` only, one head) continues the
    previous sequence instead of starting a new one. Checked like ``RUN``
    (:attr:`Status.DESCRIPTOR`), then polled with ``STATUS``.

Error handling
--------------
A frame whose bytes stop arriving for ``timeout_cycles`` is dropped with
:attr:`Status.TRUNCATED`; a frame whose ``len`` exceeds the staging buffer is swallowed until
the line is quiet for ``timeout_cycles`` and answered with :attr:`Status.LENGTH`; a bad CRC is
answered with :attr:`Status.CRC` and changes nothing. Bytes outside a frame that are not the
sync byte are ignored. Nothing is written to any memory unless the whole frame checked.
"""

import struct

from amaranth.lib import enum
from amaranth.lib.crc import catalog

__all__ = ["Op", "Status", "Space", "CRC16", "crc16", "REQ_SYNC", "RSP_SYNC",
           "REQ_HEADER_BYTES", "RSP_HEADER_BYTES", "IDENT_MAGIC", "PROTOCOL_VERSION",
           "IDENT_FIELDS", "STATUS_FIELDS", "DESCRIPTOR_FIELDS", "MODE_CODES", "MODE_NONE",
           "word_bytes", "encode_request", "encode_response", "pack_fields", "unpack_fields",
           "fields_size", "ProtocolError", "parse_response", "ATT_DESCRIPTOR_FIELDS",
           "ATT_MODE_CODES", "ATT_NONE", "ATT_MASKS", "ATT_FLAG_CONTINUE", "HEAD_PARAM_FIELDS",
           "head_param_word", "keep_mask_image"]

REQ_SYNC = 0xA5             #: first byte of every request
RSP_SYNC = 0x5A             #: first byte of every response
REQ_HEADER_BYTES = 9        #: sync, op, space, addr (4), len (2)
RSP_HEADER_BYTES = 5        #: sync, status, op, len (2)
IDENT_MAGIC = b"AMAF"
#: 2: attention (RUN_ATTENTION, Space.HEADS, IDENT att_*); 3: IDENT lin_inputs (products per
#: lane and cycle of a ``shift`` engine, which set its weight-word layout and word count)
PROTOCOL_VERSION = 3

#: The frame CRC, used by both sides: ``CRC16.compute(bytes)`` on the host,
#: ``CRC16.create()`` (a :class:`amaranth.lib.crc.Processor`) in the gateware.
CRC16 = catalog.CRC16_CCITT_FALSE(data_width=8)


class Op(enum.IntEnum, shape=8):
    """Request opcodes."""
    IDENT  = 0x01
    WRITE  = 0x02
    READ   = 0x03
    RUN    = 0x04
    STATUS = 0x05
    ABORT  = 0x06
    RUN_ATTENTION = 0x07


class Status(enum.IntEnum, shape=8):
    """Response status (error) codes."""
    OK         = 0x00
    CRC        = 0x01   #: the frame's CRC does not match
    OPCODE     = 0x02   #: unknown opcode
    ADDRESS    = 0x03   #: unknown space, range past the end, misaligned, or not readable
    TRUNCATED  = 0x04   #: the frame stopped arriving (inter-byte timeout)
    DESCRIPTOR = 0x05   #: a job descriptor out of range (dimensions, buffers, weight words)
    BUSY       = 0x06   #: a job is running; memories and RUN are unavailable until it ends
    LENGTH     = 0x07   #: payload longer than the staging buffer, or wrong for the opcode


class Space(enum.IntEnum, shape=8):
    """Address spaces (memory map). Addresses are byte addresses within a space."""
    WEIGHTS = 0x00  #: engine weight buffer, words of ``lanes·weight_bits`` bits (write only)
    PARAMS  = 0x01  #: per-column requantization words (bias, mult, shift) (write only)
    ACT     = 0x02  #: activation input memory, one signed byte per element
    OUT     = 0x03  #: output memory, one signed byte per element (read only)
    HEADS   = 0x04  #: per-head attention parameters, :data:`HEAD_PARAM_FIELDS` (write only)
    CONV    = 0x05  #: ``linear_causal`` convolution weights, one int8 per byte (write only)


#: Engine modes as reported by ``IDENT``; :data:`MODE_NONE` without a linear engine
#: (``linear.enabled = false``: ``RUN`` answers :attr:`Status.OPCODE`).
MODE_CODES = {"mul": 0, "shift": 1, "bcq": 2, "attention": 3}
MODE_NONE = 255

#: ``IDENT`` payload, in order: (name, struct format).
IDENT_FIELDS = (
    ("magic", "4s"), ("version", "B"), ("mode", "B"), ("lanes", "B"), ("act_bits", "B"),
    ("weight_bits", "B"), ("weight_word_bytes", "B"), ("param_word_bytes", "B"),
    ("max_k", "I"), ("max_n", "I"), ("max_m", "I"), ("weight_depth", "I"),
    ("act_depth", "I"), ("out_depth", "I"), ("max_payload", "H"), ("clk_hz", "I"),
    ("baud", "I"),
    # attention unit (version 2): att_mode is ATT_NONE without one; att_masks has bit i set when
    # mask kind i of ATT_MASKS is supported
    ("att_mode", "B"), ("att_lanes", "B"), ("att_masks", "B"), ("att_head_word_bytes", "B"),
    ("att_heads", "H"), ("att_head_dim", "H"), ("att_max_tokens", "I"),
    ("att_conv_taps", "B"),
    # version 3: linear engine inputs per lane and cycle (``shift``: g = linear.shift_inputs;
    # 1 for the other modes and without a linear engine)
    ("lin_inputs", "B"),
)
#: ``STATUS`` payload: flags bit 0 = busy, bit 1 = the last job was aborted;
#: ``last_error`` = the status of the last error response (0 if none since reset);
#: ``cycles`` = clock cycles of the last job, start edge to done edge; ``jobs`` = jobs completed;
#: ``rx_errors`` = UART framing errors seen (saturating).
STATUS_FIELDS = (("flags", "B"), ("last_error", "B"), ("cycles", "I"), ("jobs", "H"),
                 ("rx_errors", "H"))
#: ``RUN`` payload: job ``M×K @ K×N``, X read row-major from ``x_addr`` of :attr:`Space.ACT`,
#: Y written row-major to ``y_addr`` of :attr:`Space.OUT`.
DESCRIPTOR_FIELDS = (("m", "I"), ("k", "I"), ("n", "I"), ("x_addr", "I"), ("y_addr", "I"))

FLAG_BUSY = 1
FLAG_ABORTED = 2

#: Attention unit kinds as reported by ``IDENT`` ``att_mode``.
ATT_MODE_CODES = {"softmax": 0, "linear_causal": 1, "linear_angular": 2}
ATT_NONE = 255
#: ``RUN_ATTENTION`` mask kinds (the ``mask`` field).
ATT_MASKS = {"dense": 0, "causal": 1, "sparse": 2}
#: ``RUN_ATTENTION`` flags bit: continue the running state (``linear_causal``).
ATT_FLAG_CONTINUE = 1
#: ``RUN_ATTENTION`` payload: ``heads×tokens×dim`` Q, K, V in :attr:`Space.ACT`, output in
#: :attr:`Space.OUT`, mask kind, flags, sparse keep image address.
ATT_DESCRIPTOR_FIELDS = (("heads", "H"), ("mask", "B"), ("flags", "B"), ("tokens", "H"),
                         ("dim", "H"), ("q_addr", "I"), ("k_addr", "I"), ("v_addr", "I"),
                         ("o_addr", "I"), ("mask_addr", "I"))
#: One word of :attr:`Space.HEADS` per head, fields from the least significant bit: (name,
#: bits). ``softmax``: logit ``x = rs(score·score_mult, score_shift)``, output
#: ``rs(t·out_mult, out_shift)``; ``linear_causal``: ``out_mult``/``out_shift``, and the
#: convolution's ``(conv_mult, conv_shift)`` in the score fields (with ``att_conv_taps > 0``);
#: ``linear_angular``: ``(half_mult, half_shift)`` of ``0.5·V`` in the score fields and
#: ``(ang_mult, ang_shift)`` of ``q̂(k̂ᵀV)`` in the out fields.
HEAD_PARAM_FIELDS = (("score_mult", 16), ("score_shift", 6), ("out_mult", 16), ("out_shift", 6))


def head_param_word(score_mult=0, score_shift=0, out_mult=0, out_shift=0):
    """The :attr:`Space.HEADS` word of one head (an int of 44 bits; 8 bytes on the wire)."""
    values = dict(score_mult=score_mult, score_shift=score_shift, out_mult=out_mult,
                  out_shift=out_shift)
    word, pos = 0, 0
    for name, bits in HEAD_PARAM_FIELDS:
        v = int(values[name])
        if not 0 <= v < (1 << bits):
            raise ValueError(f"{name} must be an integer in [0, {(1 << bits) - 1}], not {v!r}")
        word |= v << pos
        pos += bits
    return word


def keep_mask_image(keep, lanes):
    """Bytes of a sparse keep mask as ``RUN_ATTENTION`` reads it from :attr:`Space.ACT`.

    ``keep`` is ``N×N`` (nested sequences or a tensor/array of bools, row = query, True =
    attend), shared by every head. Per block of ``lanes`` query rows (``ceil(N/lanes)`` blocks,
    ``2 + N`` bytes each): the index of the last key the device must send (u16, little-endian;
    the block's last kept key), then one byte per key ``j`` whose bit ``r`` says whether row
    ``row0 + r`` keeps ``j``. Keys whose byte is zero are skipped (never computed). Needs
    ``lanes <= 8``.
    """
    rows = [[bool(x) for x in row] for row in (keep.tolist() if hasattr(keep, "tolist")
                                                 else keep)]
    n = len(rows)
    if not 1 <= lanes <= 8:
        raise ValueError(f"lanes must be an integer in [1, 8] for a sparse mask, not {lanes!r}")
    if any(len(r) != n for r in rows):
        raise ValueError("keep must be a square N×N mask")
    out = bytearray()
    for row0 in range(0, n, lanes):
        block = rows[row0:row0 + lanes]
        masks = [sum(1 << r for r, row in enumerate(block) if row[j]) for j in range(n)]
        kept = [j for j, mk in enumerate(masks) if mk]
        out += (kept[-1] if kept else 0).to_bytes(2, "little") + bytes(masks)
    return bytes(out)


class ProtocolError(Exception):
    """A response frame from the device is malformed (bad sync, CRC or length)."""


def fields_size(fields):
    """Bytes taken by a field list such as :data:`IDENT_FIELDS`."""
    return struct.calcsize("<" + "".join(f for _, f in fields))


def pack_fields(fields, values):
    """Pack a dict of values into the little-endian layout ``fields``."""
    return struct.pack("<" + "".join(f for _, f in fields), *(values[n] for n, _ in fields))


def unpack_fields(fields, data):
    """Inverse of :func:`pack_fields`; returns a dict."""
    return dict(zip((n for n, _ in fields),
                    struct.unpack("<" + "".join(f for _, f in fields), bytes(data))))


def word_bytes(bits):
    """Bytes per word of a ``bits``-bit memory word on the wire: the next power of two
    of ``ceil(bits / 8)``, so that the gateware splits addresses with shifts, not division."""
    b = max(1, -(-bits // 8))
    return 1 << (b - 1).bit_length()


def crc16(data):
    """CRC-16/CCITT-FALSE of ``data`` (bytes)."""
    return CRC16.compute(bytes(data))


def encode_request(op, space=0, addr=0, payload=b""):
    """Bytes of one request frame."""
    payload = bytes(payload)
    if not 0 <= addr < (1 << 32):
        raise ValueError(f"addr must be an integer in [0, 2**32), not {addr!r}")
    if len(payload) >= (1 << 16):
        raise ValueError(f"payload must be shorter than 65536 bytes, not {len(payload)}")
    head = struct.pack("<BBBIH", REQ_SYNC, int(op),
                       int(space), addr, len(payload))
    body = head + payload
    return body + struct.pack(">H", crc16(body))


def encode_response(status, op, payload=b""):
    """Bytes of one response frame (used by tests and reference models)."""
    body = struct.pack("<BBBH", RSP_SYNC, int(status), int(op), len(payload)) + bytes(payload)
    return body + struct.pack(">H", crc16(body))


def parse_response(frame):
    """Check one complete response frame; return ``(status:int, op:int, payload:bytes)``.

    Raises
    ------
    ProtocolError
        Bad sync byte, length or CRC.
    """
    frame = bytes(frame)
    if len(frame) < RSP_HEADER_BYTES + 2 or frame[0] != RSP_SYNC:
        raise ProtocolError(f"malformed response frame {frame[:8].hex()}")
    sync, status, op, length = struct.unpack("<BBBH", frame[:RSP_HEADER_BYTES])
    if len(frame) != RSP_HEADER_BYTES + length + 2:
        raise ProtocolError(f"response length {len(frame)} does not match header ({length})")
    if crc16(frame) != 0:
        raise ProtocolError("response CRC mismatch")
    return status, op, frame[RSP_HEADER_BYTES:-2]
