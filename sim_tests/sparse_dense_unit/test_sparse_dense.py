# amaranth: UnusedElaboratable=no
"""Sparse-dense coordinator: golden model against the existing softmax golden and float SDPA,
the unit in the Amaranth simulator against the golden model (random, structured and real masks
at sparsity 0 to 99 %, diagonal-only rows, full columns, heads of very different densities in
one job, stalls and back-pressure, back-to-back jobs), its exact cycle model, and refusals."""

import itertools
import random
import re

import pytest
import torch

from amaformer.gen.attention import (attention_softmax, cosine, softmax_reference,
                                     softmax_scales)
from amaformer.gen.masks import (MaskError, calibration_masks, minilm_attention_maps, polarize,
                                 save_masks, structured_mask, synthetic_mask)
from amaformer.gen.numerics import quantize
from amaformer.gen.sparse_dense import (
    busy_fractions, lane_split, pack_job, partial_states, plan_head, run_mask_file, simulate_job,
    sparse_dense_cycles, sparse_dense_golden, split_coo)
from amaformer.hdl.sparse_dense import SparseDenseEngine

UNIT = dict(dense_lanes=1, sparse_lanes=3, max_dim=8, max_tokens=32, max_heads=4,
            dense_depth=1024, sparse_depth=512, act_depth=4096, out_depth=2048)


def _unit(**kw):
    return SparseDenseEngine(**dict(UNIT, **kw))


def _qkv(h, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(-128, 128, (h, n, d), generator=g) for _ in range(3))


def _params(h, d, scale=0.04):
    return [softmax_scales(scale * (1 + 0.3 * i), scale, scale, scale * 1.1, d)
            for i in range(h)]


def _run(unit, keeps, seed=0, d=None, plans=None, **kw):
    h, n = len(keeps), keeps[0].shape[0]
    d = d or unit.max_dim
    q, k, v = _qkv(h, n, d, seed)
    prm = _params(h, d)
    plans = plans or [plan_head(kp, unit.dense_lanes, unit.sparse_lanes) for kp in keeps]
    job = pack_job(plans, prm, unit=unit, tokens=n, dim=d)
    ys, stats = simulate_job(unit, job, q, k, v, **kw)
    gold = sparse_dense_golden(q, k, v, prm, plans, unit.fmt)
    return ys, stats, gold, plans, (q, k, v, prm)


# --- golden model ------------------------------------------------------------------------

def test_golden_equals_softmax_golden_when_one_state_per_row():
    """All of a row's keys in one partial state: bit-exact with attention_softmax."""
    n, d = 24, 8
    q, k, v = _qkv(1, n, d, 1)
    prm = _params(1, d)[0]
    keep = synthetic_mask(n, 0.7, seed=3)
    ref = attention_softmax(q[0], k[0], v[0], *prm, keep=keep)
    all_sparse = plan_head(keep, 1, 1, polarized=polarize(keep, threshold=2.0))
    all_dense = plan_head(keep, 2, 1, polarized=polarize(keep, threshold=-1.0))
    assert all_sparse.dense_pairs() == 0 and all_dense.lanes == [[]]
    for plan in (all_sparse, all_dense):
        assert torch.equal(sparse_dense_golden(q, k, v, [prm], [plan])[0], ref)


def test_golden_merge_order_within_one_lsb():
    """Rows split between engines: the final merge rounds differently from the key-by-key fold
    of attention_softmax; the outputs stay within one LSB, and mostly equal."""
    n, d = 32, 8
    diffs, total = 0, 0
    for seed in range(6):
        q, k, v = _qkv(1, n, d, 10 + seed)
        prm = _params(1, d, 0.08)[0]
        keep = synthetic_mask(n, 0.5, seed=seed)
        plan = plan_head(keep, 1, 3)
        y = sparse_dense_golden(q, k, v, [prm], [plan])[0]
        ref = attention_softmax(q[0], k[0], v[0], *prm, keep=keep)
        assert int((y - ref).abs().max()) <= 1
        diffs += int((y != ref).sum())
        total += y.numel()
    assert diffs < 0.05 * total


