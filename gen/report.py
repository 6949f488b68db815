"""``amaformer report DIR``: one self-contained HTML page from a whole-model run's directory.

Reads ``DIR/run.json`` (``amaformer run --model ... --json DIR/run.json``) and, when present,
``DIR/build/report.json`` or ``DIR/report.json`` (``amaformer build``), and writes
``DIR/report.html``: per-layer device cycles and bytes moved, where each operation ran, the
accuracy per layer (cosine of each layer's hidden states against float), the board's resource
utilization, and plots (matplotlib, embedded as PNG data URIs; no file next to the page).

Every figure printed on the page carries ``data-key`` naming the JSON field it came from
(``cycles_per_layer.3``), so a test can check the page against the JSON.
"""

import base64
import html
import io
import json
from pathlib import Path

__all__ = ["ReportError", "write_report", "render_report"]


class ReportError(ValueError):
    """The directory does not hold what a report needs; one line."""


def _fig_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(run):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = list(range(len(run["cycles_per_layer"])))
    out = []
    fig, ax = plt.subplots(figsize=(6, 3))
    lin = [t["linear_cycles"] for t in run.get("trace", [])] or run["cycles_per_layer"]
    att = [t["attention_cycles"] for t in run.get("trace", [])] or [0] * len(layers)
    ax.bar(layers, lin, label="linear unit")
    ax.bar(layers, att, bottom=lin, label="attention unit")
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("device cycles")
    ax.legend()
    ax.set_title("Device cycles per layer")
    out.append(("Device cycles per layer", _fig_png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(layers, run["layer_cosines"], marker="o")
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("cosine vs float")
    ax.set_title("Hidden states after each layer against float PyTorch")
    out.append(("Accuracy per layer", _fig_png(fig)))
    plt.close(fig)
    return out


def _cell(value, key, fmt="{}"):
    text = fmt.format(value) if value is not None else "–"
    return f'<td data-key="{html.escape(key)}">{html.escape(text)}</td>'


def render_report(run, build=None):
    """The HTML page (a string) for the run figures ``run`` and the build report ``build``."""
    for key in ("cycles_per_layer", "bytes_moved_per_layer", "layer_cosines", "cosine_min"):
        if key not in run:
            raise ReportError(f"run.json lacks {key!r}: write it with "
                              f"`amaformer run --model minilm --json DIR/run.json`")
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>amaformer report: {e(run.get('model', 'model'))}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}</style></head><body>",
             f"<h1>{e(run.get('model', 'model'))} on {e(str(run.get('board', '?')))}</h1>",
             "<h2>Summary</h2><table>"]
    rows = [("sentence-embedding cosine vs float (min)", run["cosine_min"], "cosine_min",
             "{:.6f}"),
            ("device cycles", run.get("cycles"), "cycles", "{:,}"),
            ("bytes moved over the link", run.get("bytes_moved"), "bytes_moved", "{:,}"),
            ("board clock (MHz)", run.get("clock_mhz"), "clock_mhz", "{}"),
            ("estimated compute time on the board (s)", run.get("est_board_seconds"),
             "est_board_seconds", "{}"),
            ("estimated link time at the UART's baud (s)", run.get("est_link_seconds"),
             "est_link_seconds", "{}"),
            ("simulation wall clock (s)", run.get("sim_seconds"), "sim_seconds", "{}"),
            ("simulator backend", run.get("sim_backend"), "sim_backend", "{}")]
    for label, value, key, fmt in rows:
        parts.append(f"<tr><th>{e(label)}</th>{_cell(value, key, fmt)}</tr>")
    parts.append("</table><h2>Per layer</h2><table><tr><th>layer</th><th>device cycles</th>"
                 "<th>bytes moved</th><th>cosine vs float</th></tr>")
    for i, (c, b, cos) in enumerate(zip(run["cycles_per_layer"], run["bytes_moved_per_layer"],
                                        run["layer_cosines"])):
        parts.append(f"<tr><td>{i}</td>{_cell(c, f'cycles_per_layer.{i}', '{:,}')}"
                     f"{_cell(b, f'bytes_moved_per_layer.{i}', '{:,}')}"
                     f"{_cell(cos, f'layer_cosines.{i}', '{:.6f}')}</tr>")
    parts.append("</table><h2>Where each operation ran</h2><table>")
    for where, ops in run.get("placement", {}).items():
        unit = "host" if where == "host" else f"device: {where} unit"
        parts.append(f"<tr><th>{e(unit)}</th><td style='text-align:left'>"
                     f"{e(', '.join(ops))}</td></tr>")
    parts.append("</table>")
    if build:
        parts.append(f"<h2>Resources ({e(str(build.get('device', '')))}, placed "
                     f"{e(str(build.get('fmax_mhz')))} MHz)</h2><table><tr><th>resource</th>"
                     "<th>used</th><th>available</th><th>utilization</th></tr>")
        for res in ("lut", "ff", "dsp", "bram", "spram"):
            used, total = build.get(res), build.get(f"{res}_total")
            if used is None or not total:
                continue
            parts.append(f"<tr><th>{res.upper()}</th>{_cell(used, f'build.{res}', '{:,}')}"
                         f"{_cell(total, f'build.{res}_total', '{:,}')}"
                         f"<td>{100 * used / total:.1f} %</td></tr>")
        parts.append("</table>")
    for title, uri in _plots(run):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='{uri}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir):
    """Write ``run_dir/report.html``; return its path. Raises :class:`ReportError`."""
    d = Path(run_dir)
    run_json = d / "run.json"
    if not run_json.is_file():
        raise ReportError(f"{run_json} not found: write it with `amaformer run --model minilm "
                          f"--json {run_json}`")
    try:
        run = json.loads(run_json.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{run_json} is not valid JSON ({e.msg} at line {e.lineno})") from None
    build = None
    for cand in (d / "build" / "report.json", d / "report.json"):
        if cand.is_file():
            build = json.loads(cand.read_text())
            break
    page = render_report(run, build)
    out = d / "report.html"
    out.write_text(page)
    return out
