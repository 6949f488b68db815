"""``amaformer run --model minilm``: all-MiniLM-L6-v2 compiled (:mod:`amaformer.gen.program`)
and run on a device (:mod:`amaformer.host.runtime`), compared with float PyTorch.

Figures (:func:`run_minilm` returns them as a dict, the CLI prints and writes them): the
sentence embeddings' cosine against the float model (float64, the model's own forward), the
cosine of each layer's hidden states, device cycles and link bytes per layer, the estimated
time on the board (device cycles at the board's clock, and the link's time for the bytes at the
UART's baud, as two separate figures), and the simulation's wall clock and backend.
"""

import time

import torch

__all__ = ["MINILM_PRESET", "minilm_config", "run_minilm"]

#: Configuration the whole model runs on by default (linear unit + softmax attention unit, the
#: pair that fits the ULX3S-85F; README "Attention on the device").
MINILM_PRESET = "ulx3s-85f"


def minilm_config():
    """The default whole-model configuration: the default linear unit (8 lanes, ``mul``) and a
    softmax attention unit (12 heads of 32, 4 lanes) on the ULX3S-85F."""
    from .config import AcceleratorConfig, AttentionConfig
    return AcceleratorConfig(board=MINILM_PRESET,
                             attention=AttentionConfig(mode="softmax", enabled=True))


def _board_clock_hz(config, report=None):
    """The clock a board estimate uses: the placed fmax of a build report (capped at the
    requested clock) when given, else the configuration's clock, else the board's."""
    from ..boards import get_board
    if report is not None:
        fmax = report.get("fmax_mhz") or report.get("clock_mhz")
        if fmax:
            return float(fmax) * 1e6, "build report"
    mhz = getattr(config, "clock_mhz", None)
    if mhz:
        return float(mhz) * 1e6, "configuration"
    return get_board(config.board).clock_mhz * 1e6, f"{config.board} clock"


def run_minilm(sentences, config, device, *, report=None):
    """Compile all-MiniLM-L6-v2 for ``config`` and run ``sentences`` on ``device`` (an open
    :class:`~amaformer.host.Device`). Returns the figures as a dict (see the module docstring).

    Raises
    ------
    amaformer.gen.program.ProgramError, ValueError
        One line: the configuration lacks a unit, a sentence is too long for the device.
    """
    from ..host.runtime import max_tokens, run_program
    from .attention import cosine
    from .model.exact import reference
    from .model.minilm import load_minilm, load_sentences
    from .program import compile_program

    lm = load_minilm()
    calib, _ = load_sentences()
    t0 = time.monotonic()
    program = compile_program(lm.model, config, [lm.ids(s) for s in calib])
    compile_s = time.monotonic() - t0
    ids = [lm.ids(s) for s in sentences]
    limit = max_tokens(program, device)
    for s, i in zip(sentences, ids):
        if len(i) > limit:
            raise ValueError(f"sentence {s[:40]!r} has {len(i)} tokens; this device takes at "
                             f"most {limit}")
    cycles0 = getattr(device.transport, "cycles", None)
    res = run_program(program, device, ids)
    sim_cycles = None if cycles0 is None else device.transport.cycles - cycles0
    refs = [reference(program.graph, i) for i in ids]
    cos = [cosine(e, r[0]) for e, r in zip(res.embeddings, refs)]
    layer_cos = [cosine(res.layers[k], torch.cat([r[1][k] for r in refs]))
                 for k in range(len(program.graph.layers))]
    clk_hz, clk_from = _board_clock_hz(config, report)
    link_bytes = res.bytes_moved
    out = {
        "model": "all-MiniLM-L6-v2",
        "sentences": list(sentences),
        "tokens": [len(i) for i in ids],
        "encoding": config.linear.mode,
        "numerics": "per-token input scales on the host, SmoothQuant 0.5, int8 out per column",
        "placement": program.placement(),
        "cosine": [round(c, 6) for c in cos],
        "cosine_min": round(min(cos), 6),
        "layer_cosines": [round(c, 6) for c in layer_cos],
        "cycles_per_layer": [t.cycles for t in res.trace],
        "cycles": res.cycles,
        "bytes_moved_per_layer": [t.bytes_moved for t in res.trace],
        "bytes_moved": link_bytes,
        "trace": [t.to_dict() for t in res.trace],
        "board": config.board,
        "clock_mhz": round(clk_hz / 1e6, 3),
        "clock_from": clk_from,
        "est_board_seconds": round(res.cycles / clk_hz, 6),
        "baud": config.uart.baud,
        "est_link_seconds": round(link_bytes * 10 / config.uart.baud, 3),
        "compile_seconds": round(compile_s, 2),
        "sim_seconds": round(res.seconds, 3),
    }
    if sim_cycles is not None:
        out.update(sim_backend=getattr(device.transport, "backend", "amaranth"),
                   sim_cycles=sim_cycles,
                   cycles_per_second=round(sim_cycles / max(res.seconds, 1e-9)))
    return out
