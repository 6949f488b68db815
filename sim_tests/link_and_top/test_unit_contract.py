"""The unit contract holds: a unit defined entirely in this file (gateware, wire format, host
driver, golden and cycle model), registered at run time, runs through the unchanged link,
arbiter, top and :class:`~amaformer.host.Device`, next to the built-in units."""

import dataclasses

import numpy as np
import pytest
import torch
from amaranth import *
from amaranth.lib import data

from amaformer.gen.config import AcceleratorConfig, AttentionConfig, LinearConfig
from amaformer.gen.golden import linear_mul
from amaformer.gen.layers import random_layer
from amaformer.hdl import protocol as P
from amaformer.hdl import registry
from amaformer.hdl.common import MemWriteSignature
from amaformer.hdl.unit import Unit, receive_descriptor
from amaformer.host import Device, DeviceError
from amaformer.host.sim import SimTransport
from amaformer.host.units import UnitDriver

# ---------------------------------------------------------------------- the unit's files

#: ``RUN`` payload: copy ``count`` bytes from ``src`` (activations) to ``dst`` (outputs),
#: each scaled: ``y = clamp((x · scale) >> 8)``.
COPY_DESCRIPTOR = data.StructLayout({"src": unsigned(32), "dst": unsigned(32),
                                     "count": unsigned(16)})

COPY = registry.UnitKind(
    name="copy", code=200, record=(("max_count", "H"),), descriptor=COPY_DESCRIPTOR,
    spaces=("scale",), gateware=f"{__name__}:CopyUnit", driver=f"{__name__}:CopyDriver",
    golden=f"{__name__}:copy_golden", cycles=f"{__name__}:copy_cycles",
    doc="test unit: scaled copy from the activation to the output memory")


def copy_golden(x, scale):
    """``clamp((x · scale) >> 8)`` to int8 (arithmetic shift: floor)."""
    return ((torch.as_tensor(x, dtype=torch.int64) * scale) >> 8).clamp(-128, 127)


def copy_cycles(count):
    """Start edge to done edge: one read per cycle, the write one cycle later."""
    return count + 1


class CopyUnit(Unit):
    """Scaled copy, one byte per cycle; ``scale`` (signed 16 bit) from its one-word space."""

    kind = COPY

    def __init__(self, *, act_depth, out_depth):
        self.act_depth = act_depth
        self.out_depth = out_depth
        self.max_count = min(act_depth, out_depth)
        super().__init__(act_depth=act_depth, out_depth=out_depth,
                         spaces={"scale": MemWriteSignature(1, 16)})

    @classmethod
    def from_config(cls, config, *, act_depth, out_depth):
        return [cls(act_depth=act_depth, out_depth=out_depth)]

    def ident_record(self):
        return {"max_count": self.max_count}

    def elaborate(self, platform):
        m = Module()
        ctl = self.ctl
        d, high = receive_descriptor(m, self.desc, COPY_DESCRIPTOR, {
            "src": self.act_depth, "dst": self.out_depth, "count": self.max_count})
        scale = Signal(signed(16))
        with m.If(self.scale.en):
            m.d.sync += scale.eq(self.scale.data)
        rd = Signal(range(self.act_depth + 1))
        wr = Signal(range(self.out_depth + 1))
        left = Signal(range(self.max_count + 1))
        valid = Signal()                # act.rdata holds the byte read last cycle
        last = Signal()
        product = Signal(signed(24))
        scaled = product >> 8
        m.d.comb += [self.act.addr.eq(rd), product.eq(self.act.rdata.as_signed() * scale),
                     self.out.addr.eq(wr), self.out.we.eq(valid),
                     self.out.wdata.eq(Mux(scaled > 127, 127, Mux(scaled < -128, -128, scaled)))]
        with m.If(valid):
            m.d.sync += wr.eq(wr + 1)
        m.d.sync += valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(ctl.start):
                    m.next = "CHECK"
            with m.State("CHECK"):
                ok = (~high & (d["count"] >= 1) & (d["src"] + d["count"] <= self.act_depth)
                      & (d["dst"] + d["count"] <= self.out_depth))
                m.d.comb += [ctl.ack.eq(1), ctl.accepted.eq(ok), ctl.started.eq(ok)]
                with m.If(ok):
                    m.d.sync += [ctl.busy.eq(1), rd.eq(d["src"]), wr.eq(d["dst"]),
                                 left.eq(d["count"])]
                    m.next = "RUN"
                with m.Else():
                    m.next = "IDLE"
            with m.State("RUN"):
                with m.If(left != 0):
                    m.d.sync += [rd.eq(rd + 1), left.eq(left - 1), valid.eq(1),
                                 last.eq(left == 1)]
                with m.If(valid & last):
                    m.d.comb += ctl.done.eq(1)
                    m.d.sync += [ctl.busy.eq(0), last.eq(0)]
                    m.next = "IDLE"
        return m


class CopyDriver(UnitDriver):
    """Host half: ``dev.unit("copy").copy(x, scale)``."""

    kind = COPY

    @classmethod
    def expected(cls, config):
        return [{}]

    def copy(self, x, scale, *, src=0, dst=0):
        x = np.asarray(x, dtype=np.int64)
        self.write_space("scale", [scale & 0xFFFF], 2)
        self.device.write_memory(P.Space.ACT, src, x.astype(np.int8).tobytes())
        cycles = self.run_descriptor(dict(src=src, dst=dst, count=x.size),
                                     expected_cycles=x.size)
        self.device.last_cycles = cycles
        return np.frombuffer(self.device.read_memory(P.Space.OUT, dst, x.size), np.int8)


