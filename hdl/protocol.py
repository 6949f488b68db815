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
    No payload. Response payload: the link's parameters and the table of units (see below),
    so that the host can check that it talks to the design it expects.
``WRITE``
    Payload = bytes to write at byte address ``addr`` of ``space``. Word spaces (the units'
    spaces) need ``addr`` and ``len`` to be multiples of the space's word size in bytes.
    The payload is staged on chip and committed only after the CRC of the whole frame checks.
``READ``
    Payload = ``count:u16``. Response payload: ``count`` bytes from ``addr`` of ``space``
    (readable spaces: activations, outputs).
``RUN``
    ``space`` = the unit's index in the ``IDENT`` table; payload = the unit's descriptor (its
    kind's ``descriptor`` layout, :mod:`amaformer.hdl.registry`). The unit checks the
    descriptor (:attr:`Status.DESCRIPTOR` if it refuses it), starts the job and the link answers
    at once; poll ``STATUS`` until ``busy`` clears. No unit at that index:
    :attr:`Status.UNIT`; a payload that is not the unit's descriptor size: :attr:`Status.LENGTH`.
``STATUS``
    No payload. Response payload: :data:`STATUS_FIELDS`.
``ABORT``
    No payload. Resets the units and the job state (memories keep their contents; an open
    ``linear_causal`` sequence is closed).

Spaces
------
:attr:`Space.ACT` (activation memory, read/write) and :attr:`Space.OUT` (output memory, read
only) belong to the link; unit ``i``'s write space ``j`` (in its kind's ``spaces`` order) is
:func:`unit_space(i, j) <unit_space>` = ``0x10·(i + 1) + j``, write only, in words of the size
its ``IDENT`` record gives.

``IDENT`` (version 4)
---------------------
:data:`LINK_IDENT_FIELDS` (magic, version, the number of units, the memories, the payload
limit, the clock and the baud rate), then per unit :data:`UNIT_HEADER_FIELDS` (kind code, its
index, the bytes of its record) and its kind's record (:func:`pack_ident`,
:func:`unpack_ident`). A design may hold any set of units, several of one kind.

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
           "LINK_IDENT_FIELDS", "UNIT_HEADER_FIELDS", "STATUS_FIELDS", "unit_space",
           "pack_ident", "unpack_ident", "word_bytes", "encode_request", "encode_response",
           "pack_fields", "unpack_fields", "fields_size", "ProtocolError", "parse_response"]

REQ_SYNC = 0xA5             #: first byte of every request
RSP_SYNC = 0x5A             #: first byte of every response
REQ_HEADER_BYTES = 9        #: sync, op, space, addr (4), len (2)
RSP_HEADER_BYTES = 5        #: sync, status, op, len (2)
IDENT_MAGIC = b"AMAF"
#: 2: attention; 3: IDENT lin_inputs; 4: units: IDENT as a table of units, RUN addressed to a
#: unit by ``space``, unit write spaces ``0x10·(i + 1) + j``
PROTOCOL_VERSION = 4

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
    UNIT       = 0x08   #: RUN addressed to a unit index the design does not have


class Space(enum.IntEnum, shape=8):
    """The link's address spaces. Addresses are byte addresses within a space; units' write
    spaces are :func:`unit_space`."""
    ACT     = 0x02  #: activation input memory, one signed byte per element
    OUT     = 0x03  #: output memory, one signed byte per element (read only)


def unit_space(index, j):
    """Wire code of write space ``j`` of unit ``index`` (both from 0)."""
    if not 0 <= index < 15:
        raise ValueError(f"unit index must be an integer in [0, 14], not {index!r}")
    if not 0 <= j < 16:
        raise ValueError(f"space index must be an integer in [0, 15], not {j!r}")
    return 0x10 * (index + 1) + j


#: ``IDENT`` payload, first part: (name, struct format).
LINK_IDENT_FIELDS = (
    ("magic", "4s"), ("version", "B"), ("units", "B"), ("act_depth", "I"), ("out_depth", "I"),
    ("max_payload", "H"), ("clk_hz", "I"), ("baud", "I"),
)
#: ``IDENT`` payload, per unit, before its kind's record.
UNIT_HEADER_FIELDS = (("kind", "B"), ("index", "B"), ("record_bytes", "B"))
#: ``STATUS`` payload: flags bit 0 = busy, bit 1 = the last job was aborted;
#: ``last_error`` = the status of the last error response (0 if none since reset);
#: ``cycles`` = clock cycles of the last job, start edge to done edge; ``jobs`` = jobs completed;
#: ``rx_errors`` = UART framing errors seen (saturating).
STATUS_FIELDS = (("flags", "B"), ("last_error", "B"), ("cycles", "I"), ("jobs", "H"),
                 ("rx_errors", "H"))

FLAG_BUSY = 1
FLAG_ABORTED = 2


def pack_ident(link, units):
    """The ``IDENT`` payload: ``link`` a dict of :data:`LINK_IDENT_FIELDS` (without ``magic``,
    ``version`` and ``units``), ``units`` a list of ``(kind code, record bytes)``."""
    out = pack_fields(LINK_IDENT_FIELDS, {**link, "magic": IDENT_MAGIC,
                                          "version": PROTOCOL_VERSION, "units": len(units)})
    for index, (code, record) in enumerate(units):
        out += pack_fields(UNIT_HEADER_FIELDS, {"kind": code, "index": index,
                                                "record_bytes": len(record)}) + bytes(record)
    return out


def unpack_ident(data):
    """Inverse of :func:`pack_ident`: ``(link dict, [(kind code, index, record bytes), ...])``.

    Raises
    ------
    ProtocolError
        Wrong magic or version, or a table that does not add up.
    """
    data = bytes(data)
    head = fields_size(LINK_IDENT_FIELDS)
    if len(data) < head:
        raise ProtocolError(f"IDENT payload too short ({len(data)} bytes)")
    link = unpack_fields(LINK_IDENT_FIELDS, data[:head])
    if link["magic"] != IDENT_MAGIC:
        raise ProtocolError(f"not an amaformer device (IDENT magic {link['magic']!r})")
    if link["version"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version must be {PROTOCOL_VERSION}, not "
                            f"{link['version']} (rebuild the design or update the host)")
    pos, units = head, []
    uh = fields_size(UNIT_HEADER_FIELDS)
    for _ in range(link["units"]):
        if pos + uh > len(data):
            raise ProtocolError("IDENT unit table truncated")
        u = unpack_fields(UNIT_HEADER_FIELDS, data[pos:pos + uh])
        pos += uh
        record = data[pos:pos + u["record_bytes"]]
        if len(record) != u["record_bytes"]:
            raise ProtocolError("IDENT unit record truncated")
        pos += u["record_bytes"]
        units.append((u["kind"], u["index"], record))
    if pos != len(data):
        raise ProtocolError(f"IDENT payload has {len(data) - pos} bytes past its unit table")
    return link, units


class ProtocolError(Exception):
    """A response frame from the device is malformed (bad sync, CRC or length)."""


def fields_size(fields):
    """Bytes taken by a field list such as :data:`STATUS_FIELDS`."""
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
