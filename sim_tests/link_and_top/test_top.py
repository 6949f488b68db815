"""Accelerator top on the simulated device, through the host driver and raw protocol frames, on
each simulated-device backend (Amaranth's simulator and Verilator; the long corrupt-input
families run in full on Verilator and a few cases on Amaranth: ``conftest.thin_on_amaranth``).

The reference for every result is the PyTorch golden model ``gen.golden.linear_mul`` on random
integer inputs (fixed seeds); cycle counts are checked against ``gen.cost.linear_cycles``.
Corrupt-input cases check the error code of the response, that the device still answers, and
that memory (read back) is unchanged.
"""

import random
import struct

import numpy as np
import pytest
import torch
from amaranth import Shape

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.cost import linear_cycles
from amaformer.gen.golden import linear_mul
from amaformer.hdl import protocol as P
from amaformer.gen.layers import random_layer
from amaformer.hdl.linear_unit import make_linear_engine
from amaformer.hdl.memories import ByteMemory
from amaformer.hdl.top import AcceleratorCore
from amaformer.host import Device, DeviceError

from conftest import sim_transport, thin_on_amaranth, verilator_missing

TIMEOUT = 300       # device inter-byte timeout in the tests, cycles


def small_config(**linear):
    lin = dict(lanes=4, max_k=64, max_n=64, max_m=64, weight_depth=128)
    lin.update(linear)
    return AcceleratorConfig(linear=LinearConfig(**lin))


def make_device(config, backend="amaranth", **kw):
    kw.setdefault("act_depth", 1024)
    kw.setdefault("out_depth", 1024)
    tr = sim_transport(config, backend, timeout_cycles=TIMEOUT, **kw)
    return Device(tr, timeout=0.01, retries=0, expect=config), tr


def exchange(tr, frame, *, read_timeout=0.01):
    """Send raw bytes, return ``(status, op, payload)`` of the next response."""
    tr.write(frame)
    head = tr.read(P.RSP_HEADER_BYTES, read_timeout)
    assert len(head) == P.RSP_HEADER_BYTES, f"no response (got {head!r})"
    n = int.from_bytes(head[3:5], "little")
    rest = tr.read(n + 2, read_timeout)
    return P.parse_response(head + rest)


# ---------------------------------------------------------------------- function


@pytest.mark.parametrize("cfg,shape,seed", [
    (AcceleratorConfig(), (3, 20, 13), 0),                       # default (iCEBreaker) config
    (small_config(), (2, 1, 5), 1),                              # K = 1
    (small_config(), (4, 40, 30), 2),                            # N tiled over the weight buffer
    (small_config(lanes=3, weight_bits=6, act_bits=8), (2, 9, 7), 3),   # 18-bit weight words
])
def test_linear_bit_exact(cfg, shape, seed, sim_backend):
    m, k, n = shape
    dev, tr = make_device(cfg, sim_backend)
    x, w, b, mult, shift = random_layer(m, k, n, seed)
    lim = 1 << (cfg.linear.weight_bits - 1)
    w = w.clamp(-lim, lim - 1)
    y = dev.unit("linear").linear(x, w, b, mult, shift)
    assert isinstance(y, torch.Tensor)
    assert torch.equal(y.to(torch.int64), linear_mul(x, w, b, mult, shift))
    # one job per N tile; every job's cycle count is the cost model's
    n_tile = min(n, dev.unit("linear").max_n_for_k(k))
    widths = [min(n_tile, n - c) for c in range(0, n, n_tile)]
    assert dev.job_cycles == [linear_cycles(m, k, wn, cfg.linear.lanes) for wn in widths]


