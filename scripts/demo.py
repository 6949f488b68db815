#!/usr/bin/env python3
"""A real all-MiniLM-L6-v2 layer on the simulated accelerator, through the host driver.

Runs layer 0's attention query projection (``Linear(384, 384)``) on the hidden states of a real
sentence: the model's embedding output, computed here from the packaged weights (offline, no
model hub). The layer is compiled to int8 (per-output-channel weight scales, calibrated
activation scales; :mod:`amaformer.gen.compile`), loaded into the simulated device with
:class:`amaformer.host.Device` (the same protocol bytes a board gets over its UART), and the
device output is compared with

* the bit-exact golden model :func:`amaformer.gen.golden.linear_mul` (must be equal), and
* float PyTorch (``torch.nn.Linear``): relative error ``|y_dev·s_y − y_float| / |y_float|``.

The simulated device is the configuration's top compiled with Verilator (``--backend auto``,
the default: built once per design, then cached; about a second for the whole layer), or, when
the C++ toolchain is missing or fails (one line says why), Amaranth's Python simulator, a few
thousand cycles per second: then only the first 64 output columns run unless ``--cols`` says
otherwise (384 columns take minutes there).

It prints those, the device cycle count (sum over the jobs the driver tiled the layer into),
the backend and its speed, and the bitstream's LUT use and fmax from the build report, and
writes them to ``--json`` (with ``sim_backend``, ``sim_cycles``, ``sim_seconds`` and
``cycles_per_second``).

Usage::

    python scripts/demo.py [--config CONFIG.toml] [--report out/demo/icebreaker/report.json]
                           [--json demo.json] [--cols 384] [--sentence "..."]
                           [--backend auto|verilator|amaranth] [--no-modes]
"""

import argparse
import json
import sys
import time
from pathlib import Path


def read_report(path):
    """(lut, lut_total, fmax_mhz) from a build report (``boards.build``'s report.json)."""
    if path is None or not Path(path).exists():
        return None, None, None
    rep = json.loads(Path(path).read_text())
    return rep.get("lut"), rep.get("lut_total"), rep.get("fmax_mhz")


def main(argv=None):
    from amaformer.gen.layers import MINILM_SENTENCE

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="accelerator config TOML (default: the default config)")
    ap.add_argument("--report", help="build report.json of the bitstream (LUT, fmax)")
    ap.add_argument("--json", default="demo.json", help="where to write the figures")
    ap.add_argument("--cols", type=int, default=None,
                    help="output columns of the 384×384 query projection to run (1-384; "
                         "default all 384 on Verilator, 64 on the Amaranth simulator)")
    ap.add_argument("--backend", choices=["auto", "verilator", "amaranth"], default=None,
                    help="simulated device: 'auto' (default, or $AMAFORMER_SIM_BACKEND): "
                         "Verilator, else Amaranth's simulator; 'verilator': fail instead of "
                         "falling back; 'amaranth': the Python simulator")
    ap.add_argument("--sentence", default=MINILM_SENTENCE)
    ap.add_argument("--no-modes", action="store_true",
                    help="skip the table of the three weight encodings (mul, shift, bcq)")
    args = ap.parse_args(argv)

    from amaformer.gen.config import AcceleratorConfig, LinearConfig, load_config
    from amaformer.gen.layers import compile_minilm
    from amaformer.host.layer_run import open_device, run_layer

    config = load_config(args.config) if args.config else AcceleratorConfig()
    if config.linear.mode != "mul":
        config = config.replace(linear=LinearConfig())
        print("note: the demo runs the int8 'mul' engine (default linear settings)")
    if args.cols is not None and not 1 <= args.cols <= 384:
        sys.exit(f"error: --cols must be in [1, 384], not {args.cols}")

    from amaformer.host.verilator import VerilatorUnavailable
    t0 = time.perf_counter()
    try:
        dev = open_device("sim", config, backend=args.backend)
    except VerilatorUnavailable as e:               # --backend verilator only
        sys.exit(f"error: {e}")
    sim = dev.transport
    start = time.perf_counter() - t0
    cols = args.cols or (384 if sim.backend == "verilator" else 64)
    print(f"sim      {sim.backend} backend"
          + (f" (ready in {start:.1f} s{', built now' if sim.built else ', cached build'})"
             if sim.backend == "verilator" else " (Amaranth's Python simulator)"))
    prog, layer, x = compile_minilm("query", cols, args.sentence)
    x_q = prog.quantize_input(x)
    print(f"layer    all-MiniLM-L6-v2 layer 0 attention query, Linear(384, 384), columns "
          f"0-{cols - 1}; {x.shape[0]} tokens of {args.sentence!r}")
    t1 = time.perf_counter()
    res = run_layer(dev, x_q, prog.w, prog.bias, prog.mult, prog.shift, float_layer=layer,
                    float_x=x, out_scale=prog.out_scale)
    layer_wall = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    lut, lut_total, fmax = read_report(args.report)

    print(f"device   {dev.unit('linear').info.lanes} lanes, {res.jobs} jobs, {res.cycles} cycles "
          f"({sim.cycles} simulated in total; the layer took {layer_wall:.1f} s wall, "
          f"{wall:.0f} s in all with loading the model)")
    print(f"sim      {sim.summary()}")
    print(f"golden   device output == bit-exact golden model: {res.bit_exact}")
    print(f"float    relative error vs torch.nn.Linear: {res.rel_err_vs_float:.4f} "
          f"(cosine {res.cosine_vs_float:.5f})")
    if lut is not None:
        print(f"build    {lut} / {lut_total} LUT, fmax {fmax} MHz ({args.report})")
    else:
        print("build    no build report given (--report): LUT and fmax unknown")
    figures = res.to_dict()
    figures.update({
        "lut": lut, "lut_total": lut_total, "fmax_mhz": fmax, "tokens": int(x.shape[0]),
        "layer": "encoder.layer.0.attention.self.query", "k": 384, "n": cols,
        "lanes": dev.unit("linear").info.lanes, "simulated_cycles": sim.cycles,
        "wall_seconds": round(wall, 1), "layer_wall_seconds": round(layer_wall, 2),
        "sim_start_seconds": round(start, 2),
    })
    if not args.no_modes:
        from amaformer.host.layer_run import compare_encodings
        rows = compare_encodings(backend="auto" if sim.backend == "verilator" else "amaranth")
        print("\nweight encodings on the simulated device (random float layer 4×64×40):")
        print(f"{'mode':<6} {'lanes':>5} {'peak MAC-eq/cycle':>17} {'cycles':>7} "
              f"{'MAC-eq/cycle':>12} {'bit-exact':>9} {'rel. error vs float':>19}")
        for r in rows:
            print(f"{r['mode']:<6} {r['lanes']:>5} {r['peak_macs_per_cycle']:>17} "
                  f"{r['cycles']:>7} {r['macs_per_cycle']:>12} {str(r['bit_exact']):>9} "
                  f"{r['rel_error']:>19.4f}")
        figures["modes"] = rows
    bit_exact = res.bit_exact and all(r["bit_exact"] for r in figures.get("modes", []))
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if bit_exact else 1


if __name__ == "__main__":
    sys.exit(main())
