"""Capture of a BERT-style encoder into a plain description a compiler can walk.

:func:`capture` walks the module structure of a ``transformers.BertModel`` (or any model with
the same attributes)::

    embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    encoder.layer[i].attention.self.{query, key, value}         (multi-head softmax attention)
    encoder.layer[i].attention.output.{dense, LayerNorm}        (+ residual)
    encoder.layer[i].intermediate.{dense, intermediate_act_fn}
    encoder.layer[i].output.{dense, LayerNorm}                  (+ residual)

and returns an :class:`EncoderGraph`: dataclasses that hold the ``torch.nn.Linear`` and
``torch.nn.LayerNorm`` modules themselves (no copies), the head count and sizes, the activation
and the pooling. A module it cannot map raises :class:`UnsupportedModuleError` with a one-line
message naming the module.

Which ops run where follows DESIGN.md: the linear layers and the softmax attention on the
device, LayerNorm, the activation, the residuals and the pooling on the host.
"""

import math
from dataclasses import dataclass

import torch

__all__ = ["UnsupportedModuleError", "LinearOp", "Norm", "EncoderLayer", "Embeddings",
           "EncoderGraph", "capture", "ROLES", "ACTIVATIONS"]

#: Roles of the six linear ops of a layer, in execution order.
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

#: Activations the host implements, by the class names that ``transformers`` and ``torch`` use.
ACTIVATIONS = {"GELUActivation": "gelu", "GELU": "gelu", "NewGELUActivation": "gelu_tanh",
               "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh", "ReLU": "relu"}


class UnsupportedModuleError(ValueError):
    """A module of the model has no mapping onto the accelerator's ops."""


@dataclass(frozen=True)
class LinearOp:
    """One linear layer ``y = x·Wᵀ + b`` of the encoder.

    Members
    -------
    name : str
        Module path inside the model, e.g. ``"encoder.layer.0.attention.self.query"``.
    role : str
        One of :data:`ROLES`.
    layer : int
        Encoder layer index.
    module : torch.nn.Linear
        The float layer itself.
    """
    name: str
    role: str
    layer: int
    module: torch.nn.Linear

    @property
    def in_features(self):
        return self.module.in_features

    @property
    def out_features(self):
        return self.module.out_features

    @property
    def macs_per_token(self):
        """Multiply-accumulates per token: ``in_features · out_features``."""
        return self.in_features * self.out_features

    @property
    def input_from_host(self):
        """True when the host produces this op's input (after a LayerNorm or the activation),
        False when the device does (``attn_out`` reads the attention's output)."""
        return self.role != "attn_out"


@dataclass(frozen=True)
class Norm:
    """A LayerNorm on the host. ``module`` is the ``torch.nn.LayerNorm``."""
    name: str
    module: torch.nn.LayerNorm

    @property
    def eps(self):
        return self.module.eps

    def __call__(self, x):
        m = self.module
        return torch.nn.functional.layer_norm(x, m.normalized_shape, m.weight.to(x.dtype),
                                              m.bias.to(x.dtype), m.eps)


@dataclass(frozen=True)
class EncoderLayer:
    """One encoder layer: attention (Q, K, V, softmax, output projection, residual, norm) and
    MLP (in, activation, out, residual, norm)."""
    index: int
    query: LinearOp
    key: LinearOp
    value: LinearOp
    attn_out: LinearOp
    attn_norm: Norm
    ffn_in: LinearOp
    activation: str
    activation_module: torch.nn.Module
    ffn_out: LinearOp
    ffn_norm: Norm
    heads: int
    head_dim: int

    @property
    def linear_ops(self):
        """The six :class:`LinearOp` in execution order (:data:`ROLES`)."""
        return tuple(getattr(self, r) for r in ROLES)

    def attention_macs(self, tokens):
        """Multiply-accumulates of the softmax attention (``Q·Kᵀ`` and ``P·V``) for ``tokens``
        tokens: ``2·tokens²·heads·head_dim``."""
        return 2 * tokens * tokens * self.heads * self.head_dim


