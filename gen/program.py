"""The whole-model compiler: a PyTorch BERT-style encoder and an accelerator configuration in,
a :class:`Program` out, which :mod:`amaformer.host.runtime` runs on any ``Device``.

What runs where
    Every linear layer (Q, K, V, output projection, both MLP layers) runs on the linear unit,
    every attention on a softmax attention unit. The host does what the device has no unit
    for: embeddings, LayerNorm, the MLP activation (GELU), residual adds, pooling, and the
    per-token scaling around each linear job (below). :meth:`Program.placement` lists it.

Numerics (:data:`DEFAULT_NUMERICS`, measured in the README's "Whole model" section)
    ``act_scale="token"``: the host quantizes every linear input with an exact float scale per
    token (``max|x_r| / 127``; the attention output too, ``ctx_token``), after dividing by
    SmoothQuant factors (α = 0.5) that the weights absorb. The device multiplies int8 by the
    encoded weights and requantizes per output column with zero bias into int8, in units
    normalized per token (static multipliers from calibration, 1.5× headroom); the host
    multiplies each row back by its scale and adds the float bias. A reduction longer than the
    unit's ``max_k`` runs as several jobs whose int8 outputs the host adds (``k_chunk``). Q, K
    and V are requantized by the host to one static scale per head for the attention unit.
    No hardware beyond today's linear and attention units is needed.

Weight tiling
    A layer's weights are written in tiles that fit the unit's weight buffer (columns) and its
    ``max_k`` (rows); :meth:`Program.tiles` gives the tiles and the bytes each moves, the
    runtime counts what really crossed the link.
"""

from dataclasses import dataclass

import torch

from .model.exact import Encoding, Numerics, calibrate, compile_model
from .model.graph import EncoderGraph, capture

__all__ = ["DEFAULT_NUMERICS", "ProgramError", "Step", "Program", "compile_program",
           "program_cycles", "ENCODING_SETS", "check_units",
           "encoding_for_config"]

#: The scheme the compiler uses (README "Whole model": 0.998 minimum cosine with ``mul``).
DEFAULT_NUMERICS = Numerics(act_scale="token", ctx_token=True, smooth=0.5, out_headroom=1.5)


_SHIFT4, _BCQ3, _BCQ4 = Encoding("shift", 4), Encoding("bcq", 3), Encoding("bcq", 4)
_BCQ4G32 = Encoding("bcq", 4, group=32)
#: Named weight-encoding sets: one encoding for every linear op, or one per op role (``mul``
#: where absent). A mixed set needs a linear unit per encoding on the device; the accuracy
#: figures of the README come from the bit-exact golden models of each encoding.
ENCODING_SETS = {
    "mul": ("int8 (mul) everywhere", None),
    "shift4": ("shift, 4 magnitudes (iCE40 engine), every layer", _SHIFT4),
    "bcq2": ("bcq q=2, every layer", Encoding("bcq", 2)),
    "bcq3": ("bcq q=3, every layer", _BCQ3),
    "bcq4": ("bcq q=4, every layer", _BCQ4),
    "mixA": ("bcq4: Q, K, V, attn_out, ffn_in; mul: ffn_out",
             {r: _BCQ4 for r in ("query", "key", "value", "attn_out", "ffn_in")}),
    "mixB": ("bcq4: Q, K, V, ffn_in; mul: attn_out, ffn_out",
             {r: _BCQ4 for r in ("query", "key", "value", "ffn_in")}),
    "mixC": ("shift4: Q, K, V, attn_out; bcq4: ffn_in; mul: ffn_out",
             {"query": _SHIFT4, "key": _SHIFT4, "value": _SHIFT4, "attn_out": _SHIFT4,
              "ffn_in": _BCQ4}),
    "bcq4g32": ("bcq q=4, α per 32 inputs (a 4-slot bcq unit), every layer", _BCQ4G32),
    "mixD": ("bcq4 α/32: ffn_in, Q, K; mul: V, attn_out, ffn_out",
             {r: _BCQ4G32 for r in ("ffn_in", "query", "key")}),
    "mixE": ("bcq4 α/32: ffn_in, Q, K, V; mul: attn_out, ffn_out",
             {r: _BCQ4G32 for r in ("ffn_in", "query", "key", "value")}),
}


