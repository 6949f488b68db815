"""Requantization with a per-row (per-token) activation scale: golden model and host helpers.

The linear engines requantize per output column (:func:`amaformer.gen.numerics.requantize`).
With per-token activation scales the input row ``m`` carries its own scale
``s_x[m] = unit · r[m] · 2^e[m]``, a small integer mantissa ``r`` and an exponent ``e`` chosen by
the host when it quantizes the row (it computes the row after LayerNorm or the activation
anyway), while ``unit`` is a static per-layer constant folded, with the weight scale and the
output scale, into the column multiplier ``M[n]·2^-S[n] ≈ unit · s_w[n] / s_y[n]``.

Arithmetic (all integers, one rounding)::

    t[m, n] = ((acc[m, n] · r[m]) << e[m]) + b[n]
    y[m, n] = clamp((t[m, n] · M[n] + R[n]) >> S[n],  -2^(out_bits-1), 2^(out_bits-1) - 1)
    R[n]    = 2^(S[n]-1) if S[n] > 0 else 0

``>>`` is an arithmetic shift, so the rounding is the project's round half up
(:mod:`amaformer.gen.numerics`); the clamp saturates. The row factor scales the exact
accumulator *before* the bias is added, so the bias stays one integer per column (in units of
``unit · s_w[n]``) whatever the row scale. With ``r = 1, e = 0`` this is exactly
:func:`amaformer.gen.golden.linear_mul`'s requantization.

Widths
    ``acc``: signed ``A`` bits (``acc_bits(8, 8, K)``, 27 for K = 1536); ``r``: unsigned
    ``row_bits`` bits with the top bit set (``r`` in ``[2^(row_bits-1), 2^row_bits - 1]``;
    ``row_bits = 1`` is a pure power of two); ``e``: unsigned ``exp_bits`` bits; ``b``: signed
    ``BIAS_BITS`` (32); ``t``: signed :func:`row_acc_bits` bits; ``M``: unsigned
    ``REQUANT_MULT_BITS`` (16); ``S``: ``REQUANT_SHIFT_BITS`` (6); ``t·M``: ``row_acc_bits + 16``
    bits signed. Nothing wraps.
Memory
    One row-factor code per activation row, ``(row_bits - 1) + exp_bits`` bits
    (:func:`pack_row_factor`: the top bit of ``r`` is implicit), next to the row in the
    activation memory; the host sends it with the row.
"""

import math

import torch

from .numerics import BIAS_BITS, REQUANT_MAX_SHIFT, REQUANT_MULT_BITS, qmax

__all__ = ["ROW_BITS", "ROW_EXP_BITS", "row_acc_bits", "row_requantize", "row_factors",
           "pack_row_factor", "unpack_row_factor", "row_code_bits"]

ROW_BITS = 4        #: default mantissa bits of the per-row factor (top bit implicit in memory)
ROW_EXP_BITS = 3    #: default exponent bits of the per-row factor (e in 0..7)


