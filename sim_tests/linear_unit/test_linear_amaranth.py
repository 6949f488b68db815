# amaranth: UnusedElaboratable=no
"""Fast Amaranth-simulator tests of the linear engine and its parts, against the PyTorch models.

* ``Requantizer`` against :func:`amaformer.gen.numerics.requantize`: random values, shift 0 and
  63, saturation on both sides, exact .5 ties (negative ones included), back-pressure, latency.
* ``lut_multiply`` exhaustively: all 65536 signed 8×8 pairs and all pairs of small widths.
* ``LinearEngine`` against :func:`amaformer.gen.golden.linear_mul` on a few shapes, some lanes
  built from ``lut_multiply``, with stalls; cycle counts against ``gen.cost.linear_cycles``.
* Constructor errors, messages pinned.
"""

import random
import re

import pytest
import torch
from amaranth import *

from amaformer.gen.cost import linear_cycles
from amaformer.gen.golden import linear_mul
from amaformer.hdl.linear_layout import pack_linear_weights, pack_requant_params
from amaformer.gen.numerics import requant_params, requantize
from amaformer.hdl.common import MemWriteSignature, Requantizer
from amaformer.hdl.linear import LinearEngine, lut_multiply

from conftest import requantize_stream, simulate, stream_collect, stream_send, write_words


# --- Requantizer ----------------------------------------------------------------------------

def requant_cases(acc_width, seed):
    """(acc, bias, mult, shift) tuples: edges first, then ties, then random values."""
    amax = (1 << (acc_width - 1)) - 1
    amin = -(1 << (acc_width - 1))
    bmax, bmin = (1 << 31) - 1, -(1 << 31)
    cases = [
        # shift 0: y = clamp(acc·M), no rounding term
        (0, 0, 1, 0), (5, 0, 1, 0), (-5, 0, 1, 0), (127, 0, 1, 0), (-128, 0, 1, 0),
        (128, 0, 1, 0), (-129, 0, 1, 0), (3, -1, 65535, 0), (amax, bmax, 65535, 0),
        (amin, bmin, 65535, 0),
        # shift 63: everything rounds to 0 (or -1 for large negatives), rounding term 2^62
        (amax, bmax, 65535, 63), (amin, bmin, 65535, 63), (-1, 0, 1, 63), (1, 0, 1, 63),
        # saturation right at the rails, with ties: 127.5 -> 128 -> 127; -128.5 -> -128
        (255, 0, 1, 1), (254, 0, 1, 1), (-257, 0, 1, 1), (-256, 0, 1, 1), (-258, 0, 1, 1),
        (-259, 0, 1, 1), (amax, 0, 65535, 1), (amin, 0, 65535, 1),
        # .5 ties, negative and positive: round half up (towards +inf)
        (-1, 0, 1, 1), (-3, 0, 1, 1), (1, 0, 1, 1), (3, 0, 1, 1), (-2, 0, 3, 2), (2, 0, 3, 2),
        (-6, 0, 1, 2), (-10, 0, 1, 2), (-7, 1, 1, 1), (0, -5, 1, 1),
    ]
    rng = random.Random(seed)
    for _ in range(60):             # random ties: acc·M ≡ 2^(S-1) (mod 2^S), M odd
        s = rng.randint(1, min(20, acc_width - 2))
        mult = rng.randrange(1, 1 << 16, 2)
        acc = rng.randrange(-(amax >> s), amax >> s) * 2 + 1 << (s - 1)
        cases.append((acc, 0, mult, s))
    for _ in range(150):            # realistic: M in [2^14, 2^15), moderate shifts
        cases.append((rng.randint(amin, amax), rng.randint(-1 << 20, 1 << 20),
                      rng.randint(1 << 14, (1 << 15) - 1), rng.randint(10, acc_width + 14)))
    for _ in range(150):            # anything
        cases.append((rng.randint(amin, amax), rng.randint(bmin, bmax),
                      rng.randint(0, (1 << 16) - 1), rng.randint(0, 63)))
    return cases


@pytest.mark.parametrize("acc_width, idle, stall", [(22, 0.0, 0.0), (22, 0.3, 0.5),
                                                    (40, 0.2, 0.3)])
def test_requantizer_matches_numerics(acc_width, idle, stall):
    cases = requant_cases(acc_width, seed=acc_width)
    acc, bias, mult, shift = (torch.tensor(c) for c in zip(*cases))
    expected = requantize(acc + bias, mult, shift, 8).tolist()
    # the case list reaches both rails and has ties in both signs
    assert 127 in expected and -128 in expected
    dut = Requantizer(acc_width, out_bits=8)
    got = requantize_stream(dut, cases, idle=idle, stall=stall)
    bad = [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]
    assert not bad, f"{len(bad)} mismatches (acc, bias, mult, shift), got, expected: {bad[:5]}"