def test_linear_tiles_over_m(sim_backend):
    cfg = small_config()
    dev, tr = make_device(cfg, sim_backend, act_depth=64, out_depth=64)
    x, w, b, mult, shift = random_layer(7, 16, 6, 4)        # M·K = 112 > 64 activation bytes
    y = dev.unit("linear").linear(x.numpy(), w.numpy(), b, mult, shift)
    assert isinstance(y, np.ndarray)
    assert np.array_equal(y, linear_mul(x, w, b, mult, shift).numpy())
    assert len(dev.job_cycles) == 2


def test_back_to_back_jobs_and_status(sim_backend):
    cfg = small_config()
    dev, tr = make_device(cfg, sim_backend)
    x, w, b, mult, shift = random_layer(3, 60, 4, 5)
    dev.unit("linear").load_weights(w, b, mult, shift)
    dev.write_activations(x, addr=100)
    for y_addr in (0, 50):
        dev.unit("linear").run(3, 60, 4, x_addr=100, y_addr=y_addr, wait=False)
        with pytest.raises(DeviceError) as e:
            dev.unit("linear").run(3, 60, 4)
        assert e.value.code == P.Status.BUSY
        assert dev.wait() == linear_cycles(3, 60, 4, 4)
    exp = linear_mul(x, w, b, mult, shift).numpy()
    assert np.array_equal(dev.read_outputs(3, 4, 0), exp)
    assert np.array_equal(dev.read_outputs(3, 4, 50), exp)
    st = dev.status()
    assert (st.busy, st.jobs, st.cycles, st.last_error) == (False, 2, linear_cycles(3, 60, 4, 4), 0)


def test_abort_mid_job_then_reuse(sim_backend):
    cfg = small_config()
    dev, tr = make_device(cfg, sim_backend)
    x, w, b, mult, shift = random_layer(6, 32, 8, 6)
    dev.unit("linear").load_weights(w, b, mult, shift)
    dev.write_activations(x)
    dev.unit("linear").run(6, 32, 8, wait=False)
    tr.pause(100 / tr.clk_hz)
    assert dev.status().busy
    for op, space in ((P.Op.WRITE, P.Space.ACT), (P.Op.READ, P.Space.OUT)):
        payload = b"\x01\x00" if op == P.Op.READ else b"\x55"
        with pytest.raises(DeviceError) as e:
            dev.transact(op, space, 0, payload)
        assert e.value.code == P.Status.BUSY
    dev.abort()
    st = dev.status()
    assert not st.busy and st.aborted and st.jobs == 0
    assert dev.unit("linear").run(6, 32, 8) == linear_cycles(6, 32, 8, 4)
    assert np.array_equal(dev.read_outputs(6, 8), linear_mul(x, w, b, mult, shift).numpy())


# ---------------------------------------------------------------------- corrupt input


@pytest.fixture(scope="module")
def dev_tr(sim_backend):
    """One device per backend for the corrupt-input tests, activation memory filled with a
    pattern."""
    dev, tr = make_device(small_config(), sim_backend)
    dev.write_memory(P.Space.ACT, 0, PATTERN)
    return dev, tr


PATTERN = bytes(random.Random(7).randrange(256) for _ in range(1024))


def assert_intact(dev):
    assert dev.read_memory(P.Space.ACT, 0, 1024) == PATTERN
    assert dev.identify().units[0].lanes == 4


def test_bad_crc_changes_nothing(dev_tr):
    dev, tr = dev_tr
    frame = bytearray(P.encode_request(P.Op.WRITE, P.Space.ACT, 10, b"\x00" * 40))
    frame[-1] ^= 0x01                               # CRC byte
    assert exchange(tr, frame)[0] == P.Status.CRC
    frame = bytearray(P.encode_request(P.Op.WRITE, P.Space.ACT, 10, b"\x00" * 40))
    frame[20] ^= 0x80                               # payload byte
    assert exchange(tr, frame)[0] == P.Status.CRC
    frame = bytearray(P.encode_request(P.Op.WRITE, P.Space.ACT, 10, b"\x00" * 40))
    frame[3] ^= 0x04                                # address byte
    assert exchange(tr, frame)[0] == P.Status.CRC
    assert_intact(dev)
    assert dev.status().last_error == P.Status.CRC
    assert dev.status().last_error == 0             # cleared by the previous STATUS read


