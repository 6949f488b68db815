"""Design-space search: the fastest accelerator for a model on a board, under the board's
resources and an accuracy floor (issue 14).

A candidate is an :class:`~amaformer.gen.config.AcceleratorConfig`: the linear unit's weight
encoding and bits (``mul`` int8/int6, ``shift`` with 4 or 7 magnitudes, ``bcq`` with 2–4
planes, α per 128 inputs), its lanes (``shift``: and products per lane), its memory depths
(``max_k``, the K chunk of every layer; ``weight_depth``; ``max_n``), an optional second
linear unit for some layers (below), the attention mode — the softmax attention
unit and its lanes, or no attention unit (attention on the host, with ``host_attention``), or,
given fixed masks (``masks``, a :class:`~amaformer.gen.latency.MaskSchedule`), the sparse-dense
coordinator under them and its dense/sparse lane split (entry memories sized for the masks by
:func:`amaformer.gen.sparse_dense.config_for_split`) — and the clock target. Each is scored
with models only, no synthesis:

* latency: :func:`amaformer.gen.latency.model_latency`, the units' exact cycle models over the
  whole-model schedule, at the PLL's achievable clock; the link's time for the bytes it moves
  is reported beside it and counted only with ``link_counts``;
* resources and fmax: :func:`amaformer.gen.resources.estimate` (calibrated from real builds);
* accuracy: the whole-model cosine of the weight encoding on the device-exact path, from the
  calibration data (measured once by ``scripts/calibrate.py --accuracy``, never recomputed here);
  under masks, minus the masks' cost in cosine (``mask_penalty``, which ``amaformer search
  --masks`` measures on the compiler's path before searching). The final check
  (:mod:`amaformer.gen.search_accuracy`) measures the chosen candidates exactly, masks
  included.

Weight encoding per layer: a candidate may add a second linear unit (``[linear2]``) with a
multiplier-free encoding of its own (``shift`` or ``bcq``), its lanes, and how many encoder
layers run on it. Which layers: the ones that cost least cosine in that encoding, from the
per-layer sensitivity table (``scripts/calibrate.py --sensitivity``: the whole-model cosine
on the device-exact path with one layer in the encoding, every other in int8); the candidate's
cosine is the first unit's table figure minus the chosen layers' costs (additive, an
estimate), and the final check measures the mixed program itself. Linear attention modes are
not searched: all-MiniLM-L6-v2 is a softmax model (replacing its attention changes the
function, not just the hardware).

Constraints (each ``<= 0`` when met): logic ``<= lut_margin ×`` the device's (routability),
flip-flops, DSP, block RAM and SPRAM within the device, the clock at most the predicted fmax
minus the family's margin, the cosine at least the floor, the sentence's Q, K, V within the
activation memory.

Why optuna
    The space is mixed and conditional (bits only for their encoding, products per lane only
    for ``shift``) and most of it is infeasible; optuna's TPE sampler takes categorical,
    conditional parameters natively, handles constraints (``constraints_func``: infeasible
    trials inform the sampler instead of being dropped), has a multi-objective mode whose
    Pareto front we write out (latency against logic), is seeded for reproducible runs, and is
    a maintained library with a stable API, where a hand-written annealer or genetic algorithm
    would need all of that written and tested here. Evaluations are milliseconds, so the
    sampler's own overhead bounds the run; a few hundred trials suffice (see
    ``scripts/bench_search.py``: gap to the exhaustive optimum of a small space).
"""

import math
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache

__all__ = ["SearchSpace", "Candidate", "SearchResult", "Infeasible", "evaluate", "search",
           "neighbours",
           "enumerate_space", "default_config", "ACCURACY_FALLBACK", "encoding_key",
           "sensitivity_table", "second_unit_layers"]

#: Whole-model cosines used when the calibration data has no accuracy table (min over 12
#: held-out sentences, device-exact path, the compiler's numerics; README "Whole model").
ACCURACY_FALLBACK = {"mul8": 0.99802}


#: The constraints of a candidate (see :func:`evaluate`).
CONSTRAINTS = ("LUT", "FF", "DSP", "BRAM", "SPRAM", "clock", "cosine", "tokens")


class Infeasible(ValueError):
    """No candidate meets the constraints; the message (one line) names the constraint that
    fails and by how much, for the closest candidate."""


