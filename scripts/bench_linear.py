#!/usr/bin/env python3
"""Benchmark of the int8 linear engine: cycles, MAC utilization, and per board resources/fmax.

Cycles come from :func:`amaformer.gen.cost.linear_cycles` (exact for unstalled streams; the
cocotb tests check it against the RTL), and two shapes are re-measured here in the Amaranth
simulator, outputs compared with the golden model. Resources and fmax come from real
bitstream builds of the engine alone (``EngineOnly``: engine ports on a shift register) with
the open toolchain.

    scripts/bench_linear.py --json bench_linear.json            # everything (a few minutes)
    scripts/bench_linear.py --no-build --json /tmp/b.json       # cycle model and simulation only

Keys of the JSON: ``shapes`` (one row per shape and lane count), ``min_utilization`` (lowest
utilization over shapes with K, N >= 64), ``sim_check``, ``boards`` (per board: the build
report plus ``gmacs_peak`` = lanes × fmax / 1e3), ``ice40_gmacs`` (the iCE40UP5K engine's
peak int8 throughput at its placed fmax: MACs per cycle × fmax / 1e9) and
``ice40_gmacs_sustained`` (the same times the utilization of a MiniLM-sized layer).
``min_utilization`` covers 4, 8 and 16 lanes; at 32 lanes a single-row 64×64 job spends
a fifth of its time in the drain of the last group (``min_utilization_by_lanes``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from amaformer.boards import build, format_report
from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.cost import linear_cycles, linear_macs

#: (M, K, N): small edge cases, square tiles, and all-MiniLM-L6-v2's layers on 32 tokens.
SHAPES = [(1, 1, 8), (4, 16, 16), (1, 64, 64), (16, 64, 64), (16, 128, 128), (8, 256, 64),
          (32, 384, 384), (32, 384, 1536), (32, 1536, 384)]
#: Lane counts of ``min_utilization``; 32 lanes are tabulated too (``min_utilization_by_lanes``).
LANES = [4, 8, 16]
EXTRA_LANES = [32]
#: Shape whose utilization scales the sustained throughput (MiniLM attention projection).
SUSTAINED_SHAPE = (32, 384, 384)

#: Engines built per board: lanes, DSP lanes (None: all), core clock (PLL) target, memory sizes.
#: iCE40UP5K: 16 lanes, 6 on SB_MAC16s (the requantizer takes the other 2), 10 multipliers in
#: logic, which fills about 97 % of the logic cells; the PLL target is just under the fmax
#: nextpnr reached for this engine with a 30 MHz target.
BOARD_BUILDS = {
    "icebreaker": dict(lanes=16, dsp_lanes=6, clock_mhz=29.25, max_k=256, max_n=512,
                       weight_depth=256),
    "ulx3s-85f": dict(lanes=32, dsp_lanes=None, clock_mhz=75, max_k=512, max_n=1536,
                      weight_depth=1024),
}


def shape_table():
    rows = []
    for lanes in LANES + EXTRA_LANES:
        for m, k, n in SHAPES:
            cycles = linear_cycles(m, k, n, lanes)
            macs = linear_macs(m, k, n)
            rows.append(dict(m=m, k=k, n=n, lanes=lanes, cycles=cycles, macs=macs,
                             utilization=round(macs / (lanes * cycles), 4)))
    return rows


def simulate(lanes, m, k, n, seed=0):
    """Run one job in the Amaranth simulator (always-valid input, always-ready output).

    Returns (cycles from start to done, outputs equal the golden model)."""
    from amaranth.sim import Simulator

    from amaformer.gen.golden import linear_mul
    from amaformer.gen.layers import random_layer
    from amaformer.hdl.linear_layout import pack_linear_weights, pack_requant_params
    from amaformer.hdl.linear import LinearEngine

    x, w, bias, mult, shift = random_layer(m, k, n, seed)
    expected = linear_mul(x, w, bias, mult, shift)
    depth = k * -(-n // lanes)
    dut = LinearEngine(lanes=lanes, max_k=k, max_n=n, max_m=m, weight_depth=max(depth, k))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {}

    async def bench(ctx):
        for addr, word in enumerate(pack_linear_weights(w, lanes)):
            ctx.set(dut.w_wr.addr, addr)
            ctx.set(dut.w_wr.data, word)
            ctx.set(dut.w_wr.en, (1 << lanes) - 1)
            await ctx.tick()
        ctx.set(dut.w_wr.en, 0)
        for addr, word in enumerate(pack_requant_params(bias, mult, shift)):
            ctx.set(dut.p_wr.addr, addr)
            ctx.set(dut.p_wr.data, word)
            ctx.set(dut.p_wr.en, 1)
            await ctx.tick()
        ctx.set(dut.p_wr.en, 0)
        ctx.set(dut.m, m)
        ctx.set(dut.k, k)
        ctx.set(dut.n, n)
        ctx.set(dut.start, 1)
        ctx.set(dut.y.ready, 1)
        xs = x.flatten().tolist()
        i, out, cycles = 0, [], 0
        while True:
            if i < len(xs):
                ctx.set(dut.x.valid, 1)
                ctx.set(dut.x.payload, xs[i])
            else:
                ctx.set(dut.x.valid, 0)
            took = ctx.get(dut.x.ready) and i < len(xs)
            if ctx.get(dut.y.valid):
                out.append(ctx.get(dut.y.payload))
            done = ctx.get(dut.done)
            await ctx.tick()
            ctx.set(dut.start, 0)
            i += bool(took)
            if done:
                break
            cycles += 1
        result["cycles"] = cycles
        result["ok"] = len(out) == m * n and torch.equal(torch.tensor(out).reshape(m, n),
                                                          expected)

    sim.add_testbench(bench)
    sim.run()
    return result["cycles"], result["ok"]


def board_build(board, params, out_root):
    lin = LinearConfig(lanes=params["lanes"], dsp_lanes=params["dsp_lanes"],
                       max_k=params["max_k"], max_n=params["max_n"], max_m=4096,
                       weight_depth=params["weight_depth"])
    cfg = AcceleratorConfig(name="engine", board=board, clock_mhz=params["clock_mhz"],
                            linear=lin)

    def progress(stage, elapsed, finished):
        if finished:
            print(f"    {board}: {stage} {elapsed:.0f} s", file=sys.stderr, flush=True)
    report = build(cfg, board, Path(out_root) / board, progress, design="engine")
    report["gmacs_peak"] = round(report["lanes"] * report["fmax_mhz"] / 1e3, 4)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT.json", help="write the results here")
    parser.add_argument("--no-build", action="store_true",
                        help="skip the bitstream builds (resources and fmax)")
    parser.add_argument("--boards", default=",".join(BOARD_BUILDS),
                        help=f"boards to build, comma-separated (default {','.join(BOARD_BUILDS)})")
    parser.add_argument("--build-dir", default="build/bench_linear",
                        help="build folder (default build/bench_linear)")
    args = parser.parse_args(argv)

    rows = shape_table()
    print(f"{'M':>4} {'K':>5} {'N':>5} {'lanes':>5} {'cycles':>9} {'util':>7}")
    for r in rows:
        print(f"{r['m']:>4} {r['k']:>5} {r['n']:>5} {r['lanes']:>5} {r['cycles']:>9} "
              f"{r['utilization']:>7.3f}")
    big = [r for r in rows if r["k"] >= 64 and r["n"] >= 64]
    by_lanes = {lanes: min(r["utilization"] for r in big if r["lanes"] == lanes)
                for lanes in LANES + EXTRA_LANES}
    min_util = min(by_lanes[lanes] for lanes in LANES)
    print(f"min_utilization (K, N >= 64; lanes {', '.join(map(str, LANES))}): {min_util:.4f}")
    print("  by lanes: " + ", ".join(f"{lanes}: {u:.4f}" for lanes, u in by_lanes.items()))

    sim_check = []
    for lanes, m, k, n in [(8, 2, 64, 64), (4, 3, 5, 10)]:
        t0 = time.monotonic()
        cycles, ok = simulate(lanes, m, k, n)
        model = linear_cycles(m, k, n, lanes)
        sim_check.append(dict(lanes=lanes, m=m, k=k, n=n, sim_cycles=cycles,
                              model_cycles=model, outputs_match_golden=ok,
                              seconds=round(time.monotonic() - t0, 1)))
        print(f"simulated {m}x{k}x{n} on {lanes} lanes: {cycles} cycles (model {model}), "
              f"outputs {'match' if ok else 'DIFFER from'} the golden model")

    result = dict(shapes=rows, min_utilization=min_util, min_utilization_by_lanes=by_lanes,
                  sim_check=sim_check, boards={})
    if not args.no_build:
        for board in [b for b in args.boards.split(",") if b]:
            report = board_build(board, BOARD_BUILDS[board], args.build_dir)
            result["boards"][board] = report
            print(format_report(report))
        ice = result["boards"].get("icebreaker")
        if ice:
            m, k, n = SUSTAINED_SHAPE
            util = linear_macs(m, k, n) / (ice["lanes"] * linear_cycles(m, k, n, ice["lanes"]))
            result["ice40_gmacs"] = ice["gmacs_peak"]
            result["ice40_gmacs_sustained"] = round(ice["gmacs_peak"] * util, 4)
            print(f"ice40_gmacs: {result['ice40_gmacs']} ({ice['lanes']} MAC/cycle at "
                  f"{ice['fmax_mhz']} MHz; sustained on {m}x{k}x{n}: "
                  f"{result['ice40_gmacs_sustained']}); MARLANN: 0.46")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    ok = all(s["outputs_match_golden"] and s["sim_cycles"] == s["model_cycles"]
             for s in sim_check)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
