# amaranth: UnusedElaboratable=no
"""Attention: golden models against float PyTorch (random and real all-MiniLM-L6-v2 data), the
softmax RTL against the golden model in the Amaranth simulator (with its cycle model), the
configuration section and the constructor errors (messages pinned)."""

import math
import random
import re

import pytest
import torch
from amaranth.hdl import Fragment

from amaformer.gen.attention import (
    SoftmaxFormat, attention_linear_angular, attention_linear_causal, attention_softmax,
    causal_mask, cosine, linear_angular_reference, linear_causal_reference,
    minilm_attention_inputs, random_mask, softmax_reference, softmax_scales, softmax_schedule,
    softmax_streams, softmax_utilization)
from amaformer.gen.config import AcceleratorConfig, AttentionConfig, ConfigError
from amaformer.gen.numerics import quantize, requant_params
from amaformer.hdl.attention import HeadParams, SoftmaxAttention, softmax_cycle_model

from conftest import simulate, write_words


def _quant_head(q, k, v, fmt=SoftmaxFormat()):
    (qq, sq), (kq, sk), (vq, sv) = quantize(q), quantize(k), quantize(v)
    return qq, kq, vq, softmax_scales(float(sq), float(sk), float(sv), float(sv), q.shape[-1],
                                      fmt), float(sv)


# --- golden models against float --------------------------------------------------------------

@pytest.mark.parametrize("mask", ["dense", "causal", "sparse"])
def test_softmax_golden_vs_sdpa_random(mask):
    g = torch.Generator().manual_seed(3)
    n, d = 40, 32
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    keep = {"dense": None, "causal": causal_mask(n),
            "sparse": random_mask(n, 0.3, g, empty_rows=0.3)}[mask]
    qq, kq, vq, prm, so = _quant_head(q, k, v)
    y = attention_softmax(qq, kq, vq, *prm, keep=keep).double() * so
    ref = softmax_reference(q, k, v, keep)
    assert cosine(y, ref) > 0.999
    assert float((y - ref).abs().mean()) / so < 1.0
    if keep is not None:        # rows that keep only the diagonal return v[i] (quantized)
        diag_only = keep.sum(1) == 1
        assert torch.allclose(y[diag_only], (vq[diag_only].double() * so), atol=1.01 * so)


def test_softmax_golden_exact_cases():
    # one key: the output is v itself (p / l = 1 up to the reciprocal's rounding)
    v = torch.tensor([[-128, -1, 0, 1, 127, 50]])
    q = torch.tensor([[3, 1, 4, 1, 5, 9]])
    sm, ss = requant_params(0.01)
    om, os_ = requant_params(1.0 / (1 << SoftmaxFormat().guard_bits))
    y = attention_softmax(q, q, v, int(sm), int(ss), int(om), int(os_))
    assert y.tolist() == v.tolist()
    # two equal scores: the mean, rounded half up
    q2 = torch.zeros(2, 6, dtype=torch.int64)
    v2 = torch.tensor([[10, -10, 3, -3, 127, -128], [11, -11, 4, -4, 127, -128]])
    y2 = attention_softmax(q2, q2, v2, int(sm), int(ss), int(om), int(os_))
    assert y2[0].tolist() == [11, -10, 4, -3, 127, -128]
    # a row that keeps nothing outputs zeros
    keep = torch.tensor([[True, False], [False, False]])
    y3 = attention_softmax(q2, q2, v2, int(sm), int(ss), int(om), int(os_), keep=keep)
    assert y3[1].tolist() == [0] * 6 and y3[0].tolist() == v2[0].tolist()


@pytest.fixture(scope="module")
def minilm():
    return minilm_attention_inputs()


def test_softmax_accuracy_minilm(minilm):
    """Real Q, K, V of all 6 layers of all-MiniLM-L6-v2 on 36 sentences (4 to 23 tokens):
    cosine >= 0.999 against SDPA in float for every (sentence, layer), MAE <= 1 LSB."""
    assert len({si for si, *_ in minilm}) >= 32
    cos, mae = [], []
    for si, li, q, k, v in minilm:
        heads = [_quant_head(q[h], k[h], v[h]) for h in range(q.shape[0])]
        qq, kq, vq = (torch.stack([hd[i] for hd in heads]) for i in range(3))
        prm = torch.tensor([hd[3] for hd in heads])
        so = torch.tensor([hd[4] for hd in heads], dtype=torch.float64)[:, None, None]
        y = attention_softmax(qq, kq, vq, prm[:, 0], prm[:, 1], prm[:, 2], prm[:, 3]) * so
        ref = softmax_reference(q, k, v)
        cos.append(cosine(y, ref))
        mae.append(float(((y - ref).abs() / so).mean()))
    assert min(cos) >= 0.999, min(cos)
    assert max(mae) <= 1.0, max(mae)


