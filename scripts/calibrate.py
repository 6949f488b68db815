#!/usr/bin/env python3
"""Calibrate the resource and fmax models of the design-space search (issue 14).

Runs a grid of accelerator configurations through the project's own build flow
(:func:`amaformer.boards.build.prepare`: the same Amaranth platform, Yosys script, synthesis
options and memory audit as ``amaformer build``), in parallel on Dask
(:mod:`amaformer.gen.parallel`: a ``LocalCluster`` unless ``--scheduler`` names one):

* every point: Yosys synthesis, cell counts (LUT4, carry, flip-flops, DSP, block RAM, SPRAM)
  and the per-memory mapping;
* points marked for place and route (``--pnr marked``, the default), or all (``--pnr all``):
  nextpnr with the build's options (``--report``, ``--timing-allow-fail``), packed LC/LUT
  count and fmax at the point's clock.

Results are appended to ``--points`` (JSON lines; a rerun skips points already there), and
``--write`` composes ``gen/calibration.json`` (shipped with the package) from them, with the
accuracy table (``--accuracy``: whole-model cosines of all-MiniLM-L6-v2 on the device-exact
path, per weight encoding, with the compiler's numerics) and the per-layer sensitivity table
(``--sensitivity``: the cosine with one encoder layer in a second unit's encoding).

Usage::

    python scripts/calibrate.py --set calib --points build/calib/points.jsonl
    python scripts/calibrate.py --set heldout --points build/calib/points.jsonl
    python scripts/calibrate.py --accuracy --points build/calib/points.jsonl
    python scripts/calibrate.py --sensitivity --points build/calib/points.jsonl
    python scripts/calibrate.py --write gen/calibration.json --points build/calib/points.jsonl
"""

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

# --- the grid -----------------------------------------------------------------------------------

#: Core clocks of the grid (PLL), per family: what the search's clock targets are near.
GRID_CLOCK = {"ice40": 30.0, "ecp5": 50.0}

ATT = dict(mode="softmax", enabled=True)


def _p(name, board, lin=None, att=None, pnr=False, clock=None, which="calib", sd=None,
       lin2=None):
    return dict(name=name, board=board, linear=lin or {}, attention=att, pnr=pnr, clock=clock,
                set=which, sparse_dense=sd, linear2=lin2)


def _sd(dense_lanes, sparse_lanes, dense_depth, sparse_depth):
    """A sparse-dense unit sized as ``gen.sparse_dense.config_for_split`` sizes it for
    all-MiniLM-L6-v2's 32-token calibration masks at 50 % sparsity (``amaformer masks
    --tokens 32 --sparsity 0.5``), the search's ``--masks`` case."""
    return dict(dense_lanes=dense_lanes, sparse_lanes=sparse_lanes, max_tokens=32,
                dense_depth=dense_depth, sparse_depth=sparse_depth, enabled=True)