@dataclass(frozen=True)
class SearchSpace:
    """The choices of each variable (tuples); what the family cannot use is filtered out."""
    encodings: tuple = ("mul8", "mul6", "mul4", "shift4", "shift7", "bcq2", "bcq3", "bcq4")
    lanes: tuple = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 56, 64)
    shift_inputs: tuple = (1, 2, 4)
    att_lanes: tuple = (1, 2, 3, 4, 6, 8, 12, 16)
    sd_dense: tuple = (1, 2, 3, 4)              # sparse-dense unit (with masks): W_d
    sd_sparse: tuple = (1, 2, 3, 4, 6, 8)       # and W_s
    encodings2: tuple = ("shift7", "shift4", "bcq4", "bcq3", "bcq2")   # second linear unit
    lanes2: tuple = (4, 8, 16, 24, 32, 48, 64)
    max_k: tuple = (256, 384, 512, 1024)
    depth_factor: tuple = (1, 2, 4, 8)         # weight_depth = words(max_k) × factor
    max_n: tuple = (384, 512, 1536)
    clocks: dict = field(default_factory=lambda: {
        "ice40": (16.0, 18.0, 20.0, 22.5, 24.0, 25.5, 27.0, 30.0, 33.0, 36.0, 39.0, 42.0),
        "ecp5": (25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 80.0,
                 90.0, 100.0)})

    def size(self, family, encodings=None, masks=False):
        encs = encodings or self.encodings
        n_lin = sum(len(self.lanes) * (len(self.shift_inputs) if e.startswith("shift") else 1)
                    for e in encs)
        n_att = len(self.att_lanes) + (len(self.sd_dense) * len(self.sd_sparse) if masks else 0)
        return (n_lin * n_att * len(self.max_k) * len(self.depth_factor)
                * len(self.max_n) * len(self.clocks[family]))


def encoding_key(lin):
    """``"mul8"``, ``"shift4"``, ``"bcq3"``: the accuracy table's key of a linear unit."""
    bits = {"mul": lin.weight_bits, "shift": lin.shift_levels, "bcq": lin.bcq_bits}[lin.mode]
    return f"{lin.mode}{bits}"


def _parse_encoding(key):
    mode = key.rstrip("0123456789")
    return mode, int(key[len(mode):])


#: α group of the search's ``bcq`` units: the quantizer's default (``gen.model.exact.
#: Encoding``), at which the accuracy and sensitivity tables are measured.
BCQ_GROUP = 128


def sensitivity_table(model=None):
    """``{encoding: (cost of layer 0, cost of layer 1, ...)}``: the whole-model cosine lost
    when one encoder layer runs in a second unit's encoding (the calibration data's
    ``sensitivity``: the int8 model's cosine minus the one-layer mix's); empty when not
    measured."""
    from .resources import _model
    sens = (model or _model()).sensitivity
    return {k: tuple(round(v["base_cosine_min"] - ly["cosine_min"], 6) for ly in v["layers"])
            for k, v in sens.items()}


def second_unit_layers(costs, count):
    """The ``count`` encoder layers with the smallest ``costs`` (ties: the earlier layer), in
    increasing order: the layers a second unit takes."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    return tuple(sorted(order[:count]))


def _linear_section(encoding, lanes, max_k, max_n, shift_inputs=1, layers=()):
    """The ``LinearConfig`` fields of a searched unit (``weight_depth`` still to size)."""
    mode, bits = _parse_encoding(encoding)
    lin = dict(mode=mode, lanes=lanes, max_k=max_k, max_n=max_n, weight_depth=1 << 20,
               layers=layers)
    if mode == "mul":
        lin["weight_bits"] = bits
    elif mode == "shift":
        lin.update(shift_levels=bits, shift_inputs=shift_inputs)
    else:
        lin.update(bcq_bits=bits, bcq_group=BCQ_GROUP)
    return lin


def _sized(lin, depth_factor):
    """``LinearConfig`` of fields ``lin`` whose weight buffer holds ``depth_factor`` × the words
    of a ``max_k`` column group (rounded up to a power of two)."""
    from .config import LinearConfig
    words = LinearConfig(**lin).weight_words(lin["max_k"], 1)
    return LinearConfig(**dict(lin, weight_depth=(1 << max(0, (words - 1).bit_length()))
                               * depth_factor))


@lru_cache(maxsize=256)
def pll_clock(family, osc_mhz, mhz):
    """The frequency the board's PLL makes for a request (``boards.clocks``)."""
    from ..boards.clocks import ecp5_pll_params, ice40_pll_params
    fn = ice40_pll_params if family == "ice40" else ecp5_pll_params
    return fn(osc_mhz, mhz)["f_out_mhz"]


def attention_mode(params):
    """``"softmax"``, ``"sparse_dense"`` or ``"host"``: where a point of the space runs
    attention."""
    if params.get("attention") == "sparse_dense":
        return "sparse_dense"
    return "softmax" if params["att_lanes"] else "host"