def test_golden_vs_float_sdpa():
    g = torch.Generator().manual_seed(5)
    n, d = 40, 16
    qf, kf, vf = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    (qq, sq), (kq, sk), (vq, sv) = quantize(qf), quantize(kf), quantize(vf)
    prm = softmax_scales(float(sq), float(sk), float(sv), float(sv), d)
    for sp in (0.5, 0.9):
        keep = synthetic_mask(n, sp, seed=7)
        plan = plan_head(keep, 2, 2)
        y = sparse_dense_golden(qq[None], kq[None], vq[None], [prm], [plan])[0].double() * sv
        assert cosine(y, softmax_reference(qf, kf, vf, keep)) > 0.999


def test_split_and_lane_split():
    keep = synthetic_mask(32, 0.8, seed=1, heavy_rows=0.06, row_share=0.8, col_share=0.0)
    # skew: a few rows hold most entries, yet the runs are equal
    counts = keep.sum(1)
    assert counts.max() > 4 * counts.float().median()
    pol = polarize(keep, 2.0)
    runs = split_coo(pol.coo, 3)
    assert max(map(len, runs)) - min(map(len, runs)) <= 1
    for ent in runs:
        rows = [r for r, *_ in ent]
        assert rows == sorted(rows)
        assert sum(f for *_, f, _ in ent) == sum(la for *_, la in ent) == len(set(rows))
    assert lane_split([synthetic_mask(32, 0.5, seed=s) for s in range(3)], 4, d=8)[0] >= 1
    with pytest.raises(ValueError, match=re.escape("lanes must be at least 2 (one per engine), "
                                                   "not 1")):
        lane_split([keep], 1)


# --- the unit against the golden model -------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_unit_random(sparsity):
    """Three heads, three Q/K/V buffers (the loader runs two heads ahead): bit-exact, and the
    cycle and beat counts equal the cycle model's."""
    unit = _unit(max_tokens=16, max_dim=4, qkv_buffers=3)
    keeps = [synthetic_mask(16, sparsity, seed=s) for s in range(3)]
    (y,), (st,), gold, plans, _ = _run(unit, keeps, seed=int(sparsity * 100))
    assert torch.equal(y, gold)
    cyc, info = sparse_dense_cycles(plans, 16, 4, unit.dense_lanes, detail=True,
                                    qkv_buffers=3)
    assert st["cycles"] == cyc
    assert (st["dense_beats"], st["sparse_beats"]) == (info["dense_beats"], info["sparse_beats"])


def test_unit_high_sparsity_at_128_tokens():
    """Exactly 99 % (164 of 128² entries: the diagonal and 36 more) and 90 % sparsity need
    N = 128 (at N = 16 the diagonal alone is 6 %): two heads in one job, bit-exact, cycle and
    beat counts as modelled."""
    unit = _unit(max_tokens=128, max_dim=4, max_heads=2, dense_depth=1024, sparse_depth=1024)
    keeps = [synthetic_mask(128, 0.99, seed=1, first=False), synthetic_mask(128, 0.9, seed=2)]
    assert [int(kp.sum()) for kp in keeps] == [164, 1638]
    (y,), (st,), gold, plans, _ = _run(unit, keeps, seed=11)
    assert torch.equal(y, gold)
    cyc, info = sparse_dense_cycles(plans, 128, 4, 1, detail=True)
    assert st["cycles"] == cyc
    assert (st["dense_beats"], st["sparse_beats"]) == (info["dense_beats"], info["sparse_beats"])


def test_unit_structured_and_edges():
    """Window + global tokens, a row that keeps only the diagonal, a column kept by every row,
    a row kept entirely: two dense lanes, two sparse lanes, d = 5 (not a power of two)."""
    unit = _unit(dense_lanes=2, sparse_lanes=2, max_tokens=20, max_dim=6)
    a = structured_mask(18, "global", window=2, globals=2)
    b = structured_mask(18, "bigbird", window=1, globals=1, random=2, seed=4)
    b[7] = False
    b[7, 7] = True                   # diagonal only
    b[:, 11] = True                  # a column every row keeps
    b[3] = True                      # a full row
    (y,), (st,), gold, plans, _ = _run(unit, [a, b], seed=4, d=5)
    assert all(p.dense_pairs() > 0 and min(map(len, p.lanes)) > 0 for p in plans)
    assert torch.equal(y, gold)
    assert st["cycles"] == sparse_dense_cycles(plans, 18, 5, 2)