@dataclass(frozen=True)
class Embeddings:
    """Token + position + token-type embeddings and their LayerNorm (on the host)."""
    word: torch.nn.Embedding
    position: torch.nn.Embedding
    token_type: torch.nn.Embedding
    norm: Norm

    def __call__(self, ids):
        ids = torch.as_tensor(ids).reshape(-1)
        n = ids.shape[0]
        with torch.no_grad():
            e = (self.word.weight[ids] + self.position.weight[:n]
                 + self.token_type.weight[0])
            return self.norm(e)


@dataclass(frozen=True)
class EncoderGraph:
    """A captured encoder.

    Members
    -------
    embeddings : Embeddings
    layers : tuple of EncoderLayer
    hidden : int
    heads : int
    pooling : str
        ``"mean"`` or ``"cls"``.
    model : torch.nn.Module
        The model it was captured from.
    """
    embeddings: Embeddings
    layers: tuple
    hidden: int
    heads: int
    pooling: str
    model: torch.nn.Module

    def linear_ops(self):
        """Every :class:`LinearOp`, layer by layer, in execution order."""
        return tuple(op for layer in self.layers for op in layer.linear_ops)

    def macs(self, tokens):
        """``{op name: MACs}`` of every linear op plus ``"attention.<i>"`` entries, for one
        sentence of ``tokens`` tokens."""
        out = {op.name: op.macs_per_token * tokens for op in self.linear_ops()}
        out.update({f"attention.{ly.index}": ly.attention_macs(tokens) for ly in self.layers})
        return out

    def pool(self, h):
        """Sentence embedding from the last hidden states ``T×hidden`` (host)."""
        return h.mean(0) if self.pooling == "mean" else h[0]


def _fail(path, mod, reason):
    raise UnsupportedModuleError(f"cannot map {path} ({type(mod).__name__}): {reason}")


def _get(parent, path, attr):
    mod = getattr(parent, attr, None)
    if mod is None:
        _fail(f"{path}.{attr}" if path else attr, parent, f"no attribute {attr!r}")
    return mod


def _linear(layer_idx, role, path, mod):
    if type(mod) is not torch.nn.Linear:
        _fail(path, mod, "expected a torch.nn.Linear")
    return LinearOp(path, role, layer_idx, mod)


def _norm(path, mod):
    if type(mod) is not torch.nn.LayerNorm or not mod.elementwise_affine:
        _fail(path, mod, "expected a torch.nn.LayerNorm with weight and bias")
    return Norm(path, mod)


def _activation(path, mod):
    name = ACTIVATIONS.get(type(mod).__name__)
    if name == "gelu" and getattr(mod, "approximate", "none") == "tanh":
        name = "gelu_tanh"
    if name is None:
        _fail(path, mod, f"activation must be one of {', '.join(sorted(ACTIVATIONS))}")
    return name


