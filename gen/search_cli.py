"""``amaformer search``: the design-space search on the command line (:mod:`amaformer.gen.search`).

Registered by :func:`register`, which ``gen/cli.py`` calls with its ``subcommand`` and ``arg``
helpers, so that this module owns the command without editing the CLI's other commands.
"""

import sys
from pathlib import Path

__all__ = ["register", "run_search", "validate", "verify_best", "measure_mask_penalty"]

MODELS = ("minilm",)


def _build_one(args):
    """Build one candidate (a Dask task): ``(index, report or error string)``."""
    i, config_dict, board, out_dir = args
    from ..boards import BuildError, build
    from .config import AcceleratorConfig
    try:
        return i, build(AcceleratorConfig.from_dict(config_dict), board, out_dir)
    except BuildError as e:
        return i, str(e)


def validate(cands, board, out_dir, *, scheduler=None, workers=None, log=print):
    """Build ``cands`` (place and route, in parallel on Dask), print estimate against placed
    result and write them to ``out_dir/validate.json``; returns ``[(candidate, report or
    error)]``."""
    import json
    from .parallel import map_parallel
    items = [(i, c.config.to_dict(), board, str(Path(out_dir) / f"validate{i}"))
             for i, c in enumerate(cands)]
    log(f"building {len(items)} candidate(s) on Dask "
        f"({'scheduler ' + scheduler if scheduler else 'local cluster'}) ...")
    results = map_parallel(_build_one, items, scheduler=scheduler, workers=workers)
    out = []
    for c, res in zip(cands, results):
        rep = res[1] if isinstance(res, tuple) else str(res)
        out.append((c, rep))
        r = c.resources
        if isinstance(rep, dict):
            log(f"  #{len(out)} {c.describe()}: LUT est {r.lut:,} placed {rep['lut']:,} "
                f"({100 * (r.lut - rep['lut']) / max(rep['lut'], 1):+.1f} %), DSP {r.dsp}/"
                f"{rep['dsp']}, BRAM {r.bram}/{rep['bram']}, fmax est {r.fmax_mhz:.1f} placed "
                f"{rep['fmax_mhz']} MHz at {rep['clock_mhz']} MHz "
                f"({'met' if rep['timing_met'] else 'NOT met'})")
        else:
            log(f"  #{len(out)} build failed: {rep}")
    rows = [dict(candidate=c.row(), estimate=c.resources.to_dict(),
                 placed={k: rep.get(k) for k in ("lut", "ff", "dsp", "bram", "spram",
                                                 "fmax_mhz", "clock_mhz", "timing_met")}
                 if isinstance(rep, dict) else None,
                 error=None if isinstance(rep, dict) else rep) for c, rep in out]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "validate.json").write_text(json.dumps(rows, indent=1) + "\n")
    return out


