# amaranth: UnusedElaboratable=no
"""cocotb verification of the softmax attention kernel's Verilog on Icarus, launched from pytest.

One Verilog build per parameter point (lanes 4 with d ≤ 8; lanes 3, not a power of two, with
d ≤ 5), each running every test of ``sim_tests/cocotb_attention.py``: 1 token, token counts not
multiple of the lanes, d = 1, causal, sparse masks with rows that keep only the diagonal, a
diagonal-only mask, several heads, back-to-back jobs, unstalled (exact cycle count) and with
random idle input cycles and output back-pressure.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from amaformer.gen.rtl import write_verilog
from amaformer.gen.sim import parse_results
from amaformer.hdl.attention import SoftmaxAttention

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")

TOP = "softmax_attention"
BENCH = Path(__file__).resolve().parent


@needs_icarus
@pytest.mark.parametrize("params", [
    dict(lanes=4, max_dim=8, max_tokens=12, max_heads=2),
    dict(lanes=3, max_dim=5, max_tokens=10, max_heads=2),
], ids=["lanes4", "lanes3"])
def test_softmax_attention_icarus(tmp_path_factory, params):
    from cocotb_tools.runner import get_runner
    build = tmp_path_factory.mktemp(f"attention_l{params['lanes']}")
    src = write_verilog(SoftmaxAttention(**params), build / f"{TOP}.v", TOP)
    runner = get_runner("icarus")
    runner.build(sources=[src], hdl_toplevel=TOP, build_dir=build / "icarus",
                 timescale=("1ns", "1ps"), always=True, log_file=build / "build.log")
    results = build / "results.xml"
    added = str(BENCH) not in sys.path
    if added:
        sys.path.insert(0, str(BENCH))
    try:
        runner.test(test_module="cocotb_attention", hdl_toplevel=TOP, build_dir=build / "icarus",
                    test_dir=build, results_xml=str(results), timescale=("1ns", "1ps"),
                    extra_env={"AMAFORMER_ATTENTION": json.dumps(params),
                               "AMAFORMER_SEED": "1"},
                    log_file=build / "sim.log")
    except SystemExit:
        pass
    finally:
        if added:
            sys.path.remove(str(BENCH))
    assert results.is_file(), f"simulation crashed, see {build / 'sim.log'}"
    passed, failures, names = parse_results(results)
    assert not failures, failures
    assert passed == 7 * 2 + 2 + 1, names
