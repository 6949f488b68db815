"""Numerics: requantization parameters and rounding, quantizers, accumulator widths, and the
quantized linear layer against float ``torch.nn.functional.linear`` within its stated bound."""

import math
import random
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from amaformer.gen.golden import linear_acc, linear_mul
from amaformer.gen.numerics import (REQUANT_MAX_SHIFT, REQUANT_MULT_BITS, acc_bits, qmax,
                                    quantize, requant_params, requantize)


# --- requant_params -------------------------------------------------------------------------

def test_requant_params_relative_accuracy():
    # 2^-45 .. 2^15 (exclusive): every representable range with a normalized multiplier
    r = torch.logspace(-45, 14.99, 4000, base=2, dtype=torch.float64)
    r = torch.cat([r, torch.tensor([1.0, 0.5, 0.75, 1 / 3, 32767.0, 2.0 ** -45])])
    mult, shift = requant_params(r)
    assert mult.dtype == torch.int64 and shift.dtype == torch.int64
    assert int(mult.min()) >= 1 << (REQUANT_MULT_BITS - 2)
    assert int(mult.max()) < 1 << (REQUANT_MULT_BITS - 1)
    assert int(shift.min()) >= 0 and int(shift.max()) <= REQUANT_MAX_SHIFT
    approx = mult.to(torch.float64) * torch.pow(2.0, -shift.to(torch.float64))
    rel = (approx / r - 1).abs()
    assert float(rel.max()) < 2.0 ** -14, float(rel.max())


def test_requant_params_exact_powers_and_underflow():
    mult, shift = requant_params(torch.tensor([1.0, 0.25, 2.0 ** -60]))
    assert (mult * torch.pow(2.0, -shift.double())).tolist()[:2] == [1.0, 0.25]
    # below 2^-48 the shift saturates at 63 and the multiplier loses precision, but stays
    # the nearest value M·2^-63
    assert shift[2] == REQUANT_MAX_SHIFT and mult[2] == round(2.0 ** -60 * 2.0 ** 63)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), [0.5, -0.5]])
def test_requant_params_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="^requantization multipliers must be positive and "
                                         "finite$"):
        requant_params(bad)


@pytest.mark.parametrize("big, shown", [(32768.0, "32768"), (32767.9, "32767.9"),
                                        (1e6, "1e+06")])
def test_requant_params_rejects_too_large(big, shown):
    with pytest.raises(ValueError, match="^" + re.escape(
            f"requantization multiplier {shown} is too large (at most 32767)") + "$"):
        requant_params(big)


# --- requantize -----------------------------------------------------------------------------

def reference_requantize(acc, mult, shift, out_bits=8):
    """Independent model with exact rationals: round half up of acc·M/2^S, then clamp."""
    value = Fraction(acc * mult, 1 << shift)
    y = math.floor(value + Fraction(1, 2))
    return max(-(1 << (out_bits - 1)), min((1 << (out_bits - 1)) - 1, y))


def test_requantize_matches_exact_reference():
    rng = random.Random(5)
    cases = [(-1, 1, 1), (1, 1, 1), (-3, 1, 1), (3, 1, 1), (-5, 1, 2), (-6, 1, 2), (255, 1, 1),
             (-257, 1, 1), (-256, 1, 1), (7, 3, 0), (-300, 1, 0), (1, 1, 63), (-1, 1, 63),
             ((1 << 40) - 1, 65535, 63), (-(1 << 40), 65535, 63)]
    for _ in range(3000):
        s = rng.randint(0, 63)
        cases.append((rng.randint(-(1 << 40), 1 << 40), rng.randint(0, 65535), s))
    for _ in range(500):    # exact ties: acc·M = (2j+1)·2^(S-1)
        s = rng.randint(1, 30)
        cases.append(((2 * rng.randint(-1000, 1000) + 1) << (s - 1), 1, s))
    for bits in (8, 4):
        acc, mult, shift = (torch.tensor(c) for c in zip(*cases))
        got = requantize(acc, mult, shift, bits).tolist()
        want = [reference_requantize(a, m, s, bits) for a, m, s in cases]
        assert got == want


def test_requantize_ties_round_up():
    # -2.5 -> -2, -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
    acc = torch.tensor([-5, -3, -1, 1, 3, 5])
    assert requantize(acc, 1, 1).tolist() == [-2, -1, 0, 1, 2, 3]


