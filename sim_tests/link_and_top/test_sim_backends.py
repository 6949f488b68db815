"""The two simulated-device backends against each other: the same calls must give the same bytes
at the same simulated cycles on Amaranth's simulator and on the Verilator build; plus the build
cache, and the one-line fallback when the C++ toolchain is missing or fails.

The transcripts are taken through the real host driver (:class:`amaformer.host.Device`) and a
recording wrapper around the transport: every byte the device sent and the simulated cycle
count after every call, including error responses (bad CRC, truncated frames, garbage), aborts
and waits; so the comparison does not depend on the protocol's field layout.
"""

import os
import random
import stat
import time
from pathlib import Path

import pytest
import torch

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.host import Device, DeviceError, Transport
from amaformer.host.sim import SimTransport, make_sim_transport

from conftest import needs_verilator, sim_transport

CFG = AcceleratorConfig(linear=LinearConfig(lanes=4, max_k=32, max_n=32, max_m=32,
                                            weight_depth=64))
SHIFT = AcceleratorConfig(linear=LinearConfig(mode="shift", lanes=2, shift_inputs=4,
                                              shift_levels=4, max_k=32, max_n=16, max_m=8,
                                              weight_depth=64))
KW = dict(timeout_cycles=200, act_depth=512, out_depth=512)


class Recorder(Transport):
    """Passes every call to ``inner`` and logs it with its result and the cycle count after."""

    def __init__(self, inner):
        self.inner = inner
        self.clk_hz = inner.clk_hz
        self.resync_seconds = inner.resync_seconds
        self.log = []

    def write(self, data):
        self.inner.write(data)
        self.log.append(("write", bytes(data), self.inner.cycles))

    def read(self, n, timeout):
        got = self.inner.read(n, timeout)
        self.log.append(("read", n, timeout, got, self.inner.cycles))
        return got

    def reset_input(self):
        self.inner.reset_input()
        self.log.append(("reset_input", self.inner.cycles))

    def pause(self, seconds):
        self.inner.pause(seconds)
        self.log.append(("pause", seconds, self.inner.cycles))


