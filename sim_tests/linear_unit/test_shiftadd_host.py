# amaranth: UnusedElaboratable=no
"""The shift and bcq engines behind the accelerator top, driven by the real host driver over the
simulated device: results bit-exact with the golden models, N split by the driver (bcq's weight
words count per chunk), cycle counts from the cost models, and the descriptor check."""

import dataclasses

import pytest
import torch

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.cost import bcq_cycles, shift_cycles
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.hdl.linear_layout import BcqMatrix
from amaformer.hdl import protocol as P
from amaformer.host import Device, DeviceError
from amaformer.host.linear import LinearDriver

from conftest import sim_transport
from test_shiftadd import random_bcq_weights, random_params, random_shift_weights


def device(backend="amaranth", **linear):
    cfg = AcceleratorConfig(linear=LinearConfig(max_m=8, **linear))
    tr = sim_transport(cfg, backend, timeout_cycles=300, act_depth=512, out_depth=512)
    return Device(tr, timeout=0.01, retries=0, expect=cfg)


def test_shift_through_host(sim_backend):
    dev = device(sim_backend, mode="shift", lanes=4, max_k=32, max_n=16, weight_depth=32)
    assert dev.unit("linear").mode == "shift" and dev.unit("linear").info.weight_bits == 4
    g = torch.Generator().manual_seed(11)
    m, k, n = 3, 13, 10
    x = torch.randint(-128, 128, (m, k), generator=g)
    w = random_shift_weights(g, k, n)
    bias, mult, shift = random_params(g, n)
    y = dev.unit("linear").linear(x, w, bias, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_shift(x, w, bias, mult, shift))
    assert dev.job_cycles == [shift_cycles(m, k, 8, 4), shift_cycles(m, k, 2, 4)]


def test_bcq_through_host(sim_backend):
    dev = device(sim_backend, mode="bcq", lanes=2, bcq_bits=2, max_k=40, max_n=16, weight_depth=24)
    assert dev.unit("linear").mode == "bcq" and dev.unit("linear").info.weight_bits == 2
    g = torch.Generator().manual_seed(12)
    m, k, n = 2, 35, 7                 # 3 chunks of 16: 6 words per column, 4 columns per job
    x = torch.randint(-128, 128, (m, k), generator=g)
    planes, alpha = random_bcq_weights(g, 2, k, n, 16)
    bias, mult, shift = random_params(g, n)
    y = dev.unit("linear").linear(x, BcqMatrix(planes, alpha, 16), bias, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_bcq(x, planes, alpha, 16, bias, mult, shift))
    assert dev.job_cycles == [bcq_cycles(m, k, 4, 2, 2), bcq_cycles(m, k, 3, 2, 2)]
    with pytest.raises(DeviceError) as e:          # 3 chunks · 5 columns · 2 planes = 30 > 24
        dev.unit("linear").run(1, k, 5)
    assert e.value.code == P.Status.DESCRIPTOR


def test_wide_shift_through_host(sim_backend):
    """A shift engine with g = 4 products per lane and cycle: the driver learns g from
    ``IDENT`` (``lin_inputs``), packs the weights for it and counts ``ceil(K/g)`` words per
    column group when splitting N."""
    dev = device(sim_backend, mode="shift", lanes=2, shift_inputs=4, shift_levels=4, max_k=16,
                 max_n=8, weight_depth=64)
    lin = dev.unit("linear")
    assert lin.info.lin_inputs == 4 and lin.info.weight_word_bytes == 4
    wide = LinearDriver(dev, dataclasses.replace(lin.info, record={**lin.info.record,
                                                                   "max_n": 64}))
    assert wide.max_n_for_k(13) == 64 // 4 * 2
    g = torch.Generator().manual_seed(13)
    m, k, n = 3, 13, 11                 # two jobs (N = 8 + 3), a partial last chunk
    x = torch.randint(-128, 128, (m, k), generator=g)
    w = random_shift_weights(g, k, n, 4)
    bias, mult, shift = random_params(g, n)
    y = dev.unit("linear").linear(x, w, bias, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_shift(x, w, bias, mult, shift))
    assert dev.job_cycles == [shift_cycles(m, k, 8, 2, 4), shift_cycles(m, k, 3, 2, 4)]


