"""Whole-encoder evaluation through the device's bit-exact arithmetic.

Every linear layer runs through the integer golden models of :mod:`amaformer.gen.golden`
(``linear_mul``, ``linear_shift``, ``linear_bcq``; :func:`amaformer.gen.requant_row.
row_requantize` for per-row activation scales) and the softmax attention through
:func:`amaformer.gen.attention.attention_softmax`; what the host does on a real run stays in
float64: quantizing its own activations (LayerNorm and activation outputs), LayerNorm, the
activation, residuals, pooling, dequantizing what it reads back. Scales are static, from
calibration sentences run through the float model (:func:`calibrate`), except the per-row
factors that the host picks for each row it quantizes.

The numerics of the linear layers are a :class:`Numerics` (granularity of scales, SmoothQuant,
outlier split, output width) and the weight encoding of each linear op an :class:`Encoding`
(``mul``, ``shift``, ``bcq``, with error compensation on the calibration inputs).

Usage::

    lm = load_minilm()
    graph = capture(lm.model)
    calib_s, held_out = load_sentences()
    cal = calibrate(graph, [lm.ids(s) for s in calib_s])
    res = evaluate(cal, [lm.ids(s) for s in held_out], Numerics(act_scale="row"))
    res.cosine_min, res.layer_cosines
"""

import math
from dataclasses import dataclass, field

import torch

from ..attention import attention_softmax, cosine, softmax_reference, softmax_scales
from ..compile import compile_linear
from ..golden import linear_acc, linear_bcq, linear_mul, linear_shift
from ..numerics import (BIAS_BITS, REQUANT_MAX_SHIFT, REQUANT_MULT_BITS, qmax, requant_params,
                        requantize)
from ..quant import BcqWeights, hessian, quantize_bcq, quantize_shift
from ..requant_row import ROW_BITS, ROW_EXP_BITS, row_factors, row_requantize
from .graph import EncoderGraph

__all__ = ["Encoding", "Numerics", "Calibration", "QLinear", "CompiledModel", "ExactResult",
           "calibrate", "compile_model", "float_forward", "exact_forward", "evaluate",
           "reference"]

F64 = torch.float64
_RAW = 62           # out_bits that makes a golden's requantization the identity (M = 1, S = 0)


def _flin(mod, x):
    return torch.nn.functional.linear(x, mod.weight.detach().to(F64),
                                      mod.bias.detach().to(F64))


# --- configuration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoding:
    """Weight encoding of one linear op.

    Parameters
    ----------
    mode : str
        ``"mul"`` (int8 per output column), ``"shift"`` (``{0, ±2^s}``) or ``"bcq"``.
    bits : int
        ``mul``: weight bits (2 to 8); ``shift``: magnitudes (1 to 7); ``bcq``: bit planes
        (1 to 4).
    group : int or None
        ``bcq``: inputs per α (a multiple of 8), ``None`` for the whole row.
    compensate : bool
        ``shift`` and ``bcq``: GPTQ-style error compensation on the calibration inputs
        (:func:`amaformer.gen.quant.hessian`).
    """
    mode: str = "mul"
    bits: int = 8
    group: int | None = 128
    compensate: bool = True

    def __post_init__(self):
        ranges = {"mul": (2, 8), "shift": (1, 7), "bcq": (1, 4)}
        if self.mode not in ranges:
            raise ValueError(f"mode must be one of mul, shift, bcq, not {self.mode!r}")
        lo, hi = ranges[self.mode]
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not lo <= self.bits <= hi:
            raise ValueError(f"bits must be an integer in [{lo}, {hi}] for {self.mode}, "
                             f"not {self.bits!r}")

    @property
    def multiplication_free(self):
        return self.mode != "mul"

    @property
    def label(self):
        return "mul" if self.mode == "mul" and self.bits == 8 else f"{self.mode}{self.bits}"


MUL = Encoding()