#: (name, board, linear overrides, attention overrides or None, place-and-route?)
POINTS = [
    # iCEBreaker (iCE40UP5K): linear unit only (attention does not fit next to it)
    _p("i-mul8", "icebreaker", dict(mode="mul", lanes=8), pnr=True),
    _p("i-mul4", "icebreaker", dict(mode="mul", lanes=4), pnr=True),
    _p("i-mul2", "icebreaker", dict(mode="mul", lanes=2), pnr=True),
    _p("i-mul12", "icebreaker", dict(mode="mul", lanes=12), pnr=True),
    _p("i-mul4-k256", "icebreaker", dict(mode="mul", lanes=4, max_k=256, max_n=256,
                                        weight_depth=512)),
    _p("i-mul8-k1024", "icebreaker", dict(mode="mul", lanes=8, max_k=1024, max_n=1024,
                                         weight_depth=2048)),
    _p("i-shift4", "icebreaker", dict(mode="shift", lanes=4), pnr=True),
    _p("i-shift8g2", "icebreaker", dict(mode="shift", lanes=8, shift_inputs=2)),
    _p("i-bcq2q2", "icebreaker", dict(mode="bcq", lanes=2, bcq_bits=2), pnr=True),
    _p("i-bcq4q4", "icebreaker", dict(mode="bcq", lanes=4, bcq_bits=4)),
    # ULX3S-85F (ECP5): linear unit + softmax attention unit (the whole-model pair)
    _p("e-l8a4", "ulx3s-85f", dict(mode="mul", lanes=8), ATT, pnr=True),
    _p("e-l32a4", "ulx3s-85f", dict(mode="mul", lanes=32), ATT, pnr=True),
    _p("e-l64a4", "ulx3s-85f", dict(mode="mul", lanes=64), ATT),
    _p("e-l16a8", "ulx3s-85f", dict(mode="mul", lanes=16), dict(ATT, lanes=8)),
    _p("e-l8a1", "ulx3s-85f", dict(mode="mul", lanes=8), dict(ATT, lanes=1)),
    _p("e-l32", "ulx3s-85f", dict(mode="mul", lanes=32)),
    _p("e-shift16a4", "ulx3s-85f", dict(mode="shift", lanes=16), ATT),
    _p("e-bcq8q4a4", "ulx3s-85f", dict(mode="bcq", lanes=8, bcq_bits=4), ATT),
    _p("e-l32a2-k1024", "ulx3s-85f", dict(mode="mul", lanes=32, max_k=1024, max_n=1024,
                                          weight_depth=2048), dict(ATT, lanes=2)),
    _p("e-shift8g2a2", "ulx3s-85f", dict(mode="shift", lanes=8, shift_inputs=2),
       dict(ATT, lanes=2)),
    _p("e-bcq4q3a4", "ulx3s-85f", dict(mode="bcq", lanes=4, bcq_bits=3), ATT),
    # ULX3S-85F: linear unit + sparse-dense coordinator (attention under fixed masks)
    _p("e-l16sd1x3", "ulx3s-85f", dict(mode="mul", lanes=16), sd=_sd(1, 3, 1954, 2048),
       pnr=True),
    _p("e-l32sd2x6", "ulx3s-85f", dict(mode="mul", lanes=32), sd=_sd(2, 6, 972, 1024),
       pnr=True),
    _p("e-l8sd4x4", "ulx3s-85f", dict(mode="mul", lanes=8), sd=_sd(4, 4, 1080, 2048)),
    _p("e-l64sd1x1", "ulx3s-85f", dict(mode="mul", lanes=64), sd=_sd(1, 1, 4307, 8192),
       pnr=True),
    _p("e-shift16sd2x2", "ulx3s-85f", dict(mode="shift", lanes=16), sd=_sd(2, 2, 2150, 4096)),
    # ULX3S-85F: two linear units (mixed precision per layer) + softmax attention unit
    _p("e-l32+s16g2a4", "ulx3s-85f", dict(mode="mul", lanes=32),
       ATT, lin2=dict(mode="shift", lanes=16, shift_inputs=2), pnr=True),
    _p("e-l16+b16q3a4", "ulx3s-85f", dict(mode="mul", lanes=16),
       ATT, lin2=dict(mode="bcq", lanes=16, bcq_bits=3, bcq_group=128)),
    # held out (never used to fit; scripts/bench_search.py measures the estimator on them)
    _p("h-i-mul6", "icebreaker", dict(mode="mul", lanes=6), pnr=True, which="heldout"),
    _p("h-i-mul3", "icebreaker", dict(mode="mul", lanes=3), which="heldout"),
    _p("h-i-mul10", "icebreaker", dict(mode="mul", lanes=10), which="heldout"),
    _p("h-i-shift6", "icebreaker", dict(mode="shift", lanes=6), which="heldout"),
    _p("h-i-bcq3q3", "icebreaker", dict(mode="bcq", lanes=3, bcq_bits=3), which="heldout"),
    _p("h-i-mul8-k384", "icebreaker", dict(mode="mul", lanes=8, max_k=384, max_n=384,
                                          weight_depth=768), which="heldout"),
    _p("h-i-mul5", "icebreaker", dict(mode="mul", lanes=5), which="heldout"),
    _p("h-i-mul7", "icebreaker", dict(mode="mul", lanes=7), pnr=True, which="heldout"),
    _p("h-i-mul6-k256", "icebreaker", dict(mode="mul", lanes=6, max_k=256, max_n=256,
                                          weight_depth=512), which="heldout"),
    _p("h-i-mul4-k1024", "icebreaker", dict(mode="mul", lanes=4, max_k=1024, max_n=1024,
                                           weight_depth=2048), which="heldout"),
    _p("h-i-shift4g2", "icebreaker", dict(mode="shift", lanes=4, shift_inputs=2),
       which="heldout"),
    _p("h-i-shift2g4", "icebreaker", dict(mode="shift", lanes=2, shift_inputs=4),
       which="heldout"),
    _p("h-i-bcq2q3", "icebreaker", dict(mode="bcq", lanes=2, bcq_bits=3), which="heldout"),
    _p("h-i-mul8w6", "icebreaker", dict(mode="mul", lanes=8, weight_bits=6), which="heldout"),
    _p("h-i-shift3g2l4", "icebreaker", dict(mode="shift", lanes=3, shift_inputs=2,
                                           shift_levels=4), which="heldout"),
    _p("h-e-l24a4", "ulx3s-85f", dict(mode="mul", lanes=24), ATT, pnr=True, which="heldout"),
    _p("h-e-l48a2", "ulx3s-85f", dict(mode="mul", lanes=48), dict(ATT, lanes=2),
       which="heldout"),
    _p("h-e-l16a4", "ulx3s-85f", dict(mode="mul", lanes=16), ATT, which="heldout"),
    _p("h-e-shift32a4", "ulx3s-85f", dict(mode="shift", lanes=32), ATT, which="heldout"),
    _p("h-e-bcq4q2a4", "ulx3s-85f", dict(mode="bcq", lanes=4, bcq_bits=2), ATT,
       which="heldout"),
    _p("h-e-l40a6", "ulx3s-85f", dict(mode="mul", lanes=40), dict(ATT, lanes=6),
       which="heldout"),
    _p("h-e-l64a16", "ulx3s-85f", dict(mode="mul", lanes=64), dict(ATT, lanes=16),
       which="heldout"),
    _p("h-e-l12a2", "ulx3s-85f", dict(mode="mul", lanes=12), dict(ATT, lanes=2),
       which="heldout"),
    _p("h-e-l56a8", "ulx3s-85f", dict(mode="mul", lanes=56), dict(ATT, lanes=8),
       which="heldout"),
    _p("h-e-l20a3", "ulx3s-85f", dict(mode="mul", lanes=20), dict(ATT, lanes=3),
       which="heldout"),
    _p("h-e-shift8g4a4", "ulx3s-85f", dict(mode="shift", lanes=8, shift_inputs=4), ATT,
       which="heldout"),
    _p("h-e-bcq8q2a2", "ulx3s-85f", dict(mode="bcq", lanes=8, bcq_bits=2), dict(ATT, lanes=2),
       which="heldout"),
    _p("h-e-l32w6a4", "ulx3s-85f", dict(mode="mul", lanes=32, weight_bits=6), ATT,
       which="heldout"),
    _p("h-e-l48a4-k1024", "ulx3s-85f", dict(mode="mul", lanes=48, max_k=1024, max_n=1024,
                                            weight_depth=2048), ATT, which="heldout"),
    _p("h-e-l24sd1x2", "ulx3s-85f", dict(mode="mul", lanes=24), sd=_sd(1, 2, 2673, 4096),
       which="heldout"),
    _p("h-e-l48sd3x5", "ulx3s-85f", dict(mode="mul", lanes=48), sd=_sd(3, 5, 1032, 2048),
       which="heldout"),
    _p("h-e-l32w6sd2x4", "ulx3s-85f", dict(mode="mul", lanes=32, weight_bits=6),
       sd=_sd(2, 4, 1335, 2048), pnr=True, which="heldout"),
    _p("h-e-l48+s32l4a8", "ulx3s-85f", dict(mode="mul", lanes=48), dict(ATT, lanes=8),
       lin2=dict(mode="shift", lanes=32, shift_levels=4), pnr=True, which="heldout"),
]