def test_linear_causal_golden_vs_float():
    g = torch.Generator().manual_seed(4)
    n, d, taps = 48, 16, 4
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    conv = torch.randn(taps, d, generator=g, dtype=torch.float64) * 0.2
    (qq, sq), (kq, sk), (vq, sv) = quantize(q), quantize(k), quantize(v)
    so = float(sv) * 1.5
    om, os_ = requant_params(float(sv) / (so * (1 << SoftmaxFormat().guard_bits)))
    cq, cs = quantize(conv)
    cm, csh = requant_params(float(cs) * float(sv) / so)
    y = attention_linear_causal(qq, kq, vq, int(om), int(os_), cq, int(cm), int(csh)) * so
    ref = linear_causal_reference(q, k, v, float(sq), float(sk), conv_w=cq.double() * cs)
    assert cosine(y, ref) > 0.999
    assert float((y - ref).abs().mean()) / so < 0.5
    # causality: changing the last token changes only the last output row
    vq2 = vq.clone()
    vq2[-1] = -vq2[-1]
    y2 = attention_linear_causal(qq, kq, vq2, int(om), int(os_), cq, int(cm), int(csh)) * so
    assert torch.equal(y[:-1], y2[:-1]) and not torch.equal(y[-1], y2[-1])


def test_linear_angular_golden_vs_float():
    g = torch.Generator().manual_seed(5)
    n, d, taps = 40, 16, 3
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    conv = torch.randn(taps, d, generator=g, dtype=torch.float64) * 0.2
    (vq, sv) = quantize(v)
    so = float(sv)          # outputs up to ~90 LSB: no saturation
    hm, hs = requant_params(0.5 * float(sv) / so)
    am, ash = requant_params(float(sv) / (math.pi * 127 * 127 * so))
    cq, cs = quantize(conv)
    cm, csh = requant_params(float(cs) * float(sv) / so)
    y = attention_linear_angular(q.mul(100).round(), k.mul(100).round(), vq, int(hm), int(hs),
                                 int(am), int(ash), cq, int(cm), int(csh)) * so
    ref = linear_angular_reference(q, k, vq.double() * sv, conv_w=cq.double() * cs)
    assert cosine(y, ref) > 0.999
    assert float((y - ref).abs().mean()) / so < 0.5            # three rounded branches


# --- the RTL in the Amaranth simulator ------------------------------------------------------

def _run_rtl(lanes, heads, n, d, keep, seed, idle=0.0, bp=0.0, lut_macs=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randint(-128, 128, (heads, n, d), generator=g) for _ in range(3))
    # logit spreads of a few units in base 2 (as in real layers) to sharp (second head)
    prm = [softmax_scales(0.002 + 0.02 * h, 0.02, 0.05, 0.05, d) for h in range(heads)]
    exp = torch.stack([attention_softmax(q[h], k[h], v[h], *prm[h], keep=keep)
                       for h in range(heads)])
    dut = SoftmaxAttention(lanes=lanes, max_dim=d, max_tokens=n, max_heads=heads,
                           lut_macs=lut_macs)
    qb, kvb = [], []
    for h in range(heads):
        a, b = softmax_streams(q[h], k[h], v[h], lanes, keep)
        qb += a
        kvb += b
    rng = random.Random(seed)
    out, res = [], {}

    async def tb(ctx):
        await write_words(ctx, dut.hp_wr, [
            HeadParams.const({"score_mult": sm, "score_shift": ss, "out_mult": om,
                              "out_shift": os_}).as_value().value
            for sm, ss, om, os_ in prm])
        ctx.set(dut.heads, heads)
        ctx.set(dut.tokens, n)
        ctx.set(dut.dim, d)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cyc, iq, ikv = 1, 0, 0
        while cyc < 100_000:
            qv = iq < len(qb) and rng.random() >= idle
            kvv = ikv < len(kvb) and rng.random() >= idle
            ctx.set(dut.q.valid, qv)
            ctx.set(dut.kv.valid, kvv)
            if qv:
                ctx.set(dut.q.payload, qb[iq])
            if kvv:
                kk, vv, mk, last = kvb[ikv]
                ctx.set(dut.kv.payload, {"k": kk, "v": vv, "keep": mk, "last": last})
            ctx.set(dut.o.ready, rng.random() >= bp)
            done = ctx.get(dut.done)
            qf, kf = qv and ctx.get(dut.q.ready), kvv and ctx.get(dut.kv.ready)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                out.append(ctx.get(dut.o.payload))
            await ctx.tick()
            iq, ikv = iq + qf, ikv + kf
            if done:
                break
            cyc += 1
        res["cycles"] = cyc

    simulate(dut, tb)
    assert len(out) == heads * n * d
    assert torch.equal(torch.tensor(out).reshape(heads, n, d), exp)
    return res["cycles"]


