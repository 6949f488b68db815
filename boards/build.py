"""Bitstream builds: elaborate a design for a board, run the open toolchain, report the result.

:func:`build` runs the commands that Amaranth's platform generates (Yosys, nextpnr,
icepack/ecppack) one at a time, so that it can say which stage is running and for how long,
and writes ``report.json`` from nextpnr's own report (utilization and fmax) and Yosys's cell
statistics (flip-flops).
"""

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import *
from amaranth.lib import io, wiring

from ..gen.config import AcceleratorConfig, LinearConfig
from ..gen.rtl import linear_engine_from_config
from .catalogue import BoardError, get_board, toolchain_env
from .clocks import PLLClock

__all__ = ["BuildError", "EngineOnly", "wire_to_pins", "REQUANT_DSPS", "resolve_config",
           "make_design", "build", "prepare", "format_report", "DESIGNS", "no_collision_script",
           "LINK_AUDITED"]

#: iCE40 DSPs (``SB_MAC16``) taken by the engine's requantizer (two 16×16 partial products of
#: its 33×16-bit multiply, see ``PipelinedRequantizer``), not available to the lanes.
REQUANT_DSPS = 2

DESIGNS = ("auto", "accelerator", "engine")

#: Memories of the link's side of the top whose read ports may return anything when the same
#: address is written in the same cycle (``ByteMemory``: one owner per memory and state, their
#: data read only in states that do not write them). Other memories keep Amaranth's semantics
#: unless their unit's kind declares them audited (``UnitKind.audit``).
LINK_AUDITED = ("*.core.act", "*.core.out", "*.core.link.staging")


def no_collision_script(config):
    """Yosys command run after reading the design: the read ports of the audited memories may
    return anything on a same-address write, so Yosys needs no bypass logic to emulate
    Amaranth's "old data" (iCE40 block RAM cannot; ~30 FF and ~20 LUT per RAM).

    Audited: the link's memories (:data:`LINK_AUDITED`) and, per unit of the design, the
    submodules its kind lists in ``audit`` (e.g. the linear unit's engine: weights and
    parameters are written only while it is idle; see :mod:`amaformer.hdl.linear_spec`). A
    unit whose kind declares nothing keeps Amaranth's semantics: a new unit never inherits an
    audit nobody did.
    """
    from ..hdl.top import units_from_config
    mods = list(LINK_AUDITED)
    units = units_from_config(config, act_depth=2, out_depth=2)
    for i, u in enumerate(units):
        u.discard()                             # only asked for its kind
        mods += [f"*.core.unit{i}.{path}" for path in u.kind.audit]
    return "setparam -set COLLISION_X_MASK 1 " + " ".join(f"{mod}/t:$memrd_v2" for mod in mods)


#: The engine-only design's audit (``--design engine``).
ENGINE_AUDIT_SCRIPT = "setparam -set COLLISION_X_MASK 1 *.engine/t:$memrd_v2"


class BuildError(RuntimeError):
    """A toolchain step failed; the message names the step and the log file."""


def wire_to_pins(m, dut, rx, tx):
    """Every input of the component ``dut`` from a shift register fed by the pin ``rx``; every
    output registered and XOR-reduced onto the pin ``tx`` (adds to module ``m``), so that
    synthesis keeps the whole of ``dut`` while using two pins."""
    ins, outs = [], []
    for _path, member, value in dut.signature.flatten(dut):
        (ins if member.flow == wiring.In else outs).append(Value.cast(value))
    sreg = Signal(sum(len(v) for v in ins))
    m.d.sync += sreg.eq(Cat(rx, sreg[:-1]))
    pos = 0
    for v in ins:
        m.d.comb += v.eq(sreg[pos:pos + len(v)])
        pos += len(v)
    out_reg = Signal(sum(len(v) for v in outs))
    m.d.sync += [out_reg.eq(Cat(*outs)), tx.eq(out_reg.xor())]


