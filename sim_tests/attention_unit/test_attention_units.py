# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the softmax exp2 and reciprocal units over their input range,
against the golden model (bit-exact) and against float math (error bound)."""

import math

import pytest
import torch
from amaranth.sim import Simulator

from amaformer.gen.attention import SoftmaxFormat, exp2_fixed, recip_fixed, recip_mantissa
from amaformer.hdl.attention_units import Exp2Unit, ReciprocalUnit


def _run_pipeline(dut, inputs, in_port, out_ports, latency):
    """Feed one input per cycle with ``en`` high; collect outputs ``latency`` cycles later."""
    got = []

    async def tb(ctx):
        ctx.set(dut.en, 1)
        for cyc in range(len(inputs) + latency):
            if cyc < len(inputs):
                ctx.set(in_port, inputs[cyc])
            await ctx.tick()
            if cyc >= latency - 1 and len(got) < len(inputs):
                got.append(tuple(ctx.get(p) for p in out_ports))
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("frac_bits,p_bits", [(6, 12), (4, 8)])
def test_exp2_whole_range(frac_bits, p_bits):
    # every t from the lowest that can still give a non-zero p (and a few below) up to 2^F - 1
    lo = -((p_bits + 4) << frac_bits)
    ts = list(range(lo, 1 << frac_bits))
    dut = Exp2Unit(in_width=24, frac_bits=frac_bits, p_bits=p_bits)
    got = torch.tensor([g[0] for g in _run_pipeline(dut, ts, dut.t, [dut.p], Exp2Unit.LATENCY)])
    exp = exp2_fixed(torch.tensor(ts), frac_bits, p_bits)
    assert torch.equal(got, exp)
    # float bound: table half-LSB rounding then shift rounding (at most 1 LSB in all)
    real = torch.tensor([2.0 ** (t / (1 << frac_bits) + p_bits) for t in ts], dtype=torch.float64)
    assert float((got - real).abs().max()) <= 1.0
    # a hugely negative input saturates to 0
    assert _run_pipeline(dut, [-(1 << 20)], dut.t, [dut.p], Exp2Unit.LATENCY)[0][0] == 0


def test_reciprocal_all_mantissas():
    fmt = SoftmaxFormat()
    mb = fmt.recip_mant_bits
    lms = list(range(1 << (mb - 1), 1 << mb))          # every normalized mantissa
    dut = ReciprocalUnit(in_width=mb, mant_bits=mb, table_bits=fmt.recip_table_bits,
                         recip_bits=fmt.recip_bits)
    got = _run_pipeline(dut, lms, dut.l, [dut.r, dut.e], ReciprocalUnit.LATENCY)
    r = torch.tensor([g[0] for g in got])
    assert all(g[1] == mb - 1 for g in got)
    assert torch.equal(r, recip_mantissa(torch.tensor(lms), fmt))
    real = (1 << fmt.recip_bits) * (1 << (mb - 1)) / torch.tensor(lms, dtype=torch.float64)
    assert float(((r - real).abs() / real).max()) < 2.0 ** -13     # Newton residual + rounding


def test_reciprocal_exponents():
    fmt = SoftmaxFormat()
    width = 28
    g = torch.Generator().manual_seed(5)
    ls = [0, 1, 2, 3, (1 << width) - 1]
    for e in range(width):                              # every exponent, random mantissas
        ls += [(1 << e) | int(x) for x in torch.randint(0, max(1, 1 << e), (6,), generator=g)]
    dut = ReciprocalUnit(in_width=width, mant_bits=fmt.recip_mant_bits,
                         table_bits=fmt.recip_table_bits, recip_bits=fmt.recip_bits)
    got = _run_pipeline(dut, ls, dut.l, [dut.r, dut.e], ReciprocalUnit.LATENCY)
    r_exp, e_exp = recip_fixed(torch.tensor(ls), fmt)
    assert [g[0] for g in got] == r_exp.tolist()
    assert [g[1] for g in got] == e_exp.tolist()
    for l, (r, e) in zip(ls[1:], got[1:]):
        approx = r / 2.0 ** (fmt.recip_bits + e)
        assert abs(approx * l - 1) < 2.0 ** -13 + 2.0 ** -(fmt.recip_mant_bits - 1), l


def test_unit_errors():
    with pytest.raises(ValueError, match=r"^frac_bits must be an integer in \[1, 10\], not 0$"):
        Exp2Unit(in_width=16, frac_bits=0)
    with pytest.raises(ValueError, match=r"^in_width must be an integer >= 7, not 4$"):
        Exp2Unit(in_width=4, frac_bits=6)
    with pytest.raises(ValueError,
                       match=r"^mant_bits must be an integer in \[7, 32\], not 4$"):
        ReciprocalUnit(in_width=16, mant_bits=4, table_bits=6)


def test_rsqrt_unit_range():
    """``RsqrtUnit`` against the recipe of :func:`amaformer.gen.attention.unit_int`: every
    ``n2`` below 2^13 (all exponent parities, the small values read the table exactly) and 3000
    random ones up to 2^21; then ``x̂ = rs(x·r, s)`` equals ``unit_int`` on random vectors, and
    ``127/sqrt(n2)`` is met within the table's 2^-8 relative error."""
    import random
    from amaformer.gen.attention import _bit_length, rsqrt_table, rshift_round, unit_int
    from amaformer.hdl.attention_units import RsqrtUnit
    rng = random.Random(5)
    n2s = list(range(1 << 13)) + [rng.randrange(1 << 21) for _ in range(3000)] + [(1 << 21) - 1]
    dut = RsqrtUnit(in_width=21, table_bits=7, frac_bits=7)
    got = torch.tensor(_run_pipeline(dut, n2s, dut.n2, [dut.r, dut.s], RsqrtUnit.LATENCY))
    n2 = torch.tensor(n2s)
    e2 = (_bit_length(n2) + 1) // 2
    sh = 2 * e2 - 8
    idx = torch.where(sh >= 0, n2 >> sh.clamp(min=0), n2 << (-sh).clamp(min=0))
    assert torch.equal(got[:, 0], torch.tensor(rsqrt_table(7, 7))[idx])
    assert torch.equal(got[1:, 1], 7 + e2[1:])
    nz = n2 > 0
    rel = got[nz, 0].double() / 2.0 ** got[nz, 1].double() * n2[nz].double().sqrt() / 127 - 1
    assert float(rel.abs().max()) < 2 ** -8
    # the whole normalization on vectors (d = 32, int8), through the unit's (r, s)
    x = torch.randint(-128, 128, (64, 32), generator=torch.Generator().manual_seed(6))
    x[0] = 0
    x[1, 1:] = 0
    rows = (x * x).sum(-1).tolist()
    rs_ = torch.tensor(_run_pipeline(dut, rows, dut.n2, [dut.r, dut.s], RsqrtUnit.LATENCY))
    xh = rshift_round(x * rs_[:, :1], rs_[:, 1:])
    assert torch.equal(xh, unit_int(x))
