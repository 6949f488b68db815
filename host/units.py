"""The host half of a unit: :class:`UnitDriver`, which the unit kinds' drivers subclass."""

from ..hdl import protocol as P
from ..hdl import registry

__all__ = ["UnitDriver"]


class UnitDriver:
    """Packing, tiling and validation for one unit of a :class:`~amaformer.host.Device`.

    Parameters
    ----------
    device : Device
        The link.
    info : UnitInfo
        The unit's row of the ``IDENT`` table.

    Subclasses set :attr:`kind` (the :class:`~amaformer.hdl.registry.UnitKind`), their
    configuration :attr:`section` and, when the record has a ``mode`` field, :attr:`modes`
    (name → code); they implement :meth:`record_fields` (or :meth:`expected`).

    Members
    -------
    mode : str or None
        The record's ``mode`` by name (``None`` without :attr:`modes`).
    """

    kind = None
    modes = {}

    def __init__(self, device, info):
        self.device = device
        self.info = info
        self.index = info.index
        names = {code: name for name, code in self.modes.items()}
        self.mode = names.get(info.record.get("mode"))

    #: The configuration's section of this kind (``config.<section>``), and whether a section
    #: without an ``enabled`` field puts the unit in the design.
    section = None
    enabled_by_default = False

    @classmethod
    def expected(cls, config):
        """Per unit of this kind that ``config`` asks for, the ``IDENT`` record fields (a dict,
        a subset) the device must report (:meth:`Device.check_config`): none when the
        configuration's :attr:`section` is absent or not enabled, else its ``mode`` (with
        :attr:`modes`) and :meth:`record_fields`. A kind whose configuration is laid out
        otherwise overrides this."""
        sec = getattr(config, cls.section, None) if cls.section else None
        if sec is None or not getattr(sec, "enabled", cls.enabled_by_default):
            return []
        mode = {"mode": cls.modes.get(sec.mode)} if cls.modes else {}
        return [mode | cls.record_fields(sec)]

    @classmethod
    def record_fields(cls, section):
        """The ``IDENT`` record fields (besides ``mode``) that the configuration ``section``
        fixes."""
        raise NotImplementedError

    def space(self, name):
        """Wire code of this unit's write space ``name``."""
        return P.unit_space(self.index, self.kind.spaces.index(name))

    def write_space(self, name, words, word_bytes, addr=0):
        """Write ``words`` (ints) at word address ``addr`` of space ``name``."""
        self.device.write_memory(self.space(name), addr * word_bytes,
                                 b"".join(int(w).to_bytes(word_bytes, "little") for w in words),
                                 word_bytes=word_bytes)

    def run_descriptor(self, values, *, wait=True, expected_cycles=0):
        """``RUN`` this unit with the descriptor ``values`` (a dict by field)."""
        return self.device.run(self.index, registry.pack_descriptor(self.kind.descriptor,
                                                                    values),
                               wait=wait, expected_cycles=expected_cycles)