class EngineOnly(wiring.Component):
    """Board top with only the :class:`~amaformer.hdl.linear.LinearEngine`, for measuring it.

    Every engine input comes from a shift register fed by the UART RX pin, and every engine
    output is registered and XOR-reduced onto the UART TX pin, so that synthesis keeps the
    whole engine while using two pins. The result is meaningless as a function; its
    utilization and fmax are those of the engine plus one register per port bit.

    Parameters
    ----------
    linear : LinearConfig
    """

    def __init__(self, linear):
        if not isinstance(linear, LinearConfig):
            raise TypeError(f"linear must be a LinearConfig, not {linear!r}")
        self.linear = linear
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = linear_engine_from_config(self.linear)
        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
            m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
            rx, tx = rx_buf.i, tx_buf.o
        else:
            rx, tx = Signal(), Signal()
        wire_to_pins(m, engine, rx, tx)
        return m


def resolve_config(config, board):
    """``config`` with the board-dependent fields filled in.

    When ``config.linear.dsp_lanes`` is ``None`` on a board with few DSPs (iCE40), the lanes
    get as many DSP multipliers as are left after the requantizer (:data:`REQUANT_DSPS`); the
    others use logic multipliers. A second linear unit (``linear2``) gets what the first
    leaves.
    """
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    from dataclasses import replace
    free = max(0, board.device.dsp - REQUANT_DSPS)
    for name in ("linear", "linear2"):
        lin = getattr(config, name)
        if lin.enabled and lin.dsp_lanes is None and lin.lanes > free:
            config = config.replace(**{name: replace(lin, dsp_lanes=free)})
        if lin.enabled:                 # the next unit gets what this one leaves
            free = max(0, free - (lin.hw_lanes if lin.mode == "mul" else 0) - REQUANT_DSPS)
    return config


def _accelerator_class():
    try:
        from ..hdl.top import Accelerator
    except ImportError:
        return None
    return Accelerator


def make_design(config, design="auto"):
    """The design to build: ``"accelerator"`` (:class:`amaformer.hdl.top.Accelerator`),
    ``"engine"`` (:class:`EngineOnly`) or ``"auto"`` (the accelerator when it exists)."""
    if design not in DESIGNS:
        raise BoardError(f"design must be one of {', '.join(DESIGNS)}, not {design!r}")
    if design in ("auto", "accelerator"):
        cls = _accelerator_class()
        if cls is not None:
            return "accelerator", cls(config)
        if design == "accelerator":
            raise BoardError("design 'accelerator' is not available (amaformer.hdl.top "
                             "has no Accelerator)")
    return "engine", EngineOnly(config.linear)


@dataclass
class _Prepared:
    board: object
    config: AcceleratorConfig
    design_kind: str
    name: str
    out_dir: Path
    plan: object
    clock_mhz: float


def prepare(config, board_name, out_dir, *, design="auto", name=None, verilog=False):
    """Elaborate the design for a board and write the build files to ``out_dir`` without
    running any tool (``verilog``: also ``NAME.debug.v``, the Verilog of the board top).
    Returns an object whose ``plan`` is Amaranth's ``BuildPlan``."""
    board = get_board(board_name)
    config = resolve_config(config, board)
    kind, top = make_design(config, design)
    name = name or config.name
    platform = board.make_platform()
    clock_mhz = board.clock_mhz
    if config.clock_mhz is not None:
        try:
            top = PLLClock(top, board.family, board.clock_mhz, config.clock_mhz)
        except ValueError as e:
            raise BoardError(f"clock_mhz = {config.clock_mhz}: {e}") from None
        clock_mhz = top.f_out_mhz
        platform.core_clock_hz = clock_mhz * 1e6
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = platform.build(top, name=name, build_dir=str(out_dir), do_build=False,
                          debug_verilog=verilog,
                          script_after_read=(no_collision_script(config) if kind == "accelerator"
                                             else ENGINE_AUDIT_SCRIPT))
    plan.extract(str(out_dir))
    return _Prepared(board, config, kind, name, out_dir, plan, clock_mhz)