@pytest.mark.parametrize("lanes,heads,n,d,mask", [
    (2, 2, 5, 3, "dense"), (4, 1, 9, 4, "sparse"), (3, 1, 7, 2, "causal"), (1, 1, 1, 1, "dense"),
    (2, 1, 6, 3, "lut"), (1, 1, 5, 2, "scale"), (4, 2, 9, 3, "empty"),
])
def test_softmax_rtl_amaranth(lanes, heads, n, d, mask):
    g = torch.Generator().manual_seed(n)
    keep = {"dense": None, "lut": None, "scale": None, "causal": causal_mask(n),
            "sparse": random_mask(n, 0.3, g, empty_rows=0.4),
            "empty": random_mask(n, 0.5, g)}[mask]
    if mask == "empty":          # rows 2 and 5 keep no key at all: their outputs are zeros
        keep[[2, 5]] = False
    # lane multipliers built from logic: all of them, or only the logit scaling
    lut = {"lut": True, "scale": "scale"}.get(mask, False)
    cycles = _run_rtl(lanes, heads, n, d, keep, seed=n, lut_macs=lut)
    assert cycles == softmax_cycle_model(n, d, lanes, heads, softmax_schedule(n, lanes, keep))
    _run_rtl(lanes, heads, n, d, keep, seed=n + 1, idle=0.3, bp=0.4, lut_macs=lut)


def test_softmax_utilization_target():
    """MAC utilization from the cycle model (checked against the RTL above and in the cocotb
    bench): >= 0.90 for N >= 64 at the default lanes."""
    for n in (64, 128, 256):
        for d in (16, 32, 64):
            assert softmax_utilization(n, d, lanes=4, heads=2) >= 0.90, (n, d)
    assert softmax_utilization(64, 32, lanes=8) >= 0.90


# --- configuration and errors -----------------------------------------------------------------