def capture(model, pooling="mean"):
    """Describe a BERT-style encoder as an :class:`EncoderGraph`.

    Parameters
    ----------
    model : torch.nn.Module
        A ``transformers.BertModel`` (or a module with the same structure), in eval mode.
    pooling : str
        Sentence pooling on the host: ``"mean"`` over tokens or ``"cls"``.

    Raises
    ------
    UnsupportedModuleError
        A module cannot be mapped (message: ``cannot map <path> (<class>): <reason>``):
        a non-``Linear`` projection, a non-``LayerNorm`` norm, an unknown activation, relative
        position embeddings, decoder or cross-attention layers.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {model!r:.60}")
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
    emb = _get(model, "", "embeddings")
    enc = _get(model, "", "encoder")
    blocks = _get(enc, "encoder", "layer")
    embeddings = Embeddings(
        *(_embedding(f"embeddings.{a}", _get(emb, "embeddings", a))
          for a in ("word_embeddings", "position_embeddings", "token_type_embeddings")),
        _norm("embeddings.LayerNorm", _get(emb, "embeddings", "LayerNorm")))
    cfg = getattr(model, "config", None)
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        _fail("embeddings", emb, "only absolute position embeddings are supported")
    hidden = embeddings.word.embedding_dim
    layers = []
    for i, blk in enumerate(blocks):
        p = f"encoder.layer.{i}"
        if getattr(blk, "crossattention", None) is not None or getattr(blk, "is_decoder", False):
            _fail(p, blk, "decoder and cross-attention layers are not supported")
        att = _get(blk, p, "attention")
        sa = _get(att, f"{p}.attention", "self")
        sp = f"{p}.attention.self"
        heads = getattr(sa, "num_attention_heads", None)
        head_dim = getattr(sa, "attention_head_size", None)
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            _fail(sp, sa, "expected num_attention_heads and attention_head_size")
        if heads * head_dim != hidden:
            _fail(sp, sa, f"heads·head_dim must equal hidden size {hidden}, "
                          f"not {heads}·{head_dim}")
        if getattr(sa, "position_embedding_type", "absolute") != "absolute":
            _fail(sp, sa, "only absolute position embeddings are supported")
        if getattr(sa, "is_decoder", False) or getattr(sa, "is_causal", False):
            _fail(sp, sa, "causal (decoder) self-attention is not supported")
        scaling = getattr(sa, "scaling", None)
        if scaling is not None and not math.isclose(scaling, head_dim ** -0.5):
            _fail(sp, sa, f"attention scaling must be head_dim^-0.5, not {scaling!r}")
        ao = _get(att, f"{p}.attention", "output")
        inter = _get(blk, p, "intermediate")
        out = _get(blk, p, "output")
        act = _get(inter, f"{p}.intermediate", "intermediate_act_fn")
        layers.append(EncoderLayer(
            index=i,
            query=_linear(i, "query", f"{sp}.query", _get(sa, sp, "query")),
            key=_linear(i, "key", f"{sp}.key", _get(sa, sp, "key")),
            value=_linear(i, "value", f"{sp}.value", _get(sa, sp, "value")),
            attn_out=_linear(i, "attn_out", f"{p}.attention.output.dense",
                             _get(ao, f"{p}.attention.output", "dense")),
            attn_norm=_norm(f"{p}.attention.output.LayerNorm",
                            _get(ao, f"{p}.attention.output", "LayerNorm")),
            ffn_in=_linear(i, "ffn_in", f"{p}.intermediate.dense",
                           _get(inter, f"{p}.intermediate", "dense")),
            activation=_activation(f"{p}.intermediate.intermediate_act_fn", act),
            activation_module=act,
            ffn_out=_linear(i, "ffn_out", f"{p}.output.dense", _get(out, f"{p}.output", "dense")),
            ffn_norm=_norm(f"{p}.output.LayerNorm", _get(out, f"{p}.output", "LayerNorm")),
            heads=heads, head_dim=head_dim))
        ly = layers[-1]
        shapes = {"query": (hidden, hidden), "key": (hidden, hidden), "value": (hidden, hidden),
                  "attn_out": (hidden, hidden), "ffn_in": (hidden, ly.ffn_in.out_features),
                  "ffn_out": (ly.ffn_in.out_features, hidden)}
        for op in ly.linear_ops:
            if (op.in_features, op.out_features) != shapes[op.role]:
                _fail(op.name, op.module, "shape must be in×out = {}×{}, not {}×{}".format(
                    *shapes[op.role], op.in_features, op.out_features))
    if not layers:
        _fail("encoder.layer", blocks, "no layers")
    return EncoderGraph(embeddings, tuple(layers), hidden, layers[0].heads, pooling, model)


def _embedding(path, mod):
    if type(mod) is not torch.nn.Embedding:
        _fail(path, mod, "expected a torch.nn.Embedding")
    return mod