def test_requantizer_latency():
    dut = Requantizer(22)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, {"acc": -3, "params": {"bias": 0, "mult": 1, "shift": 1}})
        _, _, ready = await ctx.tick().sample(dut.i.ready)
        assert ready
        ctx.set(dut.i.valid, 0)
        cycles = 1
        while not ctx.get(dut.o.valid):
            await ctx.tick()
            cycles += 1
            assert cycles < 10
        seen["cycles"], seen["y"] = cycles, ctx.get(dut.o.payload)

    simulate(dut, tb)
    assert seen == {"cycles": Requantizer.LATENCY, "y": -1}


# --- lut_multiply ---------------------------------------------------------------------------

def check_lut_multiply(a_bits, b_bits, parallel):
    m = Module()
    a = [Signal(signed(a_bits), name=f"a{i}") for i in range(parallel)]
    b = Signal(signed(b_bits))
    p = [Signal(signed(a_bits + b_bits), name=f"p{i}") for i in range(parallel)]
    m.d.comb += [p[i].eq(lut_multiply(a[i], b)) for i in range(parallel)]
    a_vals = list(range(-(1 << (a_bits - 1)), 1 << (a_bits - 1)))
    b_vals = list(range(-(1 << (b_bits - 1)), 1 << (b_bits - 1)))
    bad, count = [], [0]

    async def tb(ctx):
        for base in range(0, len(a_vals), parallel):
            chunk = a_vals[base:base + parallel]
            for i, av in enumerate(chunk):
                ctx.set(a[i], av)
            for bv in b_vals:
                ctx.set(b, bv)
                for i, av in enumerate(chunk):
                    count[0] += 1
                    if ctx.get(p[i]) != av * bv:
                        bad.append((av, bv, ctx.get(p[i])))

    simulate(m, tb, period=None)
    assert count[0] == len(a_vals) * len(b_vals)
    assert not bad, f"{len(bad)} wrong products (a, b, got): {bad[:5]}"


def test_lut_multiply_8x8_exhaustive():
    check_lut_multiply(8, 8, parallel=16)


@pytest.mark.parametrize("a_bits, b_bits", [(1, 1), (1, 4), (4, 1), (2, 2), (3, 5), (5, 3),
                                            (4, 4), (6, 2)])
def test_lut_multiply_small_widths(a_bits, b_bits):
    check_lut_multiply(a_bits, b_bits, parallel=1 << a_bits)


# --- LinearEngine ---------------------------------------------------------------------------

def random_job(gen, m, k, n, act_bits=8, weight_bits=8):
    a, b = 1 << (act_bits - 1), 1 << (weight_bits - 1)
    x = torch.randint(-a, a, (m, k), generator=gen)
    w = torch.randint(-b, b, (k, n), generator=gen)
    std = k ** 0.5 * a * b / 3
    bias = (torch.randn(n, generator=gen, dtype=torch.float64) * std).round().to(torch.int64)
    spread = 2.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1)
    mult, shift = requant_params(spread * a / (2.5 * std))
    return x, w, bias, mult, shift


def run_engine(dut, jobs, *, idle=0.0, stall=0.0, seed=0):
    """Run ``jobs`` one after the other (weights and parameters loaded before each); return
    the outputs of each job and its cycle count (edges from the one sampling ``start`` to the
    one raising ``done``, both counted: the convention of ``linear_cycles``)."""
    L = dut.lanes
    outputs, cycles = [], []

    async def driver(ctx):
        xs = [v for x, *_ in jobs for v in x.flatten().tolist()]
        await stream_send(ctx, dut.x, xs, idle=idle, rng=random.Random(seed))

    async def monitor(ctx):
        total = sum(x.shape[0] * w.shape[1] for x, w, *_ in jobs)
        await stream_collect(ctx, dut.y, total, stall=stall, rng=random.Random(seed + 1),
                             out=outputs)

    async def control(ctx):
        for x, w, bias, mult, shift in jobs:
            await write_words(ctx, dut.w_wr, pack_linear_weights(w, L, dut.weight_bits))
            await write_words(ctx, dut.p_wr, pack_requant_params(bias, mult, shift))
            (m, k), n = x.shape, w.shape[1]
            ctx.set(dut.m, m)
            ctx.set(dut.k, k)
            ctx.set(dut.n, n)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            count = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                count += 1
                assert count < 50 * linear_cycles(m, k, n, L) + 100, "no done"
            cycles.append(count)

    simulate(dut, driver, monitor, control)
    per_job, pos = [], 0
    for x, w, *_ in jobs:
        size = x.shape[0] * w.shape[1]
        per_job.append(torch.tensor(outputs[pos:pos + size]).reshape(x.shape[0], w.shape[1]))
        pos += size
    return per_job, cycles


