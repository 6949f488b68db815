"""Sparse-dense coordinator (ViTCoD): lane split, job packing, bit-exact golden model, exact cycle
model, and a simulation harness for the bare engine
(:class:`amaformer.hdl.sparse_dense.SparseDenseEngine`; behind the top it is the unit
:class:`amaformer.hdl.sparse_dense_unit.SparseDenseUnit`, driven by
:class:`amaformer.host.sparse_dense.SparseDenseDriver`).

Golden model
------------
Per head, the polarized mask (:func:`amaformer.gen.masks.polarize`) gives each row up to
``1 + W_s`` *partial states*: the dense engine's (the row's kept global keys, ascending) and one
per sparse lane that holds a run of the row (the COO list, row-major, keys ascending, is cut into
``W_s`` contiguous runs of equal length, :func:`split_coo`). Each partial state is the online
softmax of :func:`amaformer.gen.attention.attention_softmax` over its keys, in that order::

    m' = max(m, x >> F) (first key: x >> F),  sh = m' - m,  p = exp2(x - (m' << F))
    l  = rs(l, sh) + p,   a = rs(a, sh) + p·v_j

and :func:`merge_states` combines them: ``m = max m_k``, ``l = Σ rs(l_k, m - m_k)``,
``a = Σ rs(a_k, m - m_k)`` over the states that kept something (``l_k > 0``), followed by the
same :func:`amaformer.gen.attention.softmax_normalize`.

Merge order: the existing kernel folds a row's keys one by one in ascending key order; here the
engines fold their own keys in ascending order and the partial states are folded at the end, so
the rounding of ``rs`` happens at different points. The two agree bit for bit whenever one
partial state holds all of a row's keys (rows covered by only the dense engine or only one
sparse lane: a merge with shift 0 is exact); otherwise they differ by the rounding of the final
rescale (a few LSB of ``l`` and ``a``, below one output LSB in practice). The sum of rescaled
states is exact integer arithmetic, so its order does not matter and the hardware merge is
bit-exact with this model.

Lane split (generator time, from mask statistics; work split per head at run time)
----------------------------------------------------------------------------------
:func:`lane_split` fixes ``W_d + W_s = W`` lanes when the hardware is generated, minimizing the
modelled cycles over the calibration masks (ViTCoD's ``W_d ≈ W·gN / (gN + nnz_sparse)``;
:func:`config_from_masks` turns it into a configuration). The lanes are wires, so the split
cannot change at run time; the *work* moves instead: per head, :func:`plan_head` picks the
head's global columns (fullest first) and, for the next column, how many row blocks the dense
engine takes, so that the dense engine's time and the slowest sparse lane's time are as equal
as possible; the sparse list is cut into ``W_s`` equal runs, so a head whose entries crowd a
few rows still keeps every sparse lane busy.
"""

import math
from dataclasses import dataclass

import torch

from .attention import SoftmaxFormat, exp2_fixed, rshift_round, softmax_normalize
from .masks import MaskError, Polarized, check_mask, load_masks

__all__ = ["HeadPlan", "split_coo", "plan_head", "plan_job", "lane_split", "config_from_masks",
           "config_for_split",
           "segment_states", "merge_states", "partial_states", "sparse_dense_golden", "pack_job",
           "Job", "unit_limits", "head_order", "sparse_dense_cycles", "sparse_dense_job_cycles",
           "busy_fractions", "simulate_job", "run_mask_file",
           "ordered_job_cycles", "layer_masks"]


# --- plans -----------------------------------------------------------------------------------

