"""The linear engine's six-stage requantizer against the numerics (the three-stage one is tested
in test_linear_amaranth.py): every shift, the rails, random values, stalls on the output."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from amaformer.gen.numerics import requantize
from amaformer.hdl.linear import PipelinedRequantizer


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


def reference(cases):
    acc, bias, mult, shift = (torch.tensor(c, dtype=torch.int64) for c in zip(*cases))
    return requantize(acc + bias, mult, shift, 8).tolist()


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
