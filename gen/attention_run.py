"""Run the attention kernel of a configuration on data: the kernel's RTL alone in the Amaranth
simulator, checked bit for bit against the golden model and measured against float PyTorch
(the whole top through the host driver is :mod:`amaformer.host.attention_run`).

Used by ``amaformer attention`` (see :mod:`amaformer.gen.cli`). Q, K, V come from a real
all-MiniLM-L6-v2 layer on a sentence, or are random.
"""

import math
from dataclasses import asdict, dataclass

import torch

from ..hdl.simulation import simulate
from .attention import (SoftmaxFormat, attention_engine_from_config, attention_linear_angular,
                        attention_linear_causal, attention_softmax, causal_mask, cosine,
                        linear_angular_reference, linear_causal_reference,
                        minilm_attention_inputs, random_mask, softmax_reference, softmax_scales,
                        softmax_schedule, softmax_streams)
from .numerics import quantize, requant_params

__all__ = ["AttentionRun", "float_qkv", "run_attention"]


@dataclass
class AttentionRun:
    """Result of :func:`run_attention`."""
    mode: str
    heads: int
    tokens: int
    head_dim: int
    mask: str
    cycles: int
    model_cycles: int
    bit_exact: bool
    cosine_vs_float: float
    mae_lsb: float
    device: str = "kernel"      #: "kernel" (the engine alone), "sim" or a serial port
    #: simulated device: ``sim_backend``, ``sim_cycles``, ``sim_seconds``, ``cycles_per_second``
    #: and a ``summary`` line (flattened into :meth:`to_dict`, without the summary)
    sim: dict = None

    def to_dict(self):
        d = asdict(self)
        d.update({k: v for k, v in (d.pop("sim") or {}).items() if k != "summary"})
        return d


def _drive(dut, params_by_head, job, q_beats, kv_beats, n_out, mode, conv_writes=()):
    """Unstalled streams; returns (outputs, cycles from the start edge to the done edge)."""
    out, res = [], {}

    async def tb(ctx):
        for addr, value in conv_writes:
            ctx.set(dut.cw_wr.addr, addr)
            ctx.set(dut.cw_wr.data, value)
            ctx.set(dut.cw_wr.en, 1)
            await ctx.tick()
        if conv_writes:
            ctx.set(dut.cw_wr.en, 0)
        if mode == "softmax":
            from amaformer.hdl.attention import HeadParams
            for h, (sm, ss, om, os_) in enumerate(params_by_head):
                ctx.set(dut.hp_wr.addr, h)
                ctx.set(dut.hp_wr.data, HeadParams.const(
                    {"score_mult": sm, "score_shift": ss, "out_mult": om, "out_shift": os_}
                ).as_value().value)
                ctx.set(dut.hp_wr.en, 1)
                await ctx.tick()
            ctx.set(dut.hp_wr.en, 0)
        for port, value in job.items():
            ctx.set(getattr(dut, port), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        streams = [(dut.q, q_beats), (dut.kv, kv_beats)] if mode == "softmax" else \
            [(dut.qkv, q_beats)]
        pos = [0] * len(streams)
        cycles = 1
        while cycles < 50_000_000:
            for i, (port, beats) in enumerate(streams):
                ctx.set(port.valid, pos[i] < len(beats))
                if pos[i] < len(beats):
                    ctx.set(port.payload, beats[pos[i]])
            ctx.set(dut.o.ready, 1)
            fired = [pos[i] < len(b) and ctx.get(p.ready) for i, (p, b) in enumerate(streams)]
            if ctx.get(dut.o.valid):
                out.append(ctx.get(dut.o.payload))
            done = ctx.get(dut.done)
            await ctx.tick()
            pos = [p + f for p, f in zip(pos, fired)]
            if done:
                break
            cycles += 1
        res["cycles"] = cycles

    simulate(dut, tb)
    if len(out) != n_out:
        raise RuntimeError(f"the kernel produced {len(out)} outputs, expected {n_out}")
    return torch.tensor(out), res["cycles"]


def _conv_weights(taps, d, seed):
    """Seeded random float depthwise-convolution weights (``taps×d``, N(0, 0.2²)) and their
    int8 quantization ``(w, wq, scale)``; ``(None, None, 0)`` without taps."""
    if not taps:
        return None, None, 0.0
    w = torch.randn(taps, d, generator=torch.Generator().manual_seed(1000 + seed),
                    dtype=torch.float64) * 0.2
    wq, ws = quantize(w)
    return w, wq, float(ws)


def float_qkv(att, sentence, layer, tokens, seed):
    """Float ``H×N×d`` Q, K, V: all-MiniLM-L6-v2 layer ``layer`` on ``sentence`` cut to the
    configuration, or seeded N(0, 1) data with ``tokens`` tokens when ``sentence`` is None."""
    if sentence is not None:
        _, _, qf, kf, vf = minilm_attention_inputs([sentence], layers=[layer])[0]
        return (t[:att.heads, :att.max_tokens, :att.head_dim] for t in (qf, kf, vf))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(att.heads, min(tokens, att.max_tokens), att.head_dim, generator=g,
                        dtype=torch.float64) for _ in range(3))


