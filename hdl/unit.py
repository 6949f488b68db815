"""The unit contract: the interfaces between the link, the memory arbiter and every engine.

A unit (:class:`Unit`) is an engine behind the top with

* a **control** port (:class:`UnitControlSignature`): ``start`` in; ``ack``/``accepted``,
  ``busy``, ``started`` and ``done`` out;
* the **descriptor bytes** (:class:`DescriptorBytesSignature`): the link broadcasts every request
  payload byte with its index; the unit keeps the bytes of its own descriptor layout (a
  :class:`~amaranth.lib.data.StructLayout` defined once in its kind, :mod:`~amaformer.hdl.registry`)
  with :func:`receive_descriptor`, narrowed to the widths it can use;
* two **memory ports** (:class:`BytePortSignature`) on the activation and output memories,
  granted by the arbiter while ``busy``;
* its **write spaces**: one :class:`~amaformer.hdl.common.MemWriteSignature` port each, written
  by the link's ``WRITE`` (only while no job runs).

Job protocol: the link raises ``start`` for one cycle (descriptor complete and stable until
``ack``); the unit checks the descriptor and answers with a one-cycle ``ack`` pulse,
``accepted`` high if the job starts. From then until its ``done`` pulse, ``busy`` is high and
the unit owns both memories. ``started`` pulses on the job's start edge, from which the
link's ``STATUS`` cycle counter runs (to the ``done`` edge). ``ABORT`` resets the unit.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .common import MemWriteSignature

__all__ = ["UnitControlSignature", "DescriptorBytesSignature", "DescriptorByte",
           "BytePortSignature",
           "UnitSignature", "Unit", "receive_descriptor", "DESC_INDEX_BITS"]

#: Width of the payload byte index broadcast to the units (descriptors up to 256 bytes).
DESC_INDEX_BITS = 8


class UnitControlSignature(wiring.Signature):
    """Job control between the link (initiator) and one unit.

    Members
    -------
    start : ``Out(1)``
        Check the descriptor and start the job if it is good (one-cycle pulse, only while no
        unit is busy).
    ack : ``In(1)``
        One-cycle pulse: the descriptor was checked; ``accepted`` says whether the job started.
    accepted : ``In(1)``
    busy : ``In(1)``
        A job runs and the unit owns the memories.
    started : ``In(1)``
        One-cycle pulse on the job's start edge (the cycle counter starts at 1 there).
    done : ``In(1)``
        One-cycle pulse on the job's done edge (its last output is in the output memory).
    """

    def __init__(self):
        super().__init__({"start": Out(1), "ack": In(1), "accepted": In(1), "busy": In(1),
                          "started": In(1), "done": In(1)})


#: One request payload byte and its index in the payload (modulo 256).
DescriptorByte = data.StructLayout({"index": DESC_INDEX_BITS, "byte": 8})


def DescriptorBytesSignature():
    """Request payload bytes as the link receives them (every frame's: only a ``RUN`` that
    checked starts a unit): a ``stream.Signature`` of :data:`DescriptorByte`, never stalled
    (``always_ready``), from the link to every unit."""
    return stream.Signature(DescriptorByte, always_ready=True)


class BytePortSignature(wiring.Signature):
    """One byte-wide port of an on-chip memory, from the requester's side (read latency 1).

    Members
    -------
    addr : ``Out(range(depth))``
    wdata : ``Out(8)``
    we : ``Out(1)``
    rdata : ``In(8)``
        The byte at the previous cycle's ``addr``.
    """

    def __init__(self, depth):
        self.depth = depth
        super().__init__({"addr": Out(range(depth)), "wdata": Out(8), "we": Out(1),
                          "rdata": In(8)})

    def __eq__(self, other):
        return isinstance(other, BytePortSignature) and self.depth == other.depth

    def __repr__(self):
        return f"BytePortSignature({self.depth})"


class UnitSignature(wiring.Signature):
    """The ports of every unit (from the unit's side).

    Parameters
    ----------
    act_depth, out_depth : int
        Bytes of the activation and output memories.
    spaces : dict of str to MemWriteSignature
        The unit's write spaces, in the order of its kind's ``spaces``.

    Members
    -------
    ctl : ``In(UnitControlSignature())``
    desc : ``In(DescriptorBytesSignature())``
    act : ``Out(BytePortSignature(act_depth))``
    out : ``Out(BytePortSignature(out_depth))``
    <space> : ``In(MemWriteSignature(...))``
        One per write space, named as in ``spaces``.
    """

    def __init__(self, *, act_depth, out_depth, spaces):
        for name, sig in spaces.items():
            if not isinstance(sig, MemWriteSignature):
                raise TypeError(f"space {name} must be a MemWriteSignature, not {sig!r}")
            if name in ("ctl", "desc", "act", "out"):
                raise ValueError(f"space name must not be one of ctl, desc, act, out, "
                                 f"not {name!r}")
        self.space_names = tuple(spaces)
        super().__init__({
            "ctl": In(UnitControlSignature()),
            "desc": In(DescriptorBytesSignature()),
            "act": Out(BytePortSignature(act_depth)),
            "out": Out(BytePortSignature(out_depth)),
            **{name: In(sig) for name, sig in spaces.items()},
        })


class Unit(wiring.Component):
    """Base of every unit: a component whose signature is a :class:`UnitSignature`.

    Subclasses set :attr:`kind` (their :class:`~amaformer.hdl.registry.UnitKind`), call
    ``super().__init__(act_depth=..., out_depth=..., spaces=...)`` and implement
    :meth:`ident_record`, :meth:`from_config` and ``elaborate``.

    Members
    -------
    kind : UnitKind
    spaces : tuple of str
        Names of the write spaces present (a prefix-free subset of the kind's, in its order;
        a space the configuration does not need is absent).
    """

    kind = None

    def __init__(self, *, act_depth, out_depth, spaces):
        unknown = [s for s in spaces if s not in self.kind.spaces]
        if unknown:
            raise ValueError(f"spaces must be among {self.kind.spaces}, not {unknown}")
        super().__init__(UnitSignature(act_depth=act_depth, out_depth=out_depth,
                                       spaces=spaces))

    @property
    def spaces(self):
        return self.signature.space_names

    @classmethod
    def from_config(cls, config, *, act_depth, out_depth):
        """The units of this kind that ``config`` asks for (a list, maybe empty).

        By default: one unit, built as ``cls(section, act_depth=, out_depth=)``, when the
        configuration has a section named after the kind whose ``enabled`` is true.
        """
        section = getattr(config, cls.kind.name, None)
        if section is None or not getattr(section, "enabled", True):
            return []
        return [cls(section, act_depth=act_depth, out_depth=out_depth)]

    def ident_record(self):
        """A dict of the kind's ``IDENT`` record fields."""
        raise NotImplementedError

    def discard(self):
        """Mark this unit and its engine as never to be elaborated (built only to be asked
        about its kind, record or spaces), so that Amaranth does not warn about them."""
        self._MustUse__silence = True
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine._MustUse__silence = True

    def space_word_bytes(self, name):
        """Bytes per word of write space ``name`` on the wire (a power of two)."""
        port = getattr(self, name)
        width = len(port.data)
        b = max(1, -(-width // 8))
        return 1 << (b - 1).bit_length()


def receive_descriptor(m, desc, layout, limits=None, *, name="d"):
    """Registers holding the descriptor of ``layout`` from the payload byte broadcast ``desc``.

    Each field keeps the bits it needs: ``limits[field]`` is the largest value the unit can
    use (the register is ``range(limit + 1)`` wide); a field not in ``limits`` keeps its wire
    width. A payload byte with a set bit above its field's kept width sets ``high`` (cleared by
    the payload's first byte), which must fail the unit's check.

    Returns
    -------
    (dict of str to Signal, Signal)
        The field registers and ``high``. Both update one cycle after each byte; they are
        stable from the frame's CRC bytes on (at least two cycles before ``start``).
    """
    limits = limits or {}
    regs = {}
    high_masks = []                     # per payload byte: bits above the field's kept width
    cases = []                          # (byte index, register, bit offset, bits kept)
    for fname, field in layout:
        width = field.width
        keep_w = width if fname not in limits else max(1, int(limits[fname]).bit_length())
        keep_w = min(keep_w, width)
        reg = Signal(keep_w, name=f"{name}_{fname}")
        regs[fname] = reg
        for b in range(width // 8):
            keep = min(8, max(0, keep_w - 8 * b))
            high_masks.append((0xFF << keep) & 0xFF)
            if keep:
                cases.append((field.offset // 8 + b, reg, 8 * b, keep))
    high = Signal(name=f"{name}_high")
    idx_w = ceil_log2(len(high_masks))
    high_mask = Signal(8)
    table = Array(C(v, 8) for v in high_masks + [0] * ((1 << idx_w) - len(high_masks)))
    index = desc.payload.index
    in_table = index[idx_w:] == 0 if idx_w < len(index) else C(1, 1)
    m.d.comb += high_mask.eq(Mux(in_table, table[index[:idx_w]], 0))
    with m.If(desc.valid):
        m.d.sync += high.eq(Mux(index == 0, 0, high) | (desc.payload.byte & high_mask).any())
        with m.Switch(index):
            for i, reg, lo, keep in cases:
                with m.Case(i):
                    m.d.sync += reg[lo:lo + keep].eq(desc.payload.byte[:keep])
    return regs, high