def engine(lanes, hw_lanes=None):
    return LinearEngine(lanes=lanes, max_k=64, max_n=64, max_m=8,
                        weight_depth=64 * -(-64 // lanes), hw_lanes=hw_lanes)


@pytest.mark.parametrize("lanes, hw_lanes, shapes, idle, stall", [
    (4, None, [(2, 5, 6), (1, 1, 3)], 0.0, 0.0),
    (4, 1, [(3, 7, 10)], 0.3, 0.4),             # lanes 1-3 from lut_multiply
    (3, 0, [(2, 9, 7), (1, 2, 2)], 0.0, 0.0),   # all lanes lut_multiply, odd lane count
    (8, 5, [(2, 16, 20)], 0.3, 0.3),
    (1, 1, [(3, 1, 2), (2, 4, 1)], 0.5, 0.5),
    (8, 8, [(1, 64, 64)], 0.0, 0.0),
], ids=["l4", "l4-lut3-stalls", "l3-lut", "l8-lut3-stalls", "l1-stalls", "l8-64x64"])
def test_engine_matches_golden(lanes, hw_lanes, shapes, idle, stall):
    gen = torch.Generator().manual_seed(lanes * 100 + len(shapes))
    jobs = [random_job(gen, *s) for s in shapes]
    got, cycles = run_engine(engine(lanes, hw_lanes), jobs, idle=idle, stall=stall, seed=lanes)
    for (m, k, n), job, y in zip(shapes, jobs, got):
        expected = linear_mul(*job)
        assert torch.equal(y, expected), f"{m}x{k}x{n}: {(y != expected).sum()} wrong outputs"
    if idle == stall == 0.0:
        assert cycles == [linear_cycles(m, k, n, lanes) for m, k, n in shapes]


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_engine_cycle_model(lanes):
    """Unstalled cycle counts equal ``linear_cycles`` over shapes where the drain, the K loop
    or the row loop dominates (short K stalls the lanes on the holding register)."""
    shapes = [(1, 1, 1), (2, 1, lanes), (3, 2, 2 * lanes + 1), (1, 3, 5), (2, 4, 4),
              (1, 8, 13), (2, 17, 3), (2, lanes, 3 * lanes)]
    gen = torch.Generator().manual_seed(7 + lanes)
    jobs = [random_job(gen, *s) for s in shapes]
    got, cycles = run_engine(engine(lanes), jobs)
    assert cycles == [linear_cycles(m, k, n, lanes) for m, k, n in shapes]
    for job, y in zip(jobs, got):
        assert torch.equal(y, linear_mul(*job))


@pytest.mark.parametrize("params", [
    dict(lanes=1, max_k=1, max_n=1, max_m=1, weight_depth=1),
    dict(lanes=8, max_k=16, max_n=5, max_m=3, weight_depth=16),
    dict(lanes=4, max_k=7, max_n=9, max_m=2, weight_depth=21),
    dict(lanes=3, max_k=32, max_n=32, max_m=4, weight_depth=352, hw_lanes=2),
    dict(lanes=4, max_k=12, max_n=10, max_m=2, weight_depth=36, act_bits=6, weight_bits=4),
], ids=["all-1", "n<lanes", "odd", "l3-k32", "a6w4"])
def test_engine_at_its_maxima(params):
    """Jobs of the largest configured M, K and N (counters and memories used to their last
    entry, weight buffer full), and a smaller job after it; other data widths."""
    dut = LinearEngine(**params)
    big = (params["max_m"], params["max_k"], params["max_n"])
    small = (1, max(1, params["max_k"] // 2), max(1, params["max_n"] - 1))
    bits = dict(act_bits=dut.act_bits, weight_bits=dut.weight_bits)
    gen = torch.Generator().manual_seed(sum(big))
    jobs = [random_job(gen, *big, **bits), random_job(gen, *small, **bits)]
    got, cycles = run_engine(dut, jobs)
    for job, y in zip(jobs, got):
        assert torch.equal(y, linear_mul(*job, out_bits=dut.act_bits))
    assert cycles == [linear_cycles(*s, dut.lanes) for s in (big, small)]


# --- constructor errors ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(lanes=0), "lanes must be a positive integer, not 0"),
    (dict(lanes=2.0), "lanes must be a positive integer, not 2.0"),
    (dict(max_k=-1), "max_k must be a positive integer, not -1"),
    (dict(max_n="8"), "max_n must be a positive integer, not '8'"),
    (dict(act_bits=0), "act_bits must be a positive integer, not 0"),
    (dict(max_k=64, weight_depth=32), "weight_depth must be at least max_k (64), not 32"),
    (dict(lanes=4, hw_lanes=5), "hw_lanes must be an integer in [0, 4], not 5"),
    (dict(lanes=4, hw_lanes=-1), "hw_lanes must be an integer in [0, 4], not -1"),
])
def test_engine_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        LinearEngine(**kwargs)


def test_mem_write_signature_granularity_error():
    with pytest.raises(ValueError, match=re.escape(
            "granularity must divide the data width 12, not 5")):
        MemWriteSignature(8, 12, granularity=5)
    sig = MemWriteSignature(16, 32, granularity=8)
    assert sig.members["en"].shape == 4 and sig.depth == 16
