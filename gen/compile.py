"""Compiler for the linear engines: float ``torch.nn.Linear`` → integer program.

:func:`compile_linear` quantizes one layer, using calibration activations for the input and
output scales:

* weights: symmetric int8, **one scale per output column** by default (DESIGN.md "Numerics");
  ``per_channel=False`` gives one scale for the whole matrix;
* activations (input and output): symmetric int8 with one scale per tensor, from the largest
  magnitude seen in calibration. Per-token activation scales would need a requantization
  multiplier per row *and* column (and a per-row bias); the engine has one per column, so they
  are not offered here;
* bias: in accumulator units, ``round(b / (s_x · s_w[n]))`` (int32);
* requantization: ``(M[n], S[n]) = requant_params(s_x · s_w[n] / s_y)``.

The device then computes ``Y_q = clamp((X_q·W_q + b_q)·M + R >> S)`` exactly as
:func:`amaformer.gen.golden.linear_mul`, and ``Y ≈ Y_q · s_y``.
"""

from dataclasses import dataclass

import torch

from .numerics import BIAS_BITS, qmax, quantize, requant_params

__all__ = ["CompiledLinear", "compile_linear"]


@dataclass
class CompiledLinear:
    """An integer linear layer and the float bookkeeping around it.

    Members
    -------
    w : torch.Tensor or BcqMatrix
        ``K×N`` int64 weights (``Y = X·W``, the transpose of ``nn.Linear.weight``); a
        :class:`~amaformer.hdl.linear_layout.BcqMatrix` for ``bcq``.
    bias, mult, shift : torch.Tensor
        ``N`` int64 each: bias in accumulator units, requantization multiplier and shift.
    in_scale, out_scale : float
        Activation scales: ``x ≈ x_q · in_scale``, ``y ≈ y_q · out_scale``.
    w_scale : torch.Tensor
        ``N`` float64 weight scales (all equal when per tensor).
    act_bits : int
    """
    w: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: torch.Tensor
    in_scale: float
    out_scale: float
    w_scale: torch.Tensor
    act_bits: int = 8

    @property
    def k(self):
        return self.w.shape[0]

    @property
    def n(self):
        return self.w.shape[1]

    def quantize_input(self, x):
        """Float ``…×K`` → int64 ``…×K`` with the calibrated input scale (round half even,
        saturating)."""
        q = torch.round(x.detach().to(torch.float64) / self.in_scale)
        return torch.clamp(q, -qmax(self.act_bits), qmax(self.act_bits)).to(torch.int64)

    def dequantize_output(self, y_q):
        """Integer outputs → float, ``y_q · out_scale``."""
        return torch.as_tensor(y_q).to(torch.float64) * self.out_scale

    def golden(self, x_q):
        """The device's exact integer result for ``x_q`` (``M×K`` ints)."""
        from .golden import golden_linear
        return golden_linear(x_q, self.w, self.bias, self.mult, self.shift, self.act_bits)


def compile_linear(layer, calib_x, *, per_channel=True, act_bits=8, weight_bits=8,
                   linear=None):
    """Quantize ``layer`` (a ``torch.nn.Linear``) for the ``mul`` engine, or for the engine
    that ``linear`` describes.

    Parameters
    ----------
    layer : torch.nn.Linear
    calib_x : torch.Tensor
        Calibration inputs, ``…×in_features`` floats (e.g. the hidden states of a few
        sentences). Scales come from their largest magnitude and that of ``layer(calib_x)``.
    per_channel : bool
        One weight scale per output column (default) or one for the matrix.
    act_bits, weight_bits : int
        Signed widths of activations and weights.
    linear : LinearConfig or None
        With ``mode = "shift"``, weights ``{0, ±2^s}`` (:func:`~amaformer.gen.quant.quantize_shift`,
        ``shift_levels``); with ``"bcq"``, a :class:`~amaformer.hdl.linear_layout.BcqMatrix`
        (:func:`~amaformer.gen.quant.quantize_bcq`, ``bcq_bits``, α per ``bcq_group`` inputs,
        default the whole row). Both with one scale per output column.

    Raises
    ------
    TypeError
        ``layer`` is not a ``torch.nn.Linear``.
    ValueError
        ``calib_x`` does not end in ``in_features``, or is all zeros.
    """
    if not isinstance(layer, torch.nn.Linear):
        raise TypeError(f"layer must be a torch.nn.Linear, not {layer!r}")
    calib_x = torch.as_tensor(calib_x).detach()
    if calib_x.shape[-1:] != (layer.in_features,):
        raise ValueError(f"calib_x must have a last dimension of {layer.in_features}, "
                         f"not shape {tuple(calib_x.shape)}")
    with torch.no_grad():
        x = calib_x.reshape(-1, layer.in_features).to(torch.float64)
        w_f = layer.weight.detach().to(torch.float64).t()          # K×N
        b_f = (layer.bias.detach().to(torch.float64) if layer.bias is not None
               else torch.zeros(layer.out_features, dtype=torch.float64))
        y_f = x @ w_f + b_f
    if float(x.abs().max()) == 0:
        raise ValueError("calib_x must not be all zeros")
    in_scale = float(x.abs().max()) / qmax(act_bits)
    out_scale = max(float(y_f.abs().max()), 1e-12) / qmax(act_bits)
    mode = getattr(linear, "mode", "mul")
    if mode == "shift":
        from .quant import quantize_shift
        qw = quantize_shift(w_f, linear.shift_levels)
        w_q, w_scale = qw.w_int, qw.scale.clone()
    elif mode == "bcq":
        from .quant import quantize_bcq
        qw = quantize_bcq(w_f, linear.bcq_bits, group=linear.bcq_group)
        w_q, w_scale = qw.matrix(), qw.scale.clone()
    else:
        w_q, w_scale = quantize(w_f, weight_bits, dim=1 if per_channel else None)
        w_scale = w_scale.reshape(-1).expand(layer.out_features).clone()
    acc_scale = in_scale * w_scale
    lim = (1 << (BIAS_BITS - 1)) - 1
    bias = torch.clamp(torch.round(b_f / acc_scale), -lim - 1, lim).to(torch.int64)
    mult, shift = requant_params(acc_scale / out_scale)
    return CompiledLinear(w=w_q, bias=bias, mult=mult, shift=shift, in_scale=in_scale,
                          out_scale=out_scale, w_scale=w_scale, act_bits=act_bits)
