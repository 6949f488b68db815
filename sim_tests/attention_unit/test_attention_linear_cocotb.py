# amaranth: UnusedElaboratable=no
"""cocotb verification of the linear attention kernels' Verilog on Icarus, launched from pytest.

One Verilog build per kernel, each with its depthwise convolution and running every test of
:mod:`amaformer.gen.benches.attention_linear`: 1 token, token counts not a multiple of the lanes,
d = 1, back-to-back jobs (``linear_causal``: a job continuing the previous one's sequence, then
a clear), unstalled (exact cycle count), with random idle input cycles and output back-pressure
and with the deterministic pause pattern, and an empty job. ``linear_angular``: lanes 2 with
d ≤ 5 (not a multiple), centred kernel of 3 taps; ``linear_causal``: lanes 3, d ≤ 4, 5 causal
taps (more than d).
"""

import json
import shutil

import pytest

from amaformer.hdl.attention_angular import LinearAngularAttention
from amaformer.hdl.attention_linear import LinearCausalAttention
from amaformer.gen.sim import run_bench

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")


@needs_icarus
@pytest.mark.parametrize("params", [
    dict(kind="angular", lanes=2, max_dim=5, max_tokens=7, conv_taps=3),
    dict(kind="causal", lanes=3, max_dim=4, max_tokens=8, conv_taps=5),
], ids=["angular", "causal"])
def test_linear_attention_icarus(tmp_path_factory, params):
    kind = params["kind"]
    build = tmp_path_factory.mktemp(f"attention_{kind}")
    args = {k: v for k, v in params.items() if k != "kind"}
    if kind == "angular":
        dut = LinearAngularAttention(**args)
    else:
        args["max_context"] = args.pop("max_tokens")
        dut = LinearCausalAttention(**args)
    env = {"AMAFORMER_ATTENTION_LINEAR": json.dumps(params), "AMAFORMER_SEED": "1"}
    passed, failures, names = run_bench("amaformer.gen.benches.attention_linear", dut,
                                        f"linear_{kind}_attention", build, env)
    assert not failures, failures
    assert passed == 4 * 2 + 3 + 3 + 1, names   # jobs (3 also paused), back-to-back, empty