def test_attention_config_roundtrip_and_errors():
    cfg = AcceleratorConfig(attention=AttentionConfig(mode="linear_causal", causal=True,
                                                      conv_taps=32, lanes=8))
    assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg
    cases = [
        (dict(mode="flash"), "attention.mode must be one of 'softmax', 'linear_causal', "
                             "'linear_angular', not 'flash'"),
        (dict(head_dim=0), "attention.head_dim must be an integer in [1, 256], not 0"),
        (dict(lanes=8, max_tokens=4), "attention.lanes must be at most attention.max_tokens = "
                                      "4, not 8"),
        (dict(conv_taps=9), "attention.conv_taps must be 0 in mode 'softmax' (the convolution "
                            "belongs to the linear modes), not 9"),
        (dict(mode="linear_angular", causal=True), "attention.causal must be false in mode "
                                                   "'linear_angular' (k̂ᵀV sums over all "
                                                   "tokens), not True"),
        (dict(mode="linear_causal"), "attention.causal must be true in mode 'linear_causal', "
                                     "not False"),
        (dict(mode="linear_causal", causal=True, sparse=True),
         "attention.sparse must be false in mode 'linear_causal' (sparse masks apply to "
         "'softmax'), not True"),
        (dict(causal=1), "attention.causal must be true or false, not 1"),
        (dict(guard_bits=15), "attention.guard_bits must be an integer in [0, 14], not 15"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
            AttentionConfig(**kwargs)


def test_softmax_attention_constructor_errors():
    with pytest.raises(ValueError, match=r"^lanes must be an integer in \[1, 64\], not 0$"):
        SoftmaxAttention(lanes=0)
    with pytest.raises(ValueError, match=r"^lanes must be at most max_tokens \(2\), not 4$"):
        SoftmaxAttention(lanes=4, max_tokens=2)
    with pytest.raises(ValueError, match=r"^guard_bits must be an integer in \[0, 9\], "
                                         r"not 12$"):
        SoftmaxAttention(recip_bits=10, guard_bits=12)
    with pytest.raises(ValueError, match=r"^lut_macs must be False, True or 'scale', "
                                         r"not 'all'$"):
        SoftmaxAttention(lut_macs="all")
    dut = SoftmaxAttention.from_config(AttentionConfig(lanes=2, head_dim=8, max_tokens=16,
                                                       heads=3))
    assert (dut.lanes, dut.max_dim, dut.max_tokens, dut.max_heads) == (2, 8, 16, 3)
    Fragment.get(dut, None)


# --- linear_causal RTL ----------------------------------------------------------------------

async def _load_conv(ctx, dut, w, lanes, max_dim, conv_mult, conv_shift):
    """Write the ``taps×d`` convolution weights through ``cw_wr`` and set the conv scale."""
    from amaformer.hdl.attention_angular import conv_weight_writes
    for a, val in conv_weight_writes(w, lanes, max_dim):
        ctx.set(dut.cw_wr.addr, a)
        ctx.set(dut.cw_wr.data, val)
        ctx.set(dut.cw_wr.en, 1)
        await ctx.tick()
    ctx.set(dut.cw_wr.en, 0)
    ctx.set(dut.conv_mult, conv_mult)
    ctx.set(dut.conv_shift, conv_shift)


async def _stream_job(ctx, dut, beats, ib, out, rng, idle, bp, limit):
    """Offer ``beats[ib:]`` on ``qkv`` (idle with probability ``idle``) and collect ``o``
    (back-pressure ``bp``) until ``done``; returns (cycles since start, next beat index)."""
    cyc = 1
    while cyc < limit:
        valid = ib < len(beats) and rng.random() >= idle
        ctx.set(dut.qkv.valid, valid)
        if valid:
            ctx.set(dut.qkv.payload, beats[ib])
        ctx.set(dut.o.ready, rng.random() >= bp)
        done = ctx.get(dut.done)
        fire = valid and ctx.get(dut.qkv.ready)
        if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
            out.append(ctx.get(dut.o.payload))
        await ctx.tick()
        ib += fire
        if done:
            break
        cyc += 1
    ctx.set(dut.qkv.valid, 0)
    return cyc, ib


def _run_linear_causal(lanes, max_dim, d, chunks, seed, idle=0.0, bp=0.0, max_context=64,
                       taps=0, clears=None, lut_macs=False):
    """Run jobs of ``chunks`` tokens (the first clears the state, the others continue the
    sequence unless ``clears`` says otherwise); return the per-job cycle counts after checking
    every output. ``taps > 0``: with a causal depthwise convolution of random weights."""
    from amaformer.hdl.attention_linear import LinearCausalAttention
    g = torch.Generator().manual_seed(seed)
    t_all = sum(chunks)
    clears = clears or [True] + [False] * (len(chunks) - 1)
    q, k, v = (torch.randint(-128, 128, (t_all, d), generator=g) for _ in range(3))
    om, os_ = (int(x) for x in requant_params(1 / (40.0 * 256)))
    w = torch.randint(-128, 128, (taps, d), generator=g) if taps else None
    cm, csh = (int(x) for x in requant_params(1 / 700)) if taps else (0, 0)
    parts, t0 = [], 0               # a cleared job starts a new sequence
    for ci, n in enumerate(chunks):
        if clears[ci] and ci:
            parts.append(t0)
        t0 += n
    exp, lo = [], 0
    for hi in parts + [t_all]:
        exp.append(attention_linear_causal(q[lo:hi], k[lo:hi], v[lo:hi], om, os_, w, cm, csh))
        lo = hi
    exp = torch.cat(exp)
    dut = LinearCausalAttention(lanes=lanes, max_dim=max_dim, max_context=max_context,
                                conv_taps=taps, lut_macs=lut_macs)
    beats = [{"q": int(q[t, i]), "k": int(k[t, i]), "v": int(v[t, i])}
             for t in range(t_all) for i in range(d)]
    rng = random.Random(seed)
    out, cycles = [], []

    async def tb(ctx):
        ib = 0
        if taps:
            await _load_conv(ctx, dut, w, lanes, max_dim, cm, csh)
        for ci, n in enumerate(chunks):
            for port, val in ((dut.tokens, n), (dut.dim, d), (dut.clear, clears[ci]),
                              (dut.out_mult, om), (dut.out_shift, os_), (dut.start, 1)):
                ctx.set(port, val)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cyc, ib = await _stream_job(ctx, dut, beats, ib, out, rng, idle, bp,
                                        200 * n * d + 1000)
            cycles.append(cyc)

    simulate(dut, tb)
    assert len(out) == t_all * d
    assert torch.equal(torch.tensor(out).reshape(t_all, d), exp)
    return cycles


@pytest.mark.parametrize("lanes,max_dim,d,chunks", [
    (2, 8, 5, [4]), (4, 8, 8, [2, 3, 1]), (3, 8, 7, [5]), (1, 4, 1, [3]),
])
def test_linear_causal_rtl(lanes, max_dim, d, chunks):
    from amaformer.hdl.attention_linear import linear_causal_job_cycles
    cycles = _run_linear_causal(lanes, max_dim, d, chunks, seed=d)
    assert cycles == [linear_causal_job_cycles(n, d, lanes) for n in chunks]
    _run_linear_causal(lanes, max_dim, d, chunks, seed=d + 1, idle=0.3, bp=0.4)


@pytest.mark.parametrize("lanes,max_dim,d,chunks,taps,clears,lut", [
    (2, 6, 5, [3, 4], 3, None, False),          # taps < d; the window spans the two jobs
    (3, 4, 4, [2, 1, 5], 6, [1, 0, 1], False),  # taps > d; a clear empties the window
    (1, 2, 1, [4], 2, None, True),              # d = 1; 8-bit multipliers in logic
])
def test_linear_causal_conv_rtl(lanes, max_dim, d, chunks, taps, clears, lut):
    """The causal depthwise convolution of V against ``attention_linear_causal``, unstalled
    (exact cycle count) and with idle input and back-pressure."""
    from amaformer.hdl.attention_linear import linear_causal_job_cycles
    cycles = _run_linear_causal(lanes, max_dim, d, chunks, seed=d + 7, taps=taps, clears=clears,
                                lut_macs=lut)
    assert cycles == [linear_causal_job_cycles(n, d, lanes, taps) for n in chunks]
    _run_linear_causal(lanes, max_dim, d, chunks, seed=d + 8, idle=0.3, bp=0.4, taps=taps,
                       clears=clears, lut_macs=lut)


def test_linear_causal_flat_per_token():
    """Decoding one token costs the same after 1 and after 30 tokens of context."""
    cycles = _run_linear_causal(4, 8, 8, [1, 30, 1], seed=9)
    assert cycles[0] == cycles[2]


def test_engine_from_config():
    from amaformer.gen.attention import attention_engine_from_config
    from amaformer.hdl.attention_angular import LinearAngularAttention
    from amaformer.hdl.attention_linear import LinearCausalAttention
    sm = attention_engine_from_config(AttentionConfig(lanes=2, head_dim=8, max_tokens=16))
    assert isinstance(sm, SoftmaxAttention) and sm.lanes == 2
    lc = attention_engine_from_config(AttentionConfig(mode="linear_causal", causal=True,
                                                      lanes=4, head_dim=16, max_tokens=64))
    assert isinstance(lc, LinearCausalAttention) and lc.max_context == 64
    la = attention_engine_from_config(AttentionConfig(mode="linear_angular", lanes=4,
                                                      head_dim=16, max_tokens=64, conv_taps=9))
    assert isinstance(la, LinearAngularAttention) and (la.max_tokens, la.conv_taps) == (64, 9)
    lcc = attention_engine_from_config(AttentionConfig(mode="linear_causal", causal=True,
                                                       conv_taps=4, head_dim=8, lanes=2))
    assert lcc.conv_taps == 4 and hasattr(lcc, "cw_wr") and not hasattr(lc, "cw_wr")
    for dut in (sm, lc, la, lcc):   # created in gen/hdl: elaborate, or Amaranth warns "never used"
        Fragment.get(dut, None)
    with pytest.raises(ValueError, match=r"^lanes must be at most max_dim \(4\), not 8$"):
        LinearCausalAttention(lanes=8, max_dim=4)
    with pytest.raises(ValueError, match=r"^conv_taps must be an integer in \[0, 64\], "
                                         r"not 65$"):
        LinearCausalAttention(conv_taps=65)


def test_cli_attention(tmp_path, capsys):
    """``amaformer attention`` runs the configured kernel in simulation, bit-exact, both RTL
    modes; bad input is one line with exit status 2."""
    import json
    from amaformer.gen.cli import main
    from amaformer.gen.config import save_config
    cfg = tmp_path / "att.toml"
    save_config(AcceleratorConfig(attention=AttentionConfig(heads=2, head_dim=8, max_tokens=16,
                                                            lanes=2)), cfg)
    out = tmp_path / "r.json"
    assert main(["attention", "-c", str(cfg), "--tokens", "7", "--mask", "sparse",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bit_exact"] and res["cycles"] == res["model_cycles"] and res["tokens"] == 7
    assert main(["attention", "-c", str(cfg), "--mode", "linear_causal", "--tokens", "4"]) == 0
    assert "linear_causal attention, 2 head(s) x 4 tokens x d=8" in capsys.readouterr().out
    assert main(["attention", "-c", str(cfg), "--mode", "linear_angular", "--tokens", "3"]) == 0
    assert "linear_angular attention, 2 head(s) x 3 tokens x d=8" in capsys.readouterr().out
    assert main(["attention", "-c", str(cfg), "--tokens", "17"]) == 2
    assert capsys.readouterr().err == ("amaformer: error: --tokens must be in [1, 16] "
                                       "(attention.max_tokens), not 17\n")


# --- linear_angular RTL ---------------------------------------------------------------------

def _run_linear_angular(lanes, max_dim, d, n, taps, seed, idle=0.0, bp=0.0, max_tokens=None,
                        jobs=1, lut_macs=False):
    """Run ``jobs`` jobs back to back (new Q, K, V each, the conv weights loaded once) with
    random int8 data; check every output against ``attention_linear_angular`` and return the
    per-job cycle counts."""
    from amaformer.hdl.attention_angular import LinearAngularAttention
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (taps, d), generator=g) if taps else None
    hm, hs = (int(x) for x in requant_params(0.5))
    am, ash = (int(x) for x in requant_params(1 / (math.pi * 127 * 40)))
    cm, csh = (int(x) for x in requant_params(1 / 400)) if taps else (0, 0)
    data = []
    for _ in range(jobs):
        q, k, v = (torch.randint(-128, 128, (n, d), generator=g) for _ in range(3))
        q[0] = 0                    # a zero query: q̂ = 0, only the V and conv terms
        exp = attention_linear_angular(q, k, v, hm, hs, am, ash, w, cm, csh)
        beats = [{"q": int(q[t, i]), "k": int(k[t, i]), "v": int(v[t, i])}
                 for t in range(n) for i in range(d)]
        data.append((beats * 2, exp))
    dut = LinearAngularAttention(lanes=lanes, max_dim=max_dim, max_tokens=max_tokens or n,
                                 conv_taps=taps, lut_macs=lut_macs)
    rng = random.Random(seed)
    out, cycles = [], []

    async def tb(ctx):
        if taps:
            await _load_conv(ctx, dut, w, lanes, max_dim, cm, csh)
        for beats, _ in data:
            for port, val in ((dut.tokens, n), (dut.dim, d), (dut.half_mult, hm),
                              (dut.half_shift, hs), (dut.ang_mult, am), (dut.ang_shift, ash),
                              (dut.start, 1)):
                ctx.set(port, val)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cyc, ib = await _stream_job(ctx, dut, beats, 0, out, rng, idle, bp,
                                        100 * n * d * (d + taps) + 1000)
            assert ib == len(beats), f"{len(beats) - ib} input beats not taken"
            cycles.append(cyc)

    simulate(dut, tb)
    exp = torch.cat([e for _, e in data])
    assert len(out) == jobs * n * d
    assert torch.equal(torch.tensor(out).reshape(jobs * n, d), exp)
    return cycles


@pytest.mark.parametrize("lanes,max_dim,d,n,taps", [
    (2, 4, 4, 5, 0),            # no convolution
    (2, 6, 5, 7, 3),            # d not a multiple of the lanes, centred kernel 3
    (3, 4, 4, 2, 5),            # taps > tokens: look-ahead beyond the sequence
    (1, 3, 3, 1, 1),            # one token, one tap
    (4, 4, 1, 3, 4),            # d = 1 < lanes, even taps (asymmetric window)
])
def test_linear_angular_rtl(lanes, max_dim, d, n, taps):
    """Bit-exact with ``attention_linear_angular``; exact cycle model unstalled, and with
    idle input and back-pressure."""
    from amaformer.hdl.attention_angular import linear_angular_job_cycles
    cycles = _run_linear_angular(lanes, max_dim, d, n, taps, seed=n + 10 * d,
                                 max_tokens=max(n, taps))
    assert cycles == [linear_angular_job_cycles(n, d, lanes, taps)]
    _run_linear_angular(lanes, max_dim, d, n, taps, seed=n + 10 * d + 1, idle=0.3, bp=0.4,
                        max_tokens=max(n, taps))


def test_linear_angular_back_to_back():
    """Two jobs back to back: ``G`` is cleared by the first token of each job (8-bit
    multipliers in logic, ``lut_macs``)."""
    from amaformer.hdl.attention_angular import linear_angular_job_cycles
    cycles = _run_linear_angular(2, 4, 4, 3, 3, seed=3, jobs=2, lut_macs=True)
    assert cycles == [linear_angular_job_cycles(3, 4, 2, 3)] * 2


def test_linear_angular_constructor_errors():
    from amaformer.hdl.attention_angular import LinearAngularAttention
    for kwargs, msg in [
        (dict(lanes=0), r"^lanes must be an integer in \[1, 64\], not 0$"),
        (dict(lanes=8, max_dim=4), r"^lanes must be at most max_dim \(4\), not 8$"),
        (dict(conv_taps=9, max_tokens=8), r"^conv_taps must be at most max_tokens \(8\), "
                                          r"not 9$"),
        (dict(conv_taps=-1), r"^conv_taps must be an integer in \[0, 64\], not -1$"),
        (dict(rsqrt_table_bits=1), r"^rsqrt_table_bits must be an integer in \[2, 12\], "
                                   r"not 1$"),
    ]:
        with pytest.raises(ValueError, match=msg):
            LinearAngularAttention(**kwargs)


def test_lut_macs_config_reaches_the_kernels():
    from amaformer.hdl.attention_angular import LinearAngularAttention
    from amaformer.hdl.attention_linear import LinearCausalAttention
    small = dict(heads=1, head_dim=4, max_tokens=8, lanes=1)
    cases = [(SoftmaxAttention, AttentionConfig(lut_macs="scale", **small), "scale"),
             (SoftmaxAttention, AttentionConfig(lut_macs="all", **small), True),
             (SoftmaxAttention, AttentionConfig(**small), False),
             (LinearCausalAttention, AttentionConfig(mode="linear_causal", causal=True,
                                                     lut_macs="all", **small), True),
             (LinearAngularAttention, AttentionConfig(mode="linear_angular", lut_macs="all",
                                                      **small), True)]
    for cls, att, want in cases:
        dut = cls.from_config(att)
        assert dut.lut_macs is want
        Fragment.get(dut, None)     # elaborate, or Amaranth warns "never used"
    for kw, msg in [
        (dict(lut_macs="dsp"), "attention.lut_macs must be one of 'none', 'scale', 'all', "
                               "not 'dsp'"),
        (dict(mode="linear_causal", causal=True, lut_macs="scale"),
         "attention.lut_macs must be 'none' or 'all' in mode 'linear_causal' ('scale' is the "
         "softmax logit scaling), not 'scale'"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
            AttentionConfig(**kw)
