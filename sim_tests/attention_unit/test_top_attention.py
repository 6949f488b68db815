"""Attention behind the top: attention jobs through the host driver and the simulated device.

Every output is compared with the bit-exact golden models (``gen.attention.attention_softmax``,
``attention_linear_causal``) on random int8 Q, K, V with fixed seeds, every job's cycle count
(``STATUS``) with ``gen.cost.attention_cycles``; bad descriptors, BUSY and ABORT are checked
through raw frames; configuration and driver errors have their messages pinned.
"""

import dataclasses
import re

import numpy as np
import pytest
import torch

from amaformer.gen.attention import (SoftmaxFormat, attention_linear_angular,
                                     attention_linear_causal, attention_softmax, causal_mask,
                                     random_mask, softmax_scales, softmax_schedule)
from amaformer.gen.config import (AcceleratorConfig, AttentionConfig, ConfigError, LinearConfig,
                                  dump_toml)
from amaformer.gen.cost import attention_cycles
from amaformer.hdl import attention_spec as S
from amaformer.hdl import protocol as P
from amaformer.hdl.registry import pack_descriptor
from amaformer.host import Device, DeviceError

from conftest import sim_transport

LIN = LinearConfig(lanes=2, max_k=16, max_n=16, max_m=16, weight_depth=64)
SOFTMAX = AttentionConfig(mode="softmax", heads=2, head_dim=16, max_tokens=20, lanes=4,
                          sparse=True, enabled=True)
LINEAR = AttentionConfig(mode="linear_causal", causal=True, heads=2, head_dim=8, max_tokens=12,
                         lanes=4, enabled=True)
ANGULAR = AttentionConfig(mode="linear_angular", heads=2, head_dim=8, max_tokens=12, lanes=4,
                          enabled=True)
ACT, OUT = 4096, 1024


def make_device(att, backend="amaranth"):
    cfg = AcceleratorConfig(linear=LIN, attention=att)
    tr = sim_transport(cfg, backend, timeout_cycles=300, act_depth=ACT, out_depth=OUT)
    return Device(tr, timeout=0.01, retries=0, expect=cfg)


@pytest.fixture(scope="module")
def sdev(sim_backend):
    return make_device(SOFTMAX, sim_backend)


@pytest.fixture(scope="module")
def ldev(sim_backend):
    return make_device(LINEAR, sim_backend)


def qkv(h, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-128, 128, (h, n, d), generator=g) for _ in range(3)]


def head_params(h, d, seed):
    """Per-head (score_mult, score_shift, out_mult, out_shift) from random float scales."""
    g = torch.Generator().manual_seed(seed)
    sc = 0.01 + 0.05 * torch.rand(h, 3, generator=g, dtype=torch.float64)
    return [softmax_scales(float(a), float(b), float(c), float(c) * 0.7, d,
                           SoftmaxFormat.from_config(SOFTMAX)) for a, b, c in sc]


def run_softmax(dev, h, n, d, mask, seed):
    q, k, v = qkv(h, n, d, seed)
    prm = head_params(h, d, seed)
    keep = mask if not isinstance(mask, str) else {"dense": None,
                                                   "causal": causal_mask(n)}[mask]
    sm, ss, om, os_ = (torch.tensor(x) for x in zip(*prm))
    jobs = dev.status().jobs
    y = dev.unit("attention").attention(q, k, v, om, os_, score_mult=sm, score_shift=ss,
                      mask=None if mask == "dense" else mask)
    exp = torch.stack([attention_softmax(q[i], k[i], v[i], *prm[i], keep=keep,
                                         fmt=SoftmaxFormat.from_config(SOFTMAX))
                       for i in range(h)])
    assert y.dtype == torch.int8 and y.shape == (h, n, d)
    assert torch.equal(y.to(torch.int64), exp)
    kind = mask if isinstance(mask, str) else "sparse"
    assert dev.last_cycles == attention_cycles("softmax", h, n, d, SOFTMAX.lanes, mask=kind,
                                               keep=keep)
    assert dev.status().jobs == jobs + 1