def make_config(board, params, base=None, masks=None, sensitivity=None):
    """An :class:`AcceleratorConfig` from one point of the space (``params``: ``encoding``,
    ``lanes``, ``shift_inputs``, ``att_lanes`` (0: no attention unit), ``max_k``,
    ``depth_factor``, ``max_n``, ``clock``; with ``attention = "sparse_dense"``, ``sd_dense``
    and ``sd_sparse``: a sparse-dense unit sized for ``masks``, a
    :class:`~amaformer.gen.latency.MaskSchedule`; with ``encoding2``, a second linear unit of
    ``lanes2`` lanes (``shift_inputs2``) and weight buffer ``depth_factor2`` for the
    ``layers2`` encoder layers that cost least in that encoding by ``sensitivity``
    (:func:`sensitivity_table`), with the first unit's ``max_k`` and ``max_n``). Raises
    ``ConfigError`` for an invalid one."""
    from .config import (AcceleratorConfig, AttentionConfig, ConfigError, LinearConfig,
                         SparseDenseConfig)
    lin = _sized(_linear_section(params["encoding"], params["lanes"], params["max_k"],
                                 params["max_n"], params.get("shift_inputs", 1)),
                 params["depth_factor"])
    lin2 = LinearConfig(enabled=False)
    if params.get("encoding2"):
        if sensitivity is None or params["encoding2"] not in sensitivity:
            raise ConfigError(f"a second unit in {params['encoding2']} needs its per-layer "
                              f"sensitivity")
        layers = second_unit_layers(sensitivity[params["encoding2"]], params["layers2"])
        lin2 = _sized(_linear_section(params["encoding2"], params["lanes2"], params["max_k"],
                                      params["max_n"], params.get("shift_inputs2", 1), layers),
                      params.get("depth_factor2", params["depth_factor"]))
    att = (AttentionConfig(mode="softmax", enabled=True, lanes=params["att_lanes"])
           if params["att_lanes"] else AttentionConfig())
    base = base or AcceleratorConfig()
    sd = SparseDenseConfig()
    if attention_mode(params) == "sparse_dense":
        if masks is None:
            raise ConfigError("attention 'sparse_dense' needs masks")
        sd = masks.unit(params["sd_dense"], params["sd_sparse"])
    return AcceleratorConfig(name=base.name, board=board, clock_mhz=float(params["clock"]),
                             linear=lin, attention=att, uart=base.uart, sparse_dense=sd,
                             linear2=lin2)


@dataclass
class Candidate:
    """One scored configuration."""
    params: dict
    config: object
    resources: object
    latency: object
    cosine: float
    clock_mhz: float             # what the PLL makes
    violations: dict             # constraint -> amount over (> 0: violated), in its unit
    limits: dict                 # constraint -> (needed, allowed, unit)
    link_counts: bool = False

    @property
    def feasible(self):
        return all(v <= 0 for v in self.violations.values())

    @property
    def objective_s(self):
        return self.latency.total_s(self.link_counts)

    def describe(self):
        """One line: encoding, lanes, second unit and attention."""
        p = self.params
        att = {"softmax": f"attention {p['att_lanes']} lanes",
               "host": "attention on the host",
               "sparse_dense": f"sparse-dense attention {p.get('sd_dense')}+"
                               f"{p.get('sd_sparse')} lanes under masks"}[attention_mode(p)]
        second = ""
        if p.get("encoding2"):
            l2 = self.config.linear2.layers
            second = (f" + {p['encoding2']} {p['lanes2']} lanes on layer{'s' * (len(l2) > 1)} "
                      f"{', '.join(map(str, l2))}")
        return f"{p['encoding']}, {p['lanes']} linear lanes{second}, {att}"

    def row(self):
        r, lat = self.resources, self.latency
        return dict(encoding=self.params["encoding"], lanes=self.params["lanes"],
                    shift_inputs=self.params.get("shift_inputs", 1),
                    encoding2=self.params.get("encoding2", ""),
                    lanes2=self.params.get("lanes2", 0),
                    weight_depth2=self.config.linear2.weight_depth
                    if self.config.linear2.enabled else 0,
                    shift_inputs2=self.params.get("shift_inputs2", 0),
                    layers2=" ".join(map(str, self.config.linear2.layers)),
                    attention=attention_mode(self.params),
                    att_lanes=self.params["att_lanes"],
                    sd_dense=self.params.get("sd_dense", 0),
                    sd_sparse=self.params.get("sd_sparse", 0), max_k=self.params["max_k"],
                    weight_depth=self.config.linear.weight_depth,
                    max_n=self.params["max_n"], clock_mhz=round(self.clock_mhz, 3),
                    compute_s=round(lat.compute_s, 6), link_s=round(lat.link_s, 3),
                    cycles=lat.cycles, lut=r.lut, ff=r.ff, dsp=r.dsp, bram=r.bram,
                    spram=r.spram, fmax_mhz=round(r.fmax_mhz, 1), cosine=self.cosine,
                    feasible=self.feasible)