_STAGES = {
    "yosys": "synthesis (yosys)",
    "nextpnr-ice40": "place and route (nextpnr-ice40)",
    "nextpnr-ecp5": "place and route (nextpnr-ecp5)",
    "icepack": "bitstream (icepack)",
    "ecppack": "bitstream (ecppack)",
}


def _run_commands(prep, progress, env):
    commands = json.loads((prep.out_dir / f"build_{prep.name}.json").read_text())["commands"]
    for argv in commands:
        tool = argv[0]
        stage = _STAGES.get(tool, tool)
        var = tool.upper().replace("-", "_")
        argv = [env.get(var, tool)] + argv[1:]
        log_path = prep.out_dir / f"{tool}.log"
        start = time.monotonic()
        progress(stage, 0.0, False)
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(argv, cwd=prep.out_dir, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
            except OSError as e:
                raise BuildError(f"{stage}: cannot run {argv[0]!r}: {e.strerror}") from None
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    progress(stage, time.monotonic() - start, False)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
        progress(stage, time.monotonic() - start, True)
        if rc != 0:
            tail = [line for line in log_path.read_text().splitlines() if line.strip()][-1:]
            raise BuildError(f"{stage} failed (exit {rc}), see {log_path}"
                             + (f": {tail[0].strip()}" if tail else ""))


_ICE40_FF = re.compile(r"^SB_DFF\w*$")


def _yosys_cells(rpt_text):
    """Cell counts of the last statistics table in a Yosys log: {cell type: count}."""
    sections = rpt_text.split("Printing statistics.")
    if len(sections) < 2:
        return {}
    # With submodules, the totals are in the hierarchy section; otherwise in the one table.
    text = sections[-1].split("=== design hierarchy ===")[-1]
    cells = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            a, b = parts
            if a.isdigit() and not b.isdigit():
                a, b = b, a
            if b.isdigit() and re.match(r"^[$A-Za-z_][\w$]*$", a):
                cells[a] = cells.get(a, 0) + int(b)
    return cells


def _util(util, key):
    entry = util.get(key, {})
    return int(entry.get("used", 0)), int(entry.get("available", 0))


def _make_report(prep, elapsed):
    board = prep.board
    dev = board.device
    nextpnr = json.loads((prep.out_dir / "report.json").read_text())
    util = nextpnr.get("utilization", {})
    cells = _yosys_cells((prep.out_dir / f"{prep.name}.rpt").read_text(errors="replace"))
    if dev.family == "ice40":
        lut, lut_total = _util(util, "ICESTORM_LC")
        ff = sum(n for c, n in cells.items() if _ICE40_FF.match(c))
        dsp, dsp_total = _util(util, "ICESTORM_DSP")
        bram, bram_total = _util(util, "ICESTORM_RAM")
        spram, spram_total = _util(util, "ICESTORM_SPRAM")
        bitstream = prep.out_dir / f"{prep.name}.bin"
        ff_total = lut_total
    else:
        lut, lut_total = _util(util, "TRELLIS_COMB")
        ff, ff_total = _util(util, "TRELLIS_FF")
        dsp, dsp_total = _util(util, "MULT18X18D")
        bram, bram_total = _util(util, "DP16KD")
        spram, spram_total = 0, 0
        bitstream = prep.out_dir / f"{prep.name}.bit"
    fmax = nextpnr.get("fmax", {})
    # The core clock is the one with the most logic; with one clock domain there is one entry.
    clocks = {k: v for k, v in fmax.items()}
    core = None
    for k, v in clocks.items():
        if core is None or v.get("constraint", 0) >= clocks[core].get("constraint", 0):
            core = k
    fmax_mhz = round(clocks[core]["achieved"], 2) if core else None
    target = round(clocks[core]["constraint"], 2) if core else prep.clock_mhz
    lin = prep.config.linear
    return {
        "board": board.name,
        "device": dev.part,
        "design": prep.design_kind,
        "name": prep.name,
        "lanes": lin.lanes,
        "dsp_lanes": lin.hw_lanes,
        "lut": lut, "lut_total": lut_total or dev.lut,
        "ff": ff, "ff_total": ff_total or dev.ff,
        "dsp": dsp, "dsp_total": dsp_total or dev.dsp,
        "bram": bram, "bram_total": bram_total or dev.bram, "bram_kbit": dev.bram_kbit,
        "spram": spram, "spram_total": spram_total or dev.spram,
        "fmax_mhz": fmax_mhz,
        "clock_mhz": round(prep.clock_mhz, 4),
        "target_mhz": target,
        "timing_met": fmax_mhz is not None and fmax_mhz >= prep.clock_mhz,
        "bitstream": str(bitstream.resolve()),
        "build_seconds": round(elapsed, 1),
        "config": prep.config.to_dict(),
    }


def _no_progress(stage, elapsed, done):
    pass


def build(config, board_name, out_dir, progress=None, *, design="auto", name=None):
    """Build a bitstream of ``config`` for a board and write ``out_dir/report.json``.

    Parameters
    ----------
    config : AcceleratorConfig
        ``config.clock_mhz`` set: the core clock comes from a PLL at (about) that frequency and
        nextpnr is asked to meet it. ``None``: the board oscillator drives the core.
    board_name : str
        A name from the catalogue (:func:`~amaformer.boards.board_names`).
    out_dir : str or Path
        Build directory: design files, tool logs (``yosys.log``, ``nextpnr-*.log``, ...),
        the bitstream and ``report.json``.
    progress : callable or None
        ``progress(stage, elapsed_seconds, finished)``, called when a stage starts, about once a
        second while it runs, and when it ends.
    design : str
        ``"auto"``, ``"accelerator"`` or ``"engine"`` (see :func:`make_design`).
    name : str or None
        Design (file) name; default ``config.name``.

    Returns
    -------
    dict
        The report: ``device``, ``lut``, ``ff``, ``dsp``, ``bram``, ``spram`` (each with a
        ``*_total``), ``fmax_mhz`` (nextpnr's achieved fmax of the core clock), ``clock_mhz``,
        ``timing_met``, ``bitstream`` (absolute path), ``build_seconds`` and the resolved
        ``config``.

    Raises
    ------
    BoardError
        Unknown board or design.
    BuildError
        A tool failed (the message names the step and its log file).
    """
    progress = progress or _no_progress
    start = time.monotonic()
    progress("elaborate", 0.0, False)
    prep = prepare(config, board_name, out_dir, design=design, name=name)
    progress("elaborate", time.monotonic() - start, True)
    _run_commands(prep, progress, toolchain_env())
    report = _make_report(prep, time.monotonic() - start)
    (prep.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report):
    """The report as a small text table (one resource per line)."""
    def pct(used, total):
        return f"{100 * used / total:5.1f} %" if total else "    - "
    rows = [
        ("LUT" if report["device"].startswith("LFE5") else "LUT4/LC",
         report["lut"], report["lut_total"]),
        ("FF", report["ff"], report["ff_total"]),
        ("DSP", report["dsp"], report["dsp_total"]),
        (f"BRAM ({report['bram_kbit']} kbit)", report["bram"], report["bram_total"]),
    ]
    if report["spram_total"]:
        rows.append(("SPRAM (256 kbit)", report["spram"], report["spram_total"]))
    lines = [f"board {report['board']}  device {report['device']}  design {report['design']}"
             f"  lanes {report['lanes']} ({report['dsp_lanes']} on DSPs)"]
    lines += [f"  {label:<18}{used:>7} / {total:<7}{pct(used, total)}"
              for label, used, total in rows]
    met = "met" if report["timing_met"] else "NOT met"
    lines.append(f"  {'fmax':<18}{report['fmax_mhz']:>7} MHz (clock {report['clock_mhz']:g} MHz,"
                 f" timing {met})")
    lines.append(f"  {'bitstream':<18}{report['bitstream']}")
    return "\n".join(lines)