# ---------------------------------------------------------------------- softmax


@pytest.mark.parametrize("h,n,d,mask,seed", [
    (2, 7, 8, "dense", 0),          # two heads back to back; N not a multiple of lanes
    (1, 1, 8, "dense", 1),          # one token
    (2, 9, 12, "causal", 2),        # causal mask computed in hardware
    (1, 20, 3, "causal", 3),        # the longest job, d = 3
])
def test_softmax_bit_exact(sdev, h, n, d, mask, seed):
    run_softmax(sdev, h, n, d, mask, seed)


def test_softmax_sparse(sdev):
    """A random mask with half of the rows keeping only the diagonal, and a hand-made one whose
    first block keeps one key only and whose last rows skip key 0."""
    g = torch.Generator().manual_seed(7)
    run_softmax(sdev, 1, 13, 8, random_mask(13, 0.3, g, empty_rows=0.5), 4)
    keep = torch.eye(9, dtype=torch.bool)
    keep[:4, :] = False
    keep[:4, 2] = True
    keep[6:, 8] = True
    run_softmax(sdev, 1, 9, 4, keep, 5)
    keep[5] = False                 # a row that keeps no key outputs zeros
    run_softmax(sdev, 1, 9, 4, keep, 6)


def test_keep_mask_image_follows_schedule():
    g = torch.Generator().manual_seed(3)
    for n, lanes in ((13, 4), (8, 8), (5, 3)):
        keep = random_mask(n, 0.3, g, empty_rows=0.3)
        img = S.keep_mask_image(keep, lanes)
        sched = softmax_schedule(n, lanes, keep)
        assert len(img) == len(sched) * (2 + n)
        for b, (_, _, keys) in enumerate(sched):
            blk = img[b * (2 + n):(b + 1) * (2 + n)]
            assert int.from_bytes(blk[:2], "little") == keys[-1][0]
            assert [(j, mk) for j, mk in enumerate(blk[2:]) if mk] == keys


def test_linear_and_attention_jobs_interleaved(sdev):
    """The linear engine and the attention unit share the memories and the job control."""
    from amaformer.gen.cost import linear_cycles
    from amaformer.gen.golden import linear_mul
    from amaformer.gen.layers import random_layer
    for seed in (0, 1):
        x, w, b, mult, shift = random_layer(3, 8, 4, seed)
        y = sdev.unit("linear").linear(x, w, b, mult, shift)
        assert torch.equal(y.to(torch.int64), linear_mul(x, w, b, mult, shift))
        assert sdev.last_cycles == linear_cycles(3, 8, 4, LIN.lanes)
        run_softmax(sdev, 1, 5, 4, "causal", 60 + seed)


# ---------------------------------------------------------------------- linear_causal


def test_linear_causal_new_and_continued(ldev):
    fmt = SoftmaxFormat.from_config(LINEAR)
    q, k, v = qkv(2, 7, 8, 11)
    om, os_ = torch.tensor([21000, 30000]), torch.tensor([19, 20])
    y = ldev.unit("attention").attention(q, k, v, om, os_, mask="causal")
    exp = torch.stack([attention_linear_causal(q[i], k[i], v[i], int(om[i]), int(os_[i]),
                                               fmt=fmt) for i in range(2)])
    assert torch.equal(y.to(torch.int64), exp)
    assert ldev.last_cycles == attention_cycles("linear_causal", 2, 7, 8, 4)
    # one head decoded in two jobs: 5 tokens, then 6 more continuing the running state
    q, k, v = qkv(1, 11, 8, 12)
    first = ldev.unit("attention").attention(q[:, :5], k[:, :5], v[:, :5], 25000, 18)
    second = ldev.unit("attention").attention(q[:, 5:], k[:, 5:], v[:, 5:], 25000, 18, cont=True)
    exp = attention_linear_causal(q[0], k[0], v[0], 25000, 18, fmt=fmt)
    assert torch.equal(torch.cat([first, second], 1)[0].to(torch.int64), exp)
    assert ldev.last_cycles == attention_cycles("linear_causal", 1, 6, 8, 4)


