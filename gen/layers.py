"""Example linear layers for the one-layer commands and tests: random integer operands with a
fixed seed, and real all-MiniLM-L6-v2 layer-0 projections compiled with
:func:`~amaformer.gen.compile.compile_linear`.

Pure generator code (no device): :mod:`amaformer.host.layer_run` runs these layers on a device.
"""

import torch

from .compile import compile_linear
from .golden import golden_linear
from .numerics import requant_params

__all__ = ["compile_minilm", "minilm_embeddings", "minilm_linear", "random_layer",
           "MINILM_SENTENCE", "MINILM_CALIBRATION", "MINILM_LAYERS"]

MINILM_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
MINILM_CALIBRATION = [
    MINILM_SENTENCE,
    "Field-programmable gate arrays run transformer layers with integer arithmetic.",
    "A sentence embedding model maps text to a vector of 384 numbers.",
    "My grandmother's garden was full of tomatoes, beans, roses and a stubborn fig tree.",
]
#: Layer-0 linear layers of all-MiniLM-L6-v2 whose input is the embedding output.
MINILM_LAYERS = {"query": "encoder.layer.0.attention.self.query",
                 "key": "encoder.layer.0.attention.self.key",
                 "value": "encoder.layer.0.attention.self.value"}



def minilm_embeddings(sentences):
    """Hidden states entering all-MiniLM-L6-v2's layer 0 (token + position + type embeddings,
    LayerNorm), one ``T×384`` tensor per sentence, and the model's tensors (float32; the one
    loader, :func:`amaformer.gen.model.minilm.load_minilm`)."""
    from .model.minilm import load_minilm
    minilm = load_minilm(torch.float32)
    with torch.no_grad():
        hidden = [minilm.model.embeddings(input_ids=minilm.ids(s)[None])[0] for s in sentences]
    return hidden, minilm.model.state_dict()


def minilm_linear(which="query", cols=384, sentence=MINILM_SENTENCE):
    """``(layer, x, calib)``: the first ``cols`` output columns of a layer-0 projection of
    all-MiniLM-L6-v2 as a ``torch.nn.Linear``, the hidden states of ``sentence`` (``T×384``) and
    calibration hidden states (``sentence`` plus three more)."""
    if which not in MINILM_LAYERS:
        raise ValueError(f"which must be one of {', '.join(MINILM_LAYERS)}, not {which!r}")
    if not isinstance(cols, int) or not 1 <= cols <= 384:
        raise ValueError(f"cols must be an integer in [1, 384], not {cols!r}")
    hidden, t = minilm_embeddings([sentence] + MINILM_CALIBRATION)
    name = MINILM_LAYERS[which]
    layer = torch.nn.Linear(384, cols)
    with torch.no_grad():
        layer.weight.copy_(t[f"{name}.weight"][:cols])
        layer.bias.copy_(t[f"{name}.bias"][:cols])
    return layer, hidden[0], torch.cat(hidden)


def random_layer(m, k, n, seed=0, act_bits=8, weight_bits=8, linear=None):
    """Random integer operands ``(x, w, bias, mult, shift)`` with a fixed seed.

    ``linear`` (a :class:`~amaformer.gen.config.LinearConfig`, optional) picks the weight
    encoding: ``mul`` (default) gives ``weight_bits``-bit integers, ``shift`` weights
    ``{0, ±2^s}`` with ``s < shift_levels``, ``bcq`` a :class:`~amaformer.hdl.linear_layout.BcqMatrix`
    of ``bcq_bits`` planes (α per ``bcq_group`` inputs) fitted to a random float matrix."""
    g = torch.Generator().manual_seed(seed)
    a, b = 1 << (act_bits - 1), 1 << (weight_bits - 1)
    x = torch.randint(-a, a, (m, k), generator=g)
    w = torch.randint(-b, b, (k, n), generator=g)
    mode = getattr(linear, "mode", "mul")
    if mode == "shift":
        s = torch.randint(0, linear.shift_levels, (k, n), generator=g)
        sign = torch.randint(-1, 2, (k, n), generator=g)        # a third are zero
        w = sign * (1 << s)
    elif mode == "bcq":
        from .quant import quantize_bcq
        w_f = torch.randn(k, n, generator=g, dtype=torch.float64)
        w = quantize_bcq(w_f, linear.bcq_bits, group=linear.bcq_group).matrix()
    # requantization scaled per column so that outputs mostly land inside the int8 range (a
    # saturated output would hide a wrong accumulator): the largest |acc| maps to 0.6·127
    zero, one = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
    acc = golden_linear(x, w, zero, one, zero, act_bits=40)
    peak = acc.abs().amax(0).clamp(min=1).to(torch.float64)
    bias = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5).mul(peak / 2).round()
    mult, shift = requant_params(0.6 * ((1 << (act_bits - 1)) - 1) / peak)
    return x, w, bias.to(torch.int64), mult, shift


def compile_minilm(which="query", cols=384, sentence=MINILM_SENTENCE, linear=None):
    """``(prog, layer, x)`` for :func:`minilm_linear`, compiled with :func:`compile_linear`
    (for the engine ``linear`` describes, default ``mul``)."""
    layer, x, calib = minilm_linear(which, cols, sentence)
    return compile_linear(layer, calib, linear=linear), layer, x
