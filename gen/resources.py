"""Resource and fmax models of an accelerator configuration, calibrated from real synthesis.

:func:`estimate` gives, for an :class:`~amaformer.gen.config.AcceleratorConfig` on a board,
the figures ``amaformer build`` reports — logic (iCE40 logic cells / ECP5 LUT4s, as nextpnr
packs them), flip-flops, DSP blocks, block RAMs, SPRAMs — split into the link/top, the linear
unit and the attention unit, and a predicted fmax with the family's feasibility margin.

How each figure is modelled
    A second linear unit (``[linear2]``) is counted as a unit of its own: its memories and
    DSPs listed like the first's (the DSPs the first leaves, :func:`linear_units_dsp`), its
    logic terms added to the first's, plus a fixed ``linear2`` term and an fmax term for its
    presence, fitted on the two-unit builds (ECP5 only; the estimate refuses it on a family
    without them).

    **Block RAM** (exact by construction): the linear unit's memories are listed from its
    parameters (``hdl/linear.py``, ``hdl/shift.py``, ``hdl/shiftadd.py``: weight buffer of
    ``weight_depth`` words with its write granularity, activation row buffer, per-column
    requantization parameters, bcq tables and α memory) and mapped the way Yosys's
    ``memory_libmap`` maps them (fewest blocks over the primitive's width×depth shapes,
    write-enable granularity respected: iCE40 ``SB_RAM40_4K`` 16×256 with a bit mask, 8×512,
    4×1024, 2×2048; ECP5 ``DP16KD`` 36×512 and 18×1024 with 9-bit byte enables, 9×2048 …
    1×16384). The sparse-dense unit's memories are listed the same way
    (:func:`sparse_dense_memories`: Q/K/V banks copied per reading lane, entry lists, per-lane
    sum banks and states; their sizes follow the masks). The link's memories and the softmax
    attention unit's (whose sizes depend only on the head dimension, fixed by the model) are
    integer coefficients fitted to the calibration points.

    **DSP** (exact): ``mul`` lanes on hardware multipliers (``linear.hw_lanes``, resolved for
    the board as ``amaformer build`` does) plus the requantizer's two; the attention units'
    (softmax, sparse-dense) per-lane and fixed multipliers are integer coefficients fitted to
    the points.

    **Logic and flip-flops**: a linear model per device family over the parameters that create
    logic (lanes per weight encoding, logic-multiplier lanes, products per lane, table slots ×
    planes, accumulator width, attention lanes, the sparse-dense unit's dense and sparse
    lanes), fitted by least squares to the calibration
    points. The logic target is nextpnr's packed count where the point was placed and routed,
    otherwise Yosys's cells through the family's packing ratio (fitted on the placed points).

    **fmax**: per family, nextpnr's achieved fmax of the placed points against logic
    utilization and the presence of each attention unit (:func:`_fit_fmax`); the
    *feasibility margin* is the largest relative over-prediction on those points (at least
    5 %): a clock target is feasible when it is at most the predicted fmax times
    ``1 - margin``.

The calibration data (``gen/calibration.json``) ships with the package and is written by
``scripts/calibrate.py``, which runs the grid through the build flow with exactly its options
(on ECP5 ``synth_ecp5 -nolutram``: no LUT RAM, see ``boards.catalogue._ULX3S``); users never
calibrate. Only points in its ``"calib"`` set are fitted; the ``"heldout"`` ones
measure the estimator (``scripts/bench_search.py``).
"""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["CALIBRATION", "Resources", "ResourceModel", "estimate", "load_calibration",
           "linear_memories", "sparse_dense_memories", "sparse_dense_bram", "map_bram",
           "linear_dsp", "linear_units_dsp", "linear_units_dsp_total", "linear_units_bram",
           "measured"]

CALIBRATION = Path(__file__).with_name("calibration.json")

