"""The whole-model compiler: a PyTorch BERT-style encoder and an accelerator configuration in,
a :class:`Program` out, which :mod:`amaformer.host.runtime` runs on any ``Device``.

What runs where
    Every linear layer (Q, K, V, output projection, both MLP layers) runs on the linear unit
    (with a second linear unit, ``[linear2]``, the linear layers of the encoder layers in its
    ``layers`` run on it, in its weight encoding: mixed precision per layer),
    every attention on a softmax attention unit, or, when the program is compiled with fixed
    masks (``masks=``, one per layer and head), on the sparse-dense unit (below). The host does
    what the device has no unit for: embeddings, LayerNorm, the MLP activation (GELU), residual
    adds, pooling, and the per-token scaling around each linear job (below).
    :meth:`Program.placement` lists it.

Fixed masks (the sparse-dense coordinator, ``[sparse_dense]``)
    ``compile_program(..., masks=FILE)`` (a :func:`amaformer.gen.masks.save_masks` file, or an
    ``L×H×N×N`` bool tensor) puts every layer's attention on the ``sparse_dense`` unit under
    its layer's masks: the runtime drives it through
    :class:`amaformer.host.sparse_dense.SparseDenseDriver`, the golden path
    (:meth:`Program.forward`, :meth:`Program.attention_golden`) runs
    :func:`~amaformer.gen.sparse_dense.sparse_dense_golden` on the same plans, and
    :func:`program_cycles` uses :func:`~amaformer.gen.sparse_dense.sparse_dense_job_cycles`.
    Masks are made for ``N`` tokens; a sentence of ``n <= N`` tokens runs under their top-left
    ``n×n`` block (:meth:`Program.layer_masks`: the first ``n`` rows and key columns; every
    row must keep a key at or before its own position, as calibration masks do with the
    diagonal, so no row of any crop is empty), a longer one is refused.

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

Weight tiling, memory images and descriptors
    A layer's weights are written in tiles that fit the unit's weight buffer (columns) and its
    ``max_k`` (rows). :meth:`Program.linear_tiles` holds every tile's memory images, packed at
    compile time as the linear unit's ``weights`` and ``params`` spaces hold them (written at
    word 0 and column 0 before the tile's jobs); :meth:`Program.linear_jobs` gives the jobs of
    a sentence batch of ``M`` rows with their descriptors and allocated addresses (X at byte 0
    of the activation memory, Y at byte 0 of the output memory: one job owns each memory at a
    time), :meth:`Program.attention_layout` the attention job's (Q, K, V and the keep mask back
    to back from byte 0 of the activation memory, the output at 0). The runtime writes these
    images and runs these descriptors as they are; only activations are packed at run time.
    :meth:`Program.tiles` gives the tiles and the words each moves, the runtime counts what
    really crossed the link.
"""

from dataclasses import dataclass, field

import torch

from ..hdl.linear_spec import LinearJob, LinearTile
from .model.exact import Encoding, Numerics, calibrate, compile_model
from .model.graph import EncoderGraph, capture

__all__ = ["DEFAULT_NUMERICS", "ProgramError", "Step", "LinearTile", "LinearJob", "Program",
           "compile_program",
           "program_cycles", "ENCODING_SETS", "check_units",
           "encoding_for_config", "encoding_for_linear", "load_program_masks"]

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
    """One entry of the schedule: ``where`` is ``"linear"``, ``"linear2"`` (the second linear
    unit), ``"attention"``, ``"sparse_dense"`` (device units) or ``"host"``; ``op`` the
    operation's name (``layer3.ffn_in``, ``layer3.attention``, ``layer3.activation``); ``macs``
    per token (attention: for one token of context); ``module`` the linear op's module path
    (its key in ``Program.compiled.ops``); ``unit`` the linear unit of a linear op."""
    layer: int
    op: str
    where: str
    macs: int = 0
    module: str = ""
    unit: int = 0                   # linear ops: the linear unit (0: [linear], 1: [linear2])


