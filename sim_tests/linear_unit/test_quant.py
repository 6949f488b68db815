"""Quantizers of the multiplication-free modes (gen/quant.py), their packers and config fields."""

import pytest
import torch

from amaformer.gen.config import ConfigError, LinearConfig
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.hdl.linear_layout import alpha_code, pack_bcq_weights
from amaformer.gen.numerics import requantize
from amaformer.gen.quant import (allocate_bits, hessian, layer_sensitivity, quantize_bcq,
                                 quantize_shift, relative_error, round_pow2_sum)


def weights(k=64, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, generator=g, dtype=torch.float64) * 0.05


def test_bcq_error_falls_with_bits():
    w = weights()
    errs = [relative_error(quantize_bcq(w, q).dequantize(), w) for q in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[0] < 0.75 and errs[3] < 0.2, errs


def test_bcq_refinement_and_groups_help():
    w = weights(seed=1)
    greedy = relative_error(quantize_bcq(w, 3, iters=0).dequantize(), w)
    refined = relative_error(quantize_bcq(w, 3, iters=15).dequantize(), w)
    grouped = relative_error(quantize_bcq(w, 3, group=8).dequantize(), w)
    assert refined < greedy
    assert grouped < refined


def test_bcq_encoding():
    w = weights(k=40, seed=2)          # K not a multiple of the group
    bw = quantize_bcq(w, 3, group=16)
    assert bw.planes.shape == (3, 40, 24) and bw.alpha.shape == (3, 3, 24)
    assert set(bw.planes.unique().tolist()) <= {-1, 1}
    for a in bw.alpha.unique().tolist():      # every α is ≤ 3 signed powers of two 2^0..2^7
        alpha_code(a)
    assert bw.alpha.abs().max() == 128        # the column scale puts the largest α at 2^7
    manual = sum(bw.alpha[i].repeat_interleave(16, 0)[:40] * bw.planes[i] for i in range(3))
    assert torch.equal(bw.w_int(), manual)


def test_round_pow2_sum():
    assert round_pow2_sum(torch.tensor([0.2, 1.0, 5.0, 100.0, -300.0, 1000.0])).tolist() == \
        [0.0, 1.0, 5.0, 100.0, -288.0, 384.0]
    with pytest.raises(ValueError, match="alpha must be a sum of at most three signed powers"):
        alpha_code(1 + 4 + 16 + 64)


def test_shift_levels():
    w = weights(seed=3)
    sw = quantize_shift(w, levels=7)
    mags = sw.w_int.abs().unique().tolist()
    assert set(mags) <= {0, 1, 2, 4, 8, 16, 32, 64}
    errs = [relative_error(quantize_shift(w, levels=lv).dequantize(), w) for lv in (1, 3, 7)]
    assert errs[0] > errs[1] > errs[2], errs
    exact = torch.tensor([[1.0, -0.5], [0.25, 0.0], [-0.125, 1.0]], dtype=torch.float64)
    assert relative_error(quantize_shift(exact, levels=4).dequantize(), exact) == 0.0


def test_golden_against_float():
    """The integer golden models equal the float matmul with the dequantized weights."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-128, 128, (5, 64), generator=g)
    w = weights(seed=4)
    bw = quantize_bcq(w, 2)
    one = torch.ones(24, dtype=torch.int64)
    zero = torch.zeros(24, dtype=torch.int64)
    # M = 1, S = 0: requantize is the identity up to the int8 clamp; compare unclamped accs.
    acc_f = (x.double() @ bw.dequantize()) / bw.scale
    got = linear_bcq(x, bw.planes, bw.alpha, bw.group, zero, one, zero, out_bits=32)
    assert torch.equal(got, acc_f.round().to(torch.int64))
    sw = quantize_shift(w)
    got = linear_shift(x, sw.w_int, zero, one, zero, out_bits=32)
    assert torch.equal(got, ((x.double() @ sw.dequantize()) / sw.scale).round().to(torch.int64))
    assert torch.equal(requantize(got, one, zero, 32), got)


def test_pack_bcq_layout():
    planes = -torch.ones(1, 20, 1, dtype=torch.int64)
    planes[0, 9, 0] = 1            # chunk of 8·2 = 16: input 9 = t·2 + s → t = 4, s = 1
    planes[0, 17, 0] = 1           # chunk 1, input 1 → t = 0, s = 1
    words = pack_bcq_weights(planes, torch.tensor([[[3], [-2]]]), group=16, slots=2)
    assert words == [(1 << 12) | alpha_code(3) << 16, (1 << 8) | alpha_code(-2) << 16]
    with pytest.raises(ValueError, match="group must be a multiple of the chunk 8·slots = 16"):
        pack_bcq_weights(planes, torch.ones(1, 3, 1), group=8, slots=2)


def test_allocate_bits():
    sens = {"a": {1: 0.5, 2: 0.2, 3: 0.1, 4: 0.05},
            "b": {1: 0.3, 2: 0.25, 3: 0.24, 4: 0.23}}
    assert allocate_bits(sens, 1.0) == {"a": 1, "b": 1}
    loose = allocate_bits(sens, 0.25)
    tight = allocate_bits(sens, 0.16)
    assert loose == {"a": 2, "b": 1}          # a gains most per bit
    assert sum(tight.values()) > sum(loose.values())
    assert allocate_bits(sens, 0.01) == {"a": 4, "b": 4}   # unreachable: everything at max
    with pytest.raises(ValueError, match=r"^budget must be a positive number, not 0$"):
        allocate_bits(sens, 0)


def test_layer_sensitivity_measured():
    w = weights(seed=5)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sens = layer_sensitivity(w, x, bits=(1, 2, 4), iters=5)
    assert sens[1] > sens[2] > sens[4] > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(bits=0), "bits must be an integer in [1, 4], not 0"),
    (dict(bits=2, group=12), "group must be a positive multiple of 8 or None, not 12"),
])
def test_bcq_bad_args(kwargs, message):
    with pytest.raises(ValueError) as e:
        quantize_bcq(weights(), **kwargs)
    assert str(e.value) == message


def test_config_modes():
    c = LinearConfig(mode="bcq", lanes=16, bcq_bits=3, max_k=384, weight_depth=256)
    assert c.weight_words(384, 10) == 3 * 10 * 3
    c.check_job(4, 384, 28)
    with pytest.raises(ConfigError) as e:
        c.check_job(4, 384, 29)
    assert str(e.value) == ("job ceil(K/128)·N·q = 261 weight words does not fit "
                            "linear.weight_depth = 256; split N (at most 28 columns for K = 384)")
    assert LinearConfig(mode="shift", shift_levels=4).shift_levels == 4
    for kwargs, message in [
        (dict(mode="bcq", bcq_bits=5), "linear.bcq_bits must be an integer in [1, 4], not 5"),
        (dict(mode="shift", shift_levels=0),
         "linear.shift_levels must be an integer in [1, 7], not 0"),
        (dict(mode="bcq", lanes=4, bcq_group=48),
         "linear.bcq_group must be a multiple of 8·lanes = 32, not 48"),
    ]:
        with pytest.raises(ConfigError) as e:
            LinearConfig(**kwargs)
        assert str(e.value) == message


def calibration(k=48, r=300, seed=7):
    """``r×k`` inputs with correlated features (as real activations have), one fixed feature
    mix for every ``seed``, so different seeds draw from the same distribution."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, k, generator=g, dtype=torch.float64) @ (torch.eye(k) + 0.4 * mix)


@pytest.mark.parametrize("quantizer", [
    lambda w, h: quantize_shift(w, levels=5, hessian=h),
    lambda w, h: quantize_bcq(w, 2, group=16, hessian=h),
    lambda w, h: quantize_bcq(w, 3, group=8, hessian=h),
], ids=["shift", "bcq2", "bcq3"])
def test_compensation_lowers_output_error(quantizer):
    w = weights(k=48, n=32, seed=4)
    x = calibration()
    x_eval = calibration(seed=8)                # held-out inputs from the same distribution
    plain = relative_error(x_eval @ quantizer(w, None).dequantize(), x_eval @ w)
    compensated = quantizer(w, hessian(x))
    comp = relative_error(x_eval @ compensated.dequantize(), x_eval @ w)
    assert comp < 0.93 * plain, (comp, plain)


def test_compensated_codes_stay_encodable():
    w = weights(k=40, n=12, seed=5)                 # K not a multiple of the group
    bw = quantize_bcq(w, 3, group=16, hessian=hessian(calibration(k=40)))
    assert bw.planes.shape == (3, 40, 12) and bw.alpha.shape == (3, 3, 12)
    assert set(bw.planes.unique().tolist()) <= {-1, 1}
    for a in bw.alpha.unique().tolist():
        alpha_code(a)
    sw = quantize_shift(w, levels=4, hessian=hessian(calibration(k=40)))
    assert set(sw.w_int.abs().unique().tolist()) <= {0, 1, 2, 4, 8}


def test_compensation_update_is_the_conditional_optimum():
    """Fixing rows b0:b1 moves the later rows by ``-H_RR⁻¹ H_RB d_B`` (H over rows b0..K),
    the least-squares optimum the quantizers rely on."""
    from amaformer.gen.quant import _compensate, _hessian_factor
    k, n, b0, b1 = 20, 5, 6, 11
    h = hessian(calibration(k=k))
    g = torch.Generator().manual_seed(9)
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    q_blk = torch.randn(b1 - b0, n, generator=g, dtype=torch.float64)
    got = w.clone()
    _compensate(got, _hessian_factor(h, k, k), b0, b1, q_blk)
    d = q_blk - w[b0:b1]
    want = w[b1:] - torch.linalg.solve(h[b1:, b1:], h[b1:, b0:b1] @ d)
    assert torch.allclose(got[b1:], want, atol=1e-9)
    assert torch.equal(got[b0:b1], q_blk) and torch.equal(got[:b0], w[:b0])


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3),), r"x must be an R×K matrix of calibration inputs, not shape \(3,\)"),
    ((torch.ones(4, 3), 0), "damp must be a positive number, not 0"),
])
def test_hessian_bad_args(args, message):
    with pytest.raises(ValueError, match=message):
        hessian(*args)


def test_hessian_shape_checked():
    with pytest.raises(ValueError, match=r"hessian must be K×K = 8×8, not \(4, 4\)"):
        quantize_bcq(weights(k=8, n=4), 2, hessian=torch.eye(4))