def test_unknown_opcode(dev_tr):
    dev, tr = dev_tr
    for op in (0x00, 0x07, 0x08, 0xFF):
        status, rop, payload = exchange(tr, P.encode_request(op, P.Space.ACT, 0, b"\x12" * 4))
        assert (status, rop, payload) == (P.Status.OPCODE, op, b"")
    assert_intact(dev)


BAD_ADDRESS = [
    (P.Op.WRITE, P.Space.ACT, 1022, b"\x00" * 4),          # runs past the end
    (P.Op.WRITE, P.Space.ACT, 1 << 31, b"\x00"),           # far out of range
    (P.Op.WRITE, P.Space.OUT, 0, b"\x00"),                 # read-only space
    (P.Op.WRITE, 9, 0, b"\x00"),                           # unknown space
    (P.Op.WRITE, P.unit_space(0, 0), 3, b"\x00" * 4),     # misaligned word (weights)
    (P.Op.WRITE, P.unit_space(0, 0), 0, b"\x00" * 3),     # partial word
    (P.Op.WRITE, P.unit_space(0, 1), 64 * 8, b"\x00" * 8),  # column past max_n (params)
    (P.Op.WRITE, P.unit_space(0, 2), 0, b"\x00" * 8),     # a space the unit does not have
    (P.Op.WRITE, P.unit_space(1, 0), 0, b"\x00" * 8),     # a unit the design does not have
    (P.Op.READ, P.Space.ACT, 1000, struct.pack("<H", 25)),
    (P.Op.READ, P.unit_space(0, 0), 0, struct.pack("<H", 1)),  # write-only space
]


@pytest.mark.parametrize("case", range(len(BAD_ADDRESS)))
def test_bad_address(dev_tr, sim_backend, case):
    thin_on_amaranth(sim_backend, keep=case in (0, 3, 8, 10))
    op, space, addr, payload = BAD_ADDRESS[case]
    dev, tr = dev_tr
    assert exchange(tr, P.encode_request(op, space, addr, payload))[0] == P.Status.ADDRESS
    assert_intact(dev)


def test_length_errors(dev_tr):
    dev, tr = dev_tr
    assert exchange(tr, P.encode_request(P.Op.READ, P.Space.ACT, 0, b"\x01"))[0] \
        == P.Status.LENGTH
    assert exchange(tr, P.encode_request(P.Op.IDENT, 0, 0, b"\x01"))[0] == P.Status.LENGTH
    assert exchange(tr, P.encode_request(P.Op.RUN, 0, 0, b"\x01" * 19))[0] == P.Status.LENGTH
    assert exchange(tr, P.encode_request(P.Op.RUN, 0, 0, b"\x01" * 21))[0] == P.Status.LENGTH
    # RUN addressed to a unit the design does not have
    assert exchange(tr, P.encode_request(P.Op.RUN, 1, 0, b"\x01" * 20))[0] == P.Status.UNIT
    # Longer than the staging buffer: swallowed until the line is quiet, then LENGTH.
    big = P.encode_request(P.Op.WRITE, P.Space.ACT, 0, b"\x00" * 300)
    assert exchange(tr, big, read_timeout=1)[0] == P.Status.LENGTH
    assert_intact(dev)


def test_truncated_frame_times_out(dev_tr):
    dev, tr = dev_tr
    frame = P.encode_request(P.Op.WRITE, P.Space.ACT, 0, b"\x00" * 64)
    for cut in (1, 5, 9, 40, len(frame) - 1):
        tr.write(frame[:cut])
        tr.pause(10 / tr.clk_hz)
        assert tr.read(1, 100 / tr.clk_hz) == b""   # nothing before the timeout
        status, op, _ = exchange(tr, b"", read_timeout=1)
        assert status == P.Status.TRUNCATED
        assert op == (P.Op.WRITE if cut >= P.REQ_HEADER_BYTES else 0)  # op 0: header cut short
    assert_intact(dev)