def encoding_for_config(config):
    """The weight encoding of the configuration's (first) linear unit."""
    return encoding_for_linear(config.linear)


def encoding_for_linear(lin):
    """The weight encoding a linear unit's section (``LinearConfig``) computes: its mode and
    bits, and for ``bcq`` its α group."""
    if lin.mode == "shift":
        return Encoding("shift", lin.shift_levels)
    if lin.mode == "bcq":
        return Encoding("bcq", lin.bcq_bits, group=lin.bcq_group)
    return Encoding("mul", lin.weight_bits)


def check_units(graph, config, max_tokens=None, *, sparse=False):
    """Raise :class:`ProgramError` (one line) unless ``config`` has the units ``graph`` needs;
    with ``sparse`` (the program runs attention under fixed masks) the attention unit needed is
    the sparse-dense coordinator instead of the softmax attention unit."""
    lin, att = getattr(config, "linear", None), getattr(config, "attention", None)
    sd = getattr(config, "sparse_dense", None)
    if lin is None or not lin.enabled:
        raise ProgramError("the configuration has no linear unit ([linear] enabled = false); "
                           "the program needs one")
    lin2 = getattr(config, "linear2", None)
    if lin2 is not None and lin2.enabled and lin2.layers and lin2.layers[-1] >= len(graph.layers):
        raise ProgramError(f"linear2.layers names layer {lin2.layers[-1]}; the model has "
                           f"layers 0 to {len(graph.layers) - 1}")
    if sparse:
        if sd is None or not sd.enabled:
            raise ProgramError("masks were given but the configuration has no sparse_dense "
                               "unit ([sparse_dense] enabled = true); masks run only on it")
        unit, name = sd, "sparse_dense unit"
    else:
        if att is None or not att.enabled or att.mode != "softmax":
            hint = (" (or give masks to run attention on the sparse_dense unit)"
                    if sd is not None and sd.enabled else "")
            raise ProgramError("the configuration has no softmax attention unit ([attention] "
                               "enabled = true, mode = \"softmax\"); the program needs one"
                               + hint)
        unit, name = att, "attention unit"
    for ly in graph.layers:
        if ly.head_dim != unit.head_dim or ly.heads > unit.heads:
            raise ProgramError(f"layer {ly.index} has {ly.heads} heads of {ly.head_dim}; the "
                               f"{name} takes at most {unit.heads} heads of "
                               f"{unit.head_dim}")
    if max_tokens is not None and max_tokens > unit.max_tokens:
        raise ProgramError(f"max_tokens {max_tokens} exceeds the {name}'s "
                           f"{unit.max_tokens}")


def load_program_masks(masks):
    """``(keep, meta)`` of ``masks``: a mask file (:func:`amaformer.gen.masks.load_masks`) or
    an ``L×H×N×N`` bool tensor; :class:`ProgramError` (one line) otherwise."""
    from .masks import MaskError, load_masks
    if isinstance(masks, (str, bytes)) or hasattr(masks, "__fspath__"):
        try:
            return load_masks(masks)
        except MaskError as e:
            raise ProgramError(str(e)) from None
    keep = torch.as_tensor(masks)
    if keep.dtype != torch.bool or keep.dim() != 4:
        raise ProgramError(f"masks must be a mask file or an L×H×N×N bool tensor, not "
                           f"{keep.dtype} of shape {tuple(keep.shape)}")
    return keep, {}


def _check_masks(graph, keep, sd):
    """The masks against the model (layers, heads) and the unit; each row must keep a key at
    or before its own position, so that no crop to fewer tokens leaves it empty."""
    layers = graph.layers
    L, H, N, N2 = keep.shape
    if N != N2:
        raise ProgramError(f"masks must be square per head, not {N}×{N2}")
    if L != len(layers) or any(ly.heads != H for ly in layers):
        raise ProgramError(f"masks have {L} layers of {H} heads; the model has {len(layers)} "
                           f"layers of {layers[0].heads} heads")
    early = torch.cumsum(keep.to(torch.int64), -1).diagonal(dim1=-2, dim2=-1) > 0   # L×H×N
    bad = (~early).nonzero()
    if len(bad):
        li, h, r = bad[0].tolist()
        raise ProgramError(f"masks' row {r} of head {h} of layer {li} keeps no key at or "
                           f"before its own position, so a sentence of {r + 1} tokens would "
                           f"leave it empty (keep the diagonal: gen.masks.enforce_required)")