def verify_best(res, args, log=print):
    """Measure the fastest candidates' whole-model cosine on the compiler's path
    (:func:`amaformer.gen.search_accuracy.verify_front`); returns ``(result with the fastest
    candidate that meets the floor as best, [(candidate, AccuracyCheck)])``, or ``(None,
    checks)`` after printing why none does."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .search_accuracy import check_for, verify_front
    log(f"verifying accuracy: all-MiniLM-L6-v2 compiled for the fastest candidates (one per "
        f"encoding and max_k, at most {args.verify}), the golden path on {args.sentences} "
        f"held-out sentences (Dask, "
        f"{'scheduler ' + args.scheduler if args.scheduler else 'local cluster'}) ...")
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("whole-model accuracy", total=None)
        best, pairs, reason = verify_front(
            res.candidates, args.min_cosine, keys=args.verify, sentences=args.sentences,
            scheduler=args.scheduler, on_result=lambda i, chk: bar.advance(task),
            masks=args.masks)
    for c, chk in pairs:
        what = chk.error or (f"cosine min {chk.cosine_min:.5f} mean {chk.cosine_mean:.5f} "
                             f"(table {chk.table:.5f}), {chk.seconds:.0f} s")
        masked = (f", sparse-dense {c.params['sd_dense']}+{c.params['sd_sparse']} under masks"
                  if c.config.sparse_dense.enabled else "")
        log(f"  {c.params['encoding']}, max_k {c.params['max_k']}{masked} (fastest such: "
            f"{c.objective_s * 1e3:.2f} ms): {what}")
    if best is None:
        print(f"amaformer: infeasible: accuracy: {reason} (more candidates: --verify K; skip "
              f"the check: --verify 0)", file=sys.stderr)
        return None, pairs
    chk = check_for(best, pairs)
    return replace(res, best=replace(best, cosine=chk.cosine_min)), pairs


def measure_mask_penalty(masks, table, *, sentences=12, scheduler=None, log=print):
    """The masks' cost in whole-model cosine: all-MiniLM-L6-v2 compiled with the calibration
    table's best encoding at ``max_k`` 512, once with a sparse-dense unit under ``masks`` (a
    :class:`~amaformer.gen.latency.MaskSchedule` read from a file) and once with dense
    attention on the softmax unit, both golden paths against float on the same ``sentences``
    held-out sentences (two Dask tasks, about 40 s). Returns ``(penalty, cosine under
    masks)``, the penalty the difference of the two minima (at least 0)."""
    from .config import AcceleratorConfig, AttentionConfig, LinearConfig
    from .parallel import map_parallel
    from .search import _parse_encoding
    from .search_accuracy import measure_cosine
    from .sparse_dense import config_from_masks
    if masks.path is None:
        raise ValueError("the masks' cost is measured from a mask file; save the masks "
                         "(gen.masks.save_masks) and load them from it")
    dense = {k: v for k, v in table.items() if "@" not in k}
    enc = max(dense, key=dense.get)
    mode, bits = _parse_encoding(enc)
    lin = LinearConfig(mode=mode, **{"mul": {"weight_bits": bits},
                                     "shift": {"shift_levels": bits},
                                     "bcq": {"bcq_bits": bits}}[mode])
    masked = AcceleratorConfig(board="ulx3s-85f", linear=lin,
                               sparse_dense=config_from_masks(masks.keep, lanes=4))
    plain = AcceleratorConfig(board="ulx3s-85f", linear=lin,
                              attention=AttentionConfig(enabled=True))
    log(f"measuring the masks' cost: {enc} with attention under {masks.path} "
        f"(sparsity {masks.sparsity():.2f}) and without, the golden path on {sentences} "
        f"held-out sentences ...")
    got = map_parallel(measure_cosine, [(masked.to_dict(), sentences, masks.path),
                                        (plain.to_dict(), sentences)],
                       scheduler=scheduler, workers=2)
    for res in got:
        if isinstance(res, Exception) or "error" in res:
            raise ValueError(f"--masks {masks.path}: the model does not compile under them: "
                             f"{res if isinstance(res, Exception) else res['error']}")
    under, without = got[0]["cosine_min"], got[1]["cosine_min"]
    penalty = max(0.0, without - under)
    log(f"  cosine min {under:.5f} under the masks against {without:.5f} with dense "
        f"attention: sparse-dense candidates count {penalty:.5f} less")
    return penalty, under


def run_search(args, log=print):
    """The command's work; returns the exit status. ``args.mask_schedule``: the loaded
    ``--masks`` (a :class:`~amaformer.gen.latency.MaskSchedule`) or ``None``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ..boards import get_board
    from .search import Infeasible, default_config, search, write_outputs
    board = get_board(args.board).name
    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, not {args.model!r}")
    masks, penalty = getattr(args, "mask_schedule", None), 0.0
    if masks is not None:
        from .search import accuracy_table
        try:
            penalty, _ = measure_mask_penalty(masks, accuracy_table(),
                                              sentences=args.sentences,
                                              scheduler=args.scheduler, log=log)
        except ValueError as e:
            print(f"amaformer: {e}", file=sys.stderr)
            return 2
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                  console=None) as bar:
        task = bar.add_task(f"searching {board}", total=args.trials)
        try:
            res = search(board, min_cosine=args.min_cosine, trials=args.trials,
                         tokens=args.tokens, link_counts=args.link_counts,
                         lut_margin=args.lut_margin, host_attention=args.host_attention,
                         seed=args.seed, masks=masks, mask_penalty=penalty,
                         second_unit=not getattr(args, "one_linear_unit", False),
                         progress=lambda done, total: bar.update(task, completed=done))
        except Infeasible as e:
            print(f"amaformer: infeasible: {e}", file=sys.stderr)
            return 1
    checks = []
    if args.verify and not (res.best.config.attention.enabled
                            or res.best.config.sparse_dense.enabled):
        log("not verifying accuracy: the best candidate has no attention unit, and the "
            "whole-model compiler needs one; its cosine is the calibration table's")
    elif args.verify:
        res, checks = verify_best(res, args, log=log)
        if res is None:
            return 1
    summary = write_outputs(res, args.out, board=board, min_cosine=args.min_cosine,
                            tokens=args.tokens, link_counts=args.link_counts,
                            accuracy_checks=checks, masks=masks, mask_penalty=penalty)
    b = res.best
    from .latency import model_latency
    d = default_config(board)
    d_lat = model_latency(d, args.tokens)
    r = b.resources
    log(f"best of {res.trials} trials in {res.seconds:.1f} s: {b.describe()}, "
        f"max_k {b.params['max_k']}, clock {b.clock_mhz:.2f} MHz")
    log(f"  whole model ({args.tokens} tokens): compute {b.latency.compute_s * 1e3:.2f} ms "
        f"({b.latency.cycles:,} cycles), link {b.latency.link_s:.1f} s at "
        f"{b.config.uart.baud} baud ({'counted' if args.link_counts else 'not counted'}); "
        f"default configuration: compute {d_lat.compute_s * 1e3:.2f} ms "
        f"({d_lat.compute_s / b.latency.compute_s:.1f}x slower)")
    log(f"  estimate: {r.lut:,}/{r.totals['lut']:,} LUT, {r.ff:,} FF, {r.dsp}/{r.totals['dsp']} "
        f"DSP, {r.bram}/{r.totals['bram']} BRAM, {r.spram} SPRAM, fmax {r.fmax_mhz:.1f} MHz "
        f"(routable {r.feasible_clock_mhz:.1f}); cosine {b.cosine:.5f} >= {args.min_cosine} "
        + (f"(measured on the compiler's path, {args.sentences} sentences)" if checks
           else "(calibration table, not measured)"))
    log(f"  wrote {args.out}/config.toml, pareto.csv ({summary['pareto']} points), "
        f"pareto.png, search.json")
    if b.config.sparse_dense.enabled:
        log(f"  run it with its masks: amaformer run --model minilm --config "
            f"{args.out}/config.toml --masks {masks.path}")
    if args.validate:
        from .search_accuracy import distinct_front
        picks = distinct_front(res.candidates, args.validate)
        if res.best.config not in [c.config for c in picks]:     # the verified choice first
            picks = [res.best] + picks[:args.validate - 1]
        validate(picks, board, Path(args.out) / "validate", scheduler=args.scheduler, log=log)
    return 0


