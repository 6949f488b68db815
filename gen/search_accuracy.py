"""The search's final accuracy check: the compiler's whole-model cosine of its best candidates.

During the search (:mod:`amaformer.gen.search`) a candidate's accuracy comes from the shipped
calibration table, one figure per weight encoding (and ``max_k``, where measured), which keeps
each evaluation at milliseconds and torch out of the optimizer. Before a configuration is
chosen, :func:`verify_candidates` compiles all-MiniLM-L6-v2 for each of the best few
candidates exactly as ``amaformer run`` will (:func:`amaformer.gen.program.compile_program`:
that configuration's encoding, K chunks of its ``max_k``, its units) and runs the compiled
program's bit-exact golden path (:meth:`~amaformer.gen.program.Program.forward`, what the
device computes) on the held-out sentences, against the float model. The chosen configuration
is the fastest whose measured cosine meets the floor; since the numerics depend only on the
encoding, ``max_k`` and the softmax format (:func:`accuracy_key`), one measurement covers every
candidate that shares them, and measuring stops at the first key that meets the floor.

Each measurement takes about 30 s of CPU for an int8 encoding (minutes for the
error-compensated ``shift``/``bcq`` ones), so they run in parallel on Dask
(:func:`amaformer.gen.parallel.map_parallel`: local cores, or a cluster's scheduler).
"""

from dataclasses import dataclass

__all__ = ["AccuracyCheck", "measure_cosine", "verify_candidates", "verify_front",
           "distinct_front", "accuracy_key", "check_for", "shortfall"]


@dataclass(frozen=True)
class AccuracyCheck:
    """One candidate's measured whole-model accuracy.

    ``cosine_min``/``cosine_mean``: sentence-embedding cosine against the float model (min and
    mean over ``sentences`` held-out sentences); ``table``: the calibration table's figure the
    search used; ``seconds``: wall time of the compile and golden run; ``error``: one line when
    the program could not be compiled (then the cosines are NaN).
    """
    cosine_min: float
    cosine_mean: float
    table: float
    sentences: int
    seconds: float
    error: str = ""

    def meets(self, floor):
        return not self.error and self.cosine_min >= floor

    def to_dict(self):
        return dict(cosine_min=self.cosine_min, cosine_mean=self.cosine_mean, table=self.table,
                    sentences=self.sentences, seconds=self.seconds, error=self.error)


def measure_cosine(args):
    """``(config_dict, n_sentences[, masks])`` → ``{cosine_min, cosine_mean, sentences,
    seconds}`` or ``{error}``: all-MiniLM-L6-v2 compiled for the configuration (attention under
    ``masks``, a mask file, when the configuration has a sparse-dense unit), its golden path
    on the first ``n_sentences`` held-out sentences against float. Module-level so that Dask
    can ship it."""
    import time

    from .attention import cosine
    from .config import AcceleratorConfig
    from .model.exact import reference
    from .model.minilm import load_minilm, load_sentences
    from .program import ProgramError, compile_program
    config_dict, n_sentences, *rest = args
    masks = rest[0] if rest else None
    t0 = time.monotonic()
    config = AcceleratorConfig.from_dict(config_dict)
    if not config.sparse_dense.enabled:
        masks = None
    lm = load_minilm()
    calib, held = load_sentences()
    ids = [lm.ids(s) for s in held[:n_sentences]]
    try:
        program = compile_program(lm.model, config, [lm.ids(s) for s in calib],
                                  max_tokens=max(len(i) for i in ids), masks=masks)
    except ProgramError as e:
        return {"error": str(e)}
    hidden, _, _ = program.forward(ids)
    cos = [cosine(program.graph.pool(h), reference(program.graph, i)[0])
           for h, i in zip(hidden, ids)]
    return dict(cosine_min=round(min(cos), 6), cosine_mean=round(sum(cos) / len(cos), 6),
                sentences=len(ids), seconds=round(time.monotonic() - t0, 1))


def fastest_first(candidates):
    """The feasible candidates, fastest first; at equal latency the more accurate (by the
    table), then the smaller, as :func:`amaformer.gen.search.search` ranks them."""
    return sorted((c for c in candidates if c is not None and c.feasible),
                  key=lambda c: (c.objective_s, -c.cosine, c.resources.lut))


def distinct_front(candidates, k):
    """The ``k`` fastest feasible candidates with distinct configurations (ties as
    :func:`fastest_first`)."""
    order = fastest_first(candidates)
    picks, seen = [], set()
    for c in order:
        key = repr(sorted(c.config.to_dict().items(), key=str))
        if key not in seen:
            seen.add(key)
            picks.append(c)
        if len(picks) == k:
            break
    return picks