#: iCE40 SB_RAM40_4K shapes (width, depth); only 16×256 has a per-bit write mask.
ICE40_BRAM = [(16, 256), (8, 512), (4, 1024), (2, 2048)]
#: ECP5 DP16KD shapes (width, depth); 36 and 18 wide have 9-bit byte enables.
ECP5_BRAM = [(36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)]
#: Memories of at most this many bits go to flip-flops, not block RAM (ECP5: the build's
#: ``synth_ecp5 -nolutram``, ``boards.catalogue._ULX3S``, measured with Yosys 0.70: a 128-bit
#: memory with one synchronous read port is mapped to flip-flops, 144 bits and up to a DP16KD).
SMALL_MEMORY_BITS = {"ice40": 0, "ecp5": 128}
#: DSPs of the linear unit's requantizer (``boards.build.REQUANT_DSPS``).
REQUANT_DSPS = 2
#: RequantParams: bias 32 + mult 16 + shift 6 bits (``hdl/common.py``).
PARAM_BITS = 54


def _clog2(n):
    return max(0, (int(n) - 1).bit_length())


def link_enables(width, gran):
    """Write-enable groups of a memory the link writes byte by byte (``hdl/link.py``
    ``_lane_write``): every ``gran``-bit write unit is enabled when the byte holding its last
    bit arrives, so the units ending in the same byte share one enable and Yosys merges them.
    Returns ``gran`` when nothing merges, else the tuple of group widths (``4``-bit shift
    codes: one enable per byte; ``6``-bit weights: 6, 6, 12 bits per three bytes)."""
    if gran >= width or gran % 8 == 0:
        return gran
    groups = {}
    for j in range(width // gran):
        last = ((j + 1) * gran - 1) // 8
        groups[last] = groups.get(last, 0) + gran
    widths = tuple(groups.values())
    return widths[0] if len(set(widths)) == 1 else widths


def linear_memories(lin, family):
    """The linear unit's memories: ``[(name, width, depth, granularity)]`` (block RAM
    candidates; iCE40 bcq puts its α codes in an SPRAM, not listed). The weight buffer's
    granularity is its enable groups as the link writes it (:func:`link_enables`)."""
    if not lin.enabled:
        return []
    mems = [("pmem", PARAM_BITS, lin.max_n, PARAM_BITS)]
    if lin.mode == "mul":
        w = lin.lanes * lin.weight_bits
        mems += [("wmem", w, lin.weight_depth, link_enables(w, lin.weight_bits)),
                 ("xbuf", lin.act_bits, lin.max_k, lin.act_bits)]
    elif lin.mode == "shift":
        g = lin.shift_inputs
        chunks = -(-lin.max_k // g)
        mems += [("wmem", lin.lanes * g * 4, lin.weight_depth, link_enables(lin.lanes * g * 4, 4)),
                 ("xbuf", g * lin.act_bits, 2 << _clog2(chunks), g * lin.act_bits)]
    else:
        s = lin.lanes
        word = 8 * s + 16
        spram = family == "ice40" and lin.weight_depth <= 16384
        acc = lin.act_bits + _clog2(lin.max_k) + 8 + _clog2(4 * lin.bcq_bits) + 1
        mems += [("wmem", 8 * s if spram else word, lin.weight_depth, 8),
                 ("amem", acc, lin.max_n, acc)]
        mems += [(f"table{i}", lin.act_bits + 3, 256, lin.act_bits + 3) for i in range(s)]
    return mems


def sparse_dense_memories(sd):
    """The sparse-dense unit's block-RAM candidates (``hdl/sparse_dense.py``):
    ``[(name, width, depth, granularity, copies)]``, ``copies`` the read ports Yosys
    replicates a memory for (every lane reads Q, K and V on its own port; the dense lanes
    share one K/V read). Q/K/V banks hold ``qkv_buffers·(N + W_d)·d`` bytes; the entry lists
    their depths; each lane a V buffer (``4·d`` bytes), two banks of weighted sums
    (``slots/2·d`` words of ``acc_bits``) and its ``(m, l)`` states (``slots`` words), with
    ``2·ceil(N/W_d)`` slots on a dense lane and ``2·N`` on a sparse one. The head parameters
    (read combinationally) go to logic."""
    from ..hdl.attention_spec import SoftmaxFormat
    if not sd.enabled:
        return []
    fmt = SoftmaxFormat.from_config(sd)
    wd, ws, n, d = sd.dense_lanes, sd.sparse_lanes, sd.max_tokens, sd.head_dim
    ib = max(1, (n - 1).bit_length())
    blocks = -(-n // wd)
    qkv = sd.qkv_buffers * (n + wd) * d
    aw, lw = fmt.acc_bits(n), fmt.sum_bits(n)
    mw = 16 + _clog2(d) + 17 - fmt.exp_frac_bits           # running maximum (score + 17 - F)
    dense_entry = ib + wd + max(1, (blocks - 1).bit_length()) + 3
    mems = [("qmem", 8, qkv, 8, wd + ws), ("kmem", 8, qkv, 8, 1 + ws),
            ("vmem", 8, qkv, 8, 1 + ws),
            ("dmem", dense_entry, sd.dense_depth, dense_entry, 1),
            ("smem", 2 * ib + 3, sd.sparse_depth, 2 * ib + 3, ws)]
    for lane, slots, count in (("dlane", 2 * blocks, wd), ("slane", 2 * n, ws)):
        mems += [(f"{lane}.vbuf", 8, 4 * d, 8, count),
                 (f"{lane}.abank", aw, slots // 2 * d, aw, 2 * count),
                 (f"{lane}.mlmem", mw + lw, slots, mw + lw, count)]
    return mems


def sparse_dense_bram(sd, family):
    """Block RAMs of the sparse-dense unit (:func:`sparse_dense_memories` through
    :func:`map_bram`)."""
    return sum(copies * map_bram(w, d, g, family)
               for _, w, d, g, copies in sparse_dense_memories(sd))


def map_bram(width, depth, gran, family):
    """Block RAMs Yosys uses for one ``width × depth`` memory with write granularity ``gran``
    (bits per write enable, or a tuple of enable group widths; 0 when it goes to logic)."""
    if width * depth <= SMALL_MEMORY_BITS[family]:
        return 0
    best = None
    groups = (tuple(gran) if isinstance(gran, (tuple, list))
              else (gran,) * -(-width // gran) if gran < width else (width,))
    for w, d in (ICE40_BRAM if family == "ice40" else ECP5_BRAM):
        rows = -(-depth // d)
        if len(groups) == 1 or family == "ice40":
            # one write enable: any shape. iCE40: Yosys packs enable groups into any block
            # width too (measured: the 72-bit weight buffer of 12 lanes of 6-bit weights, in
            # groups of 6, 6, 12 bits, maps to 18 blocks of 1024×4, not 20 of 256×16)
            cols = -(-width // w)
        elif family == "ecp5" and w in (18, 36):    # byte enables: a group per 9-bit lanes
            lanes = w // 9
            cols = -(-sum(-(-g // 9) for g in groups) // lanes)
        else:                                       # one group per column of blocks
            cols = sum(-(-g // w) for g in groups)
        n = rows * cols
        best = n if best is None else min(best, n)
    return best


def sparse_dense_address_dsp(sd):
    """DSP blocks of the sparse-dense unit's dense-row address ``blk·W_d``: a shift when
    ``W_d`` is a power of two, else a multiplier (measured: one MULT18X18D at ``W_d = 3``);
    the unit's other multipliers are fitted per lane."""
    wd = sd.dense_lanes
    return int(sd.enabled and wd & (wd - 1) != 0)


def linear_dsp(lin, family, board_dsp=None):
    """DSP blocks of the linear unit: ``mul`` lanes on hardware multipliers (``hw_lanes``,
    capped at what the requantizer leaves, as ``boards.build.resolve_config``) + requantizer."""
    if not lin.enabled:
        return 0
    if lin.mode != "mul":
        return REQUANT_DSPS
    hw = lin.hw_lanes
    if lin.dsp_lanes is None and board_dsp is not None:
        hw = min(hw, max(0, board_dsp - REQUANT_DSPS))
    return hw + REQUANT_DSPS


def linear_units_bram(config, family):
    """Block RAMs of the memories of every linear unit (:func:`linear_memories`)."""
    return sum(map_bram(w, d, g, family) for lin in config.linear_units()
               for _, w, d, g in linear_memories(lin, family))


def linear_units_dsp_total(config, family, board_dsp=None):
    """DSP blocks of every linear unit (:func:`linear_dsp` within :func:`linear_units_dsp`)."""
    return sum(linear_dsp(lin, family, d) for lin, d in linear_units_dsp(config, board_dsp))


def _logic_lanes(lin, board_dsp):
    if not lin.enabled or lin.mode != "mul":
        return 0
    return lin.lanes - (linear_dsp(lin, None, board_dsp) - REQUANT_DSPS)


def linear_units_dsp(config, board_dsp=None):
    """``[(LinearConfig, DSP budget)]`` of the configuration's linear units (``[linear]``, then
    ``[linear2]``): each unit's budget is what the units before it leave of the board's DSPs
    (``None``: no cap), as ``boards.build.resolve_config`` hands them out."""
    out, left = [], board_dsp
    for lin in config.linear_units():
        out.append((lin, left))
        if left is not None:
            left = max(0, left - linear_dsp(lin, None, left))
    return out


def _linear_features(lin, board_dsp):
    """The linear unit's regressors (see :func:`features`)."""
    f = {}
    acc = lin.act_bits + lin.weight_bits + _clog2(lin.max_k)
    on = lin.enabled
    f["mul"] = float(on and lin.mode == "mul")
    f["shift"] = float(on and lin.mode == "shift")
    f["bcq"] = float(on and lin.mode == "bcq")
    f["mul_lanes_acc"] = f["mul"] * lin.lanes * acc
    f["logic_lanes"] = float(_logic_lanes(lin, board_dsp))
    f["shift_products"] = f["shift"] * lin.lanes * lin.shift_inputs
    f["shift_lanes_acc"] = f["shift"] * lin.lanes * acc
    f["bcq_slot_planes"] = f["bcq"] * lin.lanes * (lin.bcq_bits + 1)
    f["depth_bits"] = float(on) * (_clog2(lin.max_k) + _clog2(lin.max_n) + _clog2(lin.weight_depth))
    return f


def features(config, family, board_dsp):
    """Regressors of the logic and flip-flop models: ``{name: value}``. The linear terms are
    summed over the linear units (a second unit, ``linear2``, adds its own lanes, products and
    depths, plus its fixed part: ``linear2``, the unit's shell and its port on the memories,
    which the single-unit points fold into ``const``)."""
    att = config.attention
    f = {"const": 1.0}
    units = [_linear_features(lin, d) for lin, d in linear_units_dsp(config, board_dsp)]
    for name in _linear_features(config.linear, board_dsp):
        f[name] = sum(u[name] for u in units)
    f["linear2"] = float(config.linear2.enabled)
    att_on = float(att.enabled)
    f["att"] = att_on
    f["att_lanes"] = att_on * att.lanes
    sd = config.sparse_dense
    f["sd"] = float(sd.enabled)
    f["sd_dense"] = f["sd"] * sd.dense_lanes
    f["sd_sparse"] = f["sd"] * sd.sparse_lanes
    return f


#: Regressors used per family (a family without attention points cannot fit attention terms).
FEATURES = {
    "ice40": ["const", "shift", "bcq", "mul_lanes_acc", "logic_lanes", "shift_products",
              "bcq_slot_planes", "depth_bits"],
    "ecp5": ["const", "shift", "bcq", "mul_lanes_acc", "shift_products", "bcq_slot_planes",
             "att", "att_lanes", "depth_bits", "sd", "sd_dense", "sd_sparse", "shift_lanes_acc",
             "linear2"],
}


#: Attention cost on a family without attention calibration points (iCE40: the softmax
#: kernel alone, placed, README "Attention"; per extra lane: two lane MACs in logic).
ATTENTION_PRIOR = {"ice40": dict(lut=4594, lut_lane=600, dsp=8, dsp_lane=0, bram=6)}

#: Order in which features are fitted when the points cannot identify them all.
PRIORITY = ["const", "mul_lanes_acc", "att_lanes", "logic_lanes", "shift_products",
            "bcq_slot_planes", "att", "sd", "sd_sparse", "sd_dense", "shift", "bcq",
            "depth_bits", "shift_lanes_acc", "linear2"]


@dataclass
class Resources:
    """Estimated resources of one configuration on one board."""
    board: str
    family: str
    lut: int
    ff: int
    dsp: int
    bram: int
    spram: int
    fmax_mhz: float
    fmax_margin: float
    totals: dict
    parts: dict = field(default_factory=dict)     # unit -> {lut, dsp, bram}

    @property
    def feasible_clock_mhz(self):
        """Highest clock this model calls routable: fmax × (1 − margin)."""
        return self.fmax_mhz * (1 - self.fmax_margin)

    def utilization(self):
        return {k: getattr(self, k) / self.totals[k] for k in ("lut", "ff", "dsp", "bram", "spram")
                if self.totals.get(k)}

    def to_dict(self):
        return dict(board=self.board, family=self.family, lut=self.lut, ff=self.ff, dsp=self.dsp,
                    bram=self.bram, spram=self.spram, fmax_mhz=round(self.fmax_mhz, 2),
                    fmax_margin=round(self.fmax_margin, 3),
                    feasible_clock_mhz=round(self.feasible_clock_mhz, 2),
                    totals=dict(self.totals), parts=self.parts)


def load_calibration(path=None):
    return json.loads(Path(path or CALIBRATION).read_text())


def _point_config(p):
    from .config import AcceleratorConfig
    return AcceleratorConfig.from_dict(p["config"])


def measured(p):
    """Measured figures of a calibration point: ``{lut, ff, dsp, bram, spram, lut_placed?,
    fmax?}`` from Yosys's cells (and nextpnr where placed)."""
    c = p["cells"]
    if p["family"] == "ice40":
        m = dict(lut4=c.get("SB_LUT4", 0), carry=c.get("SB_CARRY", 0),
                 ff=sum(n for k, n in c.items() if k.startswith("SB_DFF")),
                 dsp=c.get("SB_MAC16", 0), bram=c.get("SB_RAM40_4K", 0),
                 spram=c.get("SB_SPRAM256KA", 0))
    else:
        m = dict(lut4=c.get("LUT4", 0), carry=c.get("CCU2C", 0),
                 ff=sum(n for k, n in c.items() if k.startswith("TRELLIS_FF")),
                 dsp=c.get("MULT18X18D", 0), bram=c.get("DP16KD", 0), spram=0,
                 lutram=c.get("TRELLIS_DPR16X4", 0))
    placed = p.get("placed")
    if placed:
        m["lut_placed"] = placed["lut"]
        m["fmax"] = placed.get("fmax_mhz")
    return m


def _yosys_logic(m, family):
    """Yosys's cells as the LUT-equivalents nextpnr counts before the packing ratio: iCE40
    LUT4s (carries share their LC), ECP5 LUT4s + 2 per CCU2C + 4 per LUT-RAM (none since the
    build's ``-nolutram``)."""
    if family == "ice40":
        return m["lut4"]
    return m["lut4"] + 2 * m["carry"] + 4 * m.get("lutram", 0)


def _unit_flags(config):
    """The fmax model's unit terms: the softmax attention unit's presence, the sparse-dense
    unit's presence and its lanes ``W_d + W_s`` (the units that hold the critical path when
    present; the sparse-dense unit's lanes share the Q/K/V banks' fan-out), and a second
    linear unit's presence (a second reader of the activation memory and writer of the output
    memory)."""
    sd = config.sparse_dense
    return (float(config.attention.enabled), float(sd.enabled),
            float(sd.enabled) * (sd.dense_lanes + sd.sparse_lanes),
            float(config.linear2.enabled))


def _fit_fmax(points, default):
    """``(intercept, slope, steps, margin)`` of ``fmax ≈ intercept + slope·u + Σ steps[i]·a_i``
    over placed points ``[(utilization u, (a_0, a_1, ...), fmax MHz)]``, ``a_i`` the presence
    of a unit that holds the critical path (:func:`_unit_flags`).

    The attention units hold the critical path when present (measured on ECP5: 44.9–51.9 MHz
    with the softmax unit from 9 to 17 % of the device; 44.7, 39.6 and 35.3 MHz with the
    sparse-dense unit of 2, 4 and 6 lanes; 61.8 MHz with neither), so each term gets a
    coefficient when the points vary it; utilization
    gets a slope only when the points show fmax falling with it (a rising trend is noise:
    slope 0). The margin is the largest relative over-prediction on the points, at least
    5 %."""
    import numpy as np
    if not points:
        return default, 0.0, (), 0.05
    u = np.array([p[0] for p in points], dtype=float)
    flags = np.array([p[1] for p in points], dtype=float).reshape(len(points), -1)
    f = np.array([p[2] for p in points], dtype=float)
    varied = [i for i in range(flags.shape[1]) if len(set(flags[:, i])) > 1]
    cols = [np.ones_like(u)] + [flags[:, i] for i in varied]
    use_u = len(points) >= 1 + len(cols) and len(set(u)) > 1
    if use_u:
        cols.append(u)
    coef = np.linalg.lstsq(np.stack(cols, 1), f, rcond=None)[0]
    if use_u and coef[-1] > 0:              # no falling trend: drop the slope
        cols.pop()
        coef = np.linalg.lstsq(np.stack(cols, 1), f, rcond=None)[0]
        use_u = False
    icpt = float(coef[0])
    steps = [0.0] * flags.shape[1]
    for j, i in enumerate(varied):
        steps[i] = float(coef[1 + j])
    slope = float(coef[-1]) if use_u else 0.0
    pred = icpt + slope * u + flags @ np.array(steps)
    margin = max([0.05] + list((pred - f) / pred))
    return icpt, slope, tuple(steps), float(margin)


class ResourceModel:
    """The fitted models of one calibration file (:func:`estimate` uses the shipped one).

    Parameters
    ----------
    data : dict
        Calibration data (:func:`load_calibration`).
    fit_sets : tuple
        Point sets to fit on (``("calib",)``; ``scripts/bench_search.py`` keeps
        ``"heldout"`` out).
    """

    def __init__(self, data, fit_sets=("calib",)):
        from ..boards import get_board
        self.data = data
        # Synthesized points (a failed place and route keeps its Yosys figures; a netlist
        # Yosys itself flagged, ``"error": "yosys: ..."``, does not count).
        self.points = [p for p in data["points"] if "cells" in p
                       and not str(p.get("error", "")).startswith("yosys")]
        self.fit_points = [p for p in self.points if p.get("set", "calib") in fit_sets]
        self.accuracy = data.get("accuracy", {})
        self.sensitivity = data.get("sensitivity", {})
        self.pack, self.coef_lut, self.coef_ff, self.fmax_fit = {}, {}, {}, {}
        self.int_fit = {}
        for fam in ("ice40", "ecp5"):
            pts = [p for p in self.fit_points if p["family"] == fam]
            if not pts:
                continue
            ms = [measured(p) for p in pts]
            cfgs = [_point_config(p) for p in pts]
            dsps = [get_board(p["board"]).device.dsp for p in pts]
            # packing ratio placed / Yosys logic
            ratios = [m["lut_placed"] / _yosys_logic(m, fam) for m in ms if "lut_placed" in m]
            self.pack[fam] = float(np.median(ratios)) if ratios else 1.0
            names = FEATURES[fam]
            F = [features(c, fam, d) for c, d in zip(cfgs, dsps)]
            y_lut = np.array([m.get("lut_placed", _yosys_logic(m, fam) * self.pack[fam])
                              for m in ms], dtype=float)
            y_ff = np.array([m["ff"] for m in ms], dtype=float)
            self.coef_lut[fam] = self._fit(names, F, y_lut, self.coef_lut.get("ice40"))
            self.coef_ff[fam] = self._fit(names, F, y_ff, self.coef_ff.get("ice40"))
            # integer residual models of the link's and attention unit's BRAM, DSP, SPRAM
            R = np.array([_integer_terms(c) for c in cfgs])
            fits = {}
            for key, analytic in (("bram", lambda c: _analytic_bram(c, fam)),
                                  ("dsp", None), ("spram", None)):
                y = []
                for c, m, d in zip(cfgs, ms, dsps):
                    if key == "bram":
                        base = analytic(c)
                    elif key == "dsp":
                        base = linear_units_dsp_total(c, fam, d) + sparse_dense_address_dsp(
                            c.sparse_dense)
                    else:
                        base = 0
                    y.append(m[key] - base)
                fits[key] = [int(round(v)) for v in _lstsq(R, np.array(y, dtype=float))]
            self.int_fit[fam] = fits
            # fmax against logic utilization and the attention unit's presence
            fx = [(m["lut_placed"] / get_board(p["board"]).device.lut, _unit_flags(c),
                   m["fmax"]) for p, m, c in zip(pts, ms, cfgs) if m.get("fmax")]
            self.fmax_fit[fam] = _fit_fmax(fx, {"ice40": 30.0, "ecp5": 50.0}[fam])

    @staticmethod
    def _fit(names, F, y, prior=None):
        """Least squares over the features the points identify (``PRIORITY`` order, at most
        one per point); a feature they cannot identify takes ``prior``'s coefficient (the
        other family's: both are LUT4 fabrics) or 0."""
        usable = [n for n in PRIORITY if n in names
                  and (n == "const" or len({round(f[n], 9) for f in F}) > 1)][:len(F)]
        fixed = {n: (prior or {}).get(n, 0.0) for n in names if n not in usable}
        yr = y - np.array([sum(c * f[n] for n, c in fixed.items()) for f in F])
        X = np.array([[f[n] for n in usable] for f in F])
        coef = dict(zip(usable, _lstsq(X, yr)))
        coef.update(fixed)
        return coef

    def identifies(self, fam, section):
        """Whether the family's points include the unit of configuration ``section``
        (``"attention"``, ``"sparse_dense"``, ``"linear2"``): then its cost is fitted."""
        return any(p["family"] == fam and p["config"].get(section, {}).get("enabled")
                   for p in self.fit_points)

    def estimate(self, config, board=None):
        """:class:`Resources` of ``config`` on ``board`` (default: the configuration's).

        Raises
        ------
        ValueError
            The calibration has no point of the board's family, or none with a unit the
            configuration enables that has no prior (the sparse-dense unit or a second linear
            unit on iCE40).
        """
        from ..boards import get_board
        b = get_board(board or config.board)
        fam, dev = b.family, b.device
        if fam not in self.coef_lut:
            raise ValueError(f"no calibration for the {fam} family")
        if config.sparse_dense.enabled and not self.identifies(fam, "sparse_dense"):
            raise ValueError(f"no calibration of the sparse_dense unit for the {fam} family")
        if config.linear2.enabled and not self.identifies(fam, "linear2"):
            raise ValueError(f"no calibration of a second linear unit for the {fam} family")
        f = features(config, fam, dev.dsp)
        lut_parts = _split(self.coef_lut[fam], f)
        ff = sum(self.coef_ff[fam][n] * f[n] for n in FEATURES[fam])
        fits = self.int_fit[fam]
        terms = _integer_terms(config)

        def integer(key, base):
            c = fits[key]
            link = c[0]
            att = sum(ci * ti for ci, ti in zip(c[1:], terms[1:]))
            return base + link + att, link, att

        lin_bram = linear_units_bram(config, fam)
        sd_bram = sparse_dense_bram(config.sparse_dense, fam)
        bram, link_bram, att_bram = integer("bram", lin_bram + sd_bram)
        att_bram += sd_bram
        lin_dsp = linear_units_dsp_total(config, fam, dev.dsp)
        sd_dsp = sparse_dense_address_dsp(config.sparse_dense)
        dsp, link_dsp, att_dsp = integer("dsp", lin_dsp + sd_dsp)
        att_dsp += sd_dsp
        lin_spram = sum(1 for lin in config.linear_units()
                        if fam == "ice40" and lin.mode == "bcq" and lin.weight_depth <= 16384)
        spram, _, _ = integer("spram", lin_spram)
        if config.attention.enabled and not self.identifies(fam, "attention"):
            # No calibration point of this family varies the attention unit: the measured
            # softmax kernel alone on the iCE40UP5K (README, scripts/bench_attention.py:
            # 1 lane, d = 32, 4,594 LC, 8 DSP, 6 EBR) as a floor, so that the search never
            # places it where it cannot fit.
            prior = ATTENTION_PRIOR.get(fam)
            if prior is not None:
                extra = config.attention.lanes - 1
                lut_parts["attention"] += prior["lut"] + prior["lut_lane"] * extra
                att_dsp += prior["dsp"] + prior["dsp_lane"] * extra
                att_bram += prior["bram"]
                dsp += prior["dsp"] + prior["dsp_lane"] * extra
                bram += prior["bram"]
        lut = max(1, round(sum(lut_parts.values())))
        icpt, slope, steps, margin = self.fmax_fit[fam]
        fmax = icpt + slope * lut / dev.lut + sum(s * a for s, a in zip(steps,
                                                                       _unit_flags(config)))
        totals = dict(lut=dev.lut, ff=dev.ff, dsp=dev.dsp, bram=dev.bram, spram=dev.spram)
        parts = {
            "link": dict(lut=round(lut_parts["link"]), dsp=int(link_dsp), bram=int(link_bram)),
            "linear": dict(lut=round(lut_parts["linear"]), dsp=int(lin_dsp), bram=int(lin_bram)),
            "attention": dict(lut=round(lut_parts["attention"]), dsp=int(att_dsp),
                              bram=int(att_bram)),
        }
        return Resources(b.name, fam, lut, max(0, round(ff)), max(0, int(dsp)),
                         max(0, int(bram)), max(0, int(spram)), float(fmax), margin, totals,
                         parts)


def _integer_terms(config):
    """Regressors of the integer (DSP, block RAM, SPRAM) residual models: the link's
    constant, the attention unit and its lanes, the sparse-dense unit and its lanes."""
    att, sd = config.attention, config.sparse_dense
    return [1.0, float(att.enabled), float(att.enabled) * att.lanes, float(sd.enabled),
            float(sd.enabled) * (sd.dense_lanes + sd.sparse_lanes)]


def _analytic_bram(config, family):
    """Block RAMs of the memories listed from parameters (linear and sparse-dense units)."""
    return (linear_units_bram(config, family)
            + sparse_dense_bram(config.sparse_dense, family))


def _split(coef, f):
    """Logic per part: the constant is the link/top, ``att*`` and ``sd*`` the attention
    unit (softmax or sparse-dense), the rest the linear unit(s)."""
    parts = {"link": 0.0, "linear": 0.0, "attention": 0.0}
    for n, c in coef.items():
        part = ("link" if n == "const" else "attention" if n.startswith(("att", "sd"))
                else "linear")
        parts[part] += c * f[n]
    return parts


def _lstsq(X, y):
    # A little ridge keeps coefficients of barely-sampled features finite; the constant is
    # not penalized.
    lam = 1e-3
    n = X.shape[1]
    reg = np.sqrt(lam) * np.eye(n)
    reg[0, 0] = 0.0
    A = np.vstack([X, reg])
    b = np.concatenate([y, np.zeros(n)])
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    return [float(c) for c in coef]


@lru_cache(maxsize=4)
def _model(path=None):
    return ResourceModel(load_calibration(path))


def estimate(config, board=None, *, model=None):
    """Estimated :class:`Resources` of ``config`` on ``board`` with the shipped calibration
    (or ``model``, a :class:`ResourceModel`); raises ``ValueError`` as
    :meth:`ResourceModel.estimate`."""
    return (model or _model()).estimate(config, board)
