"""Run one attention job through the host driver on a device (the simulated top, Verilator by
default, or a board), checked bit for bit against the golden model, its cycles against the cycle
model, and measured against float PyTorch. Used by ``amaformer attention --device``.
"""

import math

import torch

from ..gen.attention import (SoftmaxFormat, attention_linear_angular, attention_linear_causal,
                             attention_softmax, causal_mask, cosine, linear_angular_reference,
                             linear_causal_reference, random_mask, softmax_reference,
                             softmax_scales)
from ..gen.attention_run import AttentionRun, float_qkv
from ..gen.cost import attention_cycles
from ..gen.numerics import quantize, requant_params
from .layer_run import open_device

__all__ = ["run_attention_device"]


def run_attention_device(config, device="sim", *, sentence=None, layer=0, tokens=16,
                         mask="dense", seed=0, timeout=2.0, retries=3, backend=None):
    """Run one attention job through the host driver on ``device``: ``"sim"`` (the
    configuration's top, with the attention unit, simulated on ``backend``: see
    :func:`amaformer.host.sim.make_sim_transport`; default Verilator, falling back to Amaranth's
    simulator) or a serial port (a board running that configuration's bitstream).

    Q, K, V come from all-MiniLM-L6-v2 layer ``layer`` on ``sentence`` (heads and head dimension
    cut to ``config.attention``) or are random (``tokens``, ``seed``), quantized to int8 per
    head; the output is compared bit for bit with the golden model and with float PyTorch, the
    cycle count with :func:`amaformer.gen.cost.attention_cycles`. ``mask`` as in
    :func:`run_attention` (``linear_causal``: always causal; ``linear_angular``: none).

    Raises
    ------
    OSError, amaformer.host.DeviceError
        The serial port cannot be opened, or the device does not answer or differs from
        ``config`` (which is taken with ``attention.enabled = true``).
    amaformer.host.verilator.VerilatorUnavailable
        ``backend="verilator"`` and the Verilator build cannot run.
    """
    import dataclasses


    att = dataclasses.replace(config.attention, enabled=True)
    config = config.replace(attention=att)
    qf, kf, vf = float_qkv(att, sentence, layer, tokens, seed)
    heads, n, d = qf.shape
    fmt = SoftmaxFormat.from_config(att)
    quant = [tuple(quantize(t[h]) for t in (qf, kf, vf)) for h in range(heads)]
    q, k, v = (torch.stack([qq[i][0] for qq in quant]) for i in range(3))
    scales = [tuple(float(x[1]) for x in qq) for qq in quant]          # (sq, sk, sv) per head
    dev = open_device(device, config, timeout=timeout, retries=retries, backend=backend)
    try:
        if att.mode == "softmax":
            keep = {"dense": None, "causal": causal_mask(n),
                    "sparse": random_mask(n, 0.25, torch.Generator().manual_seed(seed))}[mask]
            prm = [softmax_scales(sq, sk, sv, sv, d, fmt) for sq, sk, sv in scales]
            sm, ss, om, os_ = (torch.tensor(x) for x in zip(*prm))
            got = dev.unit("attention").attention(q, k, v, om, os_, score_mult=sm, score_shift=ss,
                                mask={"dense": None, "causal": "causal"}.get(mask, keep))
            exp = torch.stack([attention_softmax(q[h], k[h], v[h], *prm[h], keep=keep, fmt=fmt)
                               for h in range(heads)])
            ref = softmax_reference(qf, kf, vf, keep)
            so = [sv for _, _, sv in scales]
        elif att.mode == "linear_angular":
            mask, keep = "dense", None
            ref = torch.stack([linear_angular_reference(qf[h], kf[h], v[h].double() * sv)
                               for h, (_, _, sv) in enumerate(scales)])
            so = [max(float(r.abs().max()), 1e-12) / 127 for r in ref]
            hm, hs, am, ash = zip(*(
                tuple(int(x) for x in requant_params(0.5 * sv / s))
                + tuple(int(x) for x in requant_params(sv / (math.pi * 127 * 127 * s)))
                for (_, _, sv), s in zip(scales, so)))
            got = dev.unit("attention").attention(q, k, v, list(am), list(ash), half_mult=list(hm),
                                half_shift=list(hs))
            exp = torch.stack([attention_linear_angular(q[h], k[h], v[h], hm[h], hs[h], am[h],
                                                        ash[h]) for h in range(heads)])
        else:
            mask, keep = "causal", None
            ref = torch.stack([linear_causal_reference(qf[h], kf[h], vf[h], sq, sk)
                               for h, (sq, sk, _) in enumerate(scales)])
            so = [max(float(r.abs().max()), 1e-12) / 127 for r in ref]
            om, os_ = zip(*((int(a), int(b)) for a, b in (
                requant_params(sv / (s * (1 << fmt.guard_bits)))
                for (_, _, sv), s in zip(scales, so))))
            got = dev.unit("attention").attention(q, k, v, list(om), list(os_),
                                                     mask="causal")
            exp = torch.stack([attention_linear_causal(q[h], k[h], v[h], om[h], os_[h], fmt=fmt)
                               for h in range(heads)])
        cycles = dev.last_cycles
        sim = (dict(dev.transport.sim_figures(), summary=dev.transport.summary())
               if hasattr(dev.transport, "sim_figures") else None)
    finally:
        dev.close()
    model = attention_cycles(att.mode, heads, n, d, dev.unit("attention").info.lanes, mask=mask, keep=keep,
                             conv_taps=dev.unit("attention").info.conv_taps)
    scale = torch.tensor(so, dtype=torch.float64)[:, None, None]
    y = got.to(torch.float64) * scale
    return AttentionRun(
        mode=att.mode, heads=heads, tokens=n, head_dim=d, mask=mask, cycles=cycles,
        model_cycles=model, bit_exact=bool(torch.equal(got.to(torch.int64), exp)),
        cosine_vs_float=round(cosine(y, ref), 6),
        mae_lsb=round(float(((y - ref).abs() / scale).mean()), 4), device=device, sim=sim)