@dataclass
class Program:
    """A compiled model: the exact integer programs of every op (``compiled``: weights,
    requantization, attention parameters), the schedule, the configuration it targets."""
    compiled: object
    config: object
    schedule: list
    max_tokens: int
    masks: object = None            # L×H×N×N bool: attention on the sparse_dense unit
    mask_meta: dict = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)   # plans, tiles

    @property
    def graph(self):
        return self.compiled.graph

    def attention_unit(self, layer):
        """The device unit that runs ``layer``'s attention: ``"attention"`` (softmax) or
        ``"sparse_dense"`` (under the program's masks)."""
        return "attention" if self.masks is None else "sparse_dense"

    @property
    def mask_tokens(self):
        """``N``: the token count the masks were made for (``None`` without masks)."""
        return None if self.masks is None else int(self.masks.shape[-1])

    def check_tokens(self, tokens, sentence=0):
        """Raise :class:`ProgramError` (one line) if a sentence of ``tokens`` tokens cannot
        run under the masks (longer than the ``N`` they were made for)."""
        if self.masks is not None and tokens > self.mask_tokens:
            raise ProgramError(f"sentence {sentence} has {tokens} tokens; the masks are for "
                               f"at most {self.mask_tokens} (make masks for longer sentences)")

    def layer_masks(self, layer, tokens):
        """``H×n×n`` bool: ``layer``'s masks for a sentence of ``n = tokens`` tokens, the
        top-left ``n×n`` block of the ``N×N`` masks (the first ``n`` query rows and keys)."""
        self.check_tokens(tokens)
        return self.masks[layer, :, :tokens, :tokens]

    def head_params(self, layer):
        """``layer``'s attention parameters as one ``(score_mult, score_shift, out_mult,
        out_shift)`` tuple per head (the sparse-dense driver's ``params``)."""
        return [tuple(int(x) for x in p) for p in zip(*self.compiled.attention[layer])]

    def sparse_plans(self, layer, tokens):
        """``(plans, order)``: the :class:`~amaformer.gen.sparse_dense.HeadPlan` of every head
        of ``layer`` for ``tokens`` tokens (caller's head order), and the order the driver runs
        them in (:func:`~amaformer.gen.sparse_dense.head_order`), as the driver computes them
        for this configuration's unit."""
        key = (layer, tokens)
        if key not in self._cache:
            from .sparse_dense import head_order, plan_job
            sd = self.config.sparse_dense
            plans = plan_job(self.layer_masks(layer, tokens), sd.dense_lanes, sd.sparse_lanes)
            d = self.graph.layers[layer].head_dim
            order = head_order(plans, tokens, d, sd.dense_lanes, sd.qkv_buffers)
            self._cache[key] = (plans, order)
        return self._cache[key]

    def attention_golden(self):
        """The ``attention`` hook of :func:`~amaformer.gen.model.exact.exact_forward` that the
        device's units compute bit for bit: ``None`` (the softmax kernel's golden model, the
        default) without masks, else the sparse-dense golden model under the masks."""
        if self.masks is None:
            return None
        from .attention import SoftmaxFormat
        from .sparse_dense import sparse_dense_golden
        fmt = SoftmaxFormat.from_config(self.config.sparse_dense)

        def attention(q, k, v, sm, ss, om, os_, layer):
            plans, _ = self.sparse_plans(layer, q.shape[-2])
            params = [tuple(int(x) for x in p) for p in zip(sm, ss, om, os_)]
            return sparse_dense_golden(q, k, v, params, plans, fmt)
        return attention

    def forward(self, ids_list):
        """The golden path: :func:`~amaformer.gen.model.exact.exact_forward` with every unit's
        bit-exact golden model (the sparse-dense one under the masks, if any)."""
        from .model.exact import exact_forward
        for i, ids in enumerate(ids_list):
            self.check_tokens(len(torch.as_tensor(ids).reshape(-1)), i)
        return exact_forward(self.compiled, ids_list, attention=self.attention_golden())

    def placement(self):
        """``{where: [op kinds]}``: which operations run on which unit, and on the host."""
        out = {}
        for s in self.schedule:
            kind = s.op.split(".", 1)[1]
            if kind not in out.setdefault(s.where, []):
                out[s.where].append(kind)
        return out

    def linear_unit(self, name):
        """The linear unit (0: ``[linear]``, 1: ``[linear2]``) that runs linear op ``name``."""
        return self.config.linear_unit_of_layer(self.compiled.ops[name].op.layer)

    def linear_section(self, name):
        """The configuration section (``LinearConfig``) of the unit that runs op ``name``."""
        return self.config.linear_units()[self.linear_unit(name)]

    def linear_tiles(self, name):
        """The :class:`LinearTile` objects of linear op ``name`` (module path), in run order: per K
        chunk, the column tiles of :func:`~amaformer.hdl.linear_spec.job_tiles` (weights that
        fit the buffer for that K), their memory images packed once and kept."""
        key = ("tiles", name)
        if key not in self._cache:
            from ..hdl.linear_layout import pack_engine_weights, pack_requant_params
            from ..hdl.linear_spec import job_tiles
            ql, lin = self.compiled.ops[name], self.linear_section(name)
            inputs = lin.shift_inputs if lin.mode == "shift" else 1
            tiles = []
            for k0, k1, w, bias, mult, shift in ql.chunks():
                w = w.matrix() if hasattr(w, "matrix") else w
                n = ql.op.out_features
                _, _, cols = job_tiles(1, k1 - k0, n, max_m=1, max_n=lin.max_n_for_k(k1 - k0),
                                       act_depth=k1 - k0, out_depth=n)
                for _, _, c0, c1 in cols:
                    tiles.append(LinearTile(
                        k0=k0, k1=k1, n0=c0, n1=c1, op=name,
                        weight_words=tuple(pack_engine_weights(
                            lin.mode, w[:, c0:c1], lin.lanes, lin.weight_code_bits,
                            inputs=inputs)),
                        param_words=tuple(pack_requant_params(bias[c0:c1], mult[c0:c1],
                                                              shift[c0:c1]))))
            self._cache[key] = tiles
        return self._cache[key]

    def linear_jobs(self, name, m, *, act_depth, out_depth):
        """The jobs of linear op ``name`` on ``m`` input rows (all sentences' tokens) on a top
        with these memories: ``{(k0, k1): [LinearJob, ...]}`` per K chunk, in run order
        (column tile outer, as :func:`~amaformer.hdl.linear_spec.job_tiles`), indices into
        :meth:`linear_tiles`. Addresses: X at byte 0 of the activation memory, Y at 0 of the
        output memory."""
        from ..hdl.linear_spec import job_tiles
        lin = self.linear_section(name)
        tiles = self.linear_tiles(name)
        out = {}
        for k0, k1 in self.compiled.ops[name].k_chunks:
            k, index = k1 - k0, {(t.n0, t.n1): i for i, t in enumerate(tiles)
                                 if (t.k0, t.k1) == (k0, k1)}
            _, _, runs = job_tiles(m, k, self.compiled.ops[name].op.out_features,
                                   max_m=lin.max_m, max_n=lin.max_n_for_k(k),
                                   act_depth=act_depth, out_depth=out_depth)
            out[(k0, k1)] = [LinearJob(index[(c0, c1)], r0, r1,
                                       dict(m=r1 - r0, k=k, n=c1 - c0, x_addr=0, y_addr=0))
                             for r0, r1, c0, c1 in runs]
        return out

    def attention_layout(self, layer, tokens):
        """Byte addresses of ``layer``'s softmax attention job on ``tokens`` tokens: Q, K, V
        (``heads×tokens×head_dim`` int8 each) and the keep mask back to back from 0 of the
        activation memory, the output at 0 of the output memory (the attention driver's
        descriptor fields)."""
        ly = self.graph.layers[layer]
        size = ly.heads * tokens * ly.head_dim
        return dict(q_addr=0, k_addr=size, v_addr=2 * size, mask_addr=3 * size, o_addr=0)

    def tiles(self, name):
        """Weight tiles of linear op ``name`` (module path): ``[(k0, k1, n0, n1, words)]``, as
        the runtime writes them (:meth:`linear_tiles`), with the weight-buffer words of each."""
        return [(t.k0, t.k1, t.n0, t.n1, len(t.weight_words)) for t in self.linear_tiles(name)]


