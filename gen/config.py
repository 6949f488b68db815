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

from ..hdl.attention_spec import SoftmaxFormat

__all__ = ["ConfigError", "LinearConfig", "UartConfig", "AttentionConfig", "SparseDenseConfig",
           "AcceleratorConfig",
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


def _check_softmax_format(section, c):
    """The online-softmax number format fields a softmax kernel's section shares."""
    _check_int(f"{section}.exp_frac_bits", c.exp_frac_bits, 1, 10)
    _check_int(f"{section}.p_bits", c.p_bits, 4, 16)
    _check_int(f"{section}.recip_table_bits", c.recip_table_bits, 2, 10)
    _check_int(f"{section}.recip_bits", c.recip_bits, 8, 24)
    _check_int(f"{section}.recip_mant_bits", c.recip_mant_bits, c.recip_table_bits + 2, 24)
    _check_int(f"{section}.guard_bits", c.guard_bits, 0, c.recip_bits - 1)


@dataclass(frozen=True)
class LinearConfig:
    """Parameters of one linear engine (``Y = X·W + b``, requantized to int8).

    Parameters
    ----------
    mode : str
        Weight encoding: ``"mul"`` (int8 × int8 multipliers), ``"shift"`` (power-of-two weights
        ``sign·2^e``, no multiplier) or ``"bcq"`` (binary-coded planes with power-of-two α, table
        query and add, no multiplier).
    lanes : int
        ``mul``/``shift``: output columns computed in parallel, one MAC per lane per cycle.
        ``bcq``: table slots, each covering 8 inputs; ``8·lanes/bcq_bits`` MAC-equivalents per
        cycle while querying.
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
        Weight buffer depth in words of ``lanes`` weights (``shift``: ``lanes·shift_inputs``
        codes). A job needs ``K · ceil(N / lanes) <= weight_depth`` (``shift``:
        ``ceil(K / shift_inputs) · ceil(N / lanes)``); the host splits larger layers over N.
    act_bits, weight_bits : int
        Signed width of activations (input and output) and of weights, in bits (``mul`` only;
        ``shift`` weights are 4-bit codes, ``bcq`` weights are bit planes).
    shift_levels : int
        ``shift``: number of weight magnitudes ``2^0 .. 2^(shift_levels-1)`` (plus zero), 1 to 7.
    shift_inputs : int
        ``shift``: products g summed per lane and cycle, 1 to 64 (``lanes·g`` MAC-equivalents
        per cycle). A weight word holds ``lanes·g`` codes; a job needs
        ``ceil(K/g)·ceil(N/lanes)`` words.
    bcq_bits : int
        ``bcq``: bit planes q per weight, 1 to 4.
    bcq_group : int or None
        ``bcq``: inputs sharing one α (per output column and plane); ``None`` for the whole row.
        A multiple of the table chunk ``8·lanes``.
    enabled : bool
        Put the linear engine in the accelerator (default). ``false`` leaves it out (``RUN``
        answers OPCODE), for an accelerator that only runs attention
        (``attention.enabled = true``).
    layers : tuple of int
        ``[linear2]`` only: the encoder layers (from 0) whose linear ops run on this second
        unit, in its weight encoding; every other layer's run on ``[linear]``. Must be empty
        in ``[linear]``.
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
    shift_levels: int = 7
    shift_inputs: int = 1
    bcq_bits: int = 2
    bcq_group: int | None = None
    enabled: bool = True
    layers: tuple = ()

    def __post_init__(self):
        if isinstance(self.layers, list):           # TOML arrays and JSON lists
            object.__setattr__(self, "layers", tuple(self.layers))
        if (not isinstance(self.layers, tuple) or any(
                isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 1024
                for x in self.layers) or list(self.layers) != sorted(set(self.layers))):
            shown = list(self.layers) if isinstance(self.layers, tuple) else self.layers
            raise ConfigError(f"linear.layers must be a list of distinct encoder layer indices "
                              f"in increasing order (0 to 1023), not {shown!r}")
        _check_choice("linear.mode", self.mode, LINEAR_MODES)
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"linear.enabled must be true or false, not {self.enabled!r}")
        _check_int("linear.shift_levels", self.shift_levels, 1, 7)
        _check_int("linear.shift_inputs", self.shift_inputs, 1, 64)
        _check_int("linear.bcq_bits", self.bcq_bits, 1, 4)
        if self.bcq_group is not None:
            chunk = 8 * self.lanes if isinstance(self.lanes, int) else 8
            _check_int("linear.bcq_group", self.bcq_group, chunk, 1 << 16)
            if self.bcq_group % chunk:
                raise ConfigError(f"linear.bcq_group must be a multiple of 8·lanes = {chunk}, "
                                  f"not {self.bcq_group!r}")
        _check_int("linear.lanes", self.lanes, 1, 64)
        if self.dsp_lanes is not None:
            _check_int("linear.dsp_lanes", self.dsp_lanes, 0, self.lanes)
        _check_int("linear.max_k", self.max_k, 1, 1 << 16)
        _check_int("linear.max_n", self.max_n, 1, 1 << 16)
        _check_int("linear.max_m", self.max_m, 1, 1 << 20)
        _check_int("linear.act_bits", self.act_bits, 2, 8)
        _check_int("linear.weight_bits", self.weight_bits, 2, 8)
        _check_int("linear.weight_depth", self.weight_depth,
                   self.weight_words(self.max_k, 1), 1 << 20)

    @property
    def weight_code_bits(self):
        """Bits per weight code as the device reports it (``IDENT`` ``weight_bits``):
        ``weight_bits`` for mul, 4 for shift, the number of bit planes q for bcq."""
        return {"shift": 4, "bcq": self.bcq_bits}.get(self.mode, self.weight_bits)

    @property
    def hw_lanes(self):
        """Lanes with hardware (DSP) multipliers."""
        return self.lanes if self.dsp_lanes is None else self.dsp_lanes

    def check_job(self, m, k, n):
        """Raise :class:`ConfigError` unless an ``M×K @ K×N`` job fits this engine."""
        _check_int("job M", m, 1, self.max_m)
        _check_int("job K", k, 1, self.max_k)
        _check_int("job N", n, 1, self.max_n)
        words = self.weight_words(k, n)
        if words > self.weight_depth:
            if self.mode == "bcq":
                what = f"ceil(K/{8 * self.lanes})·N·q = {words}"
            elif self.mode == "shift" and self.shift_inputs > 1:
                what = (f"ceil(K/g)·ceil(N/lanes) = ceil({k}/{self.shift_inputs})·"
                        f"ceil({n}/{self.lanes}) = {words}")
            else:
                what = f"K·ceil(N/lanes) = {k}·ceil({n}/{self.lanes}) = {words}"
            raise ConfigError(
                f"job {what} weight words does "
                f"not fit linear.weight_depth = {self.weight_depth}; split N (at most "
                f"{self.max_n_for_k(k)} columns for K = {k})")

    def weight_words(self, k, n):
        """Weight-buffer words an ``M×K @ K×N`` job needs."""
        if self.mode == "bcq":
            return -(-k // (8 * self.lanes)) * n * self.bcq_bits
        return self._k_words(k) * -(-n // self.lanes)

    def _k_words(self, k):
        """Weight words per group of ``lanes`` columns: K, or ``ceil(K/g)`` for shift."""
        return -(-k // self.shift_inputs) if self.mode == "shift" else k

    def max_n_for_k(self, k):
        """Largest N whose weights fit the buffer for reduction length ``k``."""
        if self.mode == "bcq":
            return min(self.max_n, self.weight_depth // self.weight_words(k, 1))
        return min(self.max_n, (self.weight_depth // self._k_words(k)) * self.lanes)


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


ATTENTION_MODES = ("softmax", "linear_causal", "linear_angular")
LUT_MACS = ("none", "scale", "all")


@dataclass(frozen=True)
class AttentionConfig(SoftmaxFormat):
    """Parameters of the streaming attention kernel (:mod:`amaformer.hdl.attention`).

    Parameters
    ----------
    mode : str
        ``"softmax"`` (online softmax, optional causal and fixed sparse masks),
        ``"linear_causal"`` (running state ``Σ φ(k)ᵀv``, O(1) work per token) or
        ``"linear_angular"`` (Castling-ViT ``0.5·V + (1/π)·q̂(k̂ᵀV)``).
    heads, head_dim, max_tokens : int
        Largest number of heads, head dimension d and tokens N of a job.
    lanes : int
        ``softmax``: queries processed together; each lane has a score MAC and a weighted-sum
        MAC (``2·lanes`` MAC units). Linear modes: MACs of the state update.
    exp_frac_bits : int
        Fractional bits F of the base-2 logit; the exp2 table has ``2^F`` entries.
    p_bits : int
        Fractional bits of the probabilities (``p_bits + 1``-bit table entries).
    recip_table_bits, recip_bits, recip_mant_bits : int
        Reciprocal: seed-table index bits, result fractional bits, normalized input bits.
    guard_bits : int
        Fractional bits kept between normalization and the final requantization.
    causal : bool
        Causal masking (``softmax``: keys after the query are skipped).
    sparse : bool
        ``softmax``: a fixed sparse mask decides per block which keys stream past which lanes.
    conv_taps : int
        Linear modes: taps of the depthwise convolution over V along tokens (0: none).
    lut_macs : str
        Multipliers built from logic instead of DSP blocks, for devices with few DSPs
        (iCE40UP5K: 8): ``"none"``, ``"scale"`` (softmax: only the wide logit scaling; the lane
        MACs stay on DSPs) or ``"all"``. Same arithmetic.
    enabled : bool
        Put the attention unit in the accelerator, behind the command interface
        (a ``RUN`` of the attention unit); with a convolution in ``linear_causal`` only. Off by default: the unit
        does not fit an iCE40UP5K next to the linear engine (build it for an ECP5 board).
    """
    mode: str = "softmax"
    heads: int = 12
    head_dim: int = 32
    max_tokens: int = 256
    lanes: int = 4
    causal: bool = False
    sparse: bool = False
    conv_taps: int = 0
    lut_macs: str = "none"
    enabled: bool = False

    def __post_init__(self):
        _check_choice("attention.mode", self.mode, ATTENTION_MODES)
        _check_int("attention.heads", self.heads, 1, 256)
        _check_int("attention.head_dim", self.head_dim, 1, 256)
        _check_int("attention.max_tokens", self.max_tokens, 1, 1 << 16)
        _check_int("attention.lanes", self.lanes, 1, 64)
        _check_softmax_format("attention", self)
        _check_int("attention.conv_taps", self.conv_taps, 0, 64)
        _check_choice("attention.lut_macs", self.lut_macs, LUT_MACS)
        if self.lut_macs == "scale" and self.mode != "softmax":
            raise ConfigError(f"attention.lut_macs must be 'none' or 'all' in mode "
                              f"{self.mode!r} ('scale' is the softmax logit scaling), not 'scale'")
        for name in ("causal", "sparse", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"attention.{name} must be true or false, "
                                  f"not {getattr(self, name)!r}")
        if self.lanes > self.max_tokens:
            raise ConfigError(f"attention.lanes must be at most attention.max_tokens = "
                              f"{self.max_tokens}, not {self.lanes!r}")
        if self.mode == "softmax" and self.conv_taps:
            raise ConfigError(f"attention.conv_taps must be 0 in mode 'softmax' (the convolution "
                              f"belongs to the linear modes), not {self.conv_taps!r}")
        if self.mode != "softmax" and self.sparse:
            raise ConfigError(f"attention.sparse must be false in mode {self.mode!r} "
                              f"(sparse masks apply to 'softmax'), not True")
        if self.mode == "linear_angular" and self.causal:
            raise ConfigError("attention.causal must be false in mode 'linear_angular' "
                              "(k̂ᵀV sums over all tokens), not True")
        if self.mode == "linear_causal" and not self.causal:
            raise ConfigError("attention.causal must be true in mode 'linear_causal', not False")
        if self.conv_taps > self.max_tokens:
            raise ConfigError(f"attention.conv_taps must be at most attention.max_tokens = "
                              f"{self.max_tokens}, not {self.conv_taps!r}")
        if self.enabled and self.conv_taps and self.mode == "linear_angular":
            raise ConfigError(f"attention.conv_taps must be 0 for linear_angular with "
                              f"attention.enabled = true (through the top, the convolution "
                              f"runs in linear_causal only), not {self.conv_taps!r}")


@dataclass(frozen=True)
class SparseDenseConfig(SoftmaxFormat):
    """Parameters of the sparse-dense coordinator (ViTCoD, :mod:`amaformer.hdl.sparse_dense`):
    softmax attention under a fixed, polarized mask on a denser and a sparser engine.

    Parameters
    ----------
    dense_lanes, sparse_lanes : int
        The lane split, fixed when the design is generated: ``W_d`` lanes of the denser engine
        (lock step over the global-token columns of a block of ``W_d`` rows) and ``W_s`` lanes
        of the sparser engine (one list of kept ``(row, key)`` pairs each). Each lane has a
        score MAC and a weighted-sum MAC. Choose them from calibration masks with
        :func:`amaformer.gen.sparse_dense.config_from_masks` (which calls
        :func:`~amaformer.gen.sparse_dense.lane_split`); per head, at run time, the compiler
        moves work between the engines to match the split.
    heads, head_dim, max_tokens : int
        Largest number of heads, head dimension d and tokens N of a job.
    dense_depth : int
        Entries of the denser engine's list memory (all heads of a job).
    sparse_depth : int
        Entries of each sparse lane's list memory (a power of two).
    qkv_buffers : int
        Heads of Q, K, V held on chip (2 to 8): the loader runs up to ``qkv_buffers - 1``
        heads ahead, so that light and heavy heads of a job average out.
    exp_frac_bits, p_bits, recip_table_bits, recip_bits, recip_mant_bits, guard_bits : int
        Fixed-point format, as in :class:`AttentionConfig` (same arithmetic).
    enabled : bool
        Put the coordinator in the accelerator (a unit behind the command interface). Off by
        default: it does not fit an iCE40UP5K (build it for an ECP5 board).
    """
    dense_lanes: int = 1
    sparse_lanes: int = 3
    heads: int = 12
    head_dim: int = 32
    max_tokens: int = 128
    dense_depth: int = 4096
    sparse_depth: int = 4096
    qkv_buffers: int = 3
    enabled: bool = False

    def __post_init__(self):
        _check_int("sparse_dense.dense_lanes", self.dense_lanes, 1, 32)
        _check_int("sparse_dense.sparse_lanes", self.sparse_lanes, 1, 32)
        _check_int("sparse_dense.heads", self.heads, 1, 256)
        _check_int("sparse_dense.head_dim", self.head_dim, 1, 256)
        _check_int("sparse_dense.max_tokens", self.max_tokens, 2, 1 << 15)
        _check_int("sparse_dense.dense_depth", self.dense_depth, 1, 1 << 24)
        _check_int("sparse_dense.sparse_depth", self.sparse_depth, 2, 1 << 24)
        if self.sparse_depth & (self.sparse_depth - 1):
            raise ConfigError(f"sparse_dense.sparse_depth must be a power of two, "
                              f"not {self.sparse_depth!r}")
        _check_int("sparse_dense.qkv_buffers", self.qkv_buffers, 2, 8)
        _check_softmax_format("sparse_dense", self)
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"sparse_dense.enabled must be true or false, not {self.enabled!r}")


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
    attention : AttentionConfig
    sparse_dense : SparseDenseConfig
    linear2 : LinearConfig
        A second linear unit, with a weight encoding of its own, for the encoder layers in its
        ``layers`` (mixed precision per layer: ``amaformer search`` places the layers that
        lose least on a cheaper encoding). Absent (``enabled = false``) by default; a
        ``[linear2]`` section in a TOML file enables it unless it says otherwise. It must
        share ``[linear]``'s ``max_k`` (the compiler's K chunk is one for the whole model).
    """
    name: str = "amaformer"
    board: str = "icebreaker"
    clock_mhz: float | None = None
    linear: LinearConfig = field(default_factory=LinearConfig)
    uart: UartConfig = field(default_factory=UartConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    sparse_dense: SparseDenseConfig = field(default_factory=SparseDenseConfig)
    linear2: LinearConfig = field(default_factory=lambda: LinearConfig(enabled=False))

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
        for name, cls in (("linear", LinearConfig), ("uart", UartConfig),
                          ("attention", AttentionConfig),
                          ("sparse_dense", SparseDenseConfig), ("linear2", LinearConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, not {getattr(self, name)!r}")
        if self.linear.layers:
            raise ConfigError(f"linear.layers must be empty (the first linear unit runs every "
                              f"layer not in linear2.layers), not {list(self.linear.layers)}")
        l2 = self.linear2
        if l2.enabled and not self.linear.enabled:
            raise ConfigError("linear2.enabled must be false when linear.enabled is false (the "
                              "second linear unit runs beside the first)")
        if l2.layers and not l2.enabled:
            raise ConfigError(f"linear2.layers must be empty when linear2.enabled is false, "
                              f"not {list(l2.layers)}")
        if l2.enabled and l2.max_k != self.linear.max_k:
            raise ConfigError(f"linear2.max_k must equal linear.max_k = {self.linear.max_k} "
                              f"(one K chunk for the whole model), not {l2.max_k}")
        if not (self.linear.enabled or self.attention.enabled or self.sparse_dense.enabled):
            raise ConfigError("linear.enabled, attention.enabled and sparse_dense.enabled must "
                              "not all be false (the accelerator would have no engine)")

    def replace(self, **changes):
        """Return a copy with top-level fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d):
        """Build from a nested dict (as read from TOML); unknown keys are errors."""
        return _from_dict(cls, d, "")

    def to_dict(self):
        """Nested dict of plain values, ``None`` fields left out (TOML has no null), and the
        ``linear2`` section left out when it is not enabled (as it is absent by default)."""
        d = _to_dict(self)
        if not self.linear2.enabled:
            del d["linear2"]
        return d

    def linear_units(self):
        """The enabled linear sections in unit order (``IDENT`` order): ``[linear]``, then
        ``[linear2]`` when enabled."""
        return [s for s in (self.linear, self.linear2) if s.enabled]

    def linear_unit_of_layer(self, layer):
        """The linear unit (0 or 1, as :meth:`linear_units`) that runs encoder ``layer``."""
        return int(self.linear2.enabled and layer in self.linear2.layers)


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
    except ConfigError as e:
        if prefix == "linear2.":            # LinearConfig names its fields linear.*
            raise ConfigError(str(e).replace("linear.", "linear2.")) from None
        raise
    except TypeError as e:  # pragma: no cover - defensive, dataclass signature mismatch
        raise ConfigError(str(e)) from None


_SECTIONS = {"linear": LinearConfig, "uart": UartConfig, "attention": AttentionConfig,
             "sparse_dense": SparseDenseConfig, "linear2": LinearConfig}


def _to_dict(obj):
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _to_dict(value)
        elif value is not None and value != ():
            out[f.name] = value
    return out


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
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