def register(subcommand, arg, usage_error):
    """Register ``amaformer search`` with the CLI's ``subcommand`` decorator and ``arg``;
    ``usage_error`` is the CLI's exception for bad input (one line, exit status 2)."""
    from ..boards import board_names

    @subcommand(
        "search", "find the fastest accelerator for a model on a board (design-space search)",
        arg("--board", "-b", metavar="B", required=True,
            help=f"board ({', '.join(board_names())})"),
        arg("--model", "-m", default="minilm", choices=list(MODELS),
            help="model whose whole-model latency is minimized (default minilm: "
                 "all-MiniLM-L6-v2)"),
        arg("--min-cosine", type=float, default=0.99, metavar="C",
            help="accuracy floor: whole-model sentence-embedding cosine against float "
                 "(min over 12 held-out sentences, device-exact path; default 0.99)"),
        arg("--link-counts", action="store_true",
            help="count the link's time (UART at the configuration's baud) in the latency "
                 "(default: compute only, the link reported beside it)"),
        arg("--out", "-o", metavar="DIR", required=True,
            help="output folder: config.toml, pareto.csv, pareto.png, search.json"),
        arg("--trials", type=int, default=300, metavar="N",
            help="optuna trials (model evaluations, milliseconds each; default 300)"),
        arg("--tokens", type=int, default=24, metavar="T",
            help="tokens of the sentence the latency is computed for (default 24)"),
        arg("--lut-margin", type=float, default=0.85, metavar="F",
            help="routability margin: use at most F of the device's logic (default 0.85)"),
        arg("--host-attention", action="store_true",
            help="allow designs without an attention unit (attention on the host; the "
                 "whole-model program needs one, `run --layer minilm` does not)"),
        arg("--seed", type=int, default=0, help="sampler seed (default 0)"),
        arg("--one-linear-unit", action="store_true",
            help="no second linear unit (by default the search may add one with a "
                 "multiplier-free encoding for the layers that lose least cosine in it)"),
        arg("--masks", metavar="M.npz", default=None,
            help="fixed attention masks (amaformer masks): the sparse-dense unit under them "
                 "becomes an attention choice, its dense/sparse lane split a variable, its "
                 "cosine the table's minus the masks' cost, measured first (about 40 s)"),
        arg("--verify", type=int, default=3, metavar="K",
            help="measure the whole-model cosine on the compiler's bit-exact path for the "
                 "fastest candidates, one per encoding and max_k, at most K of them (about "
                 "40 s each, two at a time on Dask), stopping at the first that meets the "
                 "floor, which is chosen (default 3; 0: trust the calibration table)"),
        arg("--sentences", type=int, default=12, metavar="S",
            help="--verify: held-out sentences per candidate (default 12)"),
        arg("--validate", type=int, default=0, metavar="K",
            help="build the best K candidates (place and route, minutes each, in parallel "
                 "on Dask) and print estimate against placed result"),
        arg("--scheduler", default=None, metavar="tcp://HOST:PORT",
            help="Dask scheduler for the --verify accuracy runs and --validate builds "
                 "(default: a local cluster on this machine's cores)"),
        description="Search weight encoding and bits, linear lanes, a second linear unit "
                    "for some layers (its encoding, lanes and layers), the attention mode "
                    "(softmax unit and its lanes; with --masks the sparse-dense unit and its "
                    "lane split), memory "
                    "depths and clock for the lowest whole-model latency (the units' exact "
                    "cycle models over the compiled schedule, at the PLL's clock) under the "
                    "board's resources with a routability margin, the predicted fmax with the "
                    "family's margin, and an accuracy floor. Resources come from models "
                    "calibrated on real builds (gen/calibration.json); no synthesis unless "
                    "--validate. The fastest candidates' accuracy is then measured on the "
                    "compiler's bit-exact path (--verify). Writes DIR/config.toml (for generate/build/run --config), the "
                    "Pareto front (pareto.csv, pareto.png) and search.json. An infeasible "
                    "request prints which constraint fails and by how much, exit status 1.")
    def cmd_search(args):
        if not 0 < args.lut_margin <= 1:
            raise usage_error(f"--lut-margin must be in (0, 1], not {args.lut_margin}")
        if args.trials < 1:
            raise usage_error(f"--trials must be at least 1, not {args.trials}")
        if args.verify < 0:
            raise usage_error(f"--verify must be at least 0, not {args.verify}")
        if args.sentences < 1:
            raise usage_error(f"--sentences must be at least 1, not {args.sentences}")
        if not 0 < args.min_cosine <= 1:
            raise usage_error(f"--min-cosine must be in (0, 1], not {args.min_cosine}")
        args.mask_schedule = None
        if args.masks:
            from .latency import MaskSchedule
            if not Path(args.masks).is_file():
                raise usage_error(f"--masks {args.masks}: no such file (amaformer masks --out "
                                  f"{args.masks} makes one)")
            try:
                args.mask_schedule = MaskSchedule(args.masks)
            except ValueError as e:             # MaskError: not a mask file
                raise usage_error(f"--masks {args.masks}: {e}") from None
            from .latency import MINILM
            shape = tuple(args.mask_schedule.keep.shape[:2])
            if shape != (MINILM.layers, MINILM.heads):
                raise usage_error(f"--masks {args.masks}: masks of {shape[0]} layers × "
                                  f"{shape[1]} heads, the model has {MINILM.layers} × "
                                  f"{MINILM.heads}")
        return run_search(args)

    return cmd_search
