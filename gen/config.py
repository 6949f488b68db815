"""Accelerator configuration: frozen dataclasses that validate themselves, saved as TOML.

One :class:`AcceleratorConfig` is the single source of hardware parameters: the generator,
the cycle model, the compiler and the host driver all read it. A bad value fails at
construction with :class:`ConfigError`, whose message names the field, the value and what is
allowed, e.g. ``linear.lanes must be an integer in [1, 64], not 0``.
"""

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["ConfigError", "LinearConfig", "UartConfig", "AcceleratorConfig",
           "load_config", "save_config", "dump_toml"]

LINEAR_MODES = ("mul", "shift", "bcq")


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong type. The message is one line."""


def _check_int(where, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where} must be an integer in [{lo}, {hi}], not {value!r}")


def _check_choice(where, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


@dataclass(frozen=True)
class LinearConfig:
    """Parameters of one linear engine (``Y = X·W + b``, requantized to int8).

    Parameters
    ----------
    mode : str
        Weight encoding: ``"mul"`` (int8 × int8 multipliers).
    lanes : int
        Output columns computed in parallel; one MAC per lane per cycle.
    dsp_lanes : int or None
        How many lanes use hardware multipliers (``$mul``, mapped to DSP blocks); the other lanes
        use a shift-and-add multiplier built from logic. ``None`` means all lanes.
    max_k : int
        Largest reduction length K of a job: the length of the on-chip activation row buffer
        (the K tile; K is never split, so that outputs can be requantized on chip).
    max_n : int
        Largest number of output columns N of a job (depth of the per-column parameter memory).
    max_m : int
        Largest number of rows M of a job (width of the row counter).
    weight_depth : int
        Weight buffer depth in words of ``lanes`` weights. A job needs
        ``K · ceil(N / lanes) <= weight_depth``; the host splits larger layers over N.
    act_bits, weight_bits : int
        Signed width of activations (input and output) and of weights, in bits.
    """
    mode: str = "mul"
    lanes: int = 8
    dsp_lanes: int | None = None
    max_k: int = 512
    max_n: int = 512
    max_m: int = 4096
    weight_depth: int = 1024
    act_bits: int = 8
    weight_bits: int = 8

    def __post_init__(self):
        _check_choice("linear.mode", self.mode, LINEAR_MODES)
        if self.mode != "mul":
            raise ConfigError(f"linear.mode {self.mode!r} is not implemented yet; "
                              f"the implemented modes are 'mul'")
        _check_int("linear.lanes", self.lanes, 1, 64)
        if self.dsp_lanes is not None:
            _check_int("linear.dsp_lanes", self.dsp_lanes, 0, self.lanes)
        _check_int("linear.max_k", self.max_k, 1, 1 << 16)
        _check_int("linear.max_n", self.max_n, 1, 1 << 16)
        _check_int("linear.max_m", self.max_m, 1, 1 << 20)
        _check_int("linear.act_bits", self.act_bits, 2, 8)
        _check_int("linear.weight_bits", self.weight_bits, 2, 8)
        _check_int("linear.weight_depth", self.weight_depth, self.max_k, 1 << 20)

    @property
    def hw_lanes(self):
        """Lanes with hardware (DSP) multipliers."""
        return self.lanes if self.dsp_lanes is None else self.dsp_lanes

    def check_job(self, m, k, n):
        """Raise :class:`ConfigError` unless an ``M×K @ K×N`` job fits this engine."""
        _check_int("job M", m, 1, self.max_m)
        _check_int("job K", k, 1, self.max_k)
        _check_int("job N", n, 1, self.max_n)
        words = k * -(-n // self.lanes)
        if words > self.weight_depth:
            raise ConfigError(
                f"job K·ceil(N/lanes) = {k}·ceil({n}/{self.lanes}) = {words} weight words does "
                f"not fit linear.weight_depth = {self.weight_depth}; split N (at most "
                f"{self.max_n_for_k(k)} columns for K = {k})")

    def max_n_for_k(self, k):
        """Largest N whose weights fit the buffer for reduction length ``k``."""
        return min(self.max_n, (self.weight_depth // k) * self.lanes)


@dataclass(frozen=True)
class UartConfig:
    """Command link of the top.

    Parameters
    ----------
    baud : int
        UART baud rate in bit/s. The default suits the iCEBreaker's FTDI link.
    """
    baud: int = 115200

    def __post_init__(self):
        _check_int("uart.baud", self.baud, 1200, 12_000_000)


@dataclass(frozen=True)
class AcceleratorConfig:
    """Everything needed to generate, build and drive one accelerator.

    Parameters
    ----------
    name : str
        Design name, used for output file names.
    board : str
        Target board, a name from :mod:`amaformer.boards` (``amaformer boards`` lists them).
    clock_mhz : float or None
        Requested core clock in MHz; ``None`` uses the board's oscillator.
    linear : LinearConfig
    uart : UartConfig
    """
    name: str = "amaformer"
    board: str = "icebreaker"
    clock_mhz: float | None = None
    linear: LinearConfig = field(default_factory=LinearConfig)
    uart: UartConfig = field(default_factory=UartConfig)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"name must be an identifier (letters, digits, _), not {self.name!r}")
        if not isinstance(self.board, str) or not self.board:
            raise ConfigError(f"board must be a board name, not {self.board!r}")
        if self.clock_mhz is not None and (
                isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float))
                or not 1 <= self.clock_mhz <= 500):
            raise ConfigError(f"clock_mhz must be a number in [1, 500] or absent, "
                              f"not {self.clock_mhz!r}")
        for name, cls in (("linear", LinearConfig), ("uart", UartConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, not {getattr(self, name)!r}")

    def replace(self, **changes):
        """Return a copy with top-level fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d):
        """Build from a nested dict (as read from TOML); unknown keys are errors."""
        return _from_dict(cls, d, "")

    def to_dict(self):
        """Nested dict of plain values, ``None`` fields left out (TOML has no null)."""
        return _to_dict(self)


def _from_dict(cls, d, prefix):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, not {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; allowed keys in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(known)}")
    kwargs = {}
    for key, value in d.items():
        sub = _SECTIONS.get(key) if cls is AcceleratorConfig else None
        kwargs[key] = _from_dict(sub, value, f"{prefix}{key}.") if sub else value
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive, dataclass signature mismatch
        raise ConfigError(str(e)) from None


_SECTIONS = {"linear": LinearConfig, "uart": UartConfig}


def _to_dict(obj):
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _to_dict(value)
        elif value is not None:
            out[f.name] = value
    return out


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {v!r} to TOML")


def dump_toml(d):
    """Serialize a nested dict of scalars (one level of tables) to TOML text."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def load_config(path):
    """Read an :class:`AcceleratorConfig` from a TOML file.

    Raises
    ------
    ConfigError
        The file is missing, is not valid TOML, or holds a bad value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror}") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {e}") from None
    return AcceleratorConfig.from_dict(d)


def save_config(config, path):
    """Write ``config`` to ``path`` as TOML."""
    Path(path).write_text(dump_toml(config.to_dict()))
