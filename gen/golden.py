"""Bit-exact golden models of the hardware, as plain PyTorch functions on integer tensors.

Each function reproduces the hardware arithmetic bit for bit (see :mod:`amaformer.gen.numerics`
for the rounding rule); the tests compare the RTL against them, and against float PyTorch for
the quantization error.
"""

import torch

from .numerics import requantize

__all__ = ["linear_acc", "linear_mul", "linear_shift", "linear_bcq", "golden_linear"]


def linear_acc(x, w, bias=None):
    """Exact integer ``X·W + b``.

    Parameters
    ----------
    x : torch.Tensor
        ``M×K`` integers.
    w : torch.Tensor
        ``K×N`` integers.
    bias : torch.Tensor or None
        ``N`` integers in accumulator units.

    Returns
    -------
    torch.Tensor
        ``M×N`` int64 accumulators (no wrap-around: widths are derived by ``acc_bits``).
    """
    acc = x.to(torch.int64) @ w.to(torch.int64)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    return acc


def linear_mul(x, w, bias, mult, shift, out_bits=8):
    """The ``mul`` linear engine: ``clamp((X·W + b)·M[n] + R >> S[n])`` per output column ``n``.

    ``bias``, ``mult`` and ``shift`` have one entry per output column. Returns ``M×N`` int64.

    Error against float ``torch.nn.functional.linear``: let ``X ≈ s_x·Xq`` (per tensor) and
    ``W[:, n] ≈ s_w[n]·Wq[:, n]`` (per output column) by round-to-nearest without clamping
    (elementwise errors at most half a step), ``bias_q = round(b / (s_x·s_w[n]))``, and
    ``M[n]·2^-S[n] = (s_x·s_w[n] / s_y)·(1 + δ)`` with ``|δ| < 2^-14`` (``requant_params``).
    Writing ``Xq = X/s_x - e_x`` and so on, ``X·W + b - s_x·s_w·acc`` is
    ``s_x·s_w·(Σ_k (Xq·e_w + e_x·Wq + e_x·e_w) - e_b)``; requantization adds at most half an
    output step plus ``δ`` relative. So, for every output that does not saturate::

        |s_y·Y[m,n] - (X·W + b)[m,n]| <= s_x·s_w[n]·( ½·Σ_k (|Xq[m,k]| + |Wq[k,n]|)
                                                    + K/4 + ½ + 2^-14·|acc[m,n]| ) + s_y/2

    (``acc = linear_acc(Xq, Wq, bias_q)``). ``sim_tests/whole_model/test_numerics.py`` checks it
    elementwise; measured errors stay below a quarter of it (output rounding dominates).
    """
    return requantize(linear_acc(x, w, bias), mult, shift, out_bits)


def linear_shift(x, w_int, bias, mult, shift, out_bits=8):
    """The ``shift`` engine: as :func:`linear_mul` with weights ``w_int`` in
    ``{0, ±1, ±2, …, ±64}`` (``sign · 2^s``), which the hardware applies as shifts.

    Raises
    ------
    ValueError
        A weight is not zero or a signed power of two up to 64.
    """
    w = torch.as_tensor(w_int).to(torch.int64)
    a = w.abs()
    if bool(torch.any((a > 64) | ((a & (a - 1)) != 0))):
        raise ValueError("shift weights must be 0 or ±2^s with s in [0, 6]")
    return linear_mul(x, w, bias, mult, shift, out_bits)


def linear_bcq(x, planes, alpha, group, bias, mult, shift, out_bits=8):
    """The ``bcq`` engine: ``acc = Σ_i Σ_k alpha[i, k // group, n] · planes[i, k, n] · X[m, k]``,
    then requantized as in :func:`linear_mul`.

    ``planes`` is ``q×K×N`` in {-1, +1}; ``alpha`` ``q×G×N`` integers (sums of signed powers
    of two). Exact in int64, so it is bit-exact with any summation order the hardware uses.
    """
    planes = torch.as_tensor(planes).to(torch.int64)
    alpha = torch.as_tensor(alpha).to(torch.int64)
    if bool(torch.any(planes.abs() != 1)):
        raise ValueError("bcq planes must hold only -1 and +1")
    q, k, n = planes.shape
    a = alpha.repeat_interleave(group, dim=1)[:, :k, :]
    return linear_mul(x, (a * planes).sum(0), bias, mult, shift, out_bits)


def golden_linear(x, w, bias, mult, shift, act_bits=8):
    """The bit-exact result of the engine whose weights ``w`` are: a
    :class:`~amaformer.hdl.linear_layout.BcqMatrix` (bcq), ``{0, ±2^s}`` integers (shift: the same
    arithmetic as mul, see :func:`~amaformer.gen.golden.linear_shift`) or int8 (mul)."""
    from ..hdl.linear_layout import BcqMatrix
    x, bias, mult, shift = (torch.as_tensor(v) for v in (x, bias, mult, shift))
    if isinstance(w, BcqMatrix):
        return linear_bcq(x, w.planes, w.alpha, w.group, bias, mult, shift, act_bits)
    return linear_mul(x, torch.as_tensor(w), bias, mult, shift, act_bits)