class ProgramError(ValueError):
    """The model or the configuration cannot be compiled; the message is one line."""


@dataclass(frozen=True)
class Step:
    """One entry of the schedule: ``where`` is ``"linear"``, ``"attention"`` (device units) or
    ``"host"``; ``op`` the operation's name (``layer3.ffn_in``, ``layer3.attention``,
    ``layer3.activation``); ``macs`` per token (attention: for one token of context);
    ``module`` the linear op's module path (its key in ``Program.compiled.ops``)."""
    layer: int
    op: str
    where: str
    macs: int = 0
    module: str = ""


def encoding_for_config(config):
    """The weight encoding of the configuration's linear unit (one unit: one encoding)."""
    lin = config.linear
    if lin.mode == "shift":
        return Encoding("shift", lin.shift_levels)
    if lin.mode == "bcq":
        return Encoding("bcq", lin.bcq_bits, group=lin.bcq_group)
    return Encoding("mul", lin.weight_bits)


def check_units(graph, config, max_tokens=None):
    """Raise :class:`ProgramError` (one line) unless ``config`` has the units ``graph`` needs."""
    lin, att = getattr(config, "linear", None), getattr(config, "attention", None)
    if lin is None or not lin.enabled:
        raise ProgramError("the configuration has no linear unit ([linear] enabled = false); "
                           "the program needs one")
    if att is None or not att.enabled or att.mode != "softmax":
        raise ProgramError("the configuration has no softmax attention unit ([attention] "
                           "enabled = true, mode = \"softmax\"); the program needs one")
    for ly in graph.layers:
        if ly.head_dim != att.head_dim or ly.heads > att.heads:
            raise ProgramError(f"layer {ly.index} has {ly.heads} heads of {ly.head_dim}; the "
                               f"attention unit takes at most {att.heads} heads of "
                               f"{att.head_dim}")
    if max_tokens is not None and max_tokens > att.max_tokens:
        raise ProgramError(f"max_tokens {max_tokens} exceeds the attention unit's "
                           f"{att.max_tokens}")


@dataclass
class Program:
    """A compiled model: the exact integer programs of every op (``compiled``: weights,
    requantization, attention parameters), the schedule, the configuration it targets."""
    compiled: object
    config: object
    schedule: list
    max_tokens: int

    @property
    def graph(self):
        return self.compiled.graph

    def placement(self):
        """``{where: [op kinds]}``: which operations run on which unit, and on the host."""
        out = {}
        for s in self.schedule:
            kind = s.op.split(".", 1)[1]
            if kind not in out.setdefault(s.where, []):
                out[s.where].append(kind)
        return out

    def tiles(self, name):
        """Weight tiles of linear op ``name`` (module path): ``[(k0, k1, n0, n1, words)]``, as
        the linear driver writes them (columns in tiles that fit the weight buffer, rows in
        the op's K chunks), with the weight-buffer words of each."""
        ql = self.compiled.ops[name]
        lin = self.config.linear
        out = []
        n = ql.op.out_features
        for k0, k1 in ql.k_chunks:
            n_tile = max(1, min(n, lin.max_n_for_k(k1 - k0)))
            for n0 in range(0, n, n_tile):
                n1 = min(n, n0 + n_tile)
                out.append((k0, k1, n0, n1, lin.weight_words(k1 - k0, n1 - n0)))
        return out