def program_cycles(program, lengths, *, act_depth, out_depth):
    """Device cycles per layer of running sentences of ``lengths`` tokens through ``program``
    on a top with the given memories, from the units' exact cycle models
    (:func:`~amaformer.gen.cost.linear_job_cycles` over the driver's tiles
    (:func:`~amaformer.hdl.linear_spec.job_tiles`), :func:`~amaformer.gen.cost.
    attention_cycles`; under masks :func:`~amaformer.gen.sparse_dense.
    sparse_dense_job_cycles` of the driver's plans in the driver's head order). Returns
    ``[{"linear": c, "attention": c, "macs": n, "attention_unit": kind}, ...]``."""
    from ..hdl.linear_spec import job_tiles
    from .cost import attention_cycles, linear_job_cycles
    from .sparse_dense import sparse_dense_job_cycles
    att = program.config.attention
    m = sum(lengths)
    out = []
    for ly in program.graph.layers:
        lin_c = macs = 0
        for op in ly.linear_ops:
            ql, lin = program.compiled.ops[op.name], program.linear_section(op.name)
            n = op.out_features
            for k0, k1 in ql.k_chunks:
                k = k1 - k0
                _, _, tiles = job_tiles(m, k, n, max_m=lin.max_m, max_n=lin.max_n_for_k(k),
                                        act_depth=act_depth, out_depth=out_depth)
                lin_c += sum(linear_job_cycles(lin, r1 - r0, k, c1 - c0)
                             for r0, r1, c0, c1 in tiles)
            macs += m * op.macs_per_token
        unit = program.attention_unit(ly.index)
        if unit == "sparse_dense":
            sd = program.config.sparse_dense
            att_c = 0
            for t in lengths:
                plans, order = program.sparse_plans(ly.index, t)
                att_c += sparse_dense_job_cycles([plans[i] for i in order], t, ly.head_dim,
                                                 sd.dense_lanes, sd.qkv_buffers)
        else:
            att_c = sum(attention_cycles("softmax", ly.heads, t, ly.head_dim, att.lanes)
                        for t in lengths)
        out.append({"linear": lin_c, "attention": att_c, "macs": macs,
                    "attention_macs": sum(ly.attention_macs(t) for t in lengths),
                    "attention_unit": unit})
    return out