@dataclass(frozen=True)
class Numerics:
    """Numerics of the linear layers.

    Parameters
    ----------
    legacy : bool
        Today's :func:`amaformer.gen.compile.compile_linear` for every op (weights per column,
        activations and output per tensor); the other fields are ignored.
    out_scale : str
        ``"tensor"`` or ``"column"``: one output scale per column (per head for Q, K, V, whose
        outputs feed the attention engine, which takes one scale per head).
    act_scale : str
        ``"tensor"``, ``"row"`` or ``"token"``: inputs the host quantizes (all but the
        attention output projection, whose input the device produces) get a per-row scale
        ``unit·r·2^e`` (``"row"``: :mod:`amaformer.gen.requant_row`, needs a row factor in the
        requantizer), or (``"token"``, today's hardware) an exact float scale per token
        ``max|x_r|/127``: the device then runs with zero bias and requantizes per column in
        units normalized per token; the host multiplies each row back by its scale and adds
        the bias (one multiply-add per output it reads back anyway).
    ctx_token : bool
        With ``"token"``: the host also re-quantizes the attention output per token before
        the output projection (it moves that output from the output to the activation
        memory anyway), so ``attn_out`` is a ``"token"`` op too.
    k_chunk : int or None
        ``"token"`` ops only: the largest reduction length of one device job (the linear
        unit's ``max_k``); longer inputs run as several jobs whose int8 outputs the host adds.
    row_bits, row_exp_bits : int
        Widths of the per-row mantissa ``r`` and exponent ``e``.
    row_headroom : float
        The largest row scale is ``row_headroom`` times the calibration's largest row.
    smooth : float or None
        SmoothQuant migration strength α for host-produced inputs (the host divides its
        activations by ``s_c = max|x_c|^α / max|W_c|^(1-α)``; the weights absorb ``s_c``).
    outliers : int
        LLM.int8-style split: the ``outliers`` input channels (host-produced inputs) with the
        largest calibration magnitude go into a second int8 job whose scale is ``2^k`` times the
        main one; the device adds its accumulator shifted left by ``k`` before requantizing.
    out_headroom : float
        Output scales cover ``out_headroom`` times the largest calibration output (static
        per-column scales clip held-out outliers otherwise).
    ctx_scale : str
        Scales of the attention output, the input of the output projection (``attn_out``):
        ``"tensor"``, or ``"channel"``: V keeps one scale per column (its requantizer is per
        column), the attention engine one output multiplier per head (``κ_h``), so attention
        output channel ``c`` has the scale ``s_v[c]·κ_h``, which the output projection's
        weights absorb (``W'[c, :] = s_ctx[c]·W[c, :]``, quantized per output column): no new
        hardware.
    wide : tuple of str
        Roles whose outputs use ``out_bits`` when it is 16 (the others stay int8).
    out_bits : int
        8; 16 (int16 outputs read back, for ops whose output goes to the host); 32 (raw
        accumulators read back and scaled on the host, for every op; with ``act_scale="row"``
        the host then uses exact float per-row input scales).
    """
    legacy: bool = False
    out_scale: str = "column"
    act_scale: str = "tensor"
    k_chunk: int | None = None
    ctx_token: bool = False
    row_bits: int = ROW_BITS
    row_exp_bits: int = ROW_EXP_BITS
    row_headroom: float = 2.0
    smooth: float | None = None
    outliers: int = 0
    out_headroom: float = 1.0
    ctx_scale: str = "tensor"
    out_bits: int = 8
    wide: tuple = ("attn_out", "ffn_in", "ffn_out")

    def __post_init__(self):
        if self.out_scale not in ("tensor", "column"):
            raise ValueError(f"out_scale must be 'tensor' or 'column', not {self.out_scale!r}")
        if self.act_scale not in ("tensor", "row", "token"):
            raise ValueError(f"act_scale must be 'tensor', 'row' or 'token', not "
                             f"{self.act_scale!r}")
        if self.k_chunk is not None and (isinstance(self.k_chunk, bool) or
                                         not isinstance(self.k_chunk, int) or self.k_chunk < 1):
            raise ValueError(f"k_chunk must be None or a positive integer, not {self.k_chunk!r}")
        if self.ctx_scale not in ("tensor", "channel"):
            raise ValueError(f"ctx_scale must be 'tensor' or 'channel', not {self.ctx_scale!r}")
        if self.out_bits not in (8, 16, 32):
            raise ValueError(f"out_bits must be 8, 16 or 32, not {self.out_bits!r}")
        if self.smooth is not None and not 0 < self.smooth < 1:
            raise ValueError(f"smooth must be None or in (0, 1), not {self.smooth!r}")
        if isinstance(self.outliers, bool) or not isinstance(self.outliers, int) or \
                self.outliers < 0:
            raise ValueError(f"outliers must be a non-negative integer, not {self.outliers!r}")
        if not self.out_headroom >= 1:
            raise ValueError(f"out_headroom must be >= 1, not {self.out_headroom!r}")
        if not self.row_headroom >= 1:
            raise ValueError(f"row_headroom must be >= 1, not {self.row_headroom!r}")


# --- float model on the host's terms -----------------------------------------------------------

