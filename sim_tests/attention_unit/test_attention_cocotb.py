# amaranth: UnusedElaboratable=no
"""cocotb verification of the softmax attention kernel's Verilog on Icarus, launched from pytest.

One Verilog build per parameter point (lanes 4 with d ≤ 8; lanes 3, not a power of two, with
d ≤ 5), each running every test of :mod:`amaformer.gen.benches.attention`: 1 token, token counts not
multiple of the lanes, d = 1, causal, sparse masks with rows that keep only the diagonal, a
diagonal-only mask, several heads, back-to-back jobs, unstalled (exact cycle count), with random
idle input cycles and output back-pressure and with the deterministic pause pattern.
"""

import json
import shutil

import pytest

from amaformer.hdl.attention import SoftmaxAttention
from amaformer.gen.sim import run_bench

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")


@needs_icarus
@pytest.mark.parametrize("params", [
    dict(lanes=4, max_dim=8, max_tokens=12, max_heads=2),
    dict(lanes=3, max_dim=5, max_tokens=10, max_heads=2),
], ids=["lanes4", "lanes3"])
def test_softmax_attention_icarus(tmp_path_factory, params):
    build = tmp_path_factory.mktemp(f"attention_l{params['lanes']}")
    env = {"AMAFORMER_ATTENTION": json.dumps(params), "AMAFORMER_SEED": "1"}
    passed, failures, names = run_bench("amaformer.gen.benches.attention", SoftmaxAttention(**params),
                                        "softmax_attention", build, env)
    assert not failures, failures
    assert passed == 7 * 2 + 4 + 3 + 1, names   # jobs (4 also paused), back-to-back, empty