@pytest.mark.parametrize("g", [4, 3])
def test_wide_shift_weight_budget(g, sim_backend):
    """The device's RUN check counts ``ceil(K/g)`` words per column group (g = 3: counted
    chunk by chunk): a job that fills the weight buffer exactly runs in one piece, one more
    column is refused (K·ceil(N/lanes) words would refuse both)."""
    k, lanes = 13, 2
    chunks = -(-k // g)
    dev = device(sim_backend, mode="shift", lanes=lanes, shift_inputs=g, shift_levels=4, max_k=16,
                 max_n=16, weight_depth=4 * chunks)
    gen = torch.Generator().manual_seed(20 + g)
    m, n = 2, 4 * lanes
    x = torch.randint(-128, 128, (m, k), generator=gen)
    w = random_shift_weights(gen, k, n, 4)
    bias, mult, shift = random_params(gen, n)
    y = dev.unit("linear").linear(x, w, bias, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_shift(x, w, bias, mult, shift))
    assert dev.job_cycles == [shift_cycles(m, k, n, lanes, g)]
    with pytest.raises(DeviceError) as e:          # a fifth column group: 5·chunks words
        dev.unit("linear").run(1, k, n + 1)
    assert e.value.code == P.Status.DESCRIPTOR


def test_wide_shift_config_mismatch(sim_backend):
    """``expect=cfg`` checks ``lin_inputs``: a g = 4 device is not a g = 2 configuration."""
    cfg = AcceleratorConfig(linear=LinearConfig(mode="shift", lanes=2, shift_inputs=4,
                                                max_k=16, max_n=8, max_m=8, weight_depth=64))
    tr = sim_transport(cfg, sim_backend, timeout_cycles=300, act_depth=512, out_depth=512)
    other = dataclasses.replace(cfg, linear=dataclasses.replace(cfg.linear, shift_inputs=2))
    with pytest.raises(DeviceError) as e:
        Device(tr, timeout=0.01, retries=0, expect=other)
    assert str(e.value) == "device has linear.lin_inputs = 4, the configuration expects 2"


@pytest.mark.parametrize("linear, argv", [
    (dict(mode="shift", lanes=2, shift_inputs=4, shift_levels=4), ["--shape", "3x21x9"]),
    (dict(mode="bcq", lanes=2, bcq_bits=3), ["--shape", "2x40x5"]),
    (dict(mode="shift", lanes=2, shift_inputs=8, shift_levels=7, max_k=384),
     ["--layer", "minilm", "--cols", "4"]),
])
def test_cli_run_shiftadd(capsys, tmp_path, linear, argv):
    """``amaformer run`` in the engine's own encoding: random weights drawn in it (shift:
    ``{0, ±2^s}``; bcq: a fitted BcqMatrix) or the real MiniLM layer compiled for it, checked
    bit for bit against that encoding's golden model."""
    from amaformer.gen.cli import main
    from amaformer.gen.config import save_config
    lin = dict(max_k=64, max_n=16, max_m=16, weight_depth=128) | linear
    if lin["max_k"] == 384:
        lin["weight_depth"] = 48 * 2
    path = tmp_path / "c.toml"
    save_config(AcceleratorConfig(linear=LinearConfig(**lin)), path)
    assert main(["run", "--config", str(path), "--device", "sim", *argv,
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "bit-exact True" in out, out
    if "minilm" in argv:
        assert "relative error vs float" in out


def test_compile_linear_encodings():
    """``compile_linear(linear=...)`` quantizes into the engine's encoding with one scale per
    column; the program's golden model follows it (shift: powers of two, bcq: planes × α)."""
    from amaformer.gen.compile import compile_linear
    from amaformer.gen.golden import golden_linear
    torch.manual_seed(3)
    layer = torch.nn.Linear(48, 6).double()
    calib = torch.randn(20, 48, dtype=torch.float64)
    for linear in (LinearConfig(mode="shift", shift_levels=5),
                   LinearConfig(mode="bcq", lanes=2, bcq_bits=4, bcq_group=16)):
        prog = compile_linear(layer, calib, linear=linear)
        x = prog.quantize_input(calib)
        y = prog.dequantize_output(prog.golden(x))
        ref = layer(calib).detach()
        assert float((y - ref).norm() / ref.norm()) < 0.25
        if linear.mode == "shift":
            a = prog.w.abs()
            assert bool(((a & (a - 1)) == 0).all()) and int(a.max()) <= 16
            assert torch.equal(prog.golden(x), linear_shift(x, prog.w, prog.bias, prog.mult,
                                                            prog.shift))
        else:
            assert isinstance(prog.w, BcqMatrix) and prog.w.group == 16
            assert torch.equal(golden_linear(x, prog.w, prog.bias, prog.mult, prog.shift),
                               linear_bcq(x, prog.w.planes, prog.w.alpha, 16, prog.bias,
                                          prog.mult, prog.shift))