def split_coo(coo, lanes):
    """Cut the COO list (row-major) into ``lanes`` contiguous runs of equal length (±1).

    Returns per lane a list of ``(row, key, first, last)``: ``first``/``last`` mark the lane's
    first and last pair of each row."""
    n = len(coo)
    out = []
    for s in range(lanes):
        chunk = coo[n * s // lanes:n * (s + 1) // lanes]
        ent = []
        for idx, (r, j) in enumerate(chunk):
            first = idx == 0 or chunk[idx - 1][0] != r
            last = idx == len(chunk) - 1 or chunk[idx + 1][0] != r
            ent.append((r, j, first, last))
        out.append(ent)
    return out


@dataclass
class HeadPlan:
    """One head as the unit runs it.

    Members
    -------
    pol : Polarized
        The polarization (global columns, COO remainder).
    dense : list of list of int
        Per block of ``W_d`` rows, the keys the dense engine computes (ascending): the global
        columns, plus a *partial* column for the first ``partial_blocks`` blocks.
    lanes : list of list of tuple
        Per sparse lane, its ``(row, key, first, last)`` run (:func:`split_coo`) of what the
        dense engine does not compute.
    """
    pol: Polarized
    dense: list
    lanes: list
    dense_lanes: int = 1
    partial: tuple = (None, 0)

    @property
    def n(self):
        return self.pol.n

    def dense_pairs(self):
        return sum(len(x) for x in self.dense)

    def dense_pairs_list(self):
        """The dense engine's ``(block, key)`` entries in its order."""
        return [(b, j) for b, keys in enumerate(self.dense) for j in keys]


def plan_head(keep, dense_lanes, sparse_lanes, polarized=None, partial=True):
    """:class:`HeadPlan` of an ``N×N`` mask for a lane split.

    Unless ``polarized`` is given, the global columns are chosen so that the dense engine's
    entries (``ceil(N/W_d)`` per global column) and the longest sparse run (``nnz_sparse /
    W_s``) are as equal as possible (:func:`~amaformer.gen.masks.polarize_for_split`), and,
    with ``partial``, the next fullest column is computed densely for just enough row blocks to
    even out the rest: the work moves between the engines one pair at a time instead of one
    column at a time.
    """
    keep = torch.as_tensor(keep).to(torch.bool)
    n = keep.shape[-1]
    wd, ws = dense_lanes, sparse_lanes
    nblk = -(-n // wd)
    if polarized is not None:
        pol, col, nb = polarized, None, 0
    else:
        counts = keep.sum(0)
        order = sorted(range(n), key=lambda j: (-int(counts[j]), j))
        total = int(counts.sum())
        blk_rows = torch.zeros(nblk * wd, n, dtype=torch.int64)
        blk_rows[:n] = keep.to(torch.int64)
        per_blk = blk_rows.reshape(nblk, wd, n).sum(1)               # nblk × n kept counts
        best = None
        sparse_n = total
        for g in range(n + 1):
            if best is not None and nblk * g + 1 > best[0]:
                break
            if g:
                sparse_n -= int(counts[order[g - 1]])
            if g < n and partial:
                cum = torch.cat([torch.zeros(1, dtype=torch.int64),
                                 torch.cumsum(per_blk[:, order[g]], 0)])
            else:
                cum = torch.zeros(1, dtype=torch.int64)
            b = torch.arange(len(cum))
            cost = torch.maximum(nblk * g + b + 1, -(-(sparse_n - cum) // ws) + 1)
            i = int(torch.argmin(cost))
            if best is None or int(cost[i]) < best[0]:
                best = (int(cost[i]), g, i)
        _, g, nb = best
        from .masks import _polarize_cols
        pol = _polarize_cols(keep, sorted(order[:g]))
        col = order[g] if nb else None
    dense = [sorted(pol.globals + ([col] if col is not None and b < nb else []))
             for b in range(nblk)]
    coo = [(r, j) for r, j in pol.coo if not (j == col and r // wd < nb)]
    return HeadPlan(pol, dense, split_coo(coo, ws), wd, (col, nb))


def _head_pair_cycles(plan, d):
    T = max(d, _spec().PAIR_MIN)
    return (plan.dense_pairs() + 1) * T, max((len(x) + 1) * T for x in plan.lanes)


def lane_split(keeps, lanes, d=32):
    """``(W_d, W_s)``, ``W_d + W_s = lanes``, minimizing the summed engine time
    ``Σ_heads max(dense, slowest sparse lane)`` over the masks ``keeps`` (an iterable of
    ``N×N`` masks, e.g. every head of every layer of the calibration masks)."""
    if lanes < 2:
        raise ValueError(f"lanes must be at least 2 (one per engine), not {lanes!r}")
    keeps = list(keeps)
    best = None
    for wd in range(1, lanes):
        ws = lanes - wd
        cost = 0
        for keep in keeps:
            dn, sp = _head_pair_cycles(plan_head(keep, wd, ws), d)
            cost += max(dn, sp)
        if best is None or cost < best[0]:
            best = (cost, wd, ws)
    return best[1], best[2]


# --- golden model ----------------------------------------------------------------------------

def _i64(t):
    return torch.as_tensor(t).to(torch.int64)


def segment_states(x, v, rows, order, fmt=SoftmaxFormat()):
    """Online-softmax states of ``rows`` over their keys ``order`` (``R×T``, ``-1`` = none),
    folded left to right with the arithmetic of
    :func:`amaformer.gen.attention.attention_softmax`.

    ``x`` is the ``N×N`` logit matrix ``rs(q·kᵀ·score_mult, score_shift)``, ``v`` ``N×d``.
    Returns ``(m, l, a)``: ``R``, ``R``, ``R×d`` int64 (``l = 0`` where nothing was kept)."""
    f, pb = fmt.exp_frac_bits, fmt.p_bits
    rows = _i64(rows)
    order = _i64(order)
    R, d = len(rows), v.shape[1]
    m = torch.zeros(R, dtype=torch.int64)
    l = torch.zeros(R, dtype=torch.int64)
    a = torch.zeros(R, d, dtype=torch.int64)
    started = torch.zeros(R, dtype=torch.bool)
    for t in range(order.shape[1] if order.dim() == 2 else 0):
        j = order[:, t]
        kj = j >= 0
        jj = torch.clamp(j, min=0)
        xj = x[rows, jj]
        xi = xj >> f
        m_new = torch.where(started, torch.maximum(m, xi), xi)
        sh = torch.where(started, m_new - m, 0)
        p = exp2_fixed(xj - (m_new << f), f, pb)
        l_new = rshift_round(l, sh) + p
        a_new = rshift_round(a, sh[:, None]) + p[:, None] * v[jj]
        m = torch.where(kj, m_new, m)
        l = torch.where(kj, l_new, l)
        a = torch.where(kj[:, None], a_new, a)
        started = started | kj
    return m, l, a


def merge_states(states):
    """Merge partial states ``[(m, l, a), ...]`` (each ``N``, ``N``, ``N×d``; ``l = 0`` =
    empty): ``m = max m_k``, ``l = Σ rs(l_k, m - m_k)``, ``a = Σ rs(a_k, m - m_k)`` over the
    non-empty ones. Returns ``(l, a)``."""
    ms = torch.stack([s[0] for s in states])
    ls = torch.stack([s[1] for s in states])
    as_ = torch.stack([s[2] for s in states])
    valid = ls > 0
    big = torch.iinfo(torch.int64).min // 4
    mmax = torch.where(valid, ms, big).max(0).values
    sh = torch.where(valid, mmax[None] - ms, 0)
    l = torch.where(valid, rshift_round(ls, sh), 0).sum(0)
    a = torch.where(valid[..., None], rshift_round(as_, sh[..., None]), 0).sum(0)
    return l, a


def _order_tensor(lists, n):
    """``N×T`` key order from per-row lists (``-1`` padded)."""
    t = max([len(x) for x in lists] + [0])
    out = torch.full((n, max(t, 1)), -1, dtype=torch.int64)
    for r, keys in enumerate(lists):
        if keys:
            out[r, :len(keys)] = torch.tensor(keys)
    return out


def partial_states(q, k, v, prm, plan, fmt=SoftmaxFormat()):
    """One head's partial states ``[(m, l, a), ...]`` (each ``N``, ``N``, ``N×d``): the dense
    engine's, then one per sparse lane (``l = 0`` for rows a state does not cover)."""
    sm, ss = prm[:2]
    q, k, v = _i64(q), _i64(k), _i64(v)
    n = q.shape[0]
    keep = plan.pol.keep()
    x = rshift_round((q @ k.T) * int(sm), int(ss))
    states = []
    wd = plan.dense_lanes
    dense_lists = [[j for j in plan.dense[r // wd] if bool(keep[r, j])] for r in range(n)]
    states.append(segment_states(x, v, torch.arange(n), _order_tensor(dense_lists, n), fmt))
    for ent in plan.lanes:
        lists = [[] for _ in range(n)]
        for r, j, _, _ in ent:
            lists[r].append(j)
        states.append(segment_states(x, v, torch.arange(n), _order_tensor(lists, n), fmt))
    return states


def _head_golden(q, k, v, prm, plan, fmt):
    l, a = merge_states(partial_states(q, k, v, prm, plan, fmt))
    return softmax_normalize(a, l, prm[2], prm[3], fmt)


def sparse_dense_golden(q, k, v, params, plans, fmt=SoftmaxFormat()):
    """Bit-exact output of :class:`~amaformer.hdl.sparse_dense.SparseDenseEngine`.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``H×N×d`` integers (int8 range).
    params : list of tuple
        Per head ``(score_mult, score_shift, out_mult, out_shift)``
        (:func:`amaformer.gen.attention.softmax_scales`).
    plans : list of HeadPlan
        Per head.

    Returns
    -------
    torch.Tensor
        ``H×N×d`` int64 in the int8 range; a row that keeps nothing outputs zeros.
    """
    q, k, v = _i64(q), _i64(k), _i64(v)
    return torch.stack([_head_golden(q[h], k[h], v[h], params[h], plans[h], fmt)
                        for h in range(q.shape[0])])


# --- job packing -----------------------------------------------------------------------------

def _spec():
    from amaformer.hdl import sparse_dense_spec as spec
    return spec


def unit_limits(unit):
    """``(max_heads, max_tokens, max_dim, dense_lanes, sparse_lanes, dense_depth,
    sparse_depth)`` of ``unit``: a :class:`~amaformer.hdl.sparse_dense.SparseDenseEngine`, a
    :class:`~amaformer.gen.config.SparseDenseConfig` or the unit's ``IDENT`` row
    (:class:`~amaformer.host.UnitInfo`)."""
    def get(*names):
        for nm in names:
            v = getattr(unit, nm, None)
            if v is not None:
                return int(v)
        raise AttributeError(f"unit must have {names[0]}")
    return (get("max_heads", "heads"), get("max_tokens"), get("max_dim", "head_dim"),
            get("dense_lanes"), get("sparse_lanes"), get("dense_depth"), get("sparse_depth"))


def _pack(layout, values):
    """Integer of a (nested) ``data.StructLayout`` value given as a dict."""
    from amaranth.lib import data
    word = 0
    for name, fld in layout:
        val = values.get(name, 0)
        if isinstance(fld.shape, data.StructLayout):
            val = _pack(fld.shape, val)
        width = fld.width
        val = int(val)
        if not 0 <= val < (1 << width):
            raise MaskError(f"{name} must be an integer in [0, {(1 << width) - 1}], not {val!r}")
        word |= val << fld.offset
    return word


@dataclass
class Job:
    """Everything the unit needs for one job: write-space images and the descriptor."""
    descriptor: dict
    hp_words: list
    dense_words: list           # from dense_addr
    sparse_words: list          # per lane, from sparse_addr
    plans: list                 # in job order
    order: list = None          # job head i is the caller's head order[i] (None: identity)


def pack_job(plans, params, *, unit, tokens, dim, q_addr=0, k_addr=None, v_addr=None,
             o_addr=0, dense_addr=0, sparse_addr=0, allow_empty_rows=False):
    """Pack the plans of a job's heads into the unit's write spaces and descriptor.

    Checks everything before anything is written (the caller writes only a returned
    :class:`Job`): head count, shape, empty rows (unless ``allow_empty_rows``), and that the
    dense entries and every sparse lane's list fit in the unit's memories.

    Raises
    ------
    MaskError
        One line naming what does not fit.
    """
    spec = _spec()
    max_heads, max_tokens, max_dim, wd, ws, dense_depth, sparse_depth = unit_limits(unit)
    heads = len(plans)
    if not 1 <= heads <= max_heads:
        raise MaskError(f"heads must be in [1, {max_heads}], not {heads!r}")
    if not 1 <= tokens <= max_tokens:
        raise MaskError(f"tokens must be in [1, {max_tokens}], not {tokens!r}")
    if not 1 <= dim <= max_dim:
        raise MaskError(f"dim must be in [1, {max_dim}], not {dim!r}")
    if len(params) != heads:
        raise MaskError(f"params must have one entry per head ({heads}), not {len(params)}")
    for h, pl in enumerate(plans):
        if pl.n != tokens:
            raise MaskError(f"mask of head {h} must be {tokens}×{tokens}, not {pl.n}×{pl.n}")
        if len(pl.lanes) != ws:
            raise MaskError(f"plan of head {h} must have {ws} sparse lists, not {len(pl.lanes)}")
        check_mask(pl.pol.keep(), tokens, allow_empty_rows)
    size = heads * tokens * dim
    k_addr = size if k_addr is None else k_addr
    v_addr = 2 * size if v_addr is None else v_addr
    de_lay = spec.dense_entry_layout(max_tokens, wd)
    se_lay = spec.sparse_entry_layout(max_tokens)
    hp_words, dense_words = [], []
    sparse_words = [[] for _ in range(ws)]
    for h, pl in enumerate(plans):
        if pl.dense_lanes != wd:
            raise MaskError(f"plan of head {h} must be for {wd} dense lanes, "
                            f"not {pl.dense_lanes}")
        sm, ss, om, os_ = params[h]
        hp_words.append(_pack(spec.HEAD_PARAMS, {"score_mult": sm, "score_shift": ss,
                                                "out_mult": om, "out_shift": os_}))
        keep = pl.pol.keep()
        for b, keys in enumerate(pl.dense):
            for c, j in enumerate(keys):
                bits = sum(1 << p for p in range(wd) if b * wd + p < tokens
                           and bool(keep[b * wd + p, j]))
                dense_words.append(_pack(de_lay, {"key": j, "keep": bits, "blk": b,
                                                  "first": c == 0,
                                                  "last": c == len(keys) - 1}))
        dense_words.append(_pack(de_lay, {"eoh": 1}))
        for s, ent in enumerate(pl.lanes):
            for r, j, first, last in ent:
                sparse_words[s].append(_pack(se_lay, {"key": j, "row": r, "first": first,
                                                      "last": last}))
            sparse_words[s].append(_pack(se_lay, {"eoh": 1}))
    if dense_addr + len(dense_words) > dense_depth:
        raise MaskError(f"dense entries must fit in the unit's {dense_depth} from "
                        f"dense_addr {dense_addr}, not {len(dense_words)}")
    for s, ws_ in enumerate(sparse_words):
        if sparse_addr + len(ws_) > sparse_depth:
            raise MaskError(f"sparse lane {s}'s list must fit in the unit's {sparse_depth}"
                            f" entries from sparse_addr {sparse_addr}, not {len(ws_)}")
    desc = dict(heads=heads, tokens=tokens, dim=dim, q_addr=q_addr, k_addr=k_addr,
                v_addr=v_addr, o_addr=o_addr, dense_addr=dense_addr, sparse_addr=sparse_addr)
    return Job(desc, hp_words, dense_words, sparse_words, plans)


# --- cycle model -----------------------------------------------------------------------------

def sparse_dense_cycles(plans, tokens, dim, dense_lanes, detail=False, qkv_buffers=2):
    """Cycles of a job from the ``ack`` edge to ``done`` (the unit's ``cycles`` output): exact
    with the ports never stalled.

    Per head: the loader reads ``3·tokens·dim`` bytes (one per cycle; a head may load once the
    head ``qkv_buffers`` before it has been computed); the engines start once the head is
    loaded and the head two before it is merged (2 cycles of set-up, then one pair every
    ``T = max(dim, PAIR_MIN)`` cycles per dense block step and per sparse entry, plus the
    sparse lanes' end-of-head entry); the phase ends when every lane is idle (``dim +
    LANE_DRAIN`` cycles after a lane's last kept pair); the merge takes
    ``tokens·(MERGE_ROW + dim)`` cycles plus ``MERGE_TAIL - 1`` to the last write.

    ``detail=True`` returns ``(cycles, info)`` with the per-head phase cycles and the beat
    counts of the engines (``dense_beats``, ``sparse_beats``).
    """
    hw = _spec()
    n, d, wd = tokens, dim, dense_lanes
    T = max(d, hw.PAIR_MIN)
    H = len(plans)
    ld_done_vis, cp_inc, mg_inc = {}, {}, {}
    ld_free = 0
    cp_free = 0
    dense_beats = sparse_beats = 0
    info = {"heads": []}
    # the three phases interleave; advance them in dependency order per head
    for x in range(H):
        # loader of head x (and the dependency on compute x-2 is satisfied below in order)
        B = qkv_buffers
        t = max(ld_free, cp_inc[x - B] + 1 if x >= B else 0)
        start = t + 1
        last = start + 3 * n * d - 1
        ld_done_vis[x] = last + 2
        ld_free = last + 2
        # compute of head x
        t0 = max(cp_free, ld_done_vis[x], mg_inc[x - 2] + 1 if x >= 2 else 0)
        if x >= 1 and t0 == mg_inc.get(x - 1, -1):
            t0 += 1
        pl = plans[x]
        ends, idle = [], []
        keep = pl.pol.keep()
        dense_list = [(b, j) for b, keys in enumerate(pl.dense) for j in keys]
        ends.append(t0 + 3 + len(dense_list) * T)
        dense_beats += len(dense_list) * d
        lane_idle = [0] * wd
        for idx, (b, j) in enumerate(dense_list):
            c0 = t0 + 3 + idx * T + d
            for p in range(wd):
                row = b * wd + p
                kept = row < n and bool(keep[row, j])
                lane_idle[p] = max(lane_idle[p], c0 + (d + 8 if kept else 6))
        idle += lane_idle
        for ent in pl.lanes:
            ends.append(t0 + 3 + len(ent) * T)
            sparse_beats += len(ent) * d
            if ent:
                idle.append(t0 + 3 + (len(ent) - 1) * T + d + d + 8)
        e2 = max([t0 + 2] + [e + 1 for e in ends])
        cp_inc[x] = max(e2 + 1, max(idle, default=0))
        cp_free = cp_inc[x] + 1
        # merge of head x
        ms = max(cp_inc[x] + 1, mg_inc[x - 1] + 1 if x >= 1 else 0)
        row_end = ms + 2 + n * (hw.MERGE_ROW + d) - 1
        mg_inc[x] = row_end + 5
        info["heads"].append({"load": (start, last), "compute": (t0, cp_inc[x]),
                              "merge": (ms, mg_inc[x])})
        # a later head's compute may start only after this merge's mg_inc; loads of x+2 wait
        # for cp_inc[x] (handled at the top of the loop)
    cycles = mg_inc[H - 1] + 1
    if detail:
        info.update(dense_beats=dense_beats, sparse_beats=sparse_beats, cycles=cycles)
        return cycles, info
    return cycles


def busy_fractions(plans, tokens, dim, dense_lanes, sparse_lanes, qkv_buffers=2):
    """``(cycles, busy_dense, busy_sparse)``: the fraction of the job's cycles in which the
    dense engine, and the average sparse lane, receives a beat."""
    cyc, info = sparse_dense_cycles(plans, tokens, dim, dense_lanes, detail=True,
                                    qkv_buffers=qkv_buffers)
    return cyc, info["dense_beats"] / cyc, info["sparse_beats"] / (sparse_lanes * cyc)


#: Cycles a job through the top takes beyond the engine's own count (the ``done`` edge).
TOP_CYCLES = 1


def sparse_dense_job_cycles(plans, tokens, dim, dense_lanes, qkv_buffers=2):
    """Cycles of a job through the top, as ``STATUS`` reports them (the unit kind's cycle
    model): from the start edge through the ``done`` edge, one more than
    :func:`sparse_dense_cycles` (the engine's own count). Exact (memory ports never stalled
    behind the top)."""
    return sparse_dense_cycles(plans, tokens, dim, dense_lanes,
                               qkv_buffers=qkv_buffers) + TOP_CYCLES



def plan_job(keep, dense_lanes, sparse_lanes):
    """:class:`HeadPlan` per head of an ``H×N×N`` mask (:func:`plan_head` each): the run-time
    half of the lane split, the engines' work matched to ``(dense_lanes, sparse_lanes)`` head
    by head."""
    keep = torch.as_tensor(keep).to(torch.bool)
    return [plan_head(keep[h], dense_lanes, sparse_lanes) for h in range(keep.shape[0])]


def head_order(plans, tokens, dim, dense_lanes, qkv_buffers=2):
    """The order in which to run a job's heads (a permutation of ``range(len(plans))``):
    :func:`ordered_job_cycles`'s order."""
    return ordered_job_cycles(plans, tokens, dim, dense_lanes, qkv_buffers)[0]


def ordered_job_cycles(plans, tokens, dim, dense_lanes, qkv_buffers=2):
    """``(order, cycles)``: the order in which to run a job's heads (a permutation of
    ``range(len(plans))``) and the job's cycles through the top in that order (what
    :func:`sparse_dense_job_cycles` gives for the reordered plans, without computing it again).

    The loader needs ``3·tokens·dim`` cycles per head whatever its mask, the engines time in
    proportion to its kept entries: a run of light heads starves the engines while the loader
    catches up, a run of heavy heads lets it idle. Candidates: the heads as given, heaviest
    first, and heaviest and lightest alternating; the one with the fewest cycles by the exact
    model (:func:`sparse_dense_cycles`) wins, the given order on ties.
    """
    n = len(plans)
    work = [p.dense_pairs() + max([len(x) for x in p.lanes] + [0]) for p in plans]
    desc = sorted(range(n), key=lambda h: (-work[h], h))
    alt, lo, hi = [], 0, n - 1
    while lo <= hi:
        alt.append(desc[lo])
        lo += 1
        if lo <= hi:
            alt.append(desc[hi])
            hi -= 1
    best = None
    for order in (list(range(n)), desc, alt):
        cyc = sparse_dense_cycles([plans[h] for h in order], tokens, dim, dense_lanes,
                                  qkv_buffers=qkv_buffers)
        if best is None or cyc < best[0]:
            best = (cyc, order)
    return best[1], best[0] + TOP_CYCLES


def config_from_masks(masks, lanes=4, *, head_dim=32, heads=None, qkv_buffers=3, margin=1.25,
                      enabled=True, **fields):
    """A :class:`~amaformer.gen.config.SparseDenseConfig` for calibration masks: the generator
    half of the lane split.

    ``masks``: a mask file (:func:`~amaformer.gen.masks.load_masks`) or an ``L×H×N×N`` /
    ``H×N×N`` bool tensor. ``lanes`` total lanes are split into ``(W_d, W_s)`` by
    :func:`lane_split` over every head of every layer; the rest is
    :func:`config_for_split`'s. Other ``fields`` pass through.
    """
    keep = layer_masks(masks)
    L, H = keep.shape[:2]
    wd, ws = lane_split([keep[li, h] for li in range(L) for h in range(H)], lanes, head_dim)
    return config_for_split(keep, wd, ws, head_dim=head_dim, heads=heads,
                            qkv_buffers=qkv_buffers, margin=margin, enabled=enabled, **fields)


def layer_masks(masks):
    """``L×H×N×N`` bool of a mask file or tensor (``H×N×N``: one layer), checked."""
    if isinstance(masks, (str, bytes)) or hasattr(masks, "__fspath__"):
        masks, _ = load_masks(masks)
    keep = torch.as_tensor(masks).to(torch.bool)
    if keep.dim() == 3:
        keep = keep[None]
    check_mask(keep)
    return keep


def config_for_split(masks, dense_lanes, sparse_lanes, *, head_dim=32, heads=None,
                     qkv_buffers=3, margin=1.25, enabled=True, **fields):
    """A :class:`~amaformer.gen.config.SparseDenseConfig` of a given lane split
    ``(dense_lanes, sparse_lanes)`` sized for ``masks`` (as :func:`config_from_masks`):
    ``max_tokens`` is the masks' ``N``, ``heads`` their ``H`` (unless given); the entry
    memories hold the largest job's lists under this split times ``margin`` (sparse: rounded
    up to a power of two). The search (:mod:`amaformer.gen.search`) calls it for every split
    it tries."""
    from .config import SparseDenseConfig
    keep = layer_masks(masks)
    L, H, n, _ = keep.shape
    dense_need = sparse_need = 1
    for li in range(L):
        plans = plan_job(keep[li], dense_lanes, sparse_lanes)
        dense_need = max(dense_need, sum(len(p.dense_pairs_list()) + 1 for p in plans))
        sparse_need = max(sparse_need, max(sum(len(p.lanes[s]) + 1 for p in plans)
                                           for s in range(sparse_lanes)))
    return SparseDenseConfig(
        dense_lanes=dense_lanes, sparse_lanes=sparse_lanes, heads=heads or H,
        head_dim=head_dim, max_tokens=n,
        dense_depth=math.ceil(dense_need * margin),
        sparse_depth=1 << max(1, math.ceil(sparse_need * margin) - 1).bit_length(),
        qkv_buffers=qkv_buffers, enabled=enabled, **fields)


# --- simulated device ------------------------------------------------------------------------

def simulate_job(unit, job, q, k, v, *, act_stall=None, out_stall=None, jobs=1, trace=None,
                 after_done=None):
    """Run ``job`` on ``unit`` in the Amaranth simulator, as the host and the top would: write
    the spaces, fill the activation memory, start, wait for ``done``, read the output memory.

    ``act_stall`` / ``out_stall``: iterables of 0/1 per cycle (e.g.
    ``itertools.cycle([0, 0, 0, 1])``) driving the unit's stall inputs. ``jobs`` runs the same
    job back to back. Returns ``(outputs, stats)``: outputs ``H×N×d`` int64 per job, stats a
    list of dicts (``cycles``, ``dense_beats``, ``sparse_beats``, ``ack_cycles``).
    ``after_done``: an async function of ``ctx`` awaited after each job (white-box checks).
    """
    from ..hdl.simulation import simulate
    desc = job.descriptor
    H, n, d = desc["heads"], desc["tokens"], desc["dim"]
    act = bytearray(unit.act_depth)
    for base, t in ((desc["q_addr"], q), (desc["k_addr"], k), (desc["v_addr"], v)):
        flat = [int(x) & 0xFF for x in _i64(t).flatten().tolist()]
        act[base:base + len(flat)] = bytes(flat)
    out = {}
    results, stats = [], []

    async def bench(ctx):
        for port, words, base in ((unit.hp_wr, job.hp_words, 0),
                                  (unit.dense_wr, job.dense_words, desc["dense_addr"])):
            for a, w in enumerate(words):
                ctx.set(port.addr, base + a)
                ctx.set(port.data.as_value(), w)
                ctx.set(port.en, 1)
                await ctx.tick()
            ctx.set(port.en, 0)
        for s, words in enumerate(job.sparse_words):
            for a, w in enumerate(words):
                ctx.set(unit.sparse_wr.addr, s * unit.sparse_depth + desc["sparse_addr"] + a)
                ctx.set(unit.sparse_wr.data.as_value(), w)
                ctx.set(unit.sparse_wr.en, 1)
                await ctx.tick()
            ctx.set(unit.sparse_wr.en, 0)
        for _ in range(jobs):
            out.clear()
            ctx.set(unit.descriptor, desc)
            ctx.set(unit.start, 1)
            waited = 0
            while True:
                _, _, ack, acc = await ctx.tick().sample(unit.ack, unit.accepted)
                waited += 1
                if ack:
                    break
            ctx.set(unit.start, 0)
            if not acc:
                raise MaskError("descriptor must be accepted by the unit, not refused")
            while True:
                _, _, done = await ctx.tick().sample(unit.done)
                if done:
                    break
            y = torch.zeros(H * n * d, dtype=torch.int64)
            for i in range(H * n * d):
                b = out.get(desc["o_addr"] + i, 0)
                y[i] = b - 256 if b >= 128 else b
            results.append(y.reshape(H, n, d))
            if after_done is not None:
                await after_done(ctx)
            stats.append({"cycles": ctx.get(unit.cycles), "dense_beats": ctx.get(unit.dense_beats),
                          "sparse_beats": ctx.get(unit.sparse_beats), "ack_cycles": waited})

    async def memories(ctx):
        ast = iter(act_stall) if act_stall is not None else None
        ost = iter(out_stall) if out_stall is not None else None
        async for clk_edge, rst, addr, we, oa, od in ctx.tick().sample(
                unit.act_addr, unit.out_we, unit.out_addr, unit.out_wdata):
            ctx.set(unit.act_rdata, act[addr] if addr < len(act) else 0)     # latency 1
            if we:
                out[oa] = od & 0xFF
            if ast is not None:
                ctx.set(unit.act_stall, next(ast))
            if ost is not None:
                ctx.set(unit.out_stall, next(ost))

    simulate(unit, bench, processes=[memories], vcd=trace)
    return results, stats


def run_mask_file(path, q, k, v, params, *, unit, layer=0, allow_empty_rows=False, **kw):
    """The host path for a saved mask: load ``path`` (:func:`amaformer.gen.masks.load_masks`),
    polarize each head of ``layer`` for the unit's lane split, pack (refusing what does not fit
    before writing anything) and run it on the simulated unit. Returns ``(y, golden, stats)``.
    """
    keep, _ = load_masks(path)
    if not 0 <= layer < keep.shape[0]:
        raise MaskError(f"layer must be in [0, {keep.shape[0] - 1}], not {layer!r}")
    keep = keep[layer]
    H, n, d = _i64(q).shape
    if keep.shape[0] != H:
        raise MaskError(f"mask file must have {H} heads in layer {layer}, not {keep.shape[0]}")
    check_mask(keep, n, allow_empty_rows)
    plans = [plan_head(keep[h], unit.dense_lanes, unit.sparse_lanes) for h in range(H)]
    job = pack_job(plans, params, unit=unit, tokens=n, dim=d,
                   allow_empty_rows=allow_empty_rows)
    (y,), stats = simulate_job(unit, job, q, k, v, **kw)
    return y, sparse_dense_golden(q, k, v, params, plans, unit.fmt), stats