def test_unit_heads_of_different_density_stalls_back_to_back():
    """Three heads at 0 %, 90 % and 99 % sparsity in one job, run twice back to back, with the
    activation port denied one cycle in four and the output port stalled one in four; then with
    random stalls."""
    unit = _unit(max_tokens=20, max_dim=4)
    keeps = [synthetic_mask(20, s, seed=i) for i, s in enumerate((0.0, 0.9, 0.99))]
    pats = [(2, dict(act_stall=itertools.cycle([0, 0, 0, 1]),
                     out_stall=itertools.cycle([1, 0, 0, 0]))),
            (1, dict(act_stall=(int(r < 0.3) for r in iter(random.Random(1).random, None)),
                     out_stall=(int(r < 0.3) for r in iter(random.Random(2).random, None))))]
    for jobs, kw in pats:
        ys, stats, gold, plans, _ = _run(unit, keeps, seed=9, jobs=jobs, **kw)
        assert len(ys) == jobs
        for y in ys:
            assert torch.equal(y, gold)
        assert stats[0]["cycles"] > sparse_dense_cycles(plans, 20, 4, 1)


def test_unit_real_minilm_mask(tmp_path):
    """A real mask (all-MiniLM-L6-v2, 32-token windows of the paragraphs, mass cut 0.9) and the
    model's own Q, K, V (layer 1, heads 0-1, first 8 dimensions), through the host path for a
    saved mask file."""
    maps, qkv = minilm_attention_maps(n=32, windows=3)
    keep = calibration_masks(maps, cut=0.9)
    path = tmp_path / "minilm.npz"
    save_masks(path, keep, source="all-MiniLM-L6-v2", cut=0.9)
    qf, kf, vf = (t[:2] for t in qkv[0]["layers"][1])
    d = 8
    qf, kf, vf = qf[..., :d], kf[..., :d], vf[..., :d]        # unit's max_dim
    quant = [quantize(t) for t in (qf, kf, vf)]
    (qq, sq), (kq, sk), (vq, sv) = quant
    prm = [softmax_scales(float(sq), float(sk), float(sv), float(sv), d)] * 2
    unit = _unit()
    masks2 = keep[1, :2]
    save_masks(path, masks2[None], source="all-MiniLM-L6-v2", cut=0.9)
    y, gold, stats = run_mask_file(path, qq, kq, vq, prm, unit=unit)
    assert torch.equal(y, gold)
    ref = softmax_reference(qf, kf, vf, masks2)
    assert cosine(y.double() * float(sv), ref) > 0.995