def test_linear_causal_convolution(sim_backend):
    """A unit with a 3-tap causal convolution over V: weights through Space.CONV, the scale per
    head; two heads, then one head continued (the V window carries over)."""
    cfg = dataclasses.replace(LINEAR, conv_taps=3)
    dev = make_device(cfg, sim_backend)
    assert dev.unit("attention").info.conv_taps == 3
    fmt = SoftmaxFormat.from_config(cfg)
    g = torch.Generator().manual_seed(21)
    w = torch.randint(-128, 128, (3, 8), generator=g)
    q, k, v = qkv(2, 6, 8, 22)
    om, os_, cm, cs = [21000, 30000], [19, 20], [9000, 17000], [14, 15]
    y = dev.unit("attention").attention(q, k, v, om, os_, conv_w=w, conv_mult=cm, conv_shift=cs)
    exp = torch.stack([attention_linear_causal(q[i], k[i], v[i], om[i], os_[i], conv_w=w,
                                               conv_mult=cm[i], conv_shift=cs[i], fmt=fmt)
                       for i in range(2)])
    assert torch.equal(y.to(torch.int64), exp)
    assert dev.last_cycles == attention_cycles("linear_causal", 2, 6, 8, 4, conv_taps=3)
    q, k, v = qkv(1, 9, 5, 23)                  # d = 5 < head_dim; 4 tokens, then 5 more
    w5 = w[:, :5]
    first = dev.unit("attention").attention(q[:, :4], k[:, :4], v[:, :4], 25000, 18, conv_w=w5,
                          conv_mult=12000, conv_shift=15)
    second = dev.unit("attention").attention(q[:, 4:], k[:, 4:], v[:, 4:], 25000, 18, conv_mult=12000,
                           conv_shift=15, cont=True)
    exp = attention_linear_causal(q[0], k[0], v[0], 25000, 18, conv_w=w5, conv_mult=12000,
                                  conv_shift=15, fmt=fmt)
    assert torch.equal(torch.cat([first, second], 1)[0].to(torch.int64), exp)
    assert dev.last_cycles == attention_cycles("linear_causal", 1, 5, 5, 4, conv_taps=3)
    q, k, v = qkv(1, 4, 2, 24)                  # d = 2 < taps + 1: the update takes taps + 1
    y = dev.unit("attention").attention(q, k, v, 25000, 18, conv_w=w[:, :2], conv_mult=12000, conv_shift=15)
    exp = attention_linear_causal(q[0], k[0], v[0], 25000, 18, conv_w=w[:, :2],
                                  conv_mult=12000, conv_shift=15, fmt=fmt)
    assert torch.equal(y[0].to(torch.int64), exp)
    assert dev.last_cycles == attention_cycles("linear_causal", 1, 4, 2, 4, conv_taps=3)
    with pytest.raises(ValueError, match=r"^conv_w must be 3×d with d in \[1, 8\], not 2×8$"):
        dev.unit("attention").attention(q, k, v, 25000, 18, conv_w=w[:2])


# ---------------------------------------------------------------------- linear_angular


def test_linear_angular(sim_backend):
    """Two heads, each read twice by the sequencer (the kernel's two passes)."""
    dev = make_device(ANGULAR, sim_backend)
    assert dev.unit("attention").mode == "linear_angular" and dev.unit("attention").info.masks == 1
    q, k, v = qkv(2, 7, 6, 31)
    hm, hs, am, ash = [20000, 30000], [16, 17], [25000, 21000], [22, 21]
    y = dev.unit("attention").attention(q, k, v, am, ash, half_mult=hm, half_shift=hs)
    exp = torch.stack([attention_linear_angular(q[i], k[i], v[i], hm[i], hs[i], am[i], ash[i])
                       for i in range(2)])
    assert torch.equal(y.to(torch.int64), exp)
    assert dev.last_cycles == attention_cycles("linear_angular", 2, 7, 6, 4)
    for fields in (dict(mask=1), dict(flags=1)):
        with pytest.raises(DeviceError, match="DESCRIPTOR"):
            run_raw(dev, desc(**fields))
    with pytest.raises(ValueError, match=r"^mask must be None for linear_angular attention, "
                                         r"not 'causal'$"):
        dev.unit("attention").attention(q, k, v, am, ash, half_mult=hm, half_shift=hs, mask="causal")


