"""Bit-exact golden models of the hardware, as plain PyTorch functions on integer tensors.

Each function reproduces the hardware arithmetic bit for bit (see :mod:`amaformer.gen.numerics`
for the rounding rule); the tests compare the RTL against them, and against float PyTorch for
the quantization error.
"""

import torch

from .numerics import requantize

__all__ = ["linear_acc", "linear_mul"]


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
    """
    return requantize(linear_acc(x, w, bias), mult, shift, out_bits)