def test_unit_partial_states_exact():
    """White box: every lane's stored partial state (m, l and a[d] per row, before the merge)
    equals the golden model's, so an error too small to move an int8 output still fails.
    Two dense lanes with holes in their blocks (rows that skip a dense key), two sparse lanes;
    the job runs twice so the second head parity is covered too."""
    unit = _unit(dense_lanes=2, sparse_lanes=2, max_tokens=16, max_dim=4)
    keeps = [synthetic_mask(16, 0.6, seed=21, col_share=0.5),
             synthetic_mask(16, 0.75, seed=22, col_share=0.5)]
    q, k, v = _qkv(2, 16, 4, 3)
    prm = _params(2, 4)
    plans = [plan_head(kp, 2, 2) for kp in keeps]
    assert all(p.dense_pairs() for p in plans)
    assert any(not plans[0].pol.keep()[b * 2 + p, j] for b, keys in enumerate(plans[0].dense)
               for j in keys for p in range(2))                  # holes exist
    job = pack_job(plans, prm, unit=unit, tokens=16, dim=4)
    checked = []

    async def states(ctx):
        dl, sl = unit.lanes
        for h in range(2):
            gold = partial_states(q[h], k[h], v[h], prm[h], plans[h], unit.fmt)
            for r in range(16):
                got = []

                def read(ln, slot):
                    ml, banks = ln.state_memories
                    half = ln.slots // 2
                    bank, off = banks[slot // half], slot % half
                    return (ctx.get(ml.data[slot]),
                            [ctx.get(bank.data[off * 4 + i]) for i in range(4)])
                lane = dl[r % 2]
                got.append(read(lane, h * lane.slots // 2 + r // 2))
                for ln in sl:
                    got.append(read(ln, h * 16 + r))
                for (mg, lg, ag), ((mst), ast) in zip(gold, got):
                    if int(lg[r]) == 0:
                        continue            # not covered by this state: never read
                    assert (int(mst["l"]), int(mst["m"])) == (int(lg[r]), int(mg[r]))
                    assert ast == ag[r].tolist()
                    checked.append(1)

    simulate_job(unit, job, q, k, v, after_done=states)
    assert len(checked) > 40


# --- refusals --------------------------------------------------------------------------------

def test_bad_descriptor_refused():
    unit = _unit(max_tokens=16, max_dim=4)
    keeps = [synthetic_mask(16, 0.5, seed=0)]
    plans = [plan_head(keeps[0], 1, 3)]
    job = pack_job(plans, _params(1, 4), unit=unit, tokens=16, dim=4)
    got = []

    async def bench(ctx):
        for bad in (dict(heads=0), dict(tokens=17), dict(dim=5), dict(q_addr=4090),
                    dict(o_addr=2047), dict(sparse_addr=512), dict(heads=5)):
            ctx.set(unit.descriptor, dict(job.descriptor, **bad))
            ctx.set(unit.start, 1)
            while True:
                _, _, ack, acc, busy = await ctx.tick().sample(unit.ack, unit.accepted,
                                                               unit.busy)
                if ack:
                    break
            ctx.set(unit.start, 0)
            await ctx.tick()
            got.append((acc, ctx.get(unit.busy)))

    from conftest import simulate
    simulate(unit, bench)
    assert got == [(0, 0)] * 7


def test_bad_masks_refused_before_writing(tmp_path, monkeypatch):
    unit = _unit(max_tokens=16, max_dim=4, sparse_depth=64, dense_depth=16)
    import amaformer.gen.sparse_dense as sd

    def no_write(*a, **k):
        raise AssertionError("nothing may be written for a refused mask")
    monkeypatch.setattr(sd, "simulate_job", no_write)
    q, k, v = _qkv(1, 16, 4, 0)
    prm = _params(1, 4)
    path = tmp_path / "m.npz"
    save_masks(path, torch.ones(1, 12, 12, dtype=torch.bool))
    with pytest.raises(MaskError, match=re.escape("mask must be 16×16 per head, not 12×12")):
        run_mask_file(path, q, k, v, prm, unit=unit)
    empty = synthetic_mask(16, 0.5, seed=1, first=False)
    empty[5] = False
    save_masks(path, empty[None])
    with pytest.raises(MaskError, match=re.escape(
            "every row must keep at least one key, not row 5 of head 0")):
        run_mask_file(path, q, k, v, prm, unit=unit)
    save_masks(path, torch.ones(1, 16, 16, dtype=torch.bool))      # 256 entries
    with pytest.raises(MaskError, match=r"^(dense entries must fit in the unit's 16 from "
                       r"dense_addr 0, not \d+|sparse lane 0's list must fit in the unit's 64 "
                       r"entries from sparse_addr 0, not \d+)$"):
        run_mask_file(path, q, k, v, prm, unit=unit)
    save_masks(path, torch.ones(1, 2, 16, 16, dtype=torch.bool))
    with pytest.raises(MaskError, match=re.escape("mask file must have 1 heads in layer 0, "
                                                  "not 2")):
        run_mask_file(path, q, k, v, prm, unit=unit)


def test_constructor_errors():
    with pytest.raises(ValueError, match=re.escape(
            "sparse_depth must be a power of two, not 100")):
        SparseDenseEngine(sparse_depth=100)
    with pytest.raises(ValueError, match=re.escape(
            "dense_lanes must be an integer in [1, 32], not 0")):
        SparseDenseEngine(dense_lanes=0)


def test_busy_model_under_skew():
    """Cycle-model figures (the model is checked against the RTL above): a job of 12 heads
    whose entries crowd a few rows keeps both engines busy >= 80 %, as busy as without skew,
    because the sparse list is cut into equal runs whatever the rows."""
    n = 128
    res = []
    for skew in (0.0, 0.6):
        keeps = [synthetic_mask(n, 0.9, seed=h, heavy_rows=0.03 if skew else 0.0,
                                row_share=skew, col_share=0.2) for h in range(12)]
        if skew:
            counts = keeps[0].sum(1)
            assert counts.max() > 8 * counts.float().median()
        plans = [plan_head(kp, 1, 3) for kp in keeps]
        res.append(busy_fractions(plans, n, 32, 1, 3))
    for cyc, bd, bs in res:
        assert bd > 0.8 and bs > 0.8
    assert abs(res[0][0] - res[1][0]) < 0.05 * res[0][0]