def accuracy_table(model=None):
    """``{key: cosine_min}`` of the calibration data: ``"mul8"`` (K chunks of 512) and, where
    measured, ``"mul8@k256"`` (K chunks of the linear unit's ``max_k``)."""
    from .resources import _model
    acc = (model or _model()).accuracy
    return {k: v["cosine_min"] for k, v in acc.items()} or dict(ACCURACY_FALLBACK)


def table_cosine(acc, encoding, max_k):
    """A candidate's whole-model cosine from the table: the figure measured at its ``max_k``
    when there is one, else the encoding's (measured at 512; the final check,
    :mod:`amaformer.gen.search_accuracy`, measures the chosen candidates exactly); NaN when
    the encoding was never measured."""
    return acc.get(f"{encoding}@k{max_k}", acc.get(encoding, float("nan")))


def best_table_cosine(acc, encoding):
    """The best cosine the table gives ``encoding`` at any ``max_k`` (NaN: never measured)."""
    vals = [v for k, v in acc.items() if k == encoding or k.startswith(encoding + "@")]
    return max(vals) if vals else float("nan")


def evaluate(board, params, *, min_cosine=0.99, tokens=24, link_counts=False, lut_margin=0.85,
             model=None, accuracy=None, base=None, masks=None, mask_penalty=0.0,
             sensitivity=None):
    """Score one point of the space: a :class:`Candidate` (``None`` when the point is not a
    valid configuration, or one the models cannot estimate). ``masks``: a
    :class:`~amaformer.gen.latency.MaskSchedule` for sparse-dense points; their cosine is
    the table's minus ``mask_penalty``. Points with a second linear unit lose the per-layer
    costs (``sensitivity``, default :func:`sensitivity_table`) of the layers it takes."""
    from ..boards import get_board
    from .config import ConfigError
    from .latency import ACT_DEPTH, MINILM, model_latency
    from .resources import estimate
    b = get_board(board)
    sens = sensitivity if sensitivity is not None else sensitivity_table(model)
    try:
        cfg = make_config(board, params, base, masks, sens)
        res = estimate(cfg, board, model=model)
    except (ConfigError, ValueError):
        return None
    f_clk = pll_clock(b.family, b.clock_mhz, float(params["clock"]))
    cfg = cfg.replace(clock_mhz=round(f_clk, 4))
    sparse = attention_mode(params) == "sparse_dense"
    try:
        lat = model_latency(cfg, tokens, clock_mhz=f_clk, masks=masks if sparse else None)
    except ValueError:
        return None
    acc = accuracy if accuracy is not None else accuracy_table(model)
    cos = table_cosine(acc, params["encoding"], params["max_k"]) - (mask_penalty if sparse
                                                                     else 0.0)
    if cfg.linear2.enabled:
        cos -= sum(sens[params["encoding2"]][i] for i in cfg.linear2.layers)
    d = b.device
    limits = {
        "LUT": (res.lut, math.floor(lut_margin * d.lut), "LC" if b.family == "ice40" else "LUT4"),
        "FF": (res.ff, d.ff, "FF"),
        "DSP": (res.dsp, d.dsp, "DSP"),
        "BRAM": (res.bram, d.bram, "block RAM"),
        "SPRAM": (res.spram, d.spram, "SPRAM"),
        "clock": (f_clk, res.feasible_clock_mhz, "MHz"),
        "cosine": (-cos if cos == cos else 0.0, -min_cosine, "cosine"),
    }
    if cfg.attention.enabled or sparse:
        per_token = 3 * MINILM.heads * MINILM.head_dim
        limits["tokens"] = (tokens, min(ACT_DEPTH // per_token,
                                        masks.tokens if sparse else ACT_DEPTH), "tokens")
    viol = {k: (need - allow) for k, (need, allow, _) in limits.items()}
    if cos != cos:
        viol["cosine"] = 1.0
    return Candidate(dict(params), cfg, res, lat, cos, f_clk, viol, limits, link_counts)