# ---------------------------------------------------------------------- errors


def desc(**kw):
    d = dict(heads=1, mask=0, flags=0, tokens=4, dim=8, q_addr=0, k_addr=64, v_addr=128,
             o_addr=0, mask_addr=256)
    d.update(kw)
    return pack_descriptor(S.DESCRIPTOR, d)


def run_raw(dev, payload, index=None):
    """``RUN`` of raw descriptor bytes on the attention unit (or unit ``index``)."""
    if index is None:
        index = dev.unit("attention").index
    return dev.transact(P.Op.RUN, index, 0, payload)


@pytest.mark.parametrize("fields", [
    dict(heads=0), dict(heads=3), dict(heads=1 << 15), dict(tokens=0), dict(tokens=21),
    dict(dim=0), dict(dim=17), dict(mask=3), dict(mask=130), dict(flags=1),
    dict(q_addr=ACT), dict(k_addr=1 << 31), dict(q_addr=ACT - 31),        # 32 bytes
    dict(k_addr=ACT - 31), dict(v_addr=ACT - 31),
    dict(o_addr=OUT - 31), dict(mask=2, mask_addr=ACT - 5),               # image: 6 bytes
    dict(heads=2, tokens=20, dim=16, o_addr=OUT - 639),                   # output: 640 bytes
])
def test_bad_descriptor(sdev, fields):
    with pytest.raises(DeviceError, match="RUN failed: DESCRIPTOR") as e:
        run_raw(sdev, desc(**fields))
    assert e.value.code == P.Status.DESCRIPTOR
    assert not sdev.status().busy


def test_descriptor_limits_accepted(sdev):
    """The largest addresses that still fit are accepted (the bounds are not off by one)."""
    for fields in (dict(q_addr=ACT - 32), dict(k_addr=ACT - 32), dict(v_addr=ACT - 32),
                   dict(o_addr=OUT - 32),
                   dict(mask=2, mask_addr=ACT - 6)):
        sdev.unit("attention").run_attention(1, 4, 8, **{**dict(q_addr=0, k_addr=64, v_addr=128, o_addr=0,
                                               mask_addr=256),
                                       **{k: v for k, v in fields.items() if k != "mask"}},
                           mask="sparse" if "mask" in fields else "dense")


def test_bad_length_and_linear_rules(ldev):
    with pytest.raises(DeviceError, match="LENGTH"):
        run_raw(ldev, desc()[:-1])
    ldev.abort()                    # no open sequence after a reset of the unit
    for fields in (dict(mask=0), dict(mask=1, flags=1),                  # nothing to continue
                   dict(mask=1, flags=2)):
        with pytest.raises(DeviceError, match="DESCRIPTOR"):
            run_raw(ldev, desc(**fields))
    q, k, v = qkv(2, 8, 8, 13)
    ldev.unit("attention").attention(q, k, v, [20000, 20000], [19, 19])
    for fields in (dict(mask=1, flags=1, heads=2),                       # two heads: no
                   dict(mask=1, flags=1, tokens=5)):                     # 8 + 5 > 12 tokens
        with pytest.raises(DeviceError, match="DESCRIPTOR"):
            run_raw(ldev, desc(**fields))
    run_raw(ldev, desc(mask=1, flags=1, tokens=4))   # 8 + 4 fits
    ldev.wait(2000)