def _check_bits(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")


def row_code_bits(row_bits=ROW_BITS, exp_bits=ROW_EXP_BITS):
    """Bits of one stored row factor: ``(row_bits - 1) + exp_bits``."""
    return row_bits - 1 + exp_bits


def row_acc_bits(acc_bits, row_bits=ROW_BITS, exp_bits=ROW_EXP_BITS):
    """Signed width of ``t = ((acc·r) << e) + b``: ``acc_bits + row_bits + (2^exp_bits - 1) +
    1``, and at least ``BIAS_BITS + 1`` (the bias add)."""
    _check_bits("row_bits", row_bits, 1, 16)
    _check_bits("exp_bits", exp_bits, 0, 5)
    return max(acc_bits + row_bits + (1 << exp_bits) - 1, BIAS_BITS) + 1


def row_requantize(acc, r, e, bias, mult, shift, out_bits=8, *, row_bits=ROW_BITS,
                   exp_bits=ROW_EXP_BITS):
    """Golden per-row requantization (see the module docstring), bit for bit.

    Parameters
    ----------
    acc : torch.Tensor
        ``M×N`` exact integer accumulators ``X_q·W_q`` (no bias), e.g.
        :func:`amaformer.gen.golden.linear_acc`.
    r, e : torch.Tensor
        ``M`` row mantissas and exponents (:func:`row_factors`).
    bias, mult, shift : torch.Tensor
        ``N`` each: bias (units of ``unit·s_w[n]``), column multiplier and shift.
    out_bits : int
        Signed output width.
    row_bits, exp_bits : int
        Widths of ``r`` and ``e``, checked.

    Returns
    -------
    torch.Tensor
        ``M×N`` int64 in the ``out_bits`` signed range.

    Raises
    ------
    ValueError
        An operand is outside its width, or ``t·M`` would not fit 63 bits.
    """
    _check_bits("row_bits", row_bits, 1, 16)
    _check_bits("exp_bits", exp_bits, 0, 5)
    _check_bits("out_bits", out_bits, 2, 32)
    acc, r, e, bias, mult, shift = (torch.as_tensor(v).to(torch.int64)
                                    for v in (acc, r, e, bias, mult, shift))
    if acc.dim() != 2 or r.shape != acc.shape[:1] or e.shape != acc.shape[:1]:
        raise ValueError(f"acc must be M×N and r, e of length M, not shapes "
                         f"{tuple(acc.shape)}, {tuple(r.shape)}, {tuple(e.shape)}")
    lo_r, hi_r = 1 << (row_bits - 1), (1 << row_bits) - 1
    if bool(torch.any((r < lo_r) | (r > hi_r))):
        raise ValueError(f"row factors r must be in [{lo_r}, {hi_r}], not {r.min()}..{r.max()}")
    if bool(torch.any((e < 0) | (e >= 1 << exp_bits))):
        raise ValueError(f"row exponents e must be in [0, {(1 << exp_bits) - 1}], "
                         f"not {e.min()}..{e.max()}")
    if bool(torch.any(bias.abs() >= 1 << (BIAS_BITS - 1))):
        raise ValueError(f"bias must fit {BIAS_BITS} bits signed")
    if bool(torch.any((mult < 0) | (mult >= 1 << REQUANT_MULT_BITS))):
        raise ValueError(f"mult must be in [0, {(1 << REQUANT_MULT_BITS) - 1}]")
    if bool(torch.any((shift < 0) | (shift > REQUANT_MAX_SHIFT))):
        raise ValueError(f"shift must be in [0, {REQUANT_MAX_SHIFT}]")
    t = ((acc * r[:, None]) << e[:, None]) + bias
    peak = float(t.abs().max()) * max(float(mult.max()), 1.0) if t.numel() else 0.0
    if peak >= 2.0 ** 62:
        raise ValueError(f"t·M must fit 63 bits, not {math.log2(peak):.1f}")
    rnd = torch.where(shift > 0, torch.ones_like(shift) << torch.clamp(shift - 1, min=0), 0)
    y = (t * mult + rnd) >> shift
    return torch.clamp(y, -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1)


def row_factors(amax, unit, row_bits=ROW_BITS, exp_bits=ROW_EXP_BITS, bits=8):
    """Host side: the row factor ``(r, e)`` of each row, the smallest representable scale
    ``unit·r·2^e`` that holds the row's largest magnitude ``amax`` in ``bits``-bit integers
    (``>= amax / qmax(bits)``), saturating at the largest (``r = 2^row_bits - 1``,
    ``e = 2^exp_bits - 1``: such rows clip).

    Returns
    -------
    (torch.Tensor, torch.Tensor, torch.Tensor)
        ``r`` and ``e`` (int64) and the row scales ``unit·r·2^e`` (float64).
    """
    _check_bits("row_bits", row_bits, 1, 16)
    _check_bits("exp_bits", exp_bits, 0, 5)
    if not (isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0):
        raise ValueError(f"unit must be a positive finite number, not {unit!r}")
    need = torch.as_tensor(amax, dtype=torch.float64) / (qmax(bits) * unit)
    lo_r, hi_r, emax = 1 << (row_bits - 1), (1 << row_bits) - 1, (1 << exp_bits) - 1
    # smallest e with hi_r·2^e >= need, then the smallest r with r·2^e >= need
    e = torch.ceil(torch.log2(torch.clamp(need / hi_r, min=1e-300)))
    e = torch.clamp(e, 0, emax).to(torch.int64)
    e = torch.where((hi_r * 2.0 ** e < need) & (e < emax), e + 1, e)   # float log2 slack
    r = torch.clamp(torch.ceil(need / 2.0 ** e), lo_r, hi_r).to(torch.int64)
    return r, e, unit * r.to(torch.float64) * 2.0 ** e


def pack_row_factor(r, e, row_bits=ROW_BITS, exp_bits=ROW_EXP_BITS):
    """Stored code of a row factor: ``(e << (row_bits - 1)) | (r - 2^(row_bits-1))``."""
    r, e = torch.as_tensor(r).to(torch.int64), torch.as_tensor(e).to(torch.int64)
    lo = 1 << (row_bits - 1)
    if bool(torch.any((r < lo) | (r >= 2 * lo) | (e < 0) | (e >= 1 << exp_bits))):
        raise ValueError(f"r must be in [{lo}, {2 * lo - 1}] and e in "
                         f"[0, {(1 << exp_bits) - 1}]")
    return (e << (row_bits - 1)) | (r - lo)


def unpack_row_factor(code, row_bits=ROW_BITS, exp_bits=ROW_EXP_BITS):
    """Inverse of :func:`pack_row_factor`: ``(r, e)``."""
    code = torch.as_tensor(code).to(torch.int64)
    lo = 1 << (row_bits - 1)
    return (code & (lo - 1)) + lo, (code >> (row_bits - 1)) & ((1 << exp_bits) - 1)