#: Interleave the two families so that two workers keep both busy, and the slow ECP5 points do
#: not wait until the end.
ORDER = ["e-l8a4", "i-mul8", "i-mul4", "e-l32a4", "i-mul2", "i-shift4", "i-bcq2q2", "e-l64a4",
         "i-mul12", "e-l8a1", "i-mul4-k256", "i-mul8-k1024", "e-l16a8", "i-shift8g2",
         "i-bcq4q4", "e-l32", "e-shift16a4", "e-bcq8q4a4", "e-l32a2-k1024"]


def point_config(point):
    """The :class:`AcceleratorConfig` of a grid point (the board's family clock unless the
    point names one)."""
    from amaformer.boards import get_board
    from amaformer.gen.config import (AcceleratorConfig, AttentionConfig, LinearConfig,
                                      SparseDenseConfig)
    board = get_board(point["board"])
    att = AttentionConfig(**point["attention"]) if point["attention"] else AttentionConfig()
    sd = SparseDenseConfig(**(point.get("sparse_dense") or {}))
    lin2 = (LinearConfig(**point["linear2"]) if point.get("linear2")
            else LinearConfig(enabled=False))
    return AcceleratorConfig(name="amaformer", board=point["board"],
                             clock_mhz=point.get("clock") or GRID_CLOCK[board.family],
                             linear=LinearConfig(**point["linear"]), attention=att,
                             sparse_dense=sd, linear2=lin2)