def _suggest(trial, space, family, encodings, host_attention, masks=False, second=None):
    enc = trial.suggest_categorical("encoding", list(encodings))
    p = {"encoding": enc, "lanes": trial.suggest_categorical("lanes", list(space.lanes))}
    if enc.startswith("shift"):
        p["shift_inputs"] = trial.suggest_categorical("shift_inputs", list(space.shift_inputs))
    if second:
        enc2 = trial.suggest_categorical("encoding2", ["none"] + list(second["encodings"]))
        if enc2 != "none":
            p.update(encoding2=enc2,
                     lanes2=trial.suggest_categorical("lanes2", list(space.lanes2)),
                     depth_factor2=trial.suggest_categorical("depth_factor2",
                                                             list(space.depth_factor)),
                     layers2=trial.suggest_categorical("layers2", list(second["layers"])))
            if enc2.startswith("shift"):
                p["shift_inputs2"] = trial.suggest_categorical("shift_inputs2",
                                                               list(space.shift_inputs))
    if masks and trial.suggest_categorical("attention", ["softmax", "sparse_dense"]) \
            == "sparse_dense":
        p.update(attention="sparse_dense", att_lanes=0,
                 sd_dense=trial.suggest_categorical("sd_dense", list(space.sd_dense)),
                 sd_sparse=trial.suggest_categorical("sd_sparse", list(space.sd_sparse)))
    else:
        att = list(space.att_lanes) + ([0] if host_attention else [])
        p["att_lanes"] = trial.suggest_categorical("att_lanes", att)
    p["max_k"] = trial.suggest_categorical("max_k", list(space.max_k))
    p["depth_factor"] = trial.suggest_categorical("depth_factor", list(space.depth_factor))
    p["max_n"] = trial.suggest_categorical("max_n", list(space.max_n))
    p["clock"] = trial.suggest_categorical("clock", list(space.clocks[family]))
    return p


def _attention_points(space, host_attention, masks):
    """The attention choices of the space: ``[{att_lanes, ...}]``."""
    out = [dict(att_lanes=a) for a in list(space.att_lanes) + ([0] if host_attention else [])]
    if masks:
        out += [dict(attention="sparse_dense", att_lanes=0, sd_dense=wd, sd_sparse=ws)
                for wd in space.sd_dense for ws in space.sd_sparse]
    return out


def _second_points(space, second):
    """The second-unit choices: ``[{}]`` (none) and, with ``second``, every ``encoding2``,
    ``lanes2``, ``shift_inputs2``, ``depth_factor2`` and ``layers2``."""
    import itertools
    out = [{}]
    for enc in (second or {}).get("encodings", ()):
        sis = space.shift_inputs if enc.startswith("shift") else (None,)
        for lanes, si, f, n in itertools.product(space.lanes2, sis, space.depth_factor,
                                                 second["layers"]):
            q = dict(encoding2=enc, lanes2=lanes, depth_factor2=f, layers2=n)
            if si is not None:
                q["shift_inputs2"] = si
            out.append(q)
    return out


def enumerate_space(space, family, encodings, host_attention=False, masks=False, second=None):
    """Every point of ``space`` (for exhaustive checks of small spaces); ``second``: the
    second-unit choices as :func:`search` makes them (``{"encodings", "layers"}``)."""
    import itertools
    att = _attention_points(space, host_attention, masks)
    extra = _second_points(space, second)
    for enc in encodings:
        sis = space.shift_inputs if enc.startswith("shift") else (1,)
        for lanes, si, a, x, k, f, n, c in itertools.product(
                space.lanes, sis, att, extra, space.max_k, space.depth_factor, space.max_n,
                space.clocks[family]):
            p = dict(encoding=enc, lanes=lanes, **a, **x, max_k=k, depth_factor=f,
                     max_n=n, clock=c)
            if enc.startswith("shift"):
                p["shift_inputs"] = si
            yield p


