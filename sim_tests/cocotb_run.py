"""Launch a cocotb bench of this folder on Icarus from pytest (``cocotb_tools.runner``).

Used by the ``test_*_cocotb.py`` launchers of the shift/bcq and attention benches; the linear
engine's bench goes through :func:`amaformer.gen.sim.verify` (``amaformer sim``) instead.
"""

import sys
from pathlib import Path

from amaformer.gen.rtl import write_verilog
from amaformer.gen.sim import parse_results

__all__ = ["run_bench"]

HERE = Path(__file__).resolve().parent
TIMESCALE = ("1ns", "1ps")


def run_bench(module, dut, toplevel, build_dir, env, *, extra_sources=(), defines=None):
    """Write the Verilog of ``dut`` as ``toplevel`` into ``build_dir`` (one per parameter
    point), build it on Icarus and run every test of the cocotb ``module`` with the environment
    ``env``. Returns ``(passed, failures, names)`` as :func:`amaformer.gen.sim.parse_results`;
    fails if the simulation ended without a results file."""
    from cocotb_tools.runner import get_runner
    build_dir = Path(build_dir)
    src = write_verilog(dut, build_dir / f"{toplevel}.v", toplevel)
    runner = get_runner("icarus")
    runner.build(sources=[src, *extra_sources], hdl_toplevel=toplevel,
                 build_dir=build_dir / "icarus", timescale=TIMESCALE, always=True,
                 defines=defines or {}, log_file=build_dir / "build.log")
    results = build_dir / "results.xml"
    added = str(HERE) not in sys.path
    if added:
        sys.path.insert(0, str(HERE))   # the runner passes sys.path to the simulator's Python
    try:
        runner.test(test_module=module, hdl_toplevel=toplevel, build_dir=build_dir / "icarus",
                    test_dir=build_dir, extra_env=env, results_xml=str(results),
                    timescale=TIMESCALE, log_file=build_dir / "sim.log")
    except SystemExit:
        pass                            # failed tests; the results file says which
    finally:
        if added:
            sys.path.remove(str(HERE))
    assert results.is_file(), f"simulation crashed, see {build_dir / 'sim.log'}"
    return parse_results(results)
