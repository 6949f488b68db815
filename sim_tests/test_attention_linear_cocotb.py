# amaranth: UnusedElaboratable=no
"""cocotb verification of the linear attention kernels' Verilog on Icarus, launched from pytest.

One Verilog build per kernel, each with its depthwise convolution and running every test of
``sim_tests/cocotb_attention_linear.py``: 1 token, token counts not a multiple of the lanes,
d = 1, back-to-back jobs (``linear_causal``: a job continuing the previous one's sequence, then
a clear), unstalled (exact cycle count) and with random idle input cycles and output
back-pressure, and an empty job. ``linear_angular``: lanes 2 with d ≤ 5 (not a multiple),
centred kernel of 3 taps; ``linear_causal``: lanes 3, d ≤ 4, 5 causal taps (more than d).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from amaformer.gen.rtl import write_verilog
from amaformer.gen.sim import parse_results
from amaformer.hdl.attention_angular import LinearAngularAttention
from amaformer.hdl.attention_linear import LinearCausalAttention

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")

BENCH = Path(__file__).resolve().parent


@needs_icarus
@pytest.mark.parametrize("params", [
    dict(kind="angular", lanes=2, max_dim=5, max_tokens=7, conv_taps=3),
    dict(kind="causal", lanes=3, max_dim=4, max_tokens=8, conv_taps=5),
], ids=["angular", "causal"])
def test_linear_attention_icarus(tmp_path_factory, params):
    from cocotb_tools.runner import get_runner
    kind = params["kind"]
    build = tmp_path_factory.mktemp(f"attention_{kind}")
    args = {k: v for k, v in params.items() if k != "kind"}
    if kind == "angular":
        dut = LinearAngularAttention(**args)
    else:
        args["max_context"] = args.pop("max_tokens")
        dut = LinearCausalAttention(**args)
    top = f"linear_{kind}_attention"
    src = write_verilog(dut, build / f"{top}.v", top)
    runner = get_runner("icarus")
    runner.build(sources=[src], hdl_toplevel=top, build_dir=build / "icarus",
                 timescale=("1ns", "1ps"), always=True, log_file=build / "build.log")
    results = build / "results.xml"
    added = str(BENCH) not in sys.path
    if added:
        sys.path.insert(0, str(BENCH))
    try:
        runner.test(test_module="cocotb_attention_linear", hdl_toplevel=top,
                    build_dir=build / "icarus", test_dir=build, results_xml=str(results),
                    timescale=("1ns", "1ps"),
                    extra_env={"AMAFORMER_ATTENTION_LINEAR": json.dumps(params),
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
    assert passed == 4 * 2 + 2 + 1, names
