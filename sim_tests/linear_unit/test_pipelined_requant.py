"""The linear engine's six-stage requantizer against the numerics (the three-stage one is tested
in test_linear_amaranth.py): every shift, the rails, random values, stalls on the output, and
many thousands of vectors aimed at the edges of its window shifter (ties, rails, ``t`` near
powers of two, extreme fields), with gaps on the input and back-pressure on the output."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from amaformer.gen.numerics import requantize
from amaformer.hdl.linear import PipelinedRequantizer

from conftest import requantize_stream


def run(acc_width, cases, stall, seed=0):
    dut = PipelinedRequantizer(acc_width, out_bits=8)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rnd = random.Random(seed)
    got = []

    async def feed(ctx):
        for acc, bias, mult, shift in cases:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.acc, acc)
            ctx.set(dut.i.payload.params, {"bias": bias, "mult": mult, "shift": shift})
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def drain(ctx):
        while len(got) < len(cases):
            ready = rnd.random() >= stall
            ctx.set(dut.o.ready, ready)
            await ctx.tick()
            if ready and ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))

    sim.add_testbench(feed)
    sim.add_testbench(drain)
    sim.run()
    return got


def reference(cases, out_bits=8):
    acc, bias, mult, shift = (torch.tensor(c, dtype=torch.int64) for c in zip(*cases))
    return requantize(acc + bias, mult, shift, out_bits).tolist()


@pytest.mark.parametrize("acc_width, stall", [(25, 0.0), (25, 0.4), (40, 0.3)])
def test_matches_numerics(acc_width, stall):
    g = random.Random(acc_width)
    amax, bmax = (1 << (acc_width - 1)) - 1, (1 << 31) - 1
    cases = [(g.randint(-amax - 1, amax), g.randint(-bmax - 1, bmax), g.randint(0, 65535), s)
             for s in range(64) for _ in range(3)]           # every shift, full ranges
    cases += [(a, 0, 1, 1) for a in (255, 254, 253, -255, -256, -257, -258, -259)]  # rails
    cases += [(amax, bmax, 65535, 0), (-amax - 1, -bmax - 1, 65535, 0),
              (amax, bmax, 65535, 63), (-amax - 1, -bmax - 1, 65535, 63), (-1, 0, 1, 63)]
    for _ in range(200):                                     # in range after requantization
        s = g.randint(26, 33)
        cases.append((g.randint(-(1 << 20), 1 << 20), g.randint(-5000, 5000),
                      g.randint(1 << 14, 1 << 15), s))
    expected = reference(cases)
    assert 127 in expected and -128 in expected and len(set(expected)) > 60
    assert run(acc_width, cases, stall) == expected


def test_latency():
    dut = PipelinedRequantizer(25)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload.acc, -3)
        ctx.set(dut.i.payload.params, {"bias": 0, "mult": 1, "shift": 1})
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, 10):
            if ctx.get(dut.o.valid):
                seen.setdefault("cycles", cycle)
                seen.setdefault("y", ctx.get(dut.o.payload))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert seen == {"cycles": PipelinedRequantizer.LATENCY, "y": -1}   # -1.5 rounds up to -1


# --- many vectors aimed at the window shifter's edges ----------------------------------------

def split_sum(s, acc_width, rng):
    """An ``(acc, bias)`` pair with ``acc + bias == s``, each within its signed range, or
    ``None`` when ``s`` is out of reach."""
    amin, amax = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    bmin, bmax = -(1 << 31), (1 << 31) - 1
    lo, hi = max(amin, s - bmax), min(amax, s - bmin)
    if lo > hi:
        return None
    acc = rng.randint(lo, hi)
    return acc, s - acc


def edge_cases(acc_width, count, seed, out_bits=8):
    """``count`` (acc, bias, mult, shift) tuples: the extremes of every field at shifts 0, 1, 62
    and 63, then sums ``s`` placed so that ``t = (2·s·mult) >> shift`` lands on the edges that
    matter to the hardware: rounding ties, the two rails (``t`` in -259..-255 and 253..256 for
    8-bit outputs), and powers of two around the kept window (``|t|`` near ``2^j``, up to the
    top of ``2p``)."""
    rail = 1 << out_bits
    rng = random.Random(seed)
    amin, amax = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    bmin, bmax = -(1 << 31), (1 << 31) - 1
    smin, smax = amin + bmin, amax + bmax
    cases = [(a, b, mult, shift) for a in (amin, amax, 0, -1, 1) for b in (bmin, bmax, 0)
             for mult in (0, 1, 65535, 1 << 15) for shift in (0, 1, 62, 63)]
    while len(cases) < count:
        mult = rng.choice([1, 2, 3, 65535, 65534, 1 << 15, rng.randint(1, 65535),
                           rng.randint(1 << 14, (1 << 15) - 1)])
        shift = rng.choice([0, 1, 62, 63, rng.randint(0, 63), rng.randint(0, 63)])
        kind = rng.randrange(4)
        if kind == 0:       # rails and round-half-up ties next to them
            t = rng.choice([-rail - 3, -rail - 2, -rail - 1, -rail, -rail + 1, -1, 0, 1,
                            rail - 3, rail - 2, rail - 1, rail])
        elif kind == 1:     # just inside / outside the window, any magnitude
            j = rng.randint(0, 50)
            t = rng.choice([1, -1]) * (1 << j) + rng.randint(-2, 1)
        elif kind == 2:     # anything
            t = None
        else:               # an exact tie: 2·s·mult ≡ 2^(shift-1)·2 (mod 2^(shift+1))
            t = rng.randint(-300, 300)
        if t is None:
            s = rng.randint(smin, smax)
        else:
            # s·mult ≈ t·2^(shift-1), off by a few units of s
            target = t * (1 << shift) // 2 if shift else t // 2
            s = target // mult + rng.randint(-2, 2)
            if kind == 3 and shift >= 1 and mult % 2:
                # solve s·mult ≡ 2^(shift-1) (mod 2^shift) exactly: mult is odd
                mod = 1 << shift
                r = ((1 << (shift - 1)) * pow(mult, -1, mod)) % mod
                s = s - (s - r) % mod
        if not smin <= s <= smax:
            continue
        pair = split_sum(s, acc_width, rng)
        if pair is not None:
            cases.append((*pair, mult, shift))
    return cases


@pytest.mark.parametrize("acc_width, out_bits, count, idle, stall", [
    (24, 8, 12000, 0.0, 0.0), (25, 8, 3000, 0.2, 0.4), (33, 8, 6000, 0.0, 0.1),
    (40, 8, 3000, 0.1, 0.3), (25, 4, 2000, 0.0, 0.2), (30, 12, 2000, 0.0, 0.2)])
def test_edges_match_numerics(acc_width, out_bits, count, idle, stall):
    cases = edge_cases(acc_width, count, seed=acc_width, out_bits=out_bits)
    expected = reference(cases, out_bits)
    # the vectors reach both rails, ties of both signs and every shift
    ties = [(a + b) * m % (1 << s) == 1 << (s - 1) for a, b, m, s in cases if s]
    rails = {(1 << (out_bits - 1)) - 1, -(1 << (out_bits - 1))}
    assert rails <= set(expected) and sum(ties) > count // 20
    assert {c[3] for c in cases} == set(range(64))
    dut = PipelinedRequantizer(acc_width, out_bits=out_bits)
    got = requantize_stream(dut, cases, idle=idle, stall=stall)
    bad = [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]
    assert not bad, f"{len(bad)} mismatches (acc, bias, mult, shift), got, expected: {bad[:5]}"