def run_attention(att, *, sentence=None, layer=0, tokens=16, mask="dense", seed=0):
    """Run one job of the configured kernel (``att``: an ``AttentionConfig``) in simulation.

    Parameters
    ----------
    sentence : str or None
        Take Q, K, V of all-MiniLM-L6-v2 layer ``layer`` on this sentence (heads and head
        dimension cut to the configuration); ``None``: random data with ``tokens`` tokens.
    mask : str
        ``softmax``: ``"dense"``, ``"causal"`` or ``"sparse"`` (random 25 %, diagonal kept).

    Returns
    -------
    AttentionRun
    """
    dut = attention_engine_from_config(att)
    qf, kf, vf = float_qkv(att, sentence, layer, tokens, seed)
    heads, n, d = qf.shape
    fmt = SoftmaxFormat.from_config(att)
    if att.mode == "softmax":
        keep = {"dense": None, "causal": causal_mask(n),
                "sparse": random_mask(n, 0.25, torch.Generator().manual_seed(seed))}[mask]
        if att.causal and keep is None:
            keep, mask = causal_mask(n), "causal"
        prm, so, exp, ref = [], [], [], []
        q_beats, kv_beats = [], []
        for h in range(heads):
            (qq, sq), (kq, sk), (vq, sv) = quantize(qf[h]), quantize(kf[h]), quantize(vf[h])
            p = softmax_scales(float(sq), float(sk), float(sv), float(sv), d, fmt)
            prm.append(p)
            so.append(float(sv))
            exp.append(attention_softmax(qq, kq, vq, *p, keep=keep, fmt=fmt))
            ref.append(softmax_reference(qf[h], kf[h], vf[h], keep))
            a, b = softmax_streams(qq, kq, vq, att.lanes, keep)
            q_beats += a
            kv_beats += [{"k": kk, "v": vv, "keep": mk, "last": last}
                         for kk, vv, mk, last in b]
        got, cycles = _drive(dut, prm, {"heads": heads, "tokens": n, "dim": d}, q_beats,
                             kv_beats, heads * n * d, "softmax")
        from amaformer.hdl.attention import softmax_cycle_model
        model = softmax_cycle_model(n, d, att.lanes, heads, softmax_schedule(n, att.lanes, keep))
    elif att.mode == "linear_angular":
        mask = "none"
        from amaformer.hdl.attention_angular import conv_weight_writes, linear_angular_job_cycles
        got_all, exp, ref, so, cycles = [], [], [], [], 0
        cw, cq, cs = _conv_weights(att.conv_taps, d, seed)    # one set, written before each head
        for h in range(heads):
            (qq, sq), (kq, sk), (vq, sv) = quantize(qf[h]), quantize(kf[h]), quantize(vf[h])
            r = linear_angular_reference(qf[h], kf[h], vq.double() * float(sv),
                                         None if cw is None else cq.double() * cs)
            s_out = max(float(r.abs().max()), 1e-12) / 127
            hm, hs = (int(x) for x in requant_params(0.5 * float(sv) / s_out))
            am, ash = (int(x) for x in requant_params(float(sv) / (math.pi * 127 * 127 * s_out)))
            job = {"tokens": n, "dim": d, "half_mult": hm, "half_shift": hs, "ang_mult": am,
                   "ang_shift": ash}
            if cw is not None:
                cm, csh = (int(x) for x in requant_params(cs * float(sv) / s_out))
                job.update(conv_mult=cm, conv_shift=csh)
                exp.append(attention_linear_angular(qq, kq, vq, hm, hs, am, ash, cq, cm, csh))
            else:
                exp.append(attention_linear_angular(qq, kq, vq, hm, hs, am, ash))
            ref.append(r)
            so.append(s_out)
            beats = [{"q": int(qq[t, i]), "k": int(kq[t, i]), "v": int(vq[t, i])}
                     for t in range(n) for i in range(d)]
            g, c = _drive(dut, None, job, beats * 2, [], n * d, "linear",
                          () if cw is None else conv_weight_writes(cq, dut.lanes, dut.max_dim))
            got_all.append(g)
            cycles += c
        got = torch.cat(got_all)
        model = heads * linear_angular_job_cycles(n, d, dut.lanes, att.conv_taps)
    else:
        mask = "causal"
        got_all, exp, ref, so, cycles = [], [], [], [], 0
        from amaformer.hdl.attention_angular import conv_weight_writes
        from amaformer.hdl.attention_linear import linear_causal_job_cycles
        cw, cq, cs = _conv_weights(att.conv_taps, d, seed)    # one set, written before each head
        for h in range(heads):
            (qq, sq), (kq, sk), (vq, sv) = quantize(qf[h]), quantize(kf[h]), quantize(vf[h])
            r = linear_causal_reference(qf[h], kf[h], vf[h], float(sq), float(sk),
                                        None if cw is None else cq.double() * cs)
            s_out = max(float(r.abs().max()), 1e-12) / 127
            om, os_ = (int(x) for x in requant_params(float(sv) / (s_out * (1 << fmt.guard_bits))))
            job = {"tokens": n, "dim": d, "clear": 1, "out_mult": om, "out_shift": os_}
            if cw is not None:
                cm, csh = (int(x) for x in requant_params(cs * float(sv) / s_out))
                job.update(conv_mult=cm, conv_shift=csh)
                exp.append(attention_linear_causal(qq, kq, vq, om, os_, cq, cm, csh, fmt=fmt))
            else:
                exp.append(attention_linear_causal(qq, kq, vq, om, os_, fmt=fmt))
            ref.append(r)
            so.append(s_out)
            beats = [{"q": int(qq[t, i]), "k": int(kq[t, i]), "v": int(vq[t, i])}
                     for t in range(n) for i in range(d)]
            g, c = _drive(dut, None, job, beats, [], n * d, "linear",
                          () if cw is None else conv_weight_writes(cq, dut.lanes, dut.max_dim))
            got_all.append(g)
            cycles += c
        got = torch.cat(got_all)
        model = heads * linear_causal_job_cycles(n, d, dut.lanes, att.conv_taps)
    exp = torch.stack(exp)
    scale = torch.tensor(so, dtype=torch.float64)[:, None, None]
    y = got.reshape(heads, n, d).double() * scale
    ref = torch.stack(ref)
    return AttentionRun(
        mode=att.mode, heads=heads, tokens=n, head_dim=d, mask=mask, cycles=cycles,
        model_cycles=model, bit_exact=bool(torch.equal(got.reshape(heads, n, d), exp)),
        cosine_vs_float=round(cosine(y, ref), 6),
        mae_lsb=round(float(((y - ref).abs() / scale).mean()), 4))
