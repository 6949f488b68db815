"""``amaformer run --model minilm``: all-MiniLM-L6-v2 compiled (:mod:`amaformer.gen.program`)
and run on a device (:mod:`amaformer.host.runtime`), compared with float PyTorch.

Figures (:func:`run_minilm` returns them as a dict, the CLI prints and writes them): the
sentence embeddings' cosine against the float model (float64, the model's own forward), the
cosine of each layer's hidden states, device cycles and link bytes per layer, the estimated
time on the board (device cycles at the board's clock, and the link's time for the bytes at the
UART's baud, as two separate figures), and the simulation's wall clock and backend. With masks,
every attention runs on the sparse-dense unit (:mod:`amaformer.gen.minilm_presets`).
"""

import time

import torch

__all__ = ["run_minilm"]


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


def run_minilm(sentences, config, device, *, report=None, masks=None):
    """Compile all-MiniLM-L6-v2 for ``config`` and run ``sentences`` on ``device`` (an open
    :class:`~amaformer.host.Device`). Returns the figures as a dict (see the module docstring).
    ``masks``: a mask file (``amaformer masks``) to run every attention on the sparse-dense unit
    under; the figures then say so (``masks``) and add ``cosine_dense_attention``: the golden
    path of the same program with dense (softmax) attention, against float (what is lost to
    the integer arithmetic alone; the rest of the gap is the masks').

    Raises
    ------
    amaformer.gen.program.ProgramError, ValueError
        One line: the configuration lacks a unit, a sentence is too long for the device.
    """
    from ..gen.attention import cosine
    from ..gen.model.exact import reference
    from ..gen.model.minilm import load_minilm, load_sentences
    from ..gen.program import compile_program
    from .runtime import max_tokens, run_program

    lm = load_minilm()
    calib, _ = load_sentences()
    t0 = time.monotonic()
    program = compile_program(lm.model, config, [lm.ids(s) for s in calib], masks=masks)
    compile_s = time.monotonic() - t0
    ids = [lm.ids(s) for s in sentences]
    limit = max_tokens(program, device)
    for s, i in zip(sentences, ids):
        if program.mask_tokens is not None and len(i) > program.mask_tokens:
            raise ValueError(f"sentence {s[:40]!r} has {len(i)} tokens; the masks are for at "
                             f"most {program.mask_tokens} (amaformer masks --tokens "
                             f"{len(i)} makes longer ones)")
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
        "encoding": _encoding_label(config),
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
    if program.masks is not None:
        keep = program.masks
        crops = [program.layer_masks(li, len(i)) for i in ids
                 for li in range(keep.shape[0])]
        out["masks"] = {
            "file": str(masks) if not hasattr(masks, "shape") else None,
            "tokens": program.mask_tokens,
            "sparsity": round(1.0 - float(keep.double().mean()), 6),
            "sparsity_run": round(1.0 - sum(float(c.sum()) for c in crops)
                                  / sum(c.numel() for c in crops), 6),
            "meta": program.mask_meta,
            "unit": {"dense_lanes": config.sparse_dense.dense_lanes,
                     "sparse_lanes": config.sparse_dense.sparse_lanes},
        }
        from ..gen.model.exact import exact_forward
        dense, _, _ = exact_forward(program.compiled, ids)
        out["cosine_dense_attention"] = [round(cosine(program.graph.pool(h), r[0]), 6)
                                         for h, r in zip(dense, refs)]
    if sim_cycles is not None:
        out.update(sim_backend=getattr(device.transport, "backend", "amaranth"),
                   sim_cycles=sim_cycles,
                   cycles_per_second=round(sim_cycles / max(res.seconds, 1e-9)))
    return out


def _encoding_label(config):
    """The weight encoding(s) of the run: ``"mul"``, or with a second linear unit
    ``"mul; shift on layers 2, 3"``."""
    l2 = config.linear2
    if not l2.enabled:
        return config.linear.mode
    return f"{config.linear.mode}; {l2.mode} on layers {', '.join(map(str, l2.layers))}"
