# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the shift and bcq engines against the bit-exact golden models,
with random stalls and back-pressure, back-to-back jobs, and exact cycle counts."""

import random

import pytest
import torch
from amaranth.hdl import Signal
from amaranth.sim import Simulator

from amaformer.gen.cost import bcq_cycles, shift_cycles
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.hdl.linear_layout import pack_bcq_weights, pack_requant_params, pack_shift_weights
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
    """Run ``jobs`` (list of (x, n), or (x, n, words, params) to reload the engine first) back
    to back on one loaded engine."""
    results = []

    async def tb(ctx):
        rnd = random.Random(seed)
        await load(ctx, dut, words, params)
        for x, n, *reload in jobs:
            if reload:
                await load(ctx, dut, *reload)
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


SHIFT_WIDE_CASES = [
    # lanes, inputs, M, K, N, levels, stall, bp
    (2, 2, 2, 5, 3, 4, 0.0, 0.0),       # K odd: a half chunk
    (3, 3, 2, 7, 7, 7, 0.3, 0.3),       # g not a power of two, stalls both sides
    (4, 8, 1, 3, 5, 4, 0.0, 0.0),       # K < g, M = 1, N not a multiple of lanes
    (2, 8, 3, 1, 4, 4, 0.0, 0.0),       # K = 1
    (4, 8, 2, 21, 9, 4, 0.2, 0.4),      # three chunks, the last partial
    (1, 3, 2, 9, 2, 2, 0.0, 0.5),       # K a multiple of g, one lane
    (5, 2, 2, 16, 12, 5, 0.0, 0.0),
    (2, 5, 4, 12, 2, 3, 0.0, 0.0),      # one group: rows back to back
]


@pytest.mark.parametrize("lanes,inputs,M,K,N,levels,stall,bp", SHIFT_WIDE_CASES)
def test_shift_engine_wide(lanes, inputs, M, K, N, levels, stall, bp):
    """g = ``inputs`` products per lane and cycle: outputs against the golden model, two jobs
    back to back, exact cycle counts when unstalled."""
    g = torch.Generator().manual_seed(lanes * 1000 + inputs * 100 + K)
    x = torch.randint(-128, 128, (M, K), generator=g)
    w = random_shift_weights(g, K, N, levels)
    bias, mult, shift = random_params(g, N)
    dut = ShiftEngine(lanes=lanes, inputs=inputs, max_k=32, max_n=16, max_m=8,
                      weight_depth=64, levels=levels)
    x2 = torch.randint(-128, 128, (1, K), generator=g)
    (out, cycles), (out2, _) = simulate(
        dut, pack_shift_weights(w, lanes, inputs), pack_requant_params(bias, mult, shift),
        [(x, N), (x2, N)], seed=K, stall=stall, bp=bp)
    assert torch.equal(torch.tensor(out).reshape(M, N), linear_shift(x, w, bias, mult, shift))
    assert torch.equal(torch.tensor(out2).reshape(1, N), linear_shift(x2, w, bias, mult, shift))
    if stall == 0 and bp == 0:
        assert cycles == shift_cycles(M, K, N, lanes, inputs)


@pytest.mark.parametrize("inputs,K2", [(3, 4), (8, 5), (8, 1)])
def test_shift_engine_partial_chunk_stale(inputs, K2):
    """A job with a long K fills the row buffer with large activations; the next job's last
    chunk is partial, and the buffer bytes past its K (stale) must contribute nothing. Exact
    accumulators (``mult = 1, shift = 0``)."""
    g = torch.Generator().manual_seed(inputs * 10 + K2)
    lanes, N, K1 = 3, 5, 4 * inputs
    x1 = torch.full((1, K1), 127)
    w1 = random_shift_weights(g, K1, N, 4)
    x2 = torch.randint(-3, 4, (2, K2), generator=g)
    w2 = random_shift_weights(g, K2, N, 4)
    zeros = torch.zeros(N, dtype=torch.int64)
    params = pack_requant_params(zeros, zeros + 1, zeros)
    dut = ShiftEngine(lanes=lanes, inputs=inputs, max_k=32, max_n=8, max_m=4,
                      weight_depth=16, levels=4)
    _, (out, cycles) = simulate(dut, pack_shift_weights(w1, lanes, inputs), params,
                                [(x1, N), (x2, N, pack_shift_weights(w2, lanes, inputs), params)],
                                seed=1, stall=0.0, bp=0.0)
    exp = linear_shift(x2, w2, zeros, zeros + 1, zeros)
    assert int(exp.abs().max()) < 127
    assert torch.equal(torch.tensor(out).reshape(2, N), exp)
    assert cycles == shift_cycles(2, K2, N, lanes, inputs)


SHIFT_PREFETCH_CASES = [
    # lanes, inputs, M, K, N, stall, bp
    (4, 4, 5, 12, 4, 0.0, 0.0),         # one group: rows stream back to back (K-bound)
    (2, 4, 4, 9, 16, 0.0, 0.0),         # eight groups: compute-bound, the next row waits
    (3, 8, 5, 5, 7, 0.0, 0.0),          # K < g: one partial chunk per group
    (2, 3, 4, 10, 5, 0.0, 0.0),         # K not a multiple of g
    (3, 1, 4, 6, 7, 0.0, 0.0),          # g = 1
    (2, 4, 6, 11, 4, 0.7, 0.0),         # input stalls: the prefetch lags the compute
    (4, 2, 5, 7, 4, 0.6, 0.1),
    (2, 4, 5, 13, 6, 0.0, 0.7),         # output back-pressure: the compute lags the prefetch
    (1, 1, 6, 3, 5, 0.3, 0.6),          # g = 1, K shorter than a group's drain, both sides
]


@pytest.mark.parametrize("lanes,inputs,M,K,N,stall,bp", SHIFT_PREFETCH_CASES)
def test_shift_engine_prefetch(lanes, inputs, M, K, N, stall, bp):
    """Row ``r + 1`` streams into the other half of the row buffer while the groups of row
    ``r`` compute: bit-exact outputs (``mult = 1, shift = 0`` exposes every accumulator bit),
    three jobs of different shapes back to back, exact cycle counts when unstalled."""
    g = torch.Generator().manual_seed(lanes * 1000 + inputs * 100 + M * 10 + K)
    zeros = torch.zeros(N, dtype=torch.int64)
    params = pack_requant_params(zeros, zeros + 1, zeros)
    dut = ShiftEngine(lanes=lanes, inputs=inputs, max_k=16, max_n=16, max_m=8,
                      weight_depth=64, levels=3)
    jobs, expected = [], []
    for mm, kk in ((M, K), (M - 1, max(K - 3, 1)), (M, K)):
        x = torch.randint(-3, 4, (mm, kk), generator=g)
        w = random_shift_weights(g, kk, N, 3)
        jobs.append((x, N, pack_shift_weights(w, lanes, inputs), params))
        expected.append(linear_shift(x, w, zeros, zeros + 1, zeros))
    results = simulate(dut, [], [], jobs, seed=M * K, stall=stall, bp=bp)
    for (x, *_), exp, (out, cycles) in zip(jobs, expected, results):
        assert int(exp.abs().max()) < 127
        assert torch.equal(torch.tensor(out).reshape(exp.shape), exp)
        if stall == 0 and bp == 0:
            assert cycles == shift_cycles(x.shape[0], x.shape[1], N, lanes, inputs)


@pytest.mark.parametrize("lanes,inputs,K,N", [(4, 16, 384, 256), (8, 8, 256, 64), (4, 4, 12, 4),
                                              (2, 4, 40, 8)])
def test_shift_cycles_row_rate(lanes, inputs, K, N):
    """In the steady state a row costs ``max(K, groups·ceil(K/g))`` cycles (the next row
    streams in while this one computes) when the groups are longer than the hand-over to the
    holding register."""
    groups, chunks = -(-N // lanes), -(-K // inputs)
    rows = [shift_cycles(m, K, N, lanes, inputs) for m in (6, 7)]
    assert rows[1] - rows[0] == max(K, groups * chunks)


def test_shift_engine_reset_during_prefetch():
    """A synchronous reset while the next row streams in (and the current one computes), then
    a full job: correct outputs and the exact cycle count (no state survives the reset)."""
    from amaranth.hdl import ResetInserter
    lanes, inputs, N = 2, 4, 8
    g = torch.Generator().manual_seed(5)
    w = random_shift_weights(g, 12, N, 4)
    bias, mult, shift = random_params(g, N)
    dut = ShiftEngine(lanes=lanes, inputs=inputs, max_k=16, max_n=16, max_m=8,
                      weight_depth=64, levels=4)
    rst = Signal()
    top = ResetInserter(rst)(dut)
    results = []

    async def tb(ctx):
        rnd = random.Random(3)
        await load(ctx, dut, pack_shift_weights(w, lanes, inputs),
                   pack_requant_params(bias, mult, shift))
        for cut in (14, 20, 26, 31):        # row 1 streaming while row 0 (then 1) computes
            x = torch.randint(-128, 128, (4, 12), generator=g)
            ctx.set(dut.m, 4)
            ctx.set(dut.k, 12)
            ctx.set(dut.n, N)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.y.ready, 1)
            xs = x.flatten().tolist()
            for i in range(cut):
                ctx.set(dut.x.valid, 1)
                ctx.set(dut.x.payload, xs[i])
                await ctx.tick()
            ctx.set(dut.x.valid, 0)
            ctx.set(rst, 1)
            await ctx.tick()
            ctx.set(rst, 0)
            assert not ctx.get(dut.busy) and not ctx.get(dut.y.valid)
            x = torch.randint(-128, 128, (3, 12), generator=g)
            out, cycles = await run_job(ctx, dut, x, 3, N, rnd)
            results.append((x, out, cycles))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(results) == 4
    for x, out, cycles in results:
        assert torch.equal(torch.tensor(out).reshape(3, N), linear_shift(x, w, bias, mult, shift))
        assert cycles == shift_cycles(3, 12, N, lanes, inputs)


@pytest.mark.parametrize("levels,K,xmax,inputs", [
    (4, 3, 4, 1), (7, 1, 2, 1), (7, 2, 1, 1), (2, 9, 7, 1),
    (4, 7, 4, 2), (5, 5, 2, 3), (4, 13, 3, 8), (3, 1, 5, 8)])
def test_shift_engine_exact(levels, K, xmax, inputs):
    """Requantization by ``mult = 1, shift = 0``: every output is the accumulator itself, so an
    error of one LSB (a lost carry-in of a negative weight) shows. Small operands keep the
    accumulators inside int8."""
    g = torch.Generator().manual_seed(100 * levels + K)
    M, N, lanes = 5, 11, 4
    x = torch.randint(-xmax, xmax, (M, K), generator=g)
    w = random_shift_weights(g, K, N, levels)
    zeros = torch.zeros(N, dtype=torch.int64)
    dut = ShiftEngine(lanes=lanes, inputs=inputs, max_k=16, max_n=16, max_m=8,
                      weight_depth=64, levels=levels)
    ((out, cycles),) = simulate(dut, pack_shift_weights(w, lanes, inputs),
                                pack_requant_params(zeros, zeros + 1, zeros), [(x, N)],
                                seed=K, stall=0.0, bp=0.0)
    exp = linear_shift(x, w, zeros, zeros + 1, zeros)
    assert int(exp.abs().max()) < 127
    assert torch.equal(torch.tensor(out).reshape(M, N), exp)
    assert cycles == shift_cycles(M, K, N, lanes, inputs)


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
    (dict(inputs=0), "inputs must be an integer in [1, 64], not 0"),
    (dict(inputs=65), "inputs must be an integer in [1, 64], not 65"),
    (dict(inputs=3, max_k=64, weight_depth=21),
     "weight_depth must be at least ceil(max_k/inputs) (22), not 21"),
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
    # inputs = 2, K = 3: word grp·2 + c, code of W[2c + i, 2grp + j] at 4(2j + i); the
    # second chunk's input 1 (past K) holds the zero code
    w3 = torch.tensor([[1, -2], [4, 0], [-8, 16]])
    assert pack_shift_weights(w3, 2, 2) == [0x7_9_2_0, 0x7_4_7_B]
    assert pack_shift_weights(w3, 1, 2) == [0x2_0, 0x7_B, 0x7_9, 0x7_4]
    with pytest.raises(ValueError) as e:
        pack_shift_weights(torch.tensor([[3]]), 1)
    assert str(e.value) == "shift weights must be 0 or ±2^s with s in [0, 6]"
