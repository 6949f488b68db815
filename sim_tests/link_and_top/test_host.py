"""Host driver: the serial code path through a pseudo-terminal, retries, errors, the compiler."""

import os
import pty
import select
import threading

import numpy as np
import pytest
import torch

from amaformer.gen.compile import compile_linear
from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.golden import linear_mul
from amaformer.hdl import protocol as P
from amaformer.host import Device, DeviceError, DeviceTimeout, SerialTransport, Transport

from conftest import sim_transport

CFG = AcceleratorConfig(linear=LinearConfig(lanes=4, max_k=32, max_n=32, max_m=32,
                                            weight_depth=64))


def layer_ints(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-128, 128, (m, k), generator=g),
            torch.randint(-128, 128, (k, n), generator=g),
            torch.randint(-3000, 3000, (n,), generator=g),
            torch.randint(1 << 14, 1 << 15, (n,), generator=g),
            torch.randint(12, 20, (n,), generator=g))


class PtyDevice:
    """The simulated device on the master side of a pseudo-terminal, stepped by a thread."""

    def __init__(self, config, backend="amaranth"):
        self.sim = sim_transport(config, backend, timeout_cycles=2000, act_depth=512,
                                 out_depth=512)
        self.master, slave = pty.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.001)
            if r:
                try:
                    self.sim.feed(os.read(self.master, 4096))
                except OSError:
                    return
            self.sim.step(64)
            out = self.sim.take_output()
            if out:
                os.write(self.master, out)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self._slave)


def test_serial_transport_through_pty(sim_backend):
    """SerialTransport (pyserial) ↔ pty ↔ simulated device: the exact code path of a board."""
    dev_side = PtyDevice(CFG, sim_backend)
    try:
        with SerialTransport(dev_side.port, 115200, clk_hz=12_000_000) as link:
            dev = Device(link, timeout=5.0, retries=1, expect=CFG)
            assert dev.unit("linear").info.lanes == 4 and dev.info.max_payload == 256
            x, w, b, mult, shift = layer_ints(3, 24, 10, 0)
            y = dev.unit("linear").linear(x, w, b, mult, shift)
            assert torch.equal(y.to(torch.int64), linear_mul(x, w, b, mult, shift))
            assert dev.status().jobs == len(dev.job_cycles) == 2     # N split: 8 + 2
    finally:
        dev_side.close()


def test_serial_open_error():
    with pytest.raises(OSError, match=r"^cannot open serial port '/dev/amaformer-none': "):
        SerialTransport("/dev/amaformer-none")


# ---------------------------------------------------------------------- retries and errors


class FlakyTransport(Transport):
    """Wraps a transport; corrupts the first ``corrupt`` requests or drops ``drop`` responses."""

    def __init__(self, inner, corrupt=0, drop=0):
        self.inner, self.corrupt, self.drop = inner, corrupt, drop
        self.clk_hz = inner.clk_hz
        self.resync_seconds = inner.resync_seconds

    def write(self, data):
        data = bytearray(data)
        if self.corrupt and len(data) > P.REQ_HEADER_BYTES + 2:     # has a payload
            self.corrupt -= 1
            data[-3] ^= 0xFF
        self.inner.write(data)

    def read(self, n, timeout):
        data = self.inner.read(n, timeout)
        if self.drop and len(data) == P.RSP_HEADER_BYTES:
            self.drop -= 1                          # swallow the rest of the frame
            self.inner.read(int.from_bytes(data[3:5], "little") + 2, timeout)
            return b""
        return data

    def reset_input(self):
        self.inner.reset_input()

    def pause(self, seconds):
        self.inner.pause(seconds)


@pytest.fixture(scope="module")
def sim(sim_backend):
    return sim_transport(CFG, sim_backend, timeout_cycles=200, act_depth=512, out_depth=512)


def test_retry_after_corrupted_request(sim):
    dev = Device(FlakyTransport(sim, corrupt=2), timeout=0.01, retries=2)
    dev.write_memory(P.Space.ACT, 0, b"\x11\x22\x33")      # CRC error twice, then accepted
    assert dev.read_memory(P.Space.ACT, 0, 3) == b"\x11\x22\x33"
    dev = Device(FlakyTransport(sim, corrupt=3), timeout=0.01, retries=2)
    with pytest.raises(DeviceError) as e:
        dev.write_memory(P.Space.ACT, 0, b"\x44\x55\x66")
    assert e.value.code == P.Status.CRC
    assert Device(sim, timeout=0.01).read_memory(P.Space.ACT, 0, 3) == b"\x11\x22\x33"