def layer(m, k, n, seed, mode="mul"):
    """Random int8 operands; ``mode="shift"``: weights ``{0, ±2^s}``, ``s < 4``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), generator=g)
    w = torch.randint(-128, 128, (k, n), generator=g)
    if mode == "shift":
        w = torch.randint(-1, 2, (k, n), generator=g) * (1 << torch.randint(0, 4, (k, n),
                                                                            generator=g))
    return (x, w, torch.randint(-3000, 3000, (n,), generator=g),
            torch.randint(1 << 14, 1 << 15, (n,), generator=g),
            torch.randint(12, 20, (n,), generator=g))


def session(tr, config):
    """A mixed session on ``tr``: jobs, status, memory, corrupted and truncated frames,
    garbage, abort. Returns (transcript, outputs, job cycle counts, status)."""
    rec = Recorder(tr)
    dev = Device(rec, timeout=0.01, retries=1, expect=config)
    lin = dev.unit("linear")
    outs, jobs = [], []
    for shape, seed in (((3, 20, 13), 0), ((2, 1, 5), 1), ((4, 32, 9), 2)):
        x, w, b, mult, shift = layer(*shape, seed, lin.mode)
        outs.append(lin.linear(x, w, b, mult, shift).to(torch.int64))
        jobs += dev.job_cycles
    status = dev.status()
    frame = bytearray(next(e[1] for e in reversed(rec.log) if e[0] == "write"))   # STATUS
    for cut in (1, 4, len(frame) - 1):                # truncated: an error after the timeout
        rec.write(frame[:cut])
        rec.read(64, 2 * tr.timeout_cycles / tr.clk_hz)
    frame[-1] ^= 0x5A                                 # corrupted: an error response
    rec.write(frame)
    rec.read(64, 2 * tr.timeout_cycles / tr.clk_hz)
    rng = random.Random(5)
    rec.write(bytes(rng.randrange(256) for _ in range(120)))    # garbage: it resynchronizes
    rec.pause(8 * tr.timeout_cycles / tr.clk_hz)
    rec.read(1000, 0.001)
    rec.reset_input()
    ident = dev.identify()
    x, w, b, mult, shift = layer(2, 16, 8, 3, lin.mode)
    lin.load_weights(w, b, mult, shift)
    dev.write_activations(x)
    lin.run(2, 16, 8, wait=False)                     # then abort mid-job
    dev.abort()
    aborted = dev.status()
    with pytest.raises(DeviceError):
        lin.run(1, 33, 4)                             # refused descriptor
    errored = dev.status()
    return rec.log, outs, jobs, (status, ident, aborted, errored)


def test_step_is_exact():
    """``step(n)`` simulates exactly ``n`` cycles (the Amaranth backend stops between edges)."""
    tr = SimTransport(CFG, **KW)
    for n in (1, 1, 5, 16, 3, 1000):
        before = tr.cycles
        tr.step(n)
        assert tr.cycles - before == n
    tr = SimTransport(CFG, clk_hz=115200 * 6, **KW)          # a period that is not whole fs
    tr.step(1001)
    assert tr.cycles == 1001


@needs_verilator
@pytest.mark.parametrize("config", [CFG, SHIFT], ids=["mul", "shift"])
def test_same_bytes_and_cycles(config):
    """Every response byte, every cycle count after every call, the outputs, the job cycle
    counts and the status codes are the same on both backends."""
    runs = {b: session(sim_transport(config, b, **KW), config)
            for b in ("amaranth", "verilator")}
    a, v = runs["amaranth"], runs["verilator"]
    assert len(a[0]) == len(v[0]) > 50
    for i, (ea, ev) in enumerate(zip(a[0], v[0])):
        assert ea == ev, f"call {i}: amaranth {ea!r} != verilator {ev!r}"
    assert all(torch.equal(x, y) for x, y in zip(a[1], v[1]))
    assert a[2] == v[2] and len(a[2]) >= 3
    assert a[3] == v[3]


@needs_verilator
def test_uart_same_bytes_and_cycles():
    """The serial top (``uart=True``, divisor 6) on both backends: same bytes, same cycles."""
    kw = dict(KW, uart=True, clk_hz=115200 * 6, timeout_cycles=2000)
    logs = []
    for backend in ("amaranth", "verilator"):
        rec = Recorder(sim_transport(CFG, backend, **kw))
        dev = Device(rec, timeout=0.05, retries=0, expect=CFG)
        dev.write_activations(torch.arange(-20, 20).reshape(4, 10))
        st = dev.status()
        logs.append((rec.log, st, rec.inner.cycles))
    assert logs[0] == logs[1]
    assert logs[0][2] > 10 * 6 * 60                    # bytes really went through the UART


@needs_verilator
def test_figures_and_close():
    tr = sim_transport(CFG, "verilator", **KW)
    dev = Device(tr, timeout=0.01, expect=CFG)
    dev.unit("linear").linear(*layer(2, 8, 4, 0))
    fig = tr.sim_figures()
    assert tr.fast_cycle                    # what test_same_bytes_and_cycles compares
    assert fig["sim_backend"] == "verilator" and fig["sim_cycles"] == tr.cycles > 0
    assert fig["cycles_per_second"] > 0 and tr.summary().startswith("verilator backend: ")
    tr.close()
    with pytest.raises(ValueError, match=r"^the simulated device is closed$"):
        tr.write(b"\x00")


@needs_verilator
def test_cached_start_is_fast():
    """A second device on the same design loads the cached build: under a second."""
    first = sim_transport(CFG, "verilator", **KW)
    t0 = time.perf_counter()
    again = sim_transport(CFG, "verilator", **KW)
    Device(again, timeout=0.01, expect=CFG)
    assert not again.built and again.library == first.library
    assert time.perf_counter() - t0 < 1.0


def test_missing_verilator_falls_back(tmp_path, capsys, monkeypatch):
    """No toolchain: ``auto`` says so in one line on stderr and runs on Amaranth's simulator;
    ``verilator`` raises with the same line."""
    from amaformer.host.verilator import VerilatorUnavailable
    missing = str(tmp_path / "no-such-verilator")
    tr = make_sim_transport(CFG, "auto", verilator=missing, cache_dir=tmp_path, **KW)
    assert isinstance(tr, SimTransport) and tr.backend == "amaranth"
    err = capsys.readouterr().err
    assert err == (f"amaformer: Verilator backend unavailable: no verilator executable at "
                   f"{missing!r}; using the Amaranth simulator instead\n")
    Device(tr, timeout=0.01, expect=CFG)              # answers, and is the design of CFG
    with pytest.raises(VerilatorUnavailable, match=r"^Verilator backend unavailable: no "
                                                   r"verilator executable at "):
        make_sim_transport(CFG, "verilator", verilator=missing, cache_dir=tmp_path, **KW)
    monkeypatch.setenv("AMAFORMER_VERILATOR", missing)
    monkeypatch.setenv("AMAFORMER_SIM_BACKEND", "auto")
    tr = make_sim_transport(CFG, quiet=True, **KW)
    tr.step(1)
    assert tr.backend == "amaranth"
    monkeypatch.setenv("AMAFORMER_SIM_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"^AMAFORMER_SIM_BACKEND must be one of auto, "
                                         r"verilator, amaranth, not 'fast'$"):
        make_sim_transport(CFG, **KW)
    with pytest.raises(ValueError, match=r"^backend must be one of 'auto', 'verilator', "
                                         r"'amaranth', not 'icarus'$"):
        make_sim_transport(CFG, "icarus", **KW)


@needs_verilator
def test_failing_build_falls_back(tmp_path, capsys):
    """A Verilator that fails: one line naming the build log, then the Amaranth simulator."""
    exe = failing_verilator(tmp_path)
    tr = make_sim_transport(CFG, "auto", verilator=str(exe), cache_dir=tmp_path / "cache",
                            progress=False, **KW)
    assert tr.backend == "amaranth"
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("amaformer: Verilator backend unavailable: verilator exited with 3; "
                          "see ")
    log = err.split("see ", 1)[1].split(";")[0]
    assert "out of luck" in Path(log).read_text()
    tr.step(1)


def test_cli_run_falls_back(tmp_path, capsys, monkeypatch):
    """``amaformer run --device sim`` without a toolchain: one line, then the run, on Amaranth."""
    from amaformer.gen.cli import main
    monkeypatch.setenv("AMAFORMER_VERILATOR", str(tmp_path / "none"))
    monkeypatch.setenv("AMAFORMER_CACHE_DIR", str(tmp_path))
    assert main(["run", "--device", "sim", "--shape", "2x24x10", "--json",
                 str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("amaformer: Verilator backend unavailable: ")
    assert captured.err.count("\n") == 1
    assert "simulated on the amaranth backend: " in captured.out
    import json
    fig = json.loads((tmp_path / "r.json").read_text())
    assert fig["sim_backend"] == "amaranth" and fig["sim_cycles"] > 0
    assert fig["bit_exact"] is True and fig["cycles_per_second"] > 0


def failing_verilator(tmp_path):
    """A ``verilator`` that exits with status 3 (next to the real include/ directory, so that
    the toolchain is found and the build fails)."""
    from amaformer.host.verilator import find_toolchain
    fake_root = tmp_path / "vl"
    (fake_root / "bin").mkdir(parents=True)
    os.symlink(find_toolchain().root / "include", fake_root / "include")
    exe = fake_root / "bin" / "verilator"
    exe.write_text("#!/bin/sh\necho 'verilator: out of luck' >&2\nexit 3\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@needs_verilator
def test_cli_backend_option(tmp_path, capsys, monkeypatch):
    """``amaformer run --backend``: verilator runs there and says so in the JSON; with a failing
    toolchain ``--backend verilator`` is one error line (exit 1), ``auto`` falls back in one."""
    import json

    from amaformer.gen.cli import main
    argv = ["run", "--device", "sim", "--shape", "2x24x10", "--json", str(tmp_path / "r.json")]
    assert main(argv + ["--backend", "verilator"]) == 0
    assert "simulated on the verilator backend: " in capsys.readouterr().out
    fig = json.loads((tmp_path / "r.json").read_text())
    assert fig["sim_backend"] == "verilator" and fig["bit_exact"] is True
    assert fig["sim_cycles"] > fig["cycles"] > 0 and fig["cycles_per_second"] > 0
    assert fig["sim_seconds"] >= 0
    monkeypatch.setenv("AMAFORMER_VERILATOR", str(failing_verilator(tmp_path)))
    monkeypatch.setenv("AMAFORMER_CACHE_DIR", str(tmp_path / "cache"))
    # the build's progress lines (stderr is no terminal here), then one line saying why
    assert main(argv + ["--backend", "verilator"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("amaformer: error: Verilator backend unavailable: "
                                           "verilator exited with 3; see ")
    assert main(argv + ["--backend", "auto"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("amaformer:")] == [
        captured.err.splitlines()[-1]]
    assert captured.err.splitlines()[-1].startswith(
        "amaformer: Verilator backend unavailable: verilator exited with 3; see ")
    assert captured.err.endswith("; using the Amaranth simulator instead\n")
    assert "simulated on the amaranth backend: " in captured.out
    assert json.loads((tmp_path / "r.json").read_text())["sim_backend"] == "amaranth"
    assert main(argv + ["--backend", "icarus"]) == 2
    assert "argument --backend: invalid choice: 'icarus'" in capsys.readouterr().err


def test_cli_attention_falls_back(tmp_path, capsys, monkeypatch):
    """``amaformer attention --device sim`` without a toolchain: one line, then the job on the
    Amaranth simulator, whose figures land in the JSON."""
    import json

    from amaformer.gen.cli import main
    from amaformer.gen.config import AttentionConfig, dump_toml
    cfg = tmp_path / "att.toml"
    cfg.write_text(dump_toml(AcceleratorConfig(
        linear=LinearConfig(lanes=2, max_k=16, max_n=16, max_m=16, weight_depth=32),
        attention=AttentionConfig(heads=1, head_dim=8, max_tokens=8, lanes=4)).to_dict()))
    monkeypatch.setenv("AMAFORMER_VERILATOR", str(tmp_path / "none"))
    assert main(["attention", "-c", str(cfg), "--device", "sim", "--tokens", "4",
                 "--json", str(tmp_path / "a.json")]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"amaformer: Verilator backend unavailable: no verilator executable "
                            f"at {str(tmp_path / 'none')!r}; using the Amaranth simulator "
                            f"instead\n")
    assert "simulated on the amaranth backend: " in captured.out
    fig = json.loads((tmp_path / "a.json").read_text())
    assert fig["bit_exact"] is True and fig["sim_backend"] == "amaranth"
    assert fig["sim_cycles"] > fig["cycles"] > 0 and fig["cycles_per_second"] > 0


def test_demo_falls_back(tmp_path, capsys, monkeypatch):
    """``scripts/demo.py`` without a toolchain: one line, the Amaranth simulator, 2 columns of
    the real layer on a short sentence; its JSON carries the simulation figures."""
    import importlib.util
    import json
    path = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("amaformer_demo_fallback", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.setenv("AMAFORMER_VERILATOR", str(tmp_path / "none"))
    out = tmp_path / "demo.json"
    assert demo.main(["--cols", "2", "--sentence", "Hello.", "--no-modes",
                      "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("amaformer: Verilator backend unavailable: ")
    assert captured.err.count("\n") == 1
    assert "sim      amaranth backend (Amaranth's Python simulator)" in captured.out
    fig = json.loads(out.read_text())
    assert fig["bit_exact"] is True and fig["n"] == 2
    assert fig["sim_backend"] == "amaranth" and fig["sim_cycles"] > 0
    assert fig["sim_seconds"] > 0 and fig["cycles_per_second"] > 0
