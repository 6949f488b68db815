#!/usr/bin/env python3
"""A real all-MiniLM-L6-v2 layer on the simulated accelerator, through the host driver.

Runs layer 0's attention query projection (``Linear(384, 384)``; by default its first 64
output columns, i.e. heads 0-1, because Amaranth's simulator runs a few thousand cycles per
second; ``--cols 384`` runs the whole layer in a few minutes) on the hidden states of a real
sentence: the model's embedding output, computed here from the packaged weights (offline, no
model hub). The layer is compiled to int8 (per-output-channel weight scales, calibrated
activation scales; :mod:`amaformer.gen.compile`), loaded into the simulated device with
:class:`amaformer.host.Device` over :class:`amaformer.host.SimTransport` (the same protocol bytes
a board gets over its UART), and the device output is compared with

* the bit-exact golden model :func:`amaformer.gen.golden.linear_mul` (must be equal), and
* float PyTorch (``torch.nn.Linear``): relative error ``|y_dev·s_y − y_float| / |y_float|``.

It prints those, the device cycle count (sum over the jobs the driver tiled the layer into),
and the bitstream's LUT use and fmax from the build report, and writes them to ``--json``.

Usage::

    python scripts/demo.py [--config CONFIG.toml] [--report out/demo/icebreaker/report.json]
                           [--json demo.json] [--cols 128] [--sentence "..."]
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
    from amaformer.gen.run import MINILM_SENTENCE

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="accelerator config TOML (default: the default config)")
    ap.add_argument("--report", help="build report.json of the bitstream (LUT, fmax)")
    ap.add_argument("--json", default="demo.json", help="where to write the figures")
    ap.add_argument("--cols", type=int, default=64,
                    help="output columns of the 384×384 query projection to run (1-384)")
    ap.add_argument("--sentence", default=MINILM_SENTENCE)
    ap.add_argument("--no-modes", action="store_true",
                    help="skip the table of the three weight encodings (mul, shift, bcq)")
    args = ap.parse_args(argv)

    from amaformer.gen.config import AcceleratorConfig, LinearConfig, load_config
    from amaformer.gen.run import compile_minilm, open_device, run_layer

    config = load_config(args.config) if args.config else AcceleratorConfig()
    if config.linear.mode != "mul":
        config = config.replace(linear=LinearConfig())
        print("note: the demo runs the int8 'mul' engine (default linear settings)")
    if not 1 <= args.cols <= 384:
        sys.exit(f"error: --cols must be in [1, 384], not {args.cols}")

    t0 = time.perf_counter()
    prog, layer, x = compile_minilm("query", args.cols, args.sentence)
    x_q = prog.quantize_input(x)
    print(f"layer    all-MiniLM-L6-v2 layer 0 attention query, Linear(384, 384), columns "
          f"0-{args.cols - 1}; {x.shape[0]} tokens of {args.sentence!r}")
    dev = open_device("sim", config)
    res = run_layer(dev, x_q, prog.w, prog.bias, prog.mult, prog.shift, float_layer=layer,
                    float_x=x, out_scale=prog.out_scale)
    wall = time.perf_counter() - t0
    lut, lut_total, fmax = read_report(args.report)

    sim = dev.transport
    print(f"device   {dev.unit('linear').info.lanes} lanes, {res.jobs} jobs, {res.cycles} cycles "
          f"({sim.cycles} simulated in total, {wall:.0f} s wall)")
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
        "layer": "encoder.layer.0.attention.self.query", "k": 384, "n": args.cols,
        "lanes": dev.unit("linear").info.lanes, "simulated_cycles": sim.cycles, "wall_seconds": round(wall, 1),
    })
    if not args.no_modes:
        from amaformer.gen.run import compare_encodings
        rows = compare_encodings()
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
