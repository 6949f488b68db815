#!/usr/bin/env python3
"""Speed of the simulated device on its two backends: Amaranth's simulator and Verilator.

On the default iCEBreaker design (or ``--config``), in one run:

* **build**: the Verilator model built from scratch in an empty cache (Verilog, Verilator,
  C++ compile of the model and of Verilator's runtime), wall seconds;
* **cached start**: a fresh Python process opening a second device on the same design (cache
  lookup, library load, ``IDENT``), wall seconds from the call to a ready
  :class:`~amaformer.host.Device` (interpreter start and imports reported apart);
* **speed**: the same job (``--shape``, random int8 operands, through the host driver) on both
  backends (``--repeat`` times on Verilator, where one run is too short to time alone);
  simulated cycles per second of wall time spent simulating (and per CPU second of the
  simulating thread, steadier on a shared machine); the two backends must agree on every
  output, on the job cycle counts and on the status;
* **layer**: the demo's whole layer (all-MiniLM-L6-v2 layer 0's query projection, 384×384, on
  the demo sentence's 16 tokens; random operands if the model package is missing) on Verilator.

Writes ``--json`` with keys ``cycles_per_second`` (per backend), ``speedup``,
``build_seconds``, ``cached_start_seconds``, ``layer_384`` and the details, and prints a table.

Usage::

    python scripts/bench_sim.py [--json bench_sim.json] [--shape 4x64x32] [--config C.toml]
                                [--cache-dir DIR] [--no-layer] [--repeat 20]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
from amaformer.gen.config import AcceleratorConfig, load_config
from amaformer.host import Device
from amaformer.host.sim import make_sim_transport
cfg = load_config(sys.argv[2]) if sys.argv[2] else AcceleratorConfig()
t1 = time.perf_counter()
tr = make_sim_transport(cfg, "verilator", cache_dir=sys.argv[1], progress=False)
Device(tr, expect=cfg)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "start": t2 - t1, "built": tr.built}))
"""


def operands(m, k, n, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-128, 128, (m, k), generator=g),
            torch.randint(-128, 128, (k, n), generator=g),
            torch.randint(-3000, 3000, (n,), generator=g),
            torch.randint(1 << 14, 1 << 15, (n,), generator=g),
            torch.randint(14, 22, (n,), generator=g))


