# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the shift and bcq engines against the bit-exact golden models,
with random stalls and back-pressure, back-to-back jobs, and exact cycle counts."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from amaformer.gen.cost import bcq_cycles, shift_cycles
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.gen.layout import pack_bcq_weights, pack_requant_params, pack_shift_weights
from amaformer.gen.quant import round_pow2_sum
from amaformer.hdl.shiftadd import BcqEngine, ShiftEngine


def random_params(g, n):
    bias = torch.randint(-5000, 5000, (n,), generator=g)
    mult = torch.randint(1 << 14, 1 << 15, (n,), generator=g)
    shift = torch.randint(16, 26, (n,), generator=g)
    return bias, mult, shift


def random_shift_weights(g, k, n, levels=7):
    s = torch.randint(0, levels, (k, n), generator=g)
    sign = torch.randint(-1, 2, (k, n), generator=g)
    return sign * (1 << s)


def random_bcq_weights(g, q, k, n, group):
    planes = torch.randint(0, 2, (q, k, n), generator=g) * 2 - 1
    ng = -(-k // group)
    alpha = round_pow2_sum(torch.rand(q, ng, n, generator=g, dtype=torch.float64) * 300 - 150)
    return planes, alpha.to(torch.int64)


async def load(ctx, dut, words, params):
    en = (1 << len(dut.w_wr.en)) - 1
    for a, word in enumerate(words):
        ctx.set(dut.w_wr.addr, a)
        ctx.set(dut.w_wr.data, word)
        ctx.set(dut.w_wr.en, en)
        await ctx.tick()
    ctx.set(dut.w_wr.en, 0)
    for a, word in enumerate(params):
        ctx.set(dut.p_wr.addr, a)
        ctx.set(dut.p_wr.data, word)
        ctx.set(dut.p_wr.en, 1)
        await ctx.tick()
    ctx.set(dut.p_wr.en, 0)


async def run_job(ctx, dut, x, mdim, n, rnd, stall=0.0, bp=0.0):
    """Start a job, stream ``x`` (M×K) in and collect M·N outputs; returns (outputs, cycles)
    counted from the edge that samples ``start`` to the edge that raises ``done``."""
    ctx.set(dut.m, mdim)
    ctx.set(dut.k, x.shape[1])
    ctx.set(dut.n, n)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    xs = x.flatten().tolist()
    i, out, cycles = 0, [], 1
    while True:
        if i < len(xs) and rnd.random() >= stall:
            ctx.set(dut.x.valid, 1)
            ctx.set(dut.x.payload, xs[i])
        else:
            ctx.set(dut.x.valid, 0)
        ctx.set(dut.y.ready, rnd.random() >= bp)
        done = ctx.get(dut.done)
        xv, xr = ctx.get(dut.x.valid), ctx.get(dut.x.ready)
        if ctx.get(dut.y.valid) and ctx.get(dut.y.ready):
            out.append(ctx.get(dut.y.payload))
        await ctx.tick()
        if xv and xr:
            i += 1
        if done:
            break
        cycles += 1
        assert cycles < 200_000, "job did not finish"
    ctx.set(dut.x.valid, 0)
    assert i == len(xs), f"engine took {i} of {len(xs)} activations"
    return out, cycles


def simulate(dut, words, params, jobs, seed, stall, bp):
    """Run ``jobs`` (list of (x, n)) back to back on one loaded engine."""
    results = []

    async def tb(ctx):
        rnd = random.Random(seed)
        await load(ctx, dut, words, params)
        for x, n in jobs:
            results.append(await run_job(ctx, dut, x, x.shape[0], n, rnd, stall, bp))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return results


SHIFT_CASES = [
    # lanes, M, K, N, levels, stall, bp
    (4, 2, 5, 6, 7, 0.0, 0.0),
    (4, 3, 1, 9, 7, 0.0, 0.0),      # K = 1
    (8, 2, 16, 20, 4, 0.3, 0.3),    # N not a multiple of lanes, stalls both sides
    (8, 1, 40, 8, 7, 0.0, 0.0),
    # every shifter shape (levels 1..7 use 0, 1, 2, 2, 3, 3, 3 shift stages), prime K,
    # N < lanes, M = 1
    (5, 1, 13, 3, 1, 0.0, 0.0),
    (3, 2, 7, 7, 2, 0.2, 0.4),
    (6, 3, 11, 13, 3, 0.0, 0.0),
    (4, 2, 2, 4, 5, 0.0, 0.0),
    (2, 1, 17, 5, 6, 0.0, 0.5),
    (7, 4, 3, 15, 7, 0.0, 0.0),     # K shorter than a group's drain: the lanes wait
]


@pytest.mark.parametrize("lanes,M,K,N,levels,stall,bp", SHIFT_CASES)
def test_shift_engine(lanes, M, K, N, levels, stall, bp):
    g = torch.Generator().manual_seed(lanes * 1000 + K)
    x = torch.randint(-128, 128, (M, K), generator=g)
    w = random_shift_weights(g, K, N, levels)
    bias, mult, shift = random_params(g, N)
    dut = ShiftEngine(lanes=lanes, max_k=64, max_n=64, max_m=8, weight_depth=256,
                      levels=levels)
    x2 = torch.randint(-128, 128, (1, K), generator=g)
    (out, cycles), (out2, _) = simulate(
        dut, pack_shift_weights(w, lanes), pack_requant_params(bias, mult, shift),
        [(x, N), (x2, N)], seed=K, stall=stall, bp=bp)
    assert torch.equal(torch.tensor(out).reshape(M, N), linear_shift(x, w, bias, mult, shift))
    assert torch.equal(torch.tensor(out2).reshape(1, N), linear_shift(x2, w, bias, mult, shift))
    if stall == 0 and bp == 0:
        assert cycles == shift_cycles(M, K, N, lanes)


@pytest.mark.parametrize("levels,K,xmax", [(4, 3, 4), (7, 1, 2), (7, 2, 1), (2, 9, 7)])
def test_shift_engine_exact(levels, K, xmax):
    """Requantization by ``mult = 1, shift = 0``: every output is the accumulator itself, so an
    error of one LSB (a lost carry-in of a negative weight) shows. Small operands keep the
    accumulators inside int8."""
    g = torch.Generator().manual_seed(100 * levels + K)
    M, N, lanes = 5, 11, 4
    x = torch.randint(-xmax, xmax, (M, K), generator=g)
    w = random_shift_weights(g, K, N, levels)
    zeros = torch.zeros(N, dtype=torch.int64)
    dut = ShiftEngine(lanes=lanes, max_k=16, max_n=16, max_m=8, weight_depth=64, levels=levels)
    ((out, cycles),) = simulate(dut, pack_shift_weights(w, lanes),
                                pack_requant_params(zeros, zeros + 1, zeros), [(x, N)],
                                seed=K, stall=0.0, bp=0.0)
    exp = linear_shift(x, w, zeros, zeros + 1, zeros)
    assert int(exp.abs().max()) < 127
    assert torch.equal(torch.tensor(out).reshape(M, N), exp)
    assert cycles == shift_cycles(M, K, N, lanes)


BCQ_CASES = [
    # slots, planes, M, K, N, group, stall, bp
    (2, 2, 2, 16, 3, None, 0.0, 0.0),    # one full chunk
    (2, 1, 2, 1, 2, None, 0.0, 0.0),     # K = 1
    (1, 3, 2, 20, 3, 8, 0.0, 0.0),       # slots = 1, partial last chunk, α per group of 8
    (2, 4, 2, 37, 4, 16, 0.25, 0.4),     # three chunks, stalls on both sides
    (4, 2, 3, 40, 5, None, 0.0, 0.5),    # back-pressure only
]


@pytest.mark.parametrize("slots,planes,M,K,N,group,stall,bp", BCQ_CASES)
def test_bcq_engine(slots, planes, M, K, N, group, stall, bp):
    g = torch.Generator().manual_seed(slots * 100 + K)
    x = torch.randint(-128, 128, (M, K), generator=g)
    grp = group or K
    pl, alpha = random_bcq_weights(g, planes, K, N, grp)
    bias, mult, shift = random_params(g, N)
    dut = BcqEngine(slots=slots, planes=planes, max_k=64, max_n=16, max_m=4, weight_depth=128)
    x2 = torch.randint(-128, 128, (1, K), generator=g)
    (out, cycles), (out2, _) = simulate(
        dut, pack_bcq_weights(pl, alpha, grp, slots), pack_requant_params(bias, mult, shift),
        [(x, N), (x2, N)], seed=K, stall=stall, bp=bp)
    exp = linear_bcq(x, pl, alpha, grp, bias, mult, shift)
    assert torch.equal(torch.tensor(out).reshape(M, N), exp)
    exp2 = linear_bcq(x2, pl, alpha, grp, bias, mult, shift)
    assert torch.equal(torch.tensor(out2).reshape(1, N), exp2)
    if stall == 0 and bp == 0:
        assert cycles == bcq_cycles(M, K, N, slots, planes)


def test_bcq_engine_exact_accumulator():
    """Requantization by 1 (M = 1, S = 0) with small activations and α with negative terms,
    so that an accumulator off by one shows in the output."""
    g = torch.Generator().manual_seed(7)
    slots, planes, m, k, n = 2, 2, 3, 37, 6
    x = torch.randint(-1, 2, (m, k), generator=g)
    pl = torch.randint(0, 2, (planes, k, n), generator=g) * 2 - 1
    choices = torch.tensor([-7, -6, -3, -1, 1, 3, 5, 6])
    alpha = choices[torch.randint(0, len(choices), (planes, 1, n), generator=g)]
    bias, mult, shift = torch.zeros(n, dtype=torch.int64), torch.ones(n), torch.zeros(n)
    dut = BcqEngine(slots=slots, planes=planes, max_k=64, max_n=16, max_m=4, weight_depth=128)
    ((out, cycles),) = simulate(
        dut, pack_bcq_weights(pl, alpha, k, slots), pack_requant_params(bias, mult, shift),
        [(x, n)], seed=1, stall=0.0, bp=0.0)
    exp = linear_bcq(x, pl, alpha, k, bias, mult, shift)
    assert exp.abs().max() < 127 and exp.abs().max() > 20     # no saturation, not trivial
    assert torch.equal(torch.tensor(out).reshape(m, n), exp)
    assert cycles == bcq_cycles(m, k, n, slots, planes)


def test_bcq_empty_job():
    dut = BcqEngine(slots=1, planes=1, max_k=8, max_n=4, max_m=2, weight_depth=8)
    (res,) = simulate(dut, [], [], [(torch.zeros(0, 3, dtype=torch.int64), 2)], 0, 0, 0)
    assert res == ([], bcq_cycles(0, 3, 2, 1, 1))


@pytest.mark.parametrize("kwargs,message", [
    (dict(planes=5), "planes must be an integer in [1, 4], not 5"),
    (dict(slots=0), "slots must be a positive integer, not 0"),
])
def test_bcq_engine_bad_params(kwargs, message):
    with pytest.raises(ValueError) as e:
        BcqEngine(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("kwargs,message", [
    (dict(levels=8), "levels must be an integer in [1, 7], not 8"),
    (dict(lanes=0), "lanes must be a positive integer, not 0"),
    (dict(max_k=64, weight_depth=32), "weight_depth must be at least max_k (64), not 32"),
])
def test_shift_engine_bad_params(kwargs, message):
    with pytest.raises(ValueError) as e:
        ShiftEngine(**kwargs)
    assert str(e.value) == message


def test_pack_shift_weights():
    """Codes: ``s`` for ``±2^s`` in bits 0..2, 7 for zero, bit 3 negative; padding is zero."""
    w = torch.tensor([[1, -1, 64], [-64, 0, 8]])
    assert pack_shift_weights(w, 2) == [0x8 << 4 | 0x0, 0x7 << 4 | 0xE,
                                        0x7 << 4 | 0x6, 0x7 << 4 | 0x3]
    with pytest.raises(ValueError) as e:
        pack_shift_weights(torch.tensor([[3]]), 1)
    assert str(e.value) == "shift weights must be 0 or ±2^s with s in [0, 6]"