# ---------------------------------------------------------------------- tests

LIN = LinearConfig(lanes=2, max_k=32, max_n=16, max_m=8, weight_depth=64)


def make_device(config):
    return Device(SimTransport(config, timeout_cycles=300, act_depth=256, out_depth=256),
                  timeout=0.01, retries=0, expect=config)


@pytest.fixture
def copy_kind():
    with registry.register(COPY):
        yield COPY


def test_copy_unit_through_device(copy_kind):
    cfg = AcceleratorConfig(linear=LIN)
    dev = make_device(cfg)
    assert [(u.kind, u.index) for u in dev.info.units] == [("linear", 0), ("copy", 1)]
    assert dev.unit("copy").info.max_count == 256
    rng = np.random.default_rng(3)
    for count, scale, src, dst in ((1, 256, 0, 0), (37, -300, 5, 100), (256, 1000, 0, 0)):
        x = rng.integers(-128, 128, count)
        y = dev.unit("copy").copy(x, scale, src=src, dst=dst)
        assert np.array_equal(y, copy_golden(x, scale).numpy()), (count, scale)
        assert dev.last_cycles == copy_cycles(count)
    # the built-in unit beside it still works, back to back with the new one
    x, w, b, mult, shift = random_layer(3, 20, 5, 0)
    y = dev.unit("linear").linear(x, w, b, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_mul(x, w, b, mult, shift))
    y = dev.unit("copy").copy(np.arange(-8, 8), 512)
    assert np.array_equal(y, copy_golden(np.arange(-8, 8), 512).numpy())


@pytest.mark.parametrize("fields", [dict(count=0), dict(count=257), dict(src=250, count=7),
                                    dict(dst=1 << 20), dict(src=1 << 31)])
def test_copy_unit_refuses_bad_descriptors(copy_kind, fields):
    dev = make_device(AcceleratorConfig(linear=LIN))
    desc = dict(src=0, dst=0, count=4)
    desc.update(fields)
    with pytest.raises(DeviceError) as e:
        dev.unit("copy").run_descriptor(desc)
    assert e.value.code == P.Status.DESCRIPTOR
    assert not dev.status().busy


def test_copy_unit_abort_mid_job(copy_kind):
    dev = make_device(AcceleratorConfig(linear=LIN))
    copy = dev.unit("copy")
    copy.write_space("scale", [256], 2)
    copy.run_descriptor(dict(src=0, dst=0, count=200), wait=False)
    assert dev.status().busy
    dev.abort()
    assert dev.status().aborted and not dev.status().busy
    x = np.arange(-5, 5)
    assert np.array_equal(copy.copy(x, 256), x)


def test_unregistered_unit_is_absent_and_refused():
    dev = make_device(AcceleratorConfig(linear=LIN))
    assert [u.kind for u in dev.info.units] == ["linear"]
    with pytest.raises(DeviceError, match=r"^the device has no copy unit"):
        with registry.register(COPY):
            dev.unit("copy")


def test_registry_resolves_every_kind():
    """Every registered kind's gateware, driver, golden and cycle model can be imported, its
    code is unique, and its descriptor is whole bytes."""
    kinds = registry.kinds()
    assert [k.name for k in kinds] == ["linear", "attention", "sparse_dense"]
    for k in kinds:
        for path in (k.gateware, k.driver, k.golden, k.cycles):
            assert callable(registry.resolve(path)), path
        assert k.driver_class().kind is k and k.gateware_class().kind is k
    with pytest.raises(ValueError, match=r"^unit kind codes must be unique"):
        with registry.register(dataclasses.replace(COPY, code=1)):
            pass
    with pytest.raises(ValueError, match=r"^code must be an integer in \[1, 254\], not 0$"):
        dataclasses.replace(COPY, code=0)


def test_host_imports_no_gateware():
    """``host`` (the link and every driver half) imports neither gateware nor torch."""
    import subprocess
    import sys
    code = ("import sys, amaformer.host, amaformer.host.linear, amaformer.host.attention, "
            "amaformer.host.sparse_dense; "
            "bad = [m for m in sys.modules if m == 'torch' or (m.startswith('amaformer.hdl.') "
            "and m.split('.')[-1] not in ('protocol', 'registry', 'linear_spec', "
            "'linear_layout', 'attention_spec', 'sparse_dense_spec'))]; print(bad); "
            "sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_two_units_with_attention(copy_kind):
    """Three units: linear, attention, copy; each gets its own index and spaces."""
    att = AttentionConfig(enabled=True, mode="linear_causal", causal=True, heads=1, head_dim=8,
                          max_tokens=8, lanes=2)
    cfg = AcceleratorConfig(linear=LIN, attention=att)
    dev = make_device(cfg)
    assert [u.kind for u in dev.info.units] == ["linear", "attention", "copy"]
    assert dev.unit("copy").space("scale") == P.unit_space(2, 0)
    x = np.arange(-20, 20)
    assert np.array_equal(dev.unit("copy").copy(x, 128), copy_golden(x, 128).numpy())


def test_cli_units_lists_every_registered_kind(capsys):
    from amaformer.gen.cli import main
    assert main(["units"]) == 0
    out = capsys.readouterr().out
    for k in registry.kinds():
        assert k.name in out
        assert f"{registry.descriptor_bytes(k.descriptor)} B" in out