def _float_attention(layer, q, k, v):
    t, h, d = q.shape[0], layer.heads, layer.head_dim
    split = [a.reshape(t, h, d).transpose(0, 1) for a in (q, k, v)]
    return softmax_reference(*split).transpose(0, 1).reshape(t, h * d)


def float_forward(graph, ids, capture=None):
    """Float64 forward of one sentence through the captured ops (no quantization).

    Returns ``(hidden, layers)``: the last hidden states ``T×hidden`` and the list of the
    hidden states after each layer. With a dict ``capture``, appends each linear op's input
    under its name and each layer's attention output under ``("ctx", i)``.
    """
    with torch.no_grad():
        h = graph.embeddings(ids).to(F64)
        outs = []
        for ly in graph.layers:
            def lin(op, x):
                if capture is not None:
                    capture.setdefault(op.name, []).append(x)
                return _flin(op.module, x)
            ctx = _float_attention(ly, lin(ly.query, h), lin(ly.key, h), lin(ly.value, h))
            if capture is not None:
                capture.setdefault(("ctx", ly.index), []).append(ctx)
            h1 = ly.attn_norm(lin(ly.attn_out, ctx) + h)
            f = ly.activation_module(lin(ly.ffn_in, h1))
            h = ly.ffn_norm(lin(ly.ffn_out, f) + h1)
            outs.append(h)
    return h, outs


def reference(graph, ids):
    """Float PyTorch reference of one sentence: the model's own forward in float64.

    Returns ``(embedding, layers)``: pooled sentence embedding and the hidden states after
    each layer."""
    model = graph.model
    if next(model.parameters()).dtype != F64:
        raise ValueError(f"the model must be float64 for the reference, not "
                         f"{next(model.parameters()).dtype}")
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids).reshape(1, -1), output_hidden_states=True)
    hs = [h[0] for h in out.hidden_states[1:]]
    return graph.pool(hs[-1]), hs


