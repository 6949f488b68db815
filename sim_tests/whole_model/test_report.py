"""``amaformer report DIR``: the HTML page, opened in headless Chromium (Debian ``chromium``),
shows the figures of the JSON it came from; a directory without a run gets one line."""

import json
import re
import shutil
import subprocess

import pytest

from amaformer.gen.report import ReportError, write_report

RUN = {
    "model": "all-MiniLM-L6-v2", "board": "ulx3s-85f", "cosine_min": 0.997612,
    "cycles": 30928068, "bytes_moved": 13053132, "clock_mhz": 25.0,
    "est_board_seconds": 1.237123, "est_link_seconds": 1133.084, "sim_seconds": 148.958,
    "sim_backend": "verilator",
    "cycles_per_layer": [5154678, 5154600, 5154611],
    "bytes_moved_per_layer": [2175522, 2175000, 2175100],
    "layer_cosines": [0.999239, 0.999063, 0.998581],
    "trace": [{"linear_cycles": 5000000, "attention_cycles": 154678},
              {"linear_cycles": 5000000, "attention_cycles": 154600},
              {"linear_cycles": 5000000, "attention_cycles": 154611}],
    "placement": {"host": ["activation"], "linear": ["query"], "attention": ["attention"]},
}
BUILD = {"device": "LFE5U-85F", "fmax_mhz": 51.5, "lut": 14098, "lut_total": 83640,
         "dsp": 32, "dsp_total": 156, "bram": 40, "bram_total": 208}

chromium = shutil.which("chromium") or shutil.which("chromium-browser")


def _dom(path):
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    return out.stdout


def _expected(key):
    src, path = (BUILD, key.split(".")[1:]) if key.startswith("build.") else (RUN, key.split("."))
    v = src
    for p in path:
        v = v[int(p)] if isinstance(v, list) else v[p]
    return v


@pytest.mark.skipif(chromium is None, reason="Debian chromium is not installed")
def test_page_in_chromium_matches_json(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "report.json").write_text(json.dumps(BUILD))
    page = write_report(tmp_path)
    dom = _dom(page)
    cells = dict(re.findall(r'<td data-key="([^"]+)">([^<]*)</td>', dom))
    # every per-layer figure and every summary figure of the JSON is on the page
    for i in range(3):
        for key in ("cycles_per_layer", "bytes_moved_per_layer", "layer_cosines"):
            assert f"{key}.{i}" in cells
    assert len(cells) >= 9 + 8 + 6
    for key, text in cells.items():
        want = _expected(key)
        got = text.replace(",", "")
        if isinstance(want, str):
            assert got == want, key
        else:
            assert float(got) == pytest.approx(want, abs=1e-6), key
    assert dom.count("data:image/png;base64,") == 2          # plots embedded, self-contained
    assert "16.9 %" in dom                                   # LUT utilization 14098 / 83640


def test_missing_run_is_one_line(tmp_path):
    with pytest.raises(ReportError, match=r"run.json not found") as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(ReportError, match=r"not valid JSON"):
        write_report(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ReportError, match=r"lacks 'cycles_per_layer'"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