def run_job(tr, config, ops):
    """Run one linear layer through the driver on ``tr``; figures of the job alone."""
    import torch
    from amaformer.host import Device
    dev = Device(tr, expect=config)
    c0, s0, p0 = tr.cycles, tr.sim_seconds, tr.sim_cpu_seconds
    t0 = time.perf_counter()
    y = dev.unit("linear").linear(*ops, as_tensor=True).to(torch.int64)
    wall = time.perf_counter() - t0
    cycles, sim, cpu = tr.cycles - c0, tr.sim_seconds - s0, tr.sim_cpu_seconds - p0
    return {"y": y, "job_cycles": list(dev.job_cycles), "status": repr(dev.status()),
            "cycles": cycles, "sim_seconds": sim, "wall_seconds": wall,
            "cycles_per_second": cycles / sim, "cycles_per_cpu_second": cycles / max(cpu, 1e-9)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="bench_sim.json", help="where to write the figures")
    ap.add_argument("--config", default=None, help="accelerator config TOML (default: default)")
    ap.add_argument("--shape", default="4x64x32",
                    help="MxKxN of the job run on both backends (default 4x64x32)")
    ap.add_argument("--cache-dir", default=None,
                    help="build cache to measure in (default: a fresh temporary one, so the "
                         "build is measured from scratch)")
    ap.add_argument("--no-layer", action="store_true", help="skip the 384x384x16 layer")
    ap.add_argument("--repeat", type=int, default=20,
                    help="runs of the job on Verilator, whose speed is taken over all of them "
                         "(one run takes milliseconds: too short to time alone; default 20)")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from amaformer.gen.config import AcceleratorConfig, load_config
    from amaformer.host.sim import SimTransport
    from amaformer.host.verilator import VerilatorTransport

    console = Console()
    config = load_config(args.config) if args.config else AcceleratorConfig()
    m, k, n = (int(v) for v in args.shape.lower().split("x"))
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="amaformer-bench-sim-")
        cache = tmp.name
    else:
        cache = args.cache_dir
    out = {"config": config.name, "board": config.board, "shape": [m, k, n]}

    # one-off build, then a cached start in a fresh process
    t0 = time.perf_counter()
    vtr = VerilatorTransport(config, cache_dir=cache, progress=True)
    out["build_seconds"] = round(time.perf_counter() - t0, 2)
    out["built"] = vtr.built
    r = subprocess.run([sys.executable, "-c", START_SNIPPET, cache, args.config or ""],
                       capture_output=True, text=True, check=True)
    start = json.loads(r.stdout)
    out["cached_start_seconds"] = round(start["start"], 3)
    out["cached_start_imports_seconds"] = round(start["imports"], 3)
    assert not start["built"], "the second start rebuilt the design"

    # the same job on both backends
    ops = operands(m, k, n)
    console.print(f"job {m}x{k}x{n} on the Amaranth simulator (slow) ...")
    runs = {"amaranth": run_job(SimTransport(config), config, ops),
            "verilator": run_job(vtr, config, ops)}
    a, v = runs["amaranth"], runs["verilator"]
    for _ in range(args.repeat - 1):            # the same job again: a longer span to time
        again = run_job(vtr, config, ops)
        assert torch.equal(again["y"], v["y"]) and again["cycles"] == v["cycles"]
        for key in ("sim_seconds", "wall_seconds"):
            v[key] += again[key]
        v["cpu_seconds"] = v.get("cpu_seconds", v["cycles"] / v["cycles_per_cpu_second"]) \
            + again["cycles"] / again["cycles_per_cpu_second"]
        v["total_cycles"] = v.get("total_cycles", v["cycles"]) + again["cycles"]
    if args.repeat > 1:
        v["cycles_per_second"] = v["total_cycles"] / v["sim_seconds"]
        v["cycles_per_cpu_second"] = v["total_cycles"] / v["cpu_seconds"]
    out["verilator_repeats"] = args.repeat
    same = (torch.equal(a["y"], v["y"]) and a["job_cycles"] == v["job_cycles"]
            and a["status"] == v["status"] and a["cycles"] == v["cycles"])
    out["identical"] = bool(same)
    out["job_cycles"] = a["job_cycles"]
    out["simulated_cycles"] = {b: r["cycles"] for b, r in runs.items()}
    out["sim_seconds"] = {b: round(r["sim_seconds"], 4) for b, r in runs.items()}
    out["cycles_per_second"] = {b: round(r["cycles_per_second"]) for b, r in runs.items()}
    out["cycles_per_cpu_second"] = {b: round(r["cycles_per_cpu_second"])
                                    for b, r in runs.items()}
    out["speedup"] = round(v["cycles_per_second"] / a["cycles_per_second"], 1)
    out["speedup_cpu"] = round(v["cycles_per_cpu_second"] / a["cycles_per_cpu_second"], 1)

    # the demo's whole layer on the fast backend
    if not args.no_layer:
        try:
            from amaformer.gen.layers import compile_minilm
            prog, _, x = compile_minilm("query", 384)
            lops = (prog.quantize_input(x), prog.w, prog.bias, prog.mult, prog.shift)
            what = "all-MiniLM-L6-v2 layer 0 query"
        except Exception as e:          # no model package: the same shape, random
            console.print(f"(MiniLM layer unavailable: {e}; random operands)")
            lops, what = operands(16, 384, 384, 1), "random"
        lay = run_job(vtr, config, lops)
        out["layer_384"] = {"what": what, "shape": [int(lops[0].shape[0]), 384, 384],
                            "cycles": lay["cycles"], "jobs": len(lay["job_cycles"]),
                            "sim_seconds": round(lay["sim_seconds"], 2),
                            "wall_seconds": round(lay["wall_seconds"], 2),
                            "cycles_per_second": round(lay["cycles_per_second"]),
                            "cycles_per_cpu_second": round(lay["cycles_per_cpu_second"])}
    vtr.close()
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")

    table = Table(title=f"simulated device, {config.name} ({config.board}), job {m}x{k}x{n}")
    table.add_column("backend")
    table.add_column("cycles/s (wall)", justify="right")
    table.add_column("cycles/s (CPU)", justify="right")
    table.add_column("cycles per run", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("seconds", justify="right")
    for b in ("amaranth", "verilator"):
        table.add_row(b, f"{out['cycles_per_second'][b]:,}", f"{out['cycles_per_cpu_second'][b]:,}",
                      f"{out['simulated_cycles'][b]:,}",
                      str(args.repeat if b == "verilator" else 1), f"{out['sim_seconds'][b]:.4f}")
    console.print(table)
    console.print(f"speedup {out['speedup']:,}× (CPU time: {out['speedup_cpu']:,}×); outputs, "
                  f"job cycles and status identical: {out['identical']}")
    console.print(f"build from scratch {out['build_seconds']} s; cached start "
                  f"{out['cached_start_seconds']} s (+ {out['cached_start_imports_seconds']} s "
                  f"interpreter imports)")
    if "layer_384" in out:
        lay = out["layer_384"]
        console.print(f"{lay['what']} {lay['shape'][0]}x384x384 on Verilator: "
                      f"{lay['cycles']:,} cycles in {lay['jobs']} jobs, {lay['sim_seconds']} s "
                      f"simulating, {lay['wall_seconds']} s wall")
    console.print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