# --- calibration ------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Float activations of calibration sentences, and a cache of quantized weights.

    Members
    -------
    graph : EncoderGraph
    inputs : dict
        ``{op name: R×K float64}`` inputs of each linear op over all calibration tokens.
    ctx : dict
        ``{layer index: R×hidden}`` attention outputs.
    """
    graph: EncoderGraph
    inputs: dict
    ctx: dict
    _weights: dict = field(default_factory=dict, repr=False)

    def output(self, op):
        """Float outputs of ``op`` on its calibration inputs."""
        return _flin(op.module, self.inputs[op.name])


def calibrate(graph, ids_list):
    """Run the float model on calibration sentences (token-id tensors) and keep what the
    compiler needs. Raises ``ValueError`` for an empty list."""
    if not isinstance(graph, EncoderGraph):
        raise TypeError(f"graph must be an EncoderGraph, not {graph!r:.60}")
    if len(ids_list) == 0:
        raise ValueError("ids_list must hold at least one sentence, not []")
    cap = {}
    for ids in ids_list:
        float_forward(graph, ids, cap)
    inputs = {k: torch.cat(v) for k, v in cap.items() if isinstance(k, str)}
    ctx = {k[1]: torch.cat(v) for k, v in cap.items() if not isinstance(k, str)}
    return Calibration(graph, inputs, ctx)


# --- compilation ------------------------------------------------------------------------------

@dataclass
class QLinear:
    """One compiled linear op and the host's bookkeeping around it (see :func:`compile_model`).

    ``w`` holds the device's weights (``K×N`` integers; a :class:`~amaformer.gen.quant.
    BcqWeights` for ``bcq``), ``bias``/``mult``/``shift`` one entry per column, ``in_scale``
    the static input scale (per-row mode: the ``unit``), ``out_scale`` ``N`` floats.
    """
    op: object
    encoding: Encoding
    numerics: Numerics
    w: object
    w_scale: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: torch.Tensor
    in_scale: float
    out_scale: torch.Tensor
    out_bits: int
    row: bool
    smooth: torch.Tensor | None = None
    outlier_idx: torch.Tensor | None = None
    outlier_shift: int = 0
    legacy: object = None
    token: bool = False
    att_scale: torch.Tensor | None = None
    k_chunks: tuple = ()

    def chunks(self):
        """``"token"`` ops: the static half of the device jobs, one per K chunk:
        ``(k0, k1, weights, bias, mult, shift)`` (weights ``K'×N`` integers, or a
        :class:`~amaformer.gen.quant.BcqWeights` slice; zero bias)."""
        zero = torch.zeros(self.bias.shape[0], dtype=torch.int64)
        out = []
        for k0, k1 in self.k_chunks:
            if self.encoding.mode == "bcq":
                b = self.w
                w = BcqWeights(b.planes[:, k0:k1], b.alpha[:, k0 // b.group:-(-k1 // b.group)],
                               b.scale, b.group)
            else:
                w = self.w[k0:k1]
            out.append((k0, k1, w, zero, self.mult, self.shift))
        return out

    def jobs(self, x_q):
        """``"token"`` ops: the device jobs of integer input ``x_q`` as ``(x, weights, bias,
        mult, shift)``, one per K chunk (:meth:`chunks`); their int8 outputs add up on the
        host."""
        return [(x_q[:, k0:k1], w, bias, mult, shift)
                for k0, k1, w, bias, mult, shift in self.chunks()]

    def golden_job(self, x_q, w, bias, mult, shift):
        """One device job through the encoding's golden model (int8 out)."""
        if self.encoding.mode == "bcq":
            return linear_bcq(x_q, w.planes, w.alpha, w.group, bias, mult, shift, 8)
        fn = linear_shift if self.encoding.mode == "shift" else linear_mul
        return fn(x_q, w, bias, mult, shift, 8)

    @property
    def device_scale(self):
        """Scale of the integers this op hands to the next device unit (per column)."""
        return self.att_scale if self.att_scale is not None else self.out_scale

    @property
    def w_int(self):
        return self.w.w_int() if self.encoding.mode == "bcq" else self.w

    def _golden(self, x_q, bias, mult, shift, out_bits):
        """The encoding's golden model (``linear_mul``, ``linear_shift``, ``linear_bcq``)."""
        if self.legacy is not None:
            return self.legacy.golden(x_q)
        if self.encoding.mode == "bcq":
            b = self.w
            return linear_bcq(x_q, b.planes, b.alpha, b.group, bias, mult, shift, out_bits)
        fn = linear_shift if self.encoding.mode == "shift" else linear_mul
        return fn(x_q, self.w, bias, mult, shift, out_bits)

    def _raw(self, x_q):
        n = self.bias.shape[0]
        zero, one = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
        return self._golden(x_q, zero, one, zero, _RAW)

    def quantize_input(self, x):
        """Host: float ``R×K`` input → ``(x_q, x_outlier_q, r, e, row_scale)``."""
        if self.legacy is not None:
            return self.legacy.quantize_input(x), None, None, None, None
        x = x.to(F64)
        if self.smooth is not None:
            x = x / self.smooth
        x_out = None
        if self.outlier_idx is not None:
            x_out = torch.zeros_like(x)
            x_out[:, self.outlier_idx] = x[:, self.outlier_idx]
            x = x.clone()
            x[:, self.outlier_idx] = 0
        q = qmax(8)
        r = e = None
        if self.token or (self.row and self.out_bits == 32):   # exact float scale per row
            scale = torch.clamp(x.abs().amax(1), min=1e-12) / q
        elif self.row:
            r, e, scale = row_factors(x.abs().amax(1), self.in_scale, self.numerics.row_bits,
                                      self.numerics.row_exp_bits)
        else:
            scale = torch.full((x.shape[0],), self.in_scale, dtype=F64)
        x_q = torch.clamp(torch.round(x / scale[:, None]), -q, q).to(torch.int64)
        if x_out is not None:
            s_out = scale[:, None] * 2.0 ** self.outlier_shift
            x_out = torch.clamp(torch.round(x_out / s_out), -q, q).to(torch.int64)
        return x_q, x_out, r, e, scale

    def device(self, x_q, x_out=None, r=None, e=None):
        """Device: the exact integer result (``out_bits`` integers; raw accumulators when
        ``out_bits`` is 32)."""
        if self.legacy is not None:
            return self.legacy.golden(x_q)
        if self.token:
            return sum(self.golden_job(*job) for job in self.jobs(x_q))
        if x_out is None and not self.row and self.out_bits != 32:
            return self._golden(x_q, self.bias, self.mult, self.shift, self.out_bits)
        acc = self._raw(x_q)
        if x_out is not None:
            k_idx = self.outlier_idx
            acc = acc + (linear_acc(x_out[:, k_idx], self.w_int[k_idx]) << self.outlier_shift)
        if self.out_bits == 32:
            return acc
        if self.row:
            return row_requantize(acc, r, e, self.bias, self.mult, self.shift, self.out_bits,
                                  row_bits=self.numerics.row_bits,
                                  exp_bits=self.numerics.row_exp_bits)
        return requantize(acc + self.bias, self.mult, self.shift, self.out_bits)

    def run(self, x=None, x_q=None, device=None):
        """Host-produced float input ``x`` or device-produced integers ``x_q`` → ``(y_q,
        y)``: integer outputs in the op's output format (``None`` after raw accumulators
        unless the output feeds the device) and their float value on the host.

        ``device``: a function ``(qlinear, x_q) -> int outputs`` that runs the op's device
        part somewhere else (the runtime's :class:`~amaformer.host.runtime.DeviceExecutor`);
        default: the golden models."""
        if x_q is None:
            x_q, x_out, r, e, row_scale = self.quantize_input(x)
        else:
            x_out = r = e = None
            row_scale = torch.full((x_q.shape[0],), self.in_scale, dtype=F64)
        if device is not None:
            if x_out is not None or r is not None or self.legacy is not None:
                raise ValueError(f"{self.op.name}: numerics {self.numerics} have no device path "
                                 f"on today's hardware (use act_scale='token' or 'tensor')")
            y_q = device(self, x_q)
        else:
            y_q = self.device(x_q, x_out, r, e)
        if self.token:
            b = self.op.module.bias.detach().to(F64)
            y = y_q.to(F64) * self.out_scale * row_scale[:, None] + b
            if self.att_scale is None:
                return None, y
            return torch.clamp(torch.round(y / self.att_scale), -qmax(8), qmax(8)).to(
                torch.int64), y
        if self.out_bits != 32 or self.legacy is not None:
            return y_q, y_q.to(F64) * self.out_scale
        b = self.op.module.bias.detach().to(F64)
        return None, y_q.to(F64) * row_scale[:, None] * self.w_scale + b


def _quantized_weights(cal, op, enc, w_kn, x_eff, key):
    """Quantized weights of ``op`` in ``enc`` (cached per op, encoding and smoothing)."""
    ck = (op.name, enc, key)
    if ck in cal._weights:
        return cal._weights[ck]
    h = hessian(x_eff) if enc.compensate and enc.mode != "mul" else None
    if enc.mode == "shift":
        qw = quantize_shift(w_kn, enc.bits, hessian=h)
        out = (qw.w_int, qw.scale.clone())
    elif enc.mode == "bcq":
        qw = quantize_bcq(w_kn, enc.bits, group=enc.group, hessian=h)
        out = (qw, qw.scale.clone())
    else:
        from ..numerics import quantize
        w_q, s = quantize(w_kn, enc.bits, dim=1)
        out = (w_q, s.reshape(-1).clone())
    cal._weights[ck] = out
    return out


def _compile_op(cal, op, num, enc, s_ctx):
    graph = cal.graph
    x = cal.inputs[op.name].to(F64)
    y = cal.output(op)
    n = op.out_features
    to_device = op.role in ("query", "key", "value")
    heads = next(ly for ly in graph.layers if ly.index == op.layer).heads
    if num.legacy:
        if enc.mode != "mul":
            raise ValueError(f"legacy numerics take only the mul encoding, not {enc.label!r}")
        prog = compile_linear(op.module, x)
        return QLinear(op, enc, num, prog.w, prog.w_scale, prog.bias, prog.mult, prog.shift,
                       prog.in_scale, torch.full((n,), prog.out_scale, dtype=F64), 8, False,
                       legacy=prog)
    host_in = op.input_from_host or (num.act_scale == "token" and num.ctx_token)
    w_kn = op.module.weight.detach().to(F64).t().contiguous()
    b = op.module.bias.detach().to(F64)
    smooth = None
    if num.smooth is not None and host_in:
        wmax = w_kn.abs().amax(1).clamp(min=1e-12)
        smooth = (x.abs().amax(0).clamp(min=1e-12) ** num.smooth
                  / wmax ** (1 - num.smooth)).clamp(min=1e-5)
        x = x / smooth
        w_kn = w_kn * smooth[:, None]
    wkey = num.smooth if host_in else None
    if not host_in and isinstance(s_ctx, torch.Tensor):   # per-channel attention output
        x = x / s_ctx
        w_kn = w_kn * s_ctx[:, None]
        wkey = ("ctx", tuple(s_ctx.tolist()))
    w, w_scale = _quantized_weights(cal, op, enc, w_kn, x, wkey)
    if num.act_scale == "token" and host_in:
        if num.outliers or num.out_bits != 8 or num.out_scale != "column":
            raise ValueError("act_scale='token' takes out_scale='column', out_bits=8 and no "
                             "outlier split")
        return _compile_token_op(cal, op, num, enc, w, w_scale, x, heads, to_device, smooth)
    idx, k_sh = None, 0
    main = x
    if num.outliers and host_in:
        idx = torch.topk(x.abs().amax(0), min(num.outliers, x.shape[1])).indices.sort().values
        main = x.clone()
        main[:, idx] = 0
    row = num.act_scale == "row" and host_in
    q8 = qmax(8)
    if not host_in:
        in_scale = 1.0 if isinstance(s_ctx, torch.Tensor) else s_ctx
    elif row:
        rmax, emax = (1 << num.row_bits) - 1, (1 << num.row_exp_bits) - 1
        in_scale = num.row_headroom * float(main.abs().amax(1).max()) / q8 / (rmax * 2 ** emax)
    else:
        in_scale = float(main.abs().max()) / q8
    if idx is not None:
        # the second job's scale is 2^k times the main one: k covers the largest ratio of an
        # outlier magnitude to the main magnitude (per row in row mode) seen in calibration
        out_amax, main_amax = x[:, idx].abs().amax(1), main.abs().amax(1).clamp(min=1e-12)
        ratio = float((out_amax / main_amax).max()) if row else \
            float(out_amax.max() / main_amax.max())
        k_sh = max(0, math.ceil(math.log2(max(ratio, 1e-30))))
    out_bits = num.out_bits
    if to_device or (out_bits == 16 and op.role not in num.wide):
        out_bits = 8
    qo = qmax(min(out_bits, 16))
    if num.out_scale == "tensor":
        out_scale = torch.full((n,), float(y.abs().max()), dtype=F64)
    elif to_device and not (op.role == "value" and num.ctx_scale == "channel"):
        out_scale = y.abs().reshape(-1, heads, n // heads).amax((0, 2)).repeat_interleave(
            n // heads)
    else:
        out_scale = y.abs().amax(0)
    out_scale = out_scale.clamp(min=1e-12) * num.out_headroom / qo
    acc_scale = in_scale * w_scale
    lim = (1 << (BIAS_BITS - 1)) - 1
    bias = torch.clamp(torch.round(b / acc_scale), -lim, lim).to(torch.int64)
    if out_bits == 32:
        mult = torch.ones(n, dtype=torch.int64)
        shift = torch.zeros(n, dtype=torch.int64)
    else:
        mult, shift = requant_params(acc_scale / out_scale)
        if bool(torch.any(mult < 1 << (REQUANT_MULT_BITS - 3))):
            raise ValueError(f"{op.name}: requantization multipliers underflow (shift above "
                             f"{REQUANT_MAX_SHIFT}); use fewer row_exp_bits")
    return QLinear(op, enc, num, w, w_scale, bias, mult, shift, in_scale, out_scale, out_bits,
                   row, smooth, idx, k_sh)


def _head_amax(y, heads, per_column):
    """Largest magnitude per column (``per_column``) or per head, repeated per column."""
    n = y.shape[1]
    if per_column:
        return y.abs().amax(0)
    return y.abs().reshape(-1, heads, n // heads).amax((0, 2)).repeat_interleave(n // heads)


def _compile_token_op(cal, op, num, enc, w, w_scale, x, heads, to_device, smooth):
    """``act_scale="token"``: per-token float input scales, zero device bias, per-column
    requantization in units normalized per token, K split into ``num.k_chunk`` jobs."""
    k = x.shape[1]
    chunk = num.k_chunk or k
    if enc.mode == "bcq" and chunk < k:
        chunk -= chunk % w.group
        if chunk < 1:
            raise ValueError(f"{op.name}: k_chunk {num.k_chunk} is below the bcq group "
                             f"{w.group}")
    chunks = tuple((k0, min(k, k0 + chunk)) for k0 in range(0, k, chunk))
    w_int = (w.w_int() if enc.mode == "bcq" else w).to(F64)
    x_n = x / (x.abs().amax(1, keepdim=True).clamp(min=1e-12) / qmax(8))
    amax = torch.stack([(x_n[:, a:b] @ w_int[a:b]).abs().amax(0) for a, b in chunks]).amax(0)
    m_col = qmax(8) / (amax.clamp(min=1e-12) * num.out_headroom)
    mult, shift = requant_params(m_col)
    if bool(torch.any(mult < 1 << (REQUANT_MULT_BITS - 3))):
        raise ValueError(f"{op.name}: requantization multipliers underflow (shift above "
                         f"{REQUANT_MAX_SHIFT})")
    m_exact = mult.to(F64) / 2.0 ** shift.to(F64)
    att = None
    if to_device:
        per_col = op.role == "value" and num.ctx_scale == "channel"
        att = _head_amax(cal.output(op), heads, per_col).clamp(min=1e-12) / qmax(8)
    n = op.out_features
    return QLinear(op, enc, num, w, w_scale, torch.zeros(n, dtype=torch.int64), mult, shift,
                   1.0, w_scale / m_exact, 8, False, smooth, token=True, att_scale=att,
                   k_chunks=chunks)


@dataclass
class CompiledModel:
    """Compiled ops by name, attention parameters per layer and the numerics used."""
    graph: EncoderGraph
    numerics: Numerics
    ops: dict
    attention: dict          # layer index -> (score_mult, score_shift, out_mult, out_shift)
    ctx_scales: dict         # layer index -> scale of the attention output (float or per channel)


def _encoding_for(encodings, op):
    if encodings is None:
        return MUL
    if isinstance(encodings, Encoding):
        return encodings
    if callable(encodings):
        return encodings(op)
    return encodings.get(op.name, encodings.get(op.role, MUL))


def compile_model(cal, numerics=Numerics(), encodings=None):
    """Compile every linear op of ``cal.graph`` and the attention scales.

    Parameters
    ----------
    cal : Calibration
    numerics : Numerics
    encodings : None, Encoding, dict or callable
        Weight encoding per op: one for all, ``{op name or role: Encoding}`` (``mul`` where
        absent) or a function of the :class:`~amaformer.gen.model.graph.LinearOp`.

    Returns
    -------
    CompiledModel
    """
    if not isinstance(numerics, Numerics):
        raise TypeError(f"numerics must be a Numerics, not {numerics!r:.60}")
    ops, att, ctx_scales = {}, {}, {}
    for ly in cal.graph.layers:
        d = ly.head_dim
        for op in (ly.query, ly.key, ly.value):
            ops[op.name] = _compile_op(cal, op, numerics, _encoding_for(encodings, op), None)
        sq, sk = (ops[o.name].device_scale[::d] for o in (ly.query, ly.key))
        ctx = cal.ctx[ly.index]
        if numerics.legacy or numerics.ctx_scale == "tensor":
            s_ctx = float(ctx.abs().max().clamp(min=1e-12)) / qmax(8)
            prm = [softmax_scales(float(a), float(b), float(c), s_ctx, d)
                   for a, b, c in zip(sq, sk, ops[ly.value.name].device_scale[::d])]
        else:
            s_v = ops[ly.value.name].device_scale
            kappa = (ctx / s_v).abs().reshape(-1, ly.heads, d).amax((0, 2)).clamp(
                min=1e-12) / qmax(8)
            s_ctx = s_v * kappa.repeat_interleave(d)
            prm = [softmax_scales(float(a), float(b), 1.0, float(c), d)
                   for a, b, c in zip(sq, sk, kappa)]
        att[ly.index] = tuple(torch.tensor(v, dtype=torch.int64) for v in zip(*prm))
        ctx_scales[ly.index] = s_ctx
        for op in ly.linear_ops[3:]:
            ops[op.name] = _compile_op(cal, op, numerics, _encoding_for(encodings, op), s_ctx)
    return CompiledModel(cal.graph, numerics, ops, att, ctx_scales)


# --- exact forward and evaluation -----------------------------------------------------------

def exact_forward(cm, ids_list, linear=None, attention=None):
    """All sentences through the device-exact path, linear ops batched over their tokens.

    ``linear(qlinear, x_q)`` and ``attention(q, k, v, score_mult, score_shift, out_mult,
    out_shift, layer)`` (``H×T×d`` integers in, out) run the device parts elsewhere (on a
    :class:`~amaformer.host.Device`: :mod:`amaformer.host.runtime`); by default the golden
    models do. The host's own work (quantizing, scaling, LayerNorm, activation, residuals) is
    the same code either way.

    Returns ``(hidden, layers, op_cos)``: last hidden states of each sentence, the
    concatenated hidden states after each layer, and per op the cosine of its dequantized
    output against the float op applied to the same host input.
    """
    g = cm.graph
    lens = [len(torch.as_tensor(i).reshape(-1)) for i in ids_list]
    bounds = [sum(lens[:i]) for i in range(len(lens) + 1)]
    h = torch.cat([g.embeddings(i).to(F64) for i in ids_list])
    outs, op_cos = [], {}

    def run(op, x=None, x_q=None, x_f=None):
        ql = cm.ops[op.name]
        y_q, y = ql.run(x=x, x_q=x_q, device=linear)
        op_cos[op.name] = cosine(y, _flin(op.module, x if x is not None else x_f))
        return y_q, y

    with torch.no_grad():
        for ly in g.layers:
            (q, _), (k, _), (v, _) = (run(o, x=h) for o in (ly.query, ly.key, ly.value))
            sm, ss, om, os_ = cm.attention[ly.index]
            hd, d = ly.heads, ly.head_dim
            ctx = torch.empty_like(q)
            for a, b in zip(bounds[:-1], bounds[1:]):
                split = [t[a:b].reshape(b - a, hd, d).transpose(0, 1) for t in (q, k, v)]
                att = attention_softmax(*split, sm, ss, om, os_) if attention is None else \
                    attention(*split, sm, ss, om, os_, ly.index)
                ctx[a:b] = torch.as_tensor(att).to(torch.int64).transpose(0, 1).reshape(
                    b - a, hd * d)
            s_ctx = cm.ctx_scales[ly.index]
            if cm.ops[ly.attn_out.name].token:        # the host re-quantizes per token
                _, a_out = run(ly.attn_out, x=ctx.to(F64) * s_ctx)
            else:
                _, a_out = run(ly.attn_out, x_q=ctx, x_f=ctx.to(F64) * s_ctx)
            h1 = ly.attn_norm(a_out + h)
            _, f = run(ly.ffn_in, x=h1)
            _, f2 = run(ly.ffn_out, x=ly.activation_module(f))
            h = ly.ffn_norm(f2 + h1)
            outs.append(h)
    return [h[a:b] for a, b in zip(bounds[:-1], bounds[1:])], outs, op_cos


@dataclass
class ExactResult:
    """What :func:`evaluate` measured.

    Members
    -------
    cosines : torch.Tensor
        Per sentence: cosine of the pooled embedding against float PyTorch.
    layer_cosines : list of float
        After each layer: cosine of all hidden states (all tokens) against float.
    op_cosines : dict
        Per op: dequantized output against the float op on the same host input.
    mult_free_fraction : float
        Fraction of the linear-layer MACs in multiplication-free encodings.
    mult_free_fraction_all : float
        The same over all MACs (attention's ``Q·Kᵀ`` and ``P·V`` counted as multiplications).
    """
    cosines: torch.Tensor
    layer_cosines: list
    op_cosines: dict
    mult_free_fraction: float
    mult_free_fraction_all: float

    @property
    def cosine_min(self):
        return float(self.cosines.min())

    @property
    def cosine_mean(self):
        return float(self.cosines.mean())

    def to_dict(self):
        return {"cosine_min": round(self.cosine_min, 5), "cosine_mean": round(self.cosine_mean, 5),
                "layer_cosines": [round(c, 5) for c in self.layer_cosines],
                "mult_free_fraction": round(self.mult_free_fraction, 4),
                "mult_free_fraction_all": round(self.mult_free_fraction_all, 4)}


def evaluate(cal, ids_list, numerics=Numerics(), encodings=None, refs=None, compiled=None):
    """Compile (unless ``compiled`` is given) and run ``ids_list`` through the exact path.

    Parameters
    ----------
    cal : Calibration
    ids_list : list of torch.Tensor
        Token ids of the evaluation sentences (not the calibration ones).
    numerics, encodings
        As :func:`compile_model`.
    refs : list or None
        ``[reference(cal.graph, ids) for ids in ids_list]``, to reuse float references
        across calls.
    compiled : CompiledModel or None
        An already compiled model (``numerics`` and ``encodings`` are then ignored).

    Returns
    -------
    ExactResult
    """
    g = cal.graph
    cm = compiled or compile_model(cal, numerics, encodings)
    refs = refs if refs is not None else [reference(g, i) for i in ids_list]
    hidden, layers, op_cos = exact_forward(cm, ids_list)
    cos = torch.tensor([cosine(g.pool(h), r[0]) for h, r in zip(hidden, refs)], dtype=F64)
    layer_cos = [cosine(layers[i], torch.cat([r[1][i] for r in refs]))
                 for i in range(len(g.layers))]
    tokens = sum(len(torch.as_tensor(i).reshape(-1)) for i in ids_list)
    free = sum(op.macs_per_token for op in g.linear_ops()
               if cm.ops[op.name].encoding.multiplication_free) * tokens
    lin = sum(op.macs_per_token for op in g.linear_ops()) * tokens
    att = sum(ly.attention_macs(len(torch.as_tensor(i).reshape(-1)))
              for ly in g.layers for i in ids_list)
    return ExactResult(cos, layer_cos, op_cos, free / lin, free / (lin + att))