def test_retry_after_lost_response(sim):
    dev = Device(sim, timeout=0.01, retries=0)
    x, w, b, mult, shift = layer_ints(2, 8, 4, 1)
    dev.unit("linear").load_weights(w, b, mult, shift)
    dev.write_activations(x)
    flaky = Device(FlakyTransport(sim), timeout=0.01, retries=1)
    flaky.transport.drop = 1
    assert flaky.unit("linear").run(2, 8, 4) > 0                   # RUN's answer lost: sent again
    assert flaky.transport.drop == 0
    assert np.array_equal(dev.read_outputs(2, 4), linear_mul(x, w, b, mult, shift).numpy())
    flaky.transport.drop = 10                       # every answer lost
    with pytest.raises(DeviceTimeout, match=r"^STATUS: no valid response after 2 attempts"):
        flaky.status()


def test_device_errors(sim):
    dev = Device(sim, timeout=0.01)
    with pytest.raises(DeviceError, match=r"^device has linear\.lanes = 4, the configuration "
                                          r"expects 8$"):
        dev.check_config(AcceleratorConfig())
    with pytest.raises(DeviceError, match=r"^RUN failed: DESCRIPTOR$") as e:
        dev.unit("linear").run(1, 33, 4)
    assert e.value.code == P.Status.DESCRIPTOR
    with pytest.raises(ValueError, match=r"^K must be in \[1, 32\] for this device, not 40$"):
        dev.unit("linear").linear(*layer_ints(2, 40, 4, 2))
    with pytest.raises(ValueError, match=r"^weights must be integers in \[-128, 127\], "
                                         r"not \[-300, 5\]$"):
        dev.unit("linear").load_weights(np.array([[-300, 5]]), [0, 0], [1, 1], [0, 0])
    with pytest.raises(ValueError, match=r"^retries must be a non-negative integer, not -1$"):
        Device(sim, retries=-1)


# ---------------------------------------------------------------------- compiler


def test_compile_linear_matches_float():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    with torch.no_grad():               # columns of very different magnitude
        layer.weight.mul_(torch.logspace(-2, 0, 48).unsqueeze(1))
    calib = torch.randn(32, 64)
    x = torch.randn(5, 64)
    ref = layer(x).detach().double()

    def rel_err(per_channel):
        prog = compile_linear(layer, calib, per_channel=per_channel)
        y = prog.dequantize_output(prog.golden(prog.quantize_input(x)))
        return float(torch.linalg.norm(y - ref) / torch.linalg.norm(ref)), prog

    err_pc, prog = rel_err(True)
    err_pt, _ = rel_err(False)
    assert err_pc < 0.02                # int8 in, int8 weights per column, int8 out
    assert err_pc < err_pt
    assert prog.w.shape == (64, 48) and int(prog.w.abs().max()) == 127
    assert bool(torch.all(prog.mult < (1 << 15))) and bool(torch.all(prog.shift <= 63))


def test_compiled_layer_on_device(sim):
    torch.manual_seed(1)
    layer = torch.nn.Linear(20, 12)
    x = torch.randn(4, 20)
    prog = compile_linear(layer, x)
    dev = Device(sim, timeout=0.01)
    x_q = prog.quantize_input(x)
    y = dev.unit("linear").linear(x_q, prog.w, prog.bias, prog.mult, prog.shift)
    assert torch.equal(y.to(torch.int64), prog.golden(x_q))
    ref = layer(x).detach().double()
    err = torch.linalg.norm(prog.dequantize_output(y) - ref) / torch.linalg.norm(ref)
    assert float(err) < 0.03


def test_compile_errors():
    with pytest.raises(TypeError, match=r"^layer must be a torch.nn.Linear, not 3$"):
        compile_linear(3, torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"^calib_x must have a last dimension of 4, "
                                         r"not shape \(2, 5\)$"):
        compile_linear(torch.nn.Linear(4, 2), torch.ones(2, 5))


# ---------------------------------------------------------------------- CLI and demo


def test_cli_run(capsys, tmp_path):
    from amaformer.gen.cli import main
    assert main(["run", "--device", "sim", "--shape", "2x24x10", "--json",
                 str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("random layer 2x24x10 on sim: bit-exact True, ")
    assert '"bit_exact": true' in (tmp_path / "r.json").read_text()
    assert main(["run", "--device", "/dev/amaformer-none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("amaformer: error: cannot open serial port '/dev/amaformer-none'")
    assert err.count("\n") == 1
    assert main(["run", "--shape", "2x24"]) == 2
    assert capsys.readouterr().err == \
        "amaformer: error: --shape must be MxKxN, e.g. 4x64x32, not '2x24'\n"


def test_demo_script_small(tmp_path):
    """scripts/demo.py end to end on a slice of the real MiniLM layer (8 columns)."""
    import importlib.util
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("amaformer_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"lut": 4000, "lut_total": 5280, "fmax_mhz": 20.5}))
    out = tmp_path / "demo.json"
    assert demo.main(["--cols", "8", "--report", str(report), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["bit_exact"] is True
    assert 0 < figures["rel_err_vs_float"] < 0.1
    assert figures["cycles"] > 384 * figures["tokens"]          # 1 group of 8 lanes, K = 384
    assert (figures["lut"], figures["fmax_mhz"]) == (4000, 20.5)