def test_busy_and_abort_then_correct_job(sdev):
    h, n, d = 1, 20, 16
    q, k, v = qkv(h, n, d, 21)
    size = h * n * d
    sdev.write_memory(P.Space.ACT, 0, b"".join(t.numpy().astype(np.int8).tobytes()
                                               for t in (q, k, v)))
    sdev.unit("attention").run_attention(h, n, d, q_addr=0, k_addr=size, v_addr=2 * size, wait=False)
    assert sdev.status().busy
    for call in (lambda: sdev.unit("attention").run_attention(1, 4, 8, q_addr=0, k_addr=0, v_addr=0, wait=False),
                 lambda: sdev.write_memory(sdev.unit("attention").space("heads"), 0, bytes(8)),
                 lambda: sdev.read_memory(P.Space.OUT, 0, 4)):
        with pytest.raises(DeviceError, match="BUSY"):
            call()
    sdev.abort()
    st = sdev.status()
    assert not st.busy and st.aborted
    run_softmax(sdev, 2, 6, 8, "causal", 22)


def test_no_attention_unit(sim_backend):
    cfg = AcceleratorConfig(linear=LIN)
    dev = Device(sim_transport(cfg, sim_backend, timeout_cycles=300, act_depth=256,
                               out_depth=256),
                 timeout=0.01, retries=0, expect=cfg)
    assert [u.kind for u in dev.info.units] == ["linear"]
    with pytest.raises(DeviceError, match="RUN failed: UNIT"):
        run_raw(dev, desc(), index=1)
    with pytest.raises(DeviceError, match=r"^the device has no attention unit \(its units: "
                                          r"linear\); enable it in the configuration and "
                                          r"rebuild$"):
        dev.unit("attention").attention(*qkv(1, 2, 2, 0), 1, 1)
    with pytest.raises(DeviceError, match=r"^device has 0 attention unit\(s\), the "
                                          r"configuration expects 1$"):
        dev.check_config(AcceleratorConfig(linear=LIN, attention=SOFTMAX))


def test_driver_errors(sdev):
    q, k, v = qkv(1, 4, 8, 0)
    cases = [
        (dict(q=q, k=k[:, :3], v=v), "q, k, v must have the same shape H×N×d (or N×d), not "
                                     "(1, 4, 8), (1, 3, 8), (1, 4, 8)"),
        (dict(q=qkv(3, 4, 8, 0)[0]), "heads must be in [1, 2] for this device, not 3"),
        (dict(q=qkv(1, 21, 8, 0)[0]), "tokens must be in [1, 20] for this device, not 21"),
        (dict(q=torch.full((1, 4, 8), 200)), "q must hold int8 values, not [200, 200]"),
        (dict(mask="upper"), "mask must be None, 'causal' or an N×N bool mask, not 'upper'"),
        (dict(mask=torch.ones(3, 3, dtype=torch.bool)), "mask must be 4×4, not 3×3"),
        (dict(mask=torch.zeros(4, 4, dtype=torch.bool)),
         "mask must keep at least one key in every block of 4 query rows (rows 0...3 keep "
         "none)"),
        (dict(score_mult=None), "softmax attention needs score_mult and score_shift per head"),
    ]
    for kw, msg in cases:
        args = dict(q=q, k=k, v=v, score_mult=[1000], score_shift=[10])
        args.update(kw)
        if "q" in kw and "k" not in kw:
            args["k"] = args["v"] = args["q"]
        with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
            sdev.unit("attention").attention(args["q"], args["k"], args["v"], [100], [8],
                           score_mult=args["score_mult"], score_shift=args["score_shift"],
                           mask=args.get("mask"))


# ---------------------------------------------------------------------- configuration