# --- one point ----------------------------------------------------------------------------------

_MAPPED = re.compile(r"mapping memory (\S+) via (\S+)")


def yosys_memories(log_text):
    """``{memory: primitive}`` from Yosys's ``memory_libmap`` lines."""
    return {m.group(1): m.group(2) for m in _MAPPED.finditer(log_text)}


def multiply_driven(netlist_path, top="amaformer"):
    """Names of nets driven by more than one cell output in a Yosys JSON netlist (a corrupt
    netlist: Yosys 0.70's ``abc9`` reintegration makes one on some ECP5 designs, which
    nextpnr then rejects; ``boards.catalogue._ULX3S``)."""
    from collections import Counter
    mod = json.loads(Path(netlist_path).read_text())["modules"][top]
    drivers = Counter()
    for cell in mod["cells"].values():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if dirs.get(port) == "output":
                drivers.update(b for b in bits if isinstance(b, int))
    bad = {b for b, n in drivers.items() if n > 1}
    return sorted({name for name, net in mod["netnames"].items()
                   if bad.intersection(b for b in net["bits"] if isinstance(b, int))})


def run_point(args):
    """Synthesize (and place and route when asked) one point; returns its record (a dict).

    Module-level so that Dask can ship it to a worker. ``args`` = (point, out_root, pnr,
    reuse): with ``reuse``, synthesis is skipped when the folder holds a finished netlist made
    from byte-identical RTLIL (the design has not changed since), so only nextpnr runs.
    """
    point, out_root, pnr, reuse = args
    from amaformer.boards.build import _make_report, _yosys_cells, prepare
    from amaformer.boards.catalogue import toolchain_env
    t0 = time.monotonic()
    config = point_config(point)
    out_dir = Path(out_root) / point["name"]
    old_il = _finished_rtlil(out_dir) if reuse else None
    prep = prepare(config, point["board"], out_dir)
    same_rtl = old_il is not None and (out_dir / f"{prep.name}.il").read_bytes() == old_il
    env = toolchain_env()
    commands = json.loads((out_dir / f"build_{prep.name}.json").read_text())["commands"]
    record = dict(name=point["name"], board=point["board"], family=prep.board.family,
                  set=point["set"], config=prep.config.to_dict(), clock_mhz=prep.clock_mhz)
    for i, argv in enumerate(commands):
        tool = argv[0]
        if i > 0 and not pnr:
            break
        if tool in ("icepack", "ecppack"):
            break                               # the bitstream adds nothing to the figures
        var = tool.upper().replace("-", "_")
        argv = [env.get(var, tool)] + argv[1:]
        ts = time.monotonic()
        if tool == "yosys" and same_rtl:
            record["synthesis_reused"] = True
            rc = 0
        else:
            if tool.startswith("nextpnr"):
                (out_dir / "report.json").unlink(missing_ok=True)   # never a stale report
            with open(out_dir / f"{tool}.log", "w") as log:
                rc = subprocess.run(argv, cwd=out_dir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
        record[f"{tool}_seconds"] = round(time.monotonic() - ts, 1)
        if rc != 0:
            tail = (out_dir / f"{tool}.log").read_text(errors="replace").strip().splitlines()
            record["error"] = f"{tool} exit {rc}: {tail[-1] if tail else ''}"[:300]
            break
        if tool == "yosys":
            rpt = (out_dir / f"{prep.name}.rpt").read_text(errors="replace")
            record["cells"] = _yosys_cells(rpt)
            record["memories"] = yosys_memories(rpt)
            bad = multiply_driven(out_dir / f"{prep.name}.json")
            if bad:
                record["error"] = f"yosys: multiply driven nets {', '.join(bad[:3])}"
                break
    if pnr and "error" not in record and (out_dir / "report.json").exists():
        rep = _make_report(prep, time.monotonic() - t0)
        record["placed"] = {k: rep[k] for k in ("lut", "ff", "dsp", "bram", "spram",
                                                "fmax_mhz", "clock_mhz", "timing_met")}
    record["seconds"] = round(time.monotonic() - t0, 1)
    return record


def _finished_rtlil(out_dir, name="amaformer"):
    """The RTLIL a finished synthesis in ``out_dir`` was made from (bytes), or None."""
    il, rpt, net = (out_dir / f"{name}.{ext}" for ext in ("il", "rpt", "json"))
    if not (il.exists() and rpt.exists() and net.exists()):
        return None
    if "End of script" not in rpt.read_text(errors="replace"):
        return None
    return il.read_bytes()


# --- accuracy -----------------------------------------------------------------------------------

#: Encodings whose whole-model cosine the search needs: (key, mode, bits).
ACCURACY_ENCODINGS = [("mul8", "mul", 8), ("shift4", "shift", 4), ("shift7", "shift", 7),
                      ("bcq2", "bcq", 2), ("bcq3", "bcq", 3), ("bcq4", "bcq", 4),
                      ("mul6", "mul", 6), ("mul4", "mul", 4)]


def accuracy(n_sentences=12, keys=None, log=print, cache_dir="out/study_cache", k_chunks=(512,)):
    """Whole-model cosines of all-MiniLM-L6-v2 on the device-exact path, per encoding and K
    chunk (the linear unit's ``max_k``), with the compiler's numerics
    (``gen.program.DEFAULT_NUMERICS``): ``{key: {mode, bits, k_chunk, cosine_min, cosine_mean,
    sentences}}``, ``key`` the encoding's for 512 (``"mul8"``), else ``"mul8@k256"``."""
    import torch

    from amaformer.gen.model import capture, load_minilm, load_sentences
    from amaformer.gen.model.exact import Encoding, calibrate, evaluate, reference
    from amaformer.gen.program import DEFAULT_NUMERICS
    torch.manual_seed(0)
    lm = load_minilm()
    graph = capture(lm.model)
    calib, held = load_sentences()
    cal = calibrate(graph, [lm.ids(s) for s in calib])
    # Quantized weights (error compensation takes minutes per encoding), shared with
    # scripts/study_numerics.py's cache.
    import hashlib
    cache = Path(cache_dir) / f"weights_{hashlib.sha1(chr(10).join(calib).encode()).hexdigest()[:10]}.pt"
    if cache.is_file():
        cal._weights.update(torch.load(cache, weights_only=False))
    ids = [lm.ids(s) for s in held[:n_sentences]]
    refs = [reference(graph, i) for i in ids]
    out = {}
    for enc, mode, bits in ACCURACY_ENCODINGS:
        if keys and enc not in keys:
            continue
        for k_chunk in k_chunks:
            key = enc if k_chunk == 512 else f"{enc}@k{k_chunk}"
            num = replace(DEFAULT_NUMERICS, k_chunk=k_chunk)
            t0 = time.monotonic()
            res = evaluate(cal, ids, num, Encoding(mode, bits), refs=refs).to_dict()
            out[key] = dict(mode=mode, bits=bits, k_chunk=k_chunk,
                            cosine_min=round(res["cosine_min"], 6),
                            cosine_mean=round(res["cosine_mean"], 6), sentences=len(ids),
                            seconds=round(time.monotonic() - t0, 1))
            if cache_dir:
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(cal._weights, cache)
            log(f"  {key:11s} min {res['cosine_min']:.5f} mean {res['cosine_mean']:.5f} "
                f"({out[key]['seconds']} s)")
    return out


#: Encodings of a second linear unit whose per-layer cost the search needs (key, mode, bits):
#: the multiplier-free ones (``bcq`` with α per 128 inputs, ``gen.model.exact.Encoding``'s
#: default group, which the search's bcq units use).
SENSITIVITY_ENCODINGS = [("shift7", "shift", 7), ("shift4", "shift", 4), ("bcq4", "bcq", 4),
                         ("bcq3", "bcq", 3), ("bcq2", "bcq", 2)]


def sensitivity(n_sentences=12, keys=None, log=print, base=("mul", 8)):
    """Per-layer sensitivity of all-MiniLM-L6-v2 to a second unit's encoding: for each encoding
    and each encoder layer, the whole-model cosine on the device-exact path with that layer's
    six linear ops in the encoding and every other layer in ``base`` (int8), with the
    compiler's numerics (``DEFAULT_NUMERICS``, K chunks of 512). Returns ``{key: {mode, bits,
    group, base_cosine_min, layers: [{cosine_min, cosine_mean}, ...], sentences, seconds}}``;
    the search reads ``base_cosine_min - layers[i].cosine_min`` as layer ``i``'s cost."""
    import torch

    from amaformer.gen.model import capture, load_minilm, load_sentences
    from amaformer.gen.model.exact import Encoding, calibrate, evaluate, reference
    from amaformer.gen.program import DEFAULT_NUMERICS
    torch.manual_seed(0)
    lm = load_minilm()
    graph = capture(lm.model)
    calib, held = load_sentences()
    cal = calibrate(graph, [lm.ids(s) for s in calib])
    ids = [lm.ids(s) for s in held[:n_sentences]]
    refs = [reference(graph, i) for i in ids]
    num = replace(DEFAULT_NUMERICS, k_chunk=512)
    mul = Encoding(*base)
    base_res = evaluate(cal, ids, num, mul, refs=refs).to_dict()
    log(f"  base {base[0]}{base[1]}: min {base_res['cosine_min']:.5f}")
    out = {}
    for key, mode, bits in SENSITIVITY_ENCODINGS:
        if keys and key not in keys:
            continue
        enc, t0, layers = Encoding(mode, bits), time.monotonic(), []
        for layer in range(len(graph.layers)):
            res = evaluate(cal, ids, num, lambda op: enc if op.layer == layer else mul,
                           refs=refs).to_dict()
            layers.append(dict(cosine_min=round(res["cosine_min"], 6),
                               cosine_mean=round(res["cosine_mean"], 6)))
            log(f"  {key} layer {layer}: min {res['cosine_min']:.5f} "
                f"(cost {base_res['cosine_min'] - res['cosine_min']:.5f})")
        out[key] = dict(mode=mode, bits=bits, group=enc.group if mode == "bcq" else None,
                        base_cosine_min=round(base_res["cosine_min"], 6), layers=layers,
                        sentences=len(ids), seconds=round(time.monotonic() - t0, 1))
    return out


# --- main ---------------------------------------------------------------------------------------

def load_points(path):
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="build/calib/points.jsonl",
                    help="JSON-lines file of measured points (appended; default %(default)s)")
    ap.add_argument("--set", choices=("calib", "heldout", "all", "none"), default="none",
                    help="which grid points to run")
    ap.add_argument("--only", default=None, help="comma-separated point names")
    ap.add_argument("--pnr", choices=("marked", "all", "none"), default="marked")
    ap.add_argument("--out", default="build/calib", help="build folders (default %(default)s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reuse-synthesis", action="store_true",
                    help="skip Yosys where the build folder holds a netlist of identical RTLIL")
    ap.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://HOST:PORT)")
    ap.add_argument("--accuracy", action="store_true",
                    help="measure the per-encoding whole-model cosines (minutes of CPU)")
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--sensitivity", action="store_true",
                    help="measure the per-layer cosine cost of a second unit's encodings")
    ap.add_argument("--encodings", default=None,
                    help="--accuracy, --sensitivity: comma-separated keys")
    ap.add_argument("--k-chunks", default="512",
                    help="--accuracy: comma-separated K chunks (max_k) to measure each "
                         "encoding at (default 512)")
    ap.add_argument("--harvest", action="store_true",
                    help="record points whose synthesis finished (their place and route may "
                         "still run) from the build folders, Yosys figures only")
    ap.add_argument("--write", metavar="JSON", default=None,
                    help="write the calibration data the package ships (gen/calibration.json)")
    args = ap.parse_args(argv)

    points_path = Path(args.points)
    points_path.parent.mkdir(parents=True, exist_ok=True)
    records = [p for p in load_points(points_path) if p.get("kind", "point") == "point"]
    done = {p["name"] for p in records}
    placed = {p["name"] for p in records if p.get("placed")}
    todo = []
    if args.set != "none" or args.only:
        only = set(args.only.split(",")) if args.only else None
        order = {n: i for i, n in enumerate(ORDER)}
        for p in sorted(POINTS, key=lambda p: order.get(p["name"], len(order))):
            if only is not None and p["name"] not in only:
                continue
            if only is None and args.set != "all" and p["set"] != args.set:
                continue
            pnr = {"all": True, "none": False, "marked": p["pnr"]}[args.pnr]
            if p["name"] in (placed if pnr else done):
                continue                        # measured already (placed, when asked)
            todo.append((p, args.out, pnr, args.reuse_synthesis))
    if todo:
        from amaformer.gen.parallel import map_parallel
        print(f"{len(todo)} point(s): {', '.join(t[0]['name'] for t in todo)}", flush=True)

        def on_result(i, rec):
            name = todo[i][0]["name"]
            if isinstance(rec, Exception):
                print(f"  {name}: failed: {rec}", flush=True)
                return
            rec["kind"] = "point"
            with open(points_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            placed = rec.get("placed") or {}
            print(f"  {name}: {rec['seconds']} s, LUT4 {rec.get('cells', {}).get('SB_LUT4') or rec.get('cells', {}).get('LUT4')}, "
                  f"placed {placed.get('lut')} fmax {placed.get('fmax_mhz')} "
                  f"{rec.get('error', '')}", flush=True)

        map_parallel(run_point, todo, scheduler=args.scheduler, workers=args.workers,
                     on_result=on_result)
    if args.harvest:
        harvest(args.out, points_path, {p["name"] for p in load_points(points_path)})
    if args.accuracy:
        acc = accuracy(args.sentences, keys=args.encodings.split(",") if args.encodings else None,
                       k_chunks=[int(k) for k in args.k_chunks.split(",")])
        with open(points_path, "a") as f:
            f.write(json.dumps({"kind": "accuracy", "encodings": acc,
                                "numerics": "gen.program.DEFAULT_NUMERICS, k_chunk per key"})
                    + "\n")
    if args.sensitivity:
        sens = sensitivity(args.sentences,
                           keys=args.encodings.split(",") if args.encodings else None)
        with open(points_path, "a") as f:
            f.write(json.dumps({"kind": "sensitivity", "encodings": sens}) + "\n")
    if args.write:
        write_calibration(load_points(points_path), args.write)
    return 0


def harvest(out_root, points_path, done):
    """Yosys-only records of grid points whose synthesis report is complete in ``out_root``."""
    from amaformer.boards.build import _yosys_cells
    from amaformer.boards import get_board
    by_name = {p["name"]: p for p in POINTS}
    for d in sorted(Path(out_root).iterdir()):
        rpt = d / "amaformer.rpt"
        if d.name in done or d.name not in by_name or not rpt.exists():
            continue
        text = rpt.read_text(errors="replace")
        if "End of script" not in text:
            continue
        point = by_name[d.name]
        from amaformer.boards.build import resolve_config
        cfg = resolve_config(point_config(point), get_board(point["board"]))
        rec = dict(kind="point", name=d.name, board=point["board"],
                   family=get_board(point["board"]).family, set=point["set"],
                   config=cfg.to_dict(), clock_mhz=cfg.clock_mhz, cells=_yosys_cells(text),
                   memories=yosys_memories(text), harvested=True)
        with open(points_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"  harvested {d.name}")


def softmax_offsets(lanes=range(1, 17), dims=(32,)):
    """The exact model's fixed part of a softmax attention job (``gen.latency``), per
    ``"lanes,dim,tokens"`` for the short jobs the composition needs (tokens up to
    ``3·lanes``), so that the search never runs the cycle-level model (nor imports torch)."""
    from amaformer.gen.latency import _softmax_offset
    out = {}
    for d in dims:
        for L in lanes:
            for t in range(1, 3 * L + 1):
                out[f"{L},{d},{t}"] = int(_softmax_offset(L, d, t))
    return out


def write_calibration(records, path):
    """Compose the shipped calibration file from measured records."""
    by_name = {}
    for r in records:
        if r.get("kind", "point") == "point" and "cells" in r:
            old = by_name.get(r["name"])
            if old is None or (r.get("placed") and not old.get("placed")):
                by_name[r["name"]] = r
    points = list(by_name.values())
    acc, sens = {}, {}
    for r in records:
        if r.get("kind") == "accuracy":
            acc.update(r["encodings"])
        elif r.get("kind") == "sensitivity":
            sens.update(r["encodings"])
    keep = ("name", "board", "family", "set", "config", "clock_mhz", "cells", "memories",
            "placed", "error")
    data = {
        "about": "Measured by scripts/calibrate.py: Yosys cell counts (and nextpnr placement "
                 "for some points) of whole accelerators built with amaformer's own flow "
                 "(boards.build.prepare; ECP5 with synth_ecp5 -nolutram, "
                 "boards.catalogue._ULX3S._amaformer_synth_opts); "
                 "whole-model cosines of all-MiniLM-L6-v2 per weight encoding on the "
                 "device-exact path (gen.model.exact, gen.program.DEFAULT_NUMERICS, "
                 "12 held-out sentences). Read by amaformer.gen.resources.",
        "points": [{k: r[k] for k in keep if k in r} for r in points],
        "accuracy": acc,
        "sensitivity": sens,
        "softmax_offsets": softmax_offsets(),
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}: {len(data['points'])} points, {len(acc)} encodings")


if __name__ == "__main__":
    sys.exit(main())