# --- quantize -------------------------------------------------------------------------------

def test_quantize_per_tensor():
    t = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * 3
    q, scale = quantize(t)
    assert scale.dim() == 0 and q.dtype == torch.int64
    assert float(scale) == pytest.approx(float(t.abs().max()) / 127)
    assert int(q.abs().max()) == 127
    err = (q * scale - t.double()).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-9)
    assert torch.equal(q, torch.round(t.double() / scale).to(torch.int64))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_quantize_per_channel(dim):
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(24, 10, generator=gen) * torch.logspace(-2, 2, 10)   # very different columns
    q, scale = quantize(t, dim=dim)
    keep = dim % 2
    assert scale.shape == tuple(t.shape[d] if d == keep else 1 for d in range(2))
    amax = q.abs().amax(dim=1 - keep)
    assert amax.tolist() == [127] * t.shape[keep]       # every channel uses the full range
    err = (q * scale - t.double()).abs()
    assert bool((err <= scale / 2 * (1 + 1e-9)).all())


def test_quantize_bits_and_zeros():
    t = torch.tensor([[-1.0, 0.5], [0.25, 0.0]])
    q, scale = quantize(t, bits=4)
    assert qmax(4) == 7 and float(scale) == pytest.approx(1 / 7)
    assert q.tolist() == [[-7, 4], [2, 0]]          # 3.5 rounds half to even -> 4
    q0, s0 = quantize(torch.zeros(3, 3))
    assert q0.abs().sum() == 0 and float(s0) > 0


# --- accumulator widths ---------------------------------------------------------------------

def test_acc_bits_never_wrap():
    assert acc_bits(8, 8, 1) == 16 and acc_bits(8, 8, 64) == 22 and acc_bits(8, 8, 65) == 23
    for k in list(range(1, 300)) + [511, 512, 513, 4096, 65536]:
        width = acc_bits(8, 8, k)
        worst = k * 128 * 128                       # all products (-128)·(-128)
        assert worst <= (1 << (width - 1)) - 1 and -worst >= -(1 << (width - 1))
    # the bound is tight within a bit: one bit less wraps for powers of two
    assert 64 * 128 * 128 > (1 << (acc_bits(8, 8, 64) - 2)) - 1


# --- the quantized linear layer against float PyTorch ---------------------------------------

def quantized_linear(x, weight, bias, out_scale):
    """``F.linear(x, weight, bias)`` through the ``mul`` engine's arithmetic: X per tensor,
    W per output channel, bias in accumulator units, one (M, S) per output column.
    Returns the float result, the quantities of the error bound and the int8 outputs."""
    xq, sx = quantize(x)
    wq, sw = quantize(weight.t(), dim=1)           # K×N, one scale per output column
    sw = sw.flatten()
    bq = torch.round(bias.double() / (sx * sw)).to(torch.int64)
    mult, shift = requant_params(sx * sw / out_scale)
    y = linear_mul(xq, wq, bq, mult, shift)
    acc = linear_acc(xq, wq, bq)
    # error bound of gen.golden.linear_mul's docstring, per element
    k = x.shape[1]
    sums = xq.abs().sum(1, keepdim=True) + wq.abs().sum(0, keepdim=True)
    bound = (sx * sw) * (sums / 2 + k / 4 + 0.5 + 2.0 ** -14 * acc.abs()) + out_scale / 2
    return y.double() * out_scale, bound, y


@pytest.mark.parametrize("m, k, n, seed", [(8, 64, 48, 0), (1, 1, 3, 1), (16, 384, 32, 2),
                                           (4, 17, 9, 3)])
def test_quantized_linear_within_bound(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, k, generator=gen, dtype=torch.float64) / k ** 0.5
    bias = torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
    ref = F.linear(x, weight, bias)
    out_scale = float(ref.abs().max()) * 1.25 / 127   # headroom: nothing saturates
    got, bound, yq = quantized_linear(x, weight, bias, out_scale)
    assert int(yq.abs().max()) < 127
    err = (got - ref).abs()
    assert bool((err <= bound).all()), float((err - bound).max())
    # the bound is a worst case; the typical error is a fraction of it, and the layer is close
    assert float(err.mean()) < float(bound.mean())
    cos = F.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.999