def compile_program(model, config, calibration_ids, *, numerics=None, encoding=None,
                    max_tokens=None, masks=None):
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
        Weight encoding of every linear op; default: each op's unit's
        (:func:`encoding_for_linear` of ``[linear]``, or of ``[linear2]`` for the layers in
        its ``layers``). Not with a second linear unit.
    max_tokens : int or None
        Longest sentence the program will run (checked against the attention unit, and the
        masks' ``N``).
    masks : path, torch.Tensor or None
        Fixed attention masks, one per layer and head (a :func:`amaformer.gen.masks.save_masks`
        file or an ``L×H×N×N`` bool tensor): every attention runs on the configuration's
        ``sparse_dense`` unit under its layer's masks (see the module docstring for sentences
        shorter than ``N``). ``None``: on the softmax attention unit.

    Raises
    ------
    ProgramError
        One line: a module the compiler cannot map, a missing unit, a shape that does not fit,
        masks that do not match the model or the unit.
    """
    try:
        graph = model if isinstance(model, EncoderGraph) else capture(model)
    except ValueError as e:
        raise ProgramError(str(e)) from None
    keep = meta = None
    if masks is not None:
        keep, meta = load_program_masks(masks)
    check_units(graph, config, max_tokens, sparse=keep is not None)
    if keep is not None:
        sd = config.sparse_dense
        _check_masks(graph, keep, sd)
        from .attention import SoftmaxFormat
        if SoftmaxFormat.from_config(sd) != SoftmaxFormat():
            raise ProgramError(f"the sparse_dense unit's softmax format must be the "
                               f"compiler's {SoftmaxFormat()}, not "
                               f"{SoftmaxFormat.from_config(sd)}")
        n_mask = int(keep.shape[-1])
        if max_tokens is not None and max_tokens > n_mask:
            raise ProgramError(f"max_tokens {max_tokens} exceeds the masks' {n_mask} tokens "
                               f"(masks are made for N tokens and cropped for shorter "
                               f"sentences)")
        max_tokens = min(max_tokens or sd.max_tokens, sd.max_tokens, n_mask)
    if numerics is None:
        from dataclasses import replace
        numerics = replace(DEFAULT_NUMERICS, k_chunk=config.linear.max_k)
    units = config.linear_units()
    if encoding is not None and len(units) > 1:
        raise ProgramError("encoding must be None with a second linear unit (each layer takes "
                           "its unit's encoding)")
    unit_encodings = [encoding or encoding_for_linear(u) for u in units]

    def enc(op):
        return unit_encodings[config.linear_unit_of_layer(op.layer)]
    cal = calibrate(graph, list(calibration_ids))
    try:
        cm = compile_model(cal, numerics, enc)
    except ValueError as e:
        raise ProgramError(str(e)) from None
    schedule = []
    for ly in graph.layers:
        i = ly.index
        unit = config.linear_unit_of_layer(i)

        def lin(op):
            schedule.append(Step(i, f"layer{i}.{op.role}", ("linear", "linear2")[unit],
                                 op.macs_per_token, op.name, unit))

        schedule.append(Step(i, f"layer{i}.quantize_per_token", "host"))
        for op in (ly.query, ly.key, ly.value):
            lin(op)
        schedule.append(Step(i, f"layer{i}.scale_bias_requant_qkv", "host"))
        schedule.append(Step(i, f"layer{i}.attention",
                             "attention" if keep is None else "sparse_dense",
                             ly.attention_macs(1)))
        lin(ly.attn_out)
        schedule.append(Step(i, f"layer{i}.residual_layernorm", "host"))
        lin(ly.ffn_in)
        schedule.append(Step(i, f"layer{i}.activation", "host"))
        lin(ly.ffn_out)
        schedule.append(Step(i, f"layer{i}.residual_layernorm_2", "host"))
    program = Program(cm, config, schedule, max_tokens or config.attention.max_tokens,
                      keep, meta)
    if keep is not None:
        from .masks import MaskError
        from .sparse_dense import pack_job
        for ly in graph.layers:          # the longest sentence's lists fit the unit's memories
            plans, order = program.sparse_plans(ly.index, max_tokens)
            try:
                pack_job([plans[o] for o in order], [(0, 0, 0, 0)] * len(plans),
                         unit=config.sparse_dense, tokens=max_tokens, dim=ly.head_dim)
            except MaskError as e:
                raise ProgramError(f"layer {ly.index}'s masks at {max_tokens} tokens do not "
                                   f"fit the sparse_dense unit: {e}") from None
    return program
