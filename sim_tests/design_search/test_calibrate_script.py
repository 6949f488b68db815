"""``scripts/calibrate.py``'s bookkeeping (no synthesis): when a build folder's netlist may be
reused, and which record of a point the shipped calibration keeps."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate.py"


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reuse_needs_a_finished_synthesis(calibrate, tmp_path):
    assert calibrate._finished_rtlil(tmp_path) is None                 # empty folder
    (tmp_path / "amaformer.il").write_bytes(b"module \\top\nend\n")
    (tmp_path / "amaformer.json").write_text("{}")
    (tmp_path / "amaformer.rpt").write_text("3. Executing SYNTH_ECP5 pass.\n")
    assert calibrate._finished_rtlil(tmp_path) is None                 # Yosys killed mid-way
    (tmp_path / "amaformer.rpt").write_text("...\nEnd of script. Logfile hash: 0\n")
    assert calibrate._finished_rtlil(tmp_path) == b"module \\top\nend\n"
    (tmp_path / "amaformer.json").unlink()
    assert calibrate._finished_rtlil(tmp_path) is None                 # no netlist


def test_written_calibration_prefers_placed_records(calibrate, tmp_path):
    base = dict(kind="point", board="ulx3s-85f", family="ecp5", set="heldout", config={},
                clock_mhz=50.0, memories=[])
    recs = [dict(base, name="p", cells={"LUT4": 100}),
            dict(base, name="p", cells={"LUT4": 101},
                 placed={"lut": 150, "fmax_mhz": 50.0}),
            dict(base, name="p", cells={"LUT4": 102}),                # a later Yosys-only run
            dict(base, name="q", error="yosys exit 1"),               # no cells: left out
            {"kind": "accuracy", "encodings": {"mul8": {"cosine_min": 0.998}}},
            {"kind": "accuracy", "encodings": {"mul8@k256": {"cosine_min": 0.997}}}]
    out = tmp_path / "calibration.json"
    calibrate.write_calibration(recs, out)
    data = json.loads(out.read_text())
    (p,) = data["points"]
    assert p["name"] == "p" and p["placed"]["lut"] == 150 and p["cells"] == {"LUT4": 101}
    assert set(data["accuracy"]) == {"mul8", "mul8@k256"}