def test_config_enabled_round_trip_and_errors():
    cfg = AcceleratorConfig(attention=SOFTMAX)
    assert "enabled = true" in dump_toml(cfg.to_dict())
    assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg
    assert AcceleratorConfig().attention.enabled is False
    for kw, msg in [
        (dict(enabled="yes"), "attention.enabled must be true or false, not 'yes'"),
        (dict(mode="linear_angular", conv_taps=3, enabled=True),
         "attention.conv_taps must be 0 for linear_angular with attention.enabled = true "
         "(through the top, the convolution runs in linear_causal only), not 3"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
            AttentionConfig(**kw)


def test_attention_through_serial_transport():
    """SerialTransport (pyserial) ↔ pseudo-terminal ↔ simulated device: a board's code path."""
    from amaformer.host import SerialTransport
    from test_host import PtyDevice
    cfg = AcceleratorConfig(linear=LIN, attention=SOFTMAX)
    side = PtyDevice(cfg)
    try:
        with SerialTransport(side.port, 115200, clk_hz=12_000_000) as link:
            dev = Device(link, timeout=5.0, retries=1, expect=cfg)
            q, k, v = qkv(1, 5, 8, 41)
            prm = head_params(1, 8, 41)
            y = dev.unit("attention").attention(q[0], k[0], v[0], prm[0][2], prm[0][3], score_mult=prm[0][0],
                              score_shift=prm[0][1], mask="causal")
            assert y.shape == (5, 8)
            exp = attention_softmax(q[0], k[0], v[0], *prm[0], keep=causal_mask(5),
                                    fmt=SoftmaxFormat.from_config(SOFTMAX))
            assert torch.equal(y.to(torch.int64), exp)
    finally:
        side.close()


# ---------------------------------------------------------------------- command line


def test_cli_attention_on_device(tmp_path, capsys):
    from amaformer.gen.cli import main
    cfg = tmp_path / "att.toml"
    cfg.write_text(dump_toml(AcceleratorConfig(linear=LIN, attention=AttentionConfig(
        heads=1, head_dim=8, max_tokens=8, lanes=4)).to_dict()))
    out = tmp_path / "att.json"
    assert main(["attention", "-c", str(cfg), "--device", "sim", "--tokens", "6", "--mask",
                 "causal", "--json", str(out)]) == 0
    line = capsys.readouterr().out
    assert re.match(r"softmax attention, 1 head\(s\) x 6 tokens x d=8 \(causal\): bit-exact "
                    r"True, (\d+) cycles \(model \1\), cosine vs float 0\.99", line), line
    assert '"device": "sim"' in out.read_text()
    assert main(["attention", "-c", str(cfg), "--device", "/dev/amaformer-none", "--tokens",
                 "4"]) == 1
    assert capsys.readouterr().err.startswith(
        "amaformer: error: cannot open serial port '/dev/amaformer-none': ")


def test_attention_only_accelerator(sim_backend):
    """linear.enabled = false: no linear engine (RUN and its spaces are refused), attention
    still bit-exact."""
    lin = LinearConfig(lanes=2, max_k=16, max_n=16, max_m=16, weight_depth=64, enabled=False)
    cfg = AcceleratorConfig(linear=lin, attention=LINEAR)
    dev = Device(sim_transport(cfg, sim_backend, timeout_cycles=300, act_depth=512,
                               out_depth=256),
                 timeout=0.01, retries=0, expect=cfg)
    assert [u.kind for u in dev.info.units] == ["attention"]
    assert dev.unit("attention").mode == "linear_causal"
    with pytest.raises(DeviceError, match="RUN failed: UNIT"):
        dev.transact(P.Op.RUN, 1, 0, bytes(20))
    with pytest.raises(DeviceError, match="WRITE failed: ADDRESS"):
        dev.write_memory(P.unit_space(1, 0), 0, bytes(2))
    with pytest.raises(DeviceError, match=r"^the device has no linear unit \(its units: "
                                          r"attention\); enable it in the configuration and "
                                          r"rebuild$"):
        dev.unit("linear").linear(np.zeros((1, 4)), np.zeros((4, 4)), np.zeros(4), np.ones(4), np.ones(4))
    q, k, v = qkv(1, 5, 8, 51)
    y = dev.unit("attention").attention(q, k, v, 24000, 19)
    assert torch.equal(y.to(torch.int64), attention_linear_causal(
        q[0], k[0], v[0], 24000, 19, fmt=SoftmaxFormat.from_config(LINEAR))[None])
    with pytest.raises(ConfigError, match=r"^linear\.enabled, attention\.enabled and "
                                          r"sparse_dense\.enabled must not all be false \(the "
                                          r"accelerator would have no engine\)$"):
        AcceleratorConfig(linear=lin)
    with pytest.raises(ConfigError, match=r"^linear\.enabled must be true or false, not 0$"):
        LinearConfig(enabled=0)
