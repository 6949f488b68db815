#!/usr/bin/env python3
"""Whole-model benchmark of all-MiniLM-L6-v2 through the compiler (:mod:`amaformer.gen.program`).

Accuracy (keys ``cosine_min[encoding]``, ``cosine_mean[encoding]``, ``mult_free[encoding]``):
the sentence-embedding cosine against float PyTorch (float64) over held-out sentences (32 by
default, none used for calibration), computed through the device's bit-exact golden models with
the scales the compiler uses (``gen.program.DEFAULT_NUMERICS``, K chunks of the unit's
``max_k``); one entry per weight-encoding set of ``gen.program.ENCODING_SETS``.

Speed on the whole-model configuration (``gen.minilm_presets.minilm_config()``: linear unit 8 lanes
``mul`` + softmax attention unit 4 lanes, ULX3S-85F at 25 MHz): device cycles for one sentence
of 16 and of 128 tokens from the units' exact cycle models composed over the program
(``gen.program.program_cycles``, which the suite checks against simulation), and, with
``--device-run``, one 16-token sentence measured on the simulated device (cycles, bytes moved,
simulation wall clock). Utilization: useful linear MACs / (lanes × linear-unit busy cycles).

Usage::

    python scripts/bench_model.py --json bench_model.json [--sentences 32] [--device-run]
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from amaformer.gen.model import capture, load_minilm, load_sentences
from amaformer.gen.model.exact import calibrate, evaluate, reference
from amaformer.gen.minilm_presets import minilm_config
from amaformer.gen.program import (DEFAULT_NUMERICS, ENCODING_SETS, compile_program,
                                   program_cycles)
from amaformer.hdl.top import DEFAULT_ACT_DEPTH, DEFAULT_OUT_DEPTH


def _speed(program, tokens, act_depth):
    cfg = program.config
    layers = program_cycles(program, [tokens], act_depth=act_depth, out_depth=DEFAULT_OUT_DEPTH)
    lin = sum(c["linear"] for c in layers)
    att = sum(c["attention"] for c in layers)
    macs = sum(c["macs"] for c in layers)
    clk = 25e6
    return {"tokens": tokens, "act_depth": act_depth,
                     "cycles": lin + att, "linear_cycles": lin, "attention_cycles": att,
                     "cycles_per_layer": [c["linear"] + c["attention"] for c in layers],
                     "linear_macs": macs,
                     "attention_macs": sum(c["attention_macs"] for c in layers),
                     "utilization_linear": round(macs / (cfg.linear.lanes * lin), 4),
                     "est_board_seconds_25mhz": round((lin + att) / clk, 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--sentences", type=int, default=32, help="held-out sentences (default 32)")
    ap.add_argument("--encodings", default=",".join(ENCODING_SETS),
                    help="comma-separated keys of gen.program.ENCODING_SETS")
    ap.add_argument("--device-run", action="store_true",
                    help="also run one 16-token sentence on the simulated device (Verilator)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    lm = load_minilm()
    graph = capture(lm.model)
    calib, held = load_sentences()
    if not 1 <= args.sentences <= len(held):
        ap.error(f"--sentences must be in [1, {len(held)}], not {args.sentences}")
    calib_ids = [lm.ids(s) for s in calib]
    cfg = minilm_config()
    out = {"model": "all-MiniLM-L6-v2", "board": cfg.board, "clock_mhz": 25.0,
           "arithmetic": "bit-exact golden models of the device units; host ops float64",
           "numerics": "gen.program.DEFAULT_NUMERICS, k_chunk = linear.max_k",
           "sentences": args.sentences, "cosine_min": {}, "cosine_mean": {}, "mult_free": {},
           "layer_cosines": {}}
    # --- speed ------------------------------------------------------------------------------
    program = compile_program(lm.model, cfg, calib_ids)          # once, for both lengths
    s16 = _speed(program, 16, DEFAULT_ACT_DEPTH)
    # 128 tokens: Q, K, V of one attention job take 3·12·128·32 = 147,456 bytes, so the
    # activation memory must grow to 256 KB (64 of the ULX3S-85F's 208 block RAMs)
    s128 = _speed(program, 128, 256 * 1024)
    out["speed"] = {"16": s16, "128": s128}
    if args.device_run:
        from amaformer.host.model_run import run_minilm
        from amaformer.host.layer_run import open_device
        sentence = next(s for s in held if len(lm.ids(s)) == 16) if any(
            len(lm.ids(s)) == 16 for s in held) else held[0]
        dev = open_device("sim", cfg, timeout=10, retries=0, backend="verilator")
        run = run_minilm([sentence], cfg, dev)
        run.pop("trace")
        out["device_run"] = run
    # --- accuracy ---------------------------------------------------------------------------
    num = replace(DEFAULT_NUMERICS, k_chunk=cfg.linear.max_k)
    cal = calibrate(graph, calib_ids)
    ids = [lm.ids(s) for s in held[:args.sentences]]
    refs = [reference(graph, i) for i in ids]
    path = Path(args.json)
    for key in args.encodings.split(","):
        label, enc = ENCODING_SETS[key]
        t1 = time.monotonic()
        res = evaluate(cal, ids, num, enc, refs=refs)
        out["cosine_min"][key] = round(res.cosine_min, 5)
        out["cosine_mean"][key] = round(res.cosine_mean, 5)
        out["mult_free"][key] = round(res.mult_free_fraction, 4)
        out["layer_cosines"][key] = [round(c, 5) for c in res.layer_cosines]
        print(f"  {key:7s} min {res.cosine_min:.4f} mean {res.cosine_mean:.4f} mult-free "
              f"{res.mult_free_fraction:.2f}  {label}  ({time.monotonic() - t1:.0f} s)",
              flush=True)
        out["seconds"] = round(time.monotonic() - t0, 1)
        path.write_text(json.dumps(out, indent=1) + "\n")
    _table(out)
    print(f"wrote {path} ({out['seconds']} s)")
    return 0


def _table(out):
    from rich.console import Console
    from rich.table import Table
    con = Console()
    t = Table(title=f"all-MiniLM-L6-v2, {out['sentences']} held-out sentences, bit-exact")
    for col in ("encodings", "MACs mult-free", "cosine min", "cosine mean"):
        t.add_column(col)
    for k in out["cosine_min"]:
        t.add_row(f"{k}: {ENCODING_SETS[k][0]}", f"{out['mult_free'][k]:.2f}",
                  f"{out['cosine_min'][k]:.4f}", f"{out['cosine_mean'][k]:.4f}")
    con.print(t)
    t = Table(title=f"device cycles, {out['board']} whole-model configuration")
    for col in ("tokens", "cycles", "linear", "attention", "linear utilization",
                "compute at 25 MHz (s)"):
        t.add_column(col, justify="right")
    for s in out["speed"].values():
        t.add_row(str(s["tokens"]), f"{s['cycles']:,}", f"{s['linear_cycles']:,}",
                  f"{s['attention_cycles']:,}", f"{s['utilization_linear']:.3f}",
                  f"{s['est_board_seconds_25mhz']}")
    con.print(t)


if __name__ == "__main__":
    sys.exit(main())