def test_garbage_never_hangs(dev_tr, sim_backend):
    dev, tr = dev_tr
    rng = random.Random(11)
    rounds = 1 if sim_backend == "amaranth" and not verilator_missing() else 3   # slow there
    for _ in range(rounds):
        junk = bytes(rng.randrange(256) for _ in range(200))
        junk += bytes([P.REQ_SYNC]) + bytes(rng.randrange(256) for _ in range(12))
        tr.write(junk)
        tr.pause(8 * TIMEOUT / tr.clk_hz)           # every half frame times out meanwhile
        tr.reset_input()
        assert_intact(dev)


BAD_DESCRIPTOR = [
    dict(m=0, k=8, n=8), dict(m=1, k=0, n=8), dict(m=1, k=65, n=8), dict(m=1, k=8, n=65),
    dict(m=65, k=8, n=8), dict(m=1, k=64, n=12),            # 64·3 = 192 weight words > 128
    dict(m=40, k=30, n=4), dict(m=1, k=8, n=8, x_addr=1020),  # past the activation memory
    dict(m=30, k=8, n=40), dict(m=1, k=8, n=8, y_addr=1 << 20),  # past the output memory
    dict(m=1 + (1 << 24), k=8, n=8), dict(m=1, k=8 + (1 << 7), n=8),  # bits above the limit
    dict(m=1, k=8, n=8, x_addr=1 << 31),
]


@pytest.mark.parametrize("case", range(len(BAD_DESCRIPTOR)))
def test_bad_descriptor(dev_tr, sim_backend, case):
    thin_on_amaranth(sim_backend, keep=case in (0, 5, 9))
    desc = BAD_DESCRIPTOR[case]
    dev, tr = dev_tr
    full = dict(x_addr=0, y_addr=0)
    full.update(desc)
    with pytest.raises(DeviceError) as e:
        dev.unit("linear").run(**full)
    assert e.value.code == P.Status.DESCRIPTOR
    assert not dev.status().busy
    assert_intact(dev)


def test_largest_descriptor_accepted(dev_tr):
    dev, tr = dev_tr                                # k·ceil(n/lanes) = 64·2 = 128 words: fits
    dev.unit("linear").run(1, 64, 8, wait=False)
    dev.abort()


# ---------------------------------------------------------------------- parameters


def test_core_parameter_errors():
    cfg = AcceleratorConfig()
    with pytest.raises(ValueError, match=r"^max_payload must be an integer in \[20, 2\*\*24\), "
                                         r"not 8$"):
        AcceleratorCore(cfg, max_payload=8)
    with pytest.raises(ValueError, match=r"^timeout_cycles must be an integer >= 16, not 3$"):
        AcceleratorCore(cfg, timeout_cycles=3)
    with pytest.raises(ValueError, match=r"^depth must be an integer >= 2, not 1$"):
        ByteMemory(1)


def test_space_widths_come_from_signatures():
    lin = LinearConfig(lanes=5, weight_bits=6, max_k=32, max_n=40, weight_depth=64)
    core = AcceleratorCore(AcceleratorConfig(linear=lin))
    engine = make_linear_engine(lin)
    assert engine.lanes == 5
    for unused in (core, engine):
        unused._MustUse__silence = True             # built for their attributes only
    for unit in core.units:
        unit.discard()
    spaces = {name: (ws.code, ws.signature.depth,
                     Shape.cast(ws.signature.members["data"].shape).width, ws.word_bytes)
              for _, name, ws in core.write_spaces}
    assert spaces == {"weights": (P.unit_space(0, 0), 64, 30, 4),
                      "params": (P.unit_space(0, 1), 40, 54, 8)}