def program_cycles(program, lengths, *, act_depth, out_depth):
    """Device cycles per layer of running sentences of ``lengths`` tokens through ``program``
    on a top with the given memories, from the units' exact cycle models
    (:func:`~amaformer.gen.cost.linear_job_cycles` over the driver's tiles
    (:func:`~amaformer.hdl.linear_spec.job_tiles`), :func:`~amaformer.gen.cost.
    attention_cycles`). Returns ``[{"linear": c, "attention": c, "macs": n}, ...]``."""
    from ..hdl.linear_spec import job_tiles
    from .cost import attention_cycles, linear_job_cycles
    lin, att = program.config.linear, program.config.attention
    m = sum(lengths)
    out = []
    for ly in program.graph.layers:
        lin_c = macs = 0
        for op in ly.linear_ops:
            ql = program.compiled.ops[op.name]
            n = op.out_features
            for k0, k1 in ql.k_chunks:
                k = k1 - k0
                _, _, tiles = job_tiles(m, k, n, max_m=lin.max_m, max_n=lin.max_n_for_k(k),
                                        act_depth=act_depth, out_depth=out_depth)
                lin_c += sum(linear_job_cycles(lin, r1 - r0, k, c1 - c0)
                             for r0, r1, c0, c1 in tiles)
            macs += m * op.macs_per_token
        att_c = sum(attention_cycles("softmax", ly.heads, t, ly.head_dim, att.lanes)
                    for t in lengths)
        out.append({"linear": lin_c, "attention": att_c, "macs": macs,
                    "attention_macs": sum(ly.attention_macs(t) for t in lengths)})
    return out


def compile_program(model, config, calibration_ids, *, numerics=None, encoding=None,
                    max_tokens=None):
    """Compile ``model`` for ``config``.

    Parameters
    ----------
    model : torch.nn.Module or EncoderGraph
        A BERT-style encoder (``transformers`` ``BertModel`` and relatives), float64.
    config : AcceleratorConfig
        Needs an enabled linear unit and a softmax attention unit whose heads and head size
        cover the model's.
    calibration_ids : list of 1-D int tensors
        Token ids of calibration sentences (static scales come from them).
    numerics : Numerics or None
        :data:`DEFAULT_NUMERICS` with ``k_chunk`` set to the unit's ``max_k``.
    encoding : Encoding or None
        Weight encoding; default: the configuration's (:func:`encoding_for_config`).
    max_tokens : int or None
        Longest sentence the program will run (checked against the attention unit).

    Raises
    ------
    ProgramError
        One line: a module the compiler cannot map, a missing unit, a shape that does not fit.
    """
    try:
        graph = model if isinstance(model, EncoderGraph) else capture(model)
    except ValueError as e:
        raise ProgramError(str(e)) from None
    check_units(graph, config, max_tokens)
    if numerics is None:
        from dataclasses import replace
        numerics = replace(DEFAULT_NUMERICS, k_chunk=config.linear.max_k)
    enc = encoding or encoding_for_config(config)
    cal = calibrate(graph, list(calibration_ids))
    try:
        cm = compile_model(cal, numerics, enc)
    except ValueError as e:
        raise ProgramError(str(e)) from None
    schedule = []
    for ly in graph.layers:
        i = ly.index
        def lin(op):
            schedule.append(Step(i, f"layer{i}.{op.role}", "linear", op.macs_per_token, op.name))

        schedule.append(Step(i, f"layer{i}.quantize_per_token", "host"))
        for op in (ly.query, ly.key, ly.value):
            lin(op)
        schedule.append(Step(i, f"layer{i}.scale_bias_requant_qkv", "host"))
        schedule.append(Step(i, f"layer{i}.attention", "attention", ly.attention_macs(1)))
        lin(ly.attn_out)
        schedule.append(Step(i, f"layer{i}.residual_layernorm", "host"))
        lin(ly.ffn_in)
        schedule.append(Step(i, f"layer{i}.activation", "host"))
        lin(ly.ffn_out)
        schedule.append(Step(i, f"layer{i}.residual_layernorm_2", "host"))
    return Program(cm, config, schedule, max_tokens or config.attention.max_tokens)
