"""The registry of unit kinds: one line per kind, read by every part of the tool.

A *unit* is an engine behind the top's one contract (:mod:`amaformer.hdl.unit`): a descriptor
in, its own checks and memory sequencing, ``done`` out, its own write spaces. A *unit kind*
(:class:`UnitKind`) is everything the rest of the tool needs to know about one kind of unit,
defined once, in the unit's own files: its configuration section, its ``IDENT`` record, its
``RUN`` descriptor (a :class:`~amaranth.lib.data.StructLayout`), its write spaces, and where its
gateware, host driver, golden model, cycle model and memory audit live (``"module:name"``
strings, relative to the ``amaformer`` package when they start with a dot, imported only by
whoever needs them, so that the host never imports gateware).

The top (:mod:`amaformer.hdl.top`), the protocol's ``IDENT`` table, the host driver
(:class:`amaformer.host.Device`), the CLI, the cost and golden models and the build's memory
audit all iterate over :func:`kinds`. Adding a kind is its own files plus one line in
:data:`KINDS` (or :func:`register` at run time, as the tests' own units do).

This module imports nothing of the gateware and nothing of torch: the host imports it.
"""

import contextlib
import dataclasses
import importlib
import struct

from amaranth.lib import data

__all__ = ["UnitKind", "KINDS", "kinds", "kind", "kind_by_code", "register", "resolve",
           "pack_descriptor", "descriptor_bytes"]

#: The registry: one ``"module:object"`` line per unit kind, each naming a :class:`UnitKind`.
KINDS = [
    "amaformer.hdl.linear_spec:LINEAR",
    "amaformer.hdl.attention_spec:ATTENTION",
    "amaformer.hdl.sparse_dense_spec:SPARSE_DENSE",
]

_extra = []             # kinds added with register()
_cache = {}


def resolve(path):
    """The object named by ``"package.module:name"`` (imported on first use); a module that
    starts with a dot is relative to the ``amaformer`` package (``".gen.cost:attention_cycles"``)."""
    if path not in _cache:
        module, _, name = path.partition(":")
        obj = importlib.import_module(module, package=__package__.rpartition(".")[0])
        for part in name.split("."):
            obj = getattr(obj, part)
        _cache[path] = obj
    return _cache[path]


@dataclasses.dataclass(frozen=True)
class UnitKind:
    """What the tool knows about one kind of unit.

    Parameters
    ----------
    name : str
        Kind name, also the configuration section that enables it (``config.<name>``).
    code : int
        ``IDENT`` kind code (1..254), unique.
    record : tuple of (str, str)
        The kind's ``IDENT`` record after the common unit header: (field, struct format) pairs,
        little-endian.
    descriptor : data.StructLayout
        The ``RUN`` payload, little-endian, fields in order; every field a whole number of
        bytes.
    spaces : tuple of str
        Names of the unit's write spaces, in order (space ``j`` of the unit).
    gateware : str
        ``"module:Class"`` of the :class:`~amaformer.hdl.unit.Unit` subclass; its classmethod
        ``from_config(config, *, act_depth, out_depth)`` returns the instances a configuration
        asks for (a list, maybe empty).
    driver : str
        ``"module:Class"`` of the host driver half (:class:`amaformer.host.units.UnitDriver`).
    golden, cycles : str
        ``"module:function"`` of the bit-exact golden model and the exact cycle model.
    audit : tuple of str
        Submodule paths inside the unit (glob patterns) whose memories are audited for
        same-address read/write collisions (see :mod:`amaformer.boards.build`).
    doc : str
        One line describing the kind (``amaformer units``).
    """
    name: str
    code: int
    record: tuple
    descriptor: data.StructLayout
    spaces: tuple
    gateware: str
    driver: str
    golden: str = ""
    cycles: str = ""
    audit: tuple = ()
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.code, int) or not 1 <= self.code <= 254:
            raise ValueError(f"code must be an integer in [1, 254], not {self.code!r}")
        for name, shape in self.descriptor:
            if shape.width % 8:
                raise ValueError(f"descriptor field {name} must be a whole number of bytes, "
                                 f"not {shape.width} bits")
        if len(self.spaces) > 15:
            raise ValueError(f"spaces must be at most 15, not {len(self.spaces)}")

    @property
    def record_bytes(self):
        """Bytes of the kind's ``IDENT`` record (without the common header)."""
        return struct.calcsize("<" + "".join(f for _, f in self.record))

    def gateware_class(self):
        return resolve(self.gateware)

    def driver_class(self):
        return resolve(self.driver)


def kinds():
    """Every registered :class:`UnitKind`: the :data:`KINDS` lines, then :func:`register`'s."""
    out = [resolve(path) for path in KINDS] + list(_extra)
    codes = [k.code for k in out]
    if len(set(codes)) != len(codes):
        raise ValueError(f"unit kind codes must be unique, not {codes}")
    return out


def kind(name):
    """The registered kind called ``name``."""
    for k in kinds():
        if k.name == name:
            return k
    raise KeyError(f"unit kind must be one of {', '.join(k.name for k in kinds())}, "
                   f"not {name!r}")


def kind_by_code(code):
    """The registered kind with ``IDENT`` code ``code``, or ``None``."""
    return next((k for k in kinds() if k.code == code), None)


@contextlib.contextmanager
def register(unit_kind):
    """Register ``unit_kind`` for the duration of a ``with`` block (tests, plug-ins)."""
    if not isinstance(unit_kind, UnitKind):
        raise TypeError(f"unit_kind must be a UnitKind, not {unit_kind!r}")
    _extra.append(unit_kind)
    try:
        kinds()             # refuses a duplicate code
        yield unit_kind
    finally:
        _extra.remove(unit_kind)


def descriptor_bytes(layout):
    """Bytes of a descriptor of ``layout`` on the wire."""
    return layout.size // 8


def pack_descriptor(layout, values):
    """The wire bytes of a descriptor: ``values`` (a dict by field) packed little-endian into
    ``layout``.

    Raises
    ------
    ValueError
        A field missing, unknown, or out of its width.
    """
    unknown = set(values) - {name for name, _ in layout}
    if unknown:
        raise ValueError(f"descriptor fields must be among {[n for n, _ in layout]}, "
                         f"not {sorted(unknown)}")
    word = 0
    for name, field in layout:
        if name not in values:
            raise ValueError(f"descriptor field {name} is missing")
        v = int(values[name])
        if not 0 <= v < (1 << field.width):
            raise ValueError(f"{name} must be an integer in [0, {(1 << field.width) - 1}], "
                             f"not {v!r}")
        word |= v << field.offset
    return word.to_bytes(descriptor_bytes(layout), "little")