def accuracy_key(config):
    """What the compiled program's numerics depend on: the weight encoding, the K chunk (the
    linear unit's ``max_k``), a second linear unit's encoding (with its α group) and layers,
    the softmax format and, under masks, the sparse-dense unit's
    lane split (its partial states are merged per segment, which rounds differently from a
    key-by-key fold by up to an output LSB); linear lanes, depths and clock change only
    speed (the linear and softmax golden models are lane-independent)."""
    from .attention import SoftmaxFormat
    from .search import encoding_key
    sd, l2 = config.sparse_dense, config.linear2
    split = (sd.dense_lanes, sd.sparse_lanes) if sd.enabled else None
    second = (encoding_key(l2), l2.bcq_group, l2.layers) if l2.enabled else None
    return (encoding_key(config.linear), config.linear.max_k,
            repr(SoftmaxFormat.from_config(sd if sd.enabled else config.attention)), split,
            second)


def verify_front(candidates, floor, *, keys=3, batch=2, sentences=12, scheduler=None,
                 workers=None, processes=True, on_result=None, masks=None):
    """The fastest feasible candidate whose measured whole-model cosine meets ``floor``.

    Candidates are walked fastest first; the numerics of the first ``keys`` distinct
    :func:`accuracy_key` are measured (:func:`measure_cosine`), ``batch`` at a time in
    parallel, and only as far as needed: the walk stops at the first candidate whose key
    measures at or above the floor. Returns ``(best or None, [(candidate, AccuracyCheck)],
    reason)``: the measured keys' first candidates with their checks, and, when none meets
    the floor, one line saying by how much the best misses it.
    """
    order = fastest_first(candidates)
    firsts = {}
    for c in order:
        firsts.setdefault(accuracy_key(c.config), c)
    pending = list(firsts.values())[:keys]
    checks = {}
    pairs = []
    while True:
        for c in order:
            chk = checks.get(accuracy_key(c.config))
            if chk is None:
                break                           # not measured yet: measure the next batch
            if chk.meets(floor):
                return c, pairs, ""
        if not pending:
            break
        todo, pending = pending[:batch], pending[batch:]
        got = verify_candidates(todo, sentences=sentences, scheduler=scheduler,
                                workers=workers, processes=processes, on_result=on_result,
                                masks=masks)
        for c, chk in zip(todo, got):
            checks[accuracy_key(c.config)] = chk
            pairs.append((c, chk))
    return None, pairs, shortfall(pairs, floor)


def check_for(candidate, pairs):
    """The :class:`AccuracyCheck` among ``pairs`` that covers ``candidate`` (the one of its
    :func:`accuracy_key`), or ``None``."""
    key = accuracy_key(candidate.config)
    return next((chk for c, chk in pairs if accuracy_key(c.config) == key), None)


def shortfall(pairs, floor):
    """One line: by how much the best of the measured ``[(candidate, AccuracyCheck)]`` misses
    ``floor`` (or why nothing was measured)."""
    measured = [chk for _, chk in pairs if not chk.error]
    if not measured:
        return (f"no candidate compiles for the whole model ({pairs[0][1].error})"
                if pairs else "no feasible candidate to measure")
    top = max(chk.cosine_min for chk in measured)
    return (f"the {len(pairs)} measured candidate(s) reach a whole-model cosine of at most "
            f"{top:.5f} on the compiler's path, below the floor {floor} by {floor - top:.5f}")


def verify_candidates(candidates, *, sentences=12, scheduler=None, workers=None,
                      processes=True, on_result=None, masks=None):
    """Measure each candidate's whole-model cosine (:func:`measure_cosine`) in parallel on
    Dask; returns one :class:`AccuracyCheck` per candidate, in order. ``on_result(index,
    check)`` is called as each finishes. ``masks``: the mask file sparse-dense candidates run
    under."""
    from .parallel import map_parallel
    items = [(c.config.to_dict(), sentences, None if masks is None else str(masks))
             for c in candidates]
    checks = [None] * len(items)
    # Each measurement imports torch and loads the model; ``processes=False`` runs them as
    # threads of this process (tests).

    def done(i, res):
        if isinstance(res, Exception):
            res = {"error": f"{type(res).__name__}: {res}"}
        nan = float("nan")
        checks[i] = AccuracyCheck(res.get("cosine_min", nan), res.get("cosine_mean", nan),
                                  candidates[i].cosine, res.get("sentences", sentences),
                                  res.get("seconds", 0.0), res.get("error", ""))
        if on_result is not None:
            on_result(i, checks[i])

    map_parallel(measure_cosine, items, scheduler=scheduler, workers=workers,
                 processes=processes, on_result=done)
    return checks
