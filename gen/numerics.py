"""Integer numerics shared by the golden models, the compiler and the hardware.

Conventions
-----------
* Tensors on the device are signed integers of ``bits`` bits (int8 by default). Each carries a
  float scale that only the host knows: ``real ≈ q · scale``. Quantization is symmetric
  (zero point 0) with ``q = clamp(round_half_even(real / scale), -(2^(bits-1) - 1), 2^(bits-1) - 1)``.
* Requantization of an accumulator ``acc`` to ``out_bits`` uses an unsigned integer multiplier
  ``M`` (``REQUANT_MULT_BITS`` bits) and a right shift ``S`` (0 to ``REQUANT_MAX_SHIFT``)::

      y = clamp((acc · M + R) >> S, -2^(out_bits-1), 2^(out_bits-1) - 1),  R = 2^(S-1) if S > 0 else 0

  ``>>`` is an arithmetic shift, so this is **round half up** (towards +∞): the one rounding
  rule of the project, used bit for bit by the hardware and by :mod:`amaformer.gen.golden`.
* Accumulator widths are derived by :func:`acc_bits`, so no sum can wrap.
"""

import math

import torch

__all__ = ["REQUANT_MULT_BITS", "REQUANT_SHIFT_BITS", "REQUANT_MAX_SHIFT", "BIAS_BITS",
           "qmax", "quantize", "requant_params", "requantize", "acc_bits", "product_bits"]

REQUANT_MULT_BITS = 16          #: width of the unsigned requantization multiplier M
REQUANT_SHIFT_BITS = 6          #: width of the shift S
REQUANT_MAX_SHIFT = (1 << REQUANT_SHIFT_BITS) - 1
BIAS_BITS = 32                  #: signed bias, in accumulator units


def qmax(bits):
    """Largest magnitude used by symmetric quantization: ``2^(bits-1) - 1`` (127 for int8)."""
    return (1 << (bits - 1)) - 1


def quantize(t, bits=8, dim=None):
    """Symmetric quantization of a float tensor.

    Parameters
    ----------
    t : torch.Tensor
        Float tensor.
    bits : int
        Signed width of the result.
    dim : int or None
        ``None`` for one scale per tensor; otherwise the dimension that keeps its own scale
        (e.g. ``dim=1`` on a ``K×N`` weight gives one scale per output column).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``q`` as int64 in ``[-qmax, qmax]`` and ``scale`` (float64; shape 0-d, or broadcastable
        to ``t`` with size 1 everywhere except ``dim``).
    """
    t = t.detach().to(torch.float64)
    if dim is None:
        amax = t.abs().max()
    else:
        others = [d for d in range(t.dim()) if d != dim % t.dim()]
        amax = t.abs().amax(dim=others, keepdim=True) if others else t.abs()
    scale = torch.clamp(amax, min=1e-12) / qmax(bits)
    q = torch.clamp(torch.round(t / scale), -qmax(bits), qmax(bits)).to(torch.int64)
    return q, scale


def requant_params(real_multiplier):
    """Integer ``(M, S)`` with ``M · 2^-S ≈ real_multiplier``, elementwise.

    ``M`` is normalized into ``[2^(REQUANT_MULT_BITS-2), 2^(REQUANT_MULT_BITS-1))`` for 15 bits of
    precision (leaving the top bit free), S is clamped to ``[0, REQUANT_MAX_SHIFT]``.

    Raises
    ------
    ValueError
        A multiplier is not positive and finite, or too large to represent (``S`` would be < 0).
    """
    r = torch.as_tensor(real_multiplier, dtype=torch.float64)
    if not bool(torch.all(torch.isfinite(r) & (r > 0))):
        raise ValueError("requantization multipliers must be positive and finite")
    top = REQUANT_MULT_BITS - 1
    # r = m · 2^e with m in [0.5, 1): M = round(m · 2^top), S = top - e.
    mant, exp = torch.frexp(r)
    mult = torch.round(mant * (1 << top)).to(torch.int64)
    shift = top - exp.to(torch.int64)
    carry = mult == (1 << top)          # rounding overflowed the mantissa
    mult = torch.where(carry, mult // 2, mult)
    shift = torch.where(carry, shift - 1, shift)
    if bool(torch.any(shift < 0)):
        raise ValueError(f"requantization multiplier {float(r.max()):g} is too large "
                         f"(at most {(1 << top) - 1})")
    tiny = shift > REQUANT_MAX_SHIFT    # underflow: shift right as far as allowed
    mult = torch.where(tiny, torch.round(r * (2.0 ** REQUANT_MAX_SHIFT)).to(torch.int64), mult)
    shift = torch.clamp(shift, max=REQUANT_MAX_SHIFT)
    return mult, shift


def requantize(acc, mult, shift, out_bits=8):
    """``clamp((acc·M + R) >> S)``: the project's requantization, see the module docstring.

    All arguments are int64 tensors that broadcast together; returns int64.
    """
    acc, mult, shift = (torch.as_tensor(v, dtype=torch.int64) for v in (acc, mult, shift))
    rnd = torch.where(shift > 0, torch.ones_like(shift) << torch.clamp(shift - 1, min=0), 0)
    y = (acc * mult + rnd) >> shift
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return torch.clamp(y, lo, hi)


def product_bits(a_bits, b_bits):
    """Signed width of the product of signed ``a_bits`` and ``b_bits`` integers."""
    return a_bits + b_bits


def acc_bits(a_bits, b_bits, max_k):
    """Signed accumulator width for a sum of ``max_k`` products: ``a + b + ceil(log2 max_k)``."""
    return product_bits(a_bits, b_bits) + max(0, math.ceil(math.log2(max_k)))