def neighbours(params, space, family, encodings, host_attention=False, masks=False,
               second=None):
    """The points one step from ``params``: each ordered variable to the next value below and
    above in its tuple, the weight encoding to any other allowed one (products per lane
    added or dropped as the encoding needs), with ``masks`` the attention mode switched
    (softmax unit ↔ sparse-dense unit, at the fewest and at the middle of the other's lanes:
    the fewest route at the highest clock), with ``second`` (the second-unit choices) the
    second unit dropped, or added (one layer, fewest and middle lanes) in each encoding, or
    its encoding changed; and each of those
    combined with a step of the clock, which trades against everything else through the fmax
    model (more lanes at a lower clock, say)."""
    sparse = attention_mode(params) == "sparse_dense"
    choices = {"lanes": space.lanes, "max_k": space.max_k, "depth_factor": space.depth_factor,
               "max_n": space.max_n, "clock": space.clocks[family]}
    if sparse:
        choices.update(sd_dense=space.sd_dense, sd_sparse=space.sd_sparse)
    else:
        choices["att_lanes"] = tuple(space.att_lanes) + ((0,) if host_attention else ())
    if params["encoding"].startswith("shift"):
        choices["shift_inputs"] = space.shift_inputs
    if params.get("encoding2"):
        choices.update(lanes2=space.lanes2, depth_factor2=space.depth_factor,
                       layers2=tuple(second["layers"]) if second else ())
        if params["encoding2"].startswith("shift"):
            choices["shift_inputs2"] = space.shift_inputs

    def steps(p, names):
        for name in names:
            values = sorted(choices[name])
            if p.get(name) not in values:
                continue
            i = values.index(p[name])
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    yield dict(p, **{name: values[j]})

    singles = list(steps(params, [n for n in choices if n != "clock"]))
    if masks:
        q = {k: v for k, v in params.items()
             if k not in ("attention", "att_lanes", "sd_dense", "sd_sparse")}
        for pick in (min, lambda t: sorted(t)[len(t) // 2]):     # fewest lanes, and middle
            singles.append(dict(q, att_lanes=pick(space.att_lanes)) if sparse else
                           dict(q, attention="sparse_dense", att_lanes=0,
                                sd_dense=pick(space.sd_dense), sd_sparse=pick(space.sd_sparse)))
    for enc in encodings:
        if enc != params["encoding"]:
            q = dict(params, encoding=enc)
            q.pop("shift_inputs", None)
            if enc.startswith("shift"):
                q["shift_inputs"] = space.shift_inputs[0]
            singles.append(q)
    if second:
        bare = {k: v for k, v in params.items()
                if k not in ("encoding2", "lanes2", "layers2", "shift_inputs2", "depth_factor2")}
        if params.get("encoding2"):
            singles.append(bare)
        for enc in second["encodings"]:
            if enc == params.get("encoding2"):
                continue
            shift = {"shift_inputs2": space.shift_inputs[0]} if enc.startswith("shift") else {}
            if params.get("encoding2"):         # same lanes and layers, other encoding
                singles.append(dict(bare, encoding2=enc, lanes2=params["lanes2"],
                                    depth_factor2=params["depth_factor2"],
                                    layers2=params["layers2"], **shift))
            else:
                for pick in (min, lambda t: sorted(t)[len(t) // 2]):
                    singles.append(dict(bare, encoding2=enc, lanes2=pick(space.lanes2),
                                        depth_factor2=min(space.depth_factor),
                                        layers2=min(second["layers"]), **shift))
    yield from steps(params, ["clock"])
    for q in singles:
        yield q
        yield from steps(q, ["clock"])


@dataclass
class SearchResult:
    best: Candidate
    pareto: list                 # feasible non-dominated candidates (latency, LUT)
    candidates: list             # every evaluated candidate
    seconds: float
    trials: int


def _violation_score(c):
    """Sum of relative violations (for the closest infeasible candidate)."""
    s = 0.0
    for k, v in c.violations.items():
        if v > 0:
            need, allow, _ = c.limits[k]
            s += v / max(abs(allow), 1e-9)
    return s


def infeasible_message(cands, min_cosine, board, accuracy):
    """One line: the constraint the closest candidate fails, and by how much."""
    best_cos = max(accuracy.values()) if accuracy else float("nan")
    if not accuracy or best_cos < min_cosine:
        key = max(accuracy, key=accuracy.get) if accuracy else "none"
        key = key.replace("@k", ", max_k ")
        return (f"accuracy: the best weight encoding ({key}) reaches a whole-model cosine of "
                f"{best_cos:.5f}, below the floor {min_cosine} by {min_cosine - best_cos:.5f}")
    valid = [c for c in cands if c is not None]
    if not valid:
        return f"no valid configuration in the search space for {board}"
    c = min(valid, key=_violation_score)
    parts = []
    for k, v in sorted(c.violations.items(), key=lambda kv: -kv[1] / max(
            abs(c.limits[kv[0]][1]), 1e-9)):
        if v <= 0:
            continue
        need, allow, unit = c.limits[k]
        if k == "cosine":
            parts.append(f"cosine {-need:.5f} < floor {-allow} (short by {v:.5f})")
        elif k == "clock":
            parts.append(f"clock {need:.1f} MHz > routable {allow:.1f} MHz (over by {v:.1f})")
        else:
            allow_s = f"{allow:,}" + (" (the routability margin)" if k == "LUT" else "")
            parts.append(f"{k}: needs {need:,} {unit}, {board} allows {allow_s}: over by "
                         f"{v:,} ({100 * v / max(allow, 1):.0f} %)")
    what = c.describe()
    return f"no configuration fits {board}; the closest ({what}) fails " + "; ".join(parts)


def _pareto(cands):
    feas = sorted((c for c in cands if c is not None and c.feasible),
                  key=lambda c: (c.objective_s, c.resources.lut))
    front, best_lut = [], None
    for c in feas:
        if best_lut is None or c.resources.lut < best_lut:
            front.append(c)
            best_lut = c.resources.lut
    return front


def _second_choices(space, sensitivity, family, model=None):
    """The second-unit choices of a search (``{"encodings", "layers"}``: the space's
    ``encodings2`` with a sensitivity entry, 1 to all layers), or ``None`` when the family's
    calibration has no point with two linear units or nothing was measured."""
    from .resources import _model
    encs = [e for e in space.encodings2 if e in sensitivity]
    if not encs or not (model or _model()).identifies(family, "linear2"):
        return None
    return {"encodings": encs, "layers": tuple(range(1, len(sensitivity[encs[0]]) + 1))}


def search(board, *, min_cosine=0.99, trials=300, tokens=24, link_counts=False,
           lut_margin=0.85, host_attention=False, space=None, seed=0, progress=None,
           model=None, accuracy=None, base=None, timeout=None, refine_starts=6, masks=None,
           mask_penalty=0.0, sensitivity=None, second_unit=True):
    """Search the space for ``board``; returns a :class:`SearchResult`. With ``masks`` (a
    :class:`~amaformer.gen.latency.MaskSchedule`) the sparse-dense unit under them is an
    attention choice too, its cosine the table's minus ``mask_penalty``. With
    ``second_unit``, a second linear unit for some layers is a choice where the calibration
    covers it on the board's family and ``sensitivity`` (default :func:`sensitivity_table`)
    has the encoding.

    Optuna multi-objective TPE over (latency, logic) with the constraints of
    :func:`evaluate`, then a refinement from each of the ``refine_starts`` fastest feasible
    candidates through their :func:`neighbours` until none is faster (0: none); the best is
    the feasible candidate with the lowest latency (ties: the higher cosine, then less logic). ``progress(done, total)`` is
    called after each trial.

    Raises
    ------
    Infeasible
        No evaluated candidate meets every constraint (the message says which fails).
    """
    import optuna
    from ..boards import get_board
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space or SearchSpace()
    fam = get_board(board).family
    acc = accuracy if accuracy is not None else accuracy_table(model)
    encodings = [e for e in space.encodings if best_table_cosine(acc, e) >= min_cosine]
    t0 = time.monotonic()
    if not encodings:
        raise Infeasible(infeasible_message([], min_cosine, board, acc))
    if fam == "ice40":
        space = replace(space, lanes=tuple(x for x in space.lanes if x <= 32))
    sens = sensitivity if sensitivity is not None else sensitivity_table(model)
    second = _second_choices(space, sens, fam, model) if second_unit else None
    cands = []
    seen = {}

    def score(p):
        """The candidate of point ``p``, evaluated once (``None``: not a valid configuration)."""
        key = tuple(sorted(p.items()))
        if key not in seen:
            seen[key] = evaluate(board, p, min_cosine=min_cosine, tokens=tokens,
                                 link_counts=link_counts, lut_margin=lut_margin, model=model,
                                 accuracy=acc, base=base, masks=masks,
                                 mask_penalty=mask_penalty, sensitivity=sens)
            cands.append(seen[key])
        return seen[key]

    def objective(trial):
        c = score(_suggest(trial, space, fam, encodings, host_attention, masks is not None,
                           second))
        if c is None:
            for k in CONSTRAINTS:
                trial.set_constraint(k, 1e9)
            return 1e9, 1e9
        for k in CONSTRAINTS:
            v = c.violations.get(k, -1.0)
            trial.set_constraint(k, v / max(abs(c.limits[k][1]), 1e-9) if k in c.limits else v)
        return c.objective_s, float(c.resources.lut)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # optuna's ExperimentalWarning (multivariate)
        sampler = optuna.samplers.TPESampler(seed=seed,
                                             n_startup_trials=min(40, max(10, trials // 8)),
                                             multivariate=True, group=True)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        for i in range(trials):
            study.optimize(objective, n_trials=1)
            if progress is not None:
                progress(i + 1, trials)
            if timeout is not None and time.monotonic() - t0 > timeout:
                break
    feas = [c for c in cands if c is not None and c.feasible]
    if not feas:
        raise Infeasible(infeasible_message(cands, min_cosine, board, acc))
    # fastest; at equal latency the more accurate, then the smaller
    rank = lambda c: (c.objective_s, -c.cosine, c.resources.lut)          # noqa: E731
    # Refinement: TPE finds the regions, but its density model is coarse at the constraint
    # boundary where the fastest designs sit. From each of the few fastest feasible
    # candidates, step to a faster feasible neighbour (one variable, or one with the clock,
    # through the same evaluations) until none is faster; keep the fastest end point. Some hundred
    # evaluations; makes the result stable across seeds (scripts/bench_search.py).
    best = min(feas, key=rank)
    for cur in sorted(feas, key=rank)[:refine_starts]:
        improved = True
        while improved:
            improved = False
            for p in neighbours(cur.params, space, fam, encodings, host_attention,
                                masks is not None, second):
                c = score(p)
                if c is not None and c.feasible and rank(c) < rank(cur):
                    cur, improved = c, True
        best = min(best, cur, key=rank)
    return SearchResult(best, _pareto(cands), cands, time.monotonic() - t0, len(study.trials))


def default_config(board):
    """The configuration a board gets without search: the whole-model default
    (``gen.minilm_presets.minilm_config``) on its board (ULX3S-85F), else the default linear unit
    on the board (no attention unit)."""
    from .config import AcceleratorConfig
    from .minilm_presets import MINILM_PRESET, minilm_config
    if board == MINILM_PRESET:
        return minilm_config()
    return AcceleratorConfig(board=board)


# --- output -------------------------------------------------------------------------------------

def write_outputs(result, out_dir, *, board, min_cosine, tokens, link_counts,
                  accuracy_checks=(), masks=None, mask_penalty=0.0):
    """``config.toml`` (the best, loadable by ``generate``/``build``/``run``), ``pareto.csv``,
    ``pareto.png`` (latency against logic, accuracy as colour), ``search.json``.
    ``accuracy_checks``: ``[(candidate, AccuracyCheck)]`` of the final accuracy check
    (:mod:`amaformer.gen.search_accuracy`), recorded in ``search.json``, as are the ``masks``
    (their file, which ``run --masks`` needs when the chosen configuration has a sparse-dense
    unit) and their measured ``mask_penalty``."""
    import csv
    import json
    from pathlib import Path

    from .config import save_config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(result.best.config, out / "config.toml")
    rows = [c.row() for c in result.pareto]
    with open(out / "pareto.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    png = _plot(result, out / "pareto.png", board)
    best = result.best
    summary = dict(board=board, min_cosine=min_cosine, tokens=tokens, link_counts=link_counts,
                   trials=result.trials, seconds=round(result.seconds, 2),
                   best=best.row(), estimate=best.resources.to_dict(),
                   latency=best.latency.to_dict(), config=best.config.to_dict(),
                   pareto=len(rows), png=str(png) if png else None,
                   accuracy_checks=[dict(candidate=c.row(), **chk.to_dict())
                                    for c, chk in accuracy_checks],
                   masks=None if masks is None else dict(
                       file=masks.path, tokens=masks.tokens,
                       sparsity=round(masks.sparsity(), 4),
                       cosine_penalty=round(mask_penalty, 6),
                       used=best.config.sparse_dense.enabled),
                   second_unit=_second_unit_summary(best))
    (out / "search.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _second_unit_summary(best):
    """``search.json``'s record of the chosen second linear unit (``None``: one unit): its
    encoding, layers and their per-layer costs in the sensitivity table."""
    l2 = best.config.linear2
    if not l2.enabled:
        return None
    enc = best.params["encoding2"]
    costs = sensitivity_table().get(enc, ())
    return dict(encoding=enc, lanes=l2.lanes, layers=list(l2.layers),
                layer_costs={str(i): costs[i] for i in l2.layers if i < len(costs)},
                all_layer_costs=list(costs))


def _plot(result, path, board):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    feas = [c for c in result.candidates if c is not None and c.feasible]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if feas:
        cos = [c.cosine for c in feas]
        pad = max(0.0, 0.002 - (max(cos) - min(cos))) / 2      # a readable colour range
        lim = dict(vmin=min(cos) - pad, vmax=max(cos) + pad)
        sc = ax.scatter([c.resources.lut for c in feas], [c.objective_s * 1e3 for c in feas],
                        c=cos, cmap="viridis", s=12, alpha=0.5, label="feasible candidates",
                        **lim)
        fr = result.pareto
        ax.scatter([c.resources.lut for c in fr], [c.objective_s * 1e3 for c in fr],
                   c=[c.cosine for c in fr], cmap="viridis", s=45, edgecolors="k",
                   label="Pareto front", **lim)
        ax.plot([c.resources.lut for c in fr], [c.objective_s * 1e3 for c in fr], "k-",
                lw=0.6)
        fig.colorbar(sc, ax=ax, label="whole-model cosine (min, 12 sentences)")
    b = result.best
    ax.scatter([b.resources.lut], [b.objective_s * 1e3], marker="*", s=220, c="red",
               label="chosen")
    ax.set_xlabel("logic (LC / LUT4, estimated)")
    ax.set_ylabel("whole-model latency per sentence (ms)")
    ax.set_yscale("log")
    ax.set_title(f"amaformer search: all-MiniLM-L6-v2 on {board}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
