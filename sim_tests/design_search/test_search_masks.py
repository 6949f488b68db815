"""The search's attention mode under fixed masks (issue 14): the sparse-dense unit as a choice
of the space, its lane split a variable, its entry memories sized for the masks, its cycles
composed over the whole model exactly as the compiler's ``program_cycles`` counts them, its
block RAM listed from its parameters, its cosine the table's minus the masks' measured cost.

The masks are synthetic (``gen.masks.synthetic_mask``, seeded): every layer and head of
all-MiniLM-L6-v2, 32 tokens, 50 % sparsity."""

import json

import pytest
import torch

from amaformer.gen import search as S
from amaformer.gen.config import AcceleratorConfig, SparseDenseConfig
from amaformer.gen.latency import MINILM, MaskSchedule, model_latency
from amaformer.gen.masks import save_masks, synthetic_mask
from amaformer.gen.resources import ResourceModel, load_calibration, sparse_dense_memories

ACC = {"mul8": 0.99802, "mul6": 0.99291}
N = 32


def _keep(sparsity=0.5, n=N):
    return torch.stack([torch.stack([synthetic_mask(n, sparsity, seed=11 * li + h)
                                     for h in range(MINILM.heads)])
                        for li in range(MINILM.layers)])


@pytest.fixture(scope="module")
def masks():
    return MaskSchedule(_keep())


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("masks") / "synthetic.npz"
    save_masks(path, _keep(), source="synthetic, seeded", sparsity=0.5)
    return path


@pytest.fixture(scope="module")
def model():
    return ResourceModel(load_calibration())


def test_calibration_has_sparse_dense_points(model):
    assert any(p["config"].get("sparse_dense", {}).get("enabled") for p in model.fit_points)
    held = [p for p in model.points if p.get("set") == "heldout"
            and p["config"].get("sparse_dense", {}).get("enabled")]
    assert len(held) >= 2


@pytest.mark.parametrize("split", [(1, 3), (2, 6), (4, 4)])
def test_sparse_dense_memories_follow_the_unit(split):
    """Q/K/V copied once per reading lane, one entry list per sparse lane, two sum banks per
    lane: what Yosys maps (the calibration points check the block counts)."""
    sd = SparseDenseConfig(dense_lanes=split[0], sparse_lanes=split[1], max_tokens=N,
                           dense_depth=1000, sparse_depth=2048, enabled=True)
    mems = {name: (w, d, copies) for name, w, d, _, copies in sparse_dense_memories(sd)}
    wd, ws = split
    assert mems["qmem"] == (8, 3 * (N + wd) * 32, wd + ws)
    assert mems["kmem"][2] == mems["vmem"][2] == 1 + ws
    assert mems["smem"][1:] == (2048, ws) and mems["dmem"][1:] == (1000, 1)
    assert mems["slane.abank"][2] == 2 * ws and mems["dlane.abank"][2] == 2 * wd
    assert sparse_dense_memories(SparseDenseConfig()) == []         # not enabled


def test_mask_schedule_matches_program_cycles(masks):
    """The composition the search uses equals the compiler's program_cycles on
    all-MiniLM-L6-v2 compiled with the masks (the unit's exact model, checked against the RTL
    in sparse_dense_unit/ and whole_model/test_program_sparse.py), layer by layer, and the
    searched unit's entry memories hold the compiled program's lists."""
    from amaformer.gen.model.minilm import load_minilm, load_sentences
    from amaformer.gen.program import compile_program, program_cycles
    from amaformer.hdl.top import DEFAULT_ACT_DEPTH, DEFAULT_OUT_DEPTH
    p = dict(encoding="mul8", lanes=16, attention="sparse_dense", att_lanes=0, sd_dense=2,
             sd_sparse=4, max_k=512, depth_factor=1, max_n=512, clock=40.0)
    cfg = S.make_config("ulx3s-85f", p, masks=masks)
    assert (cfg.sparse_dense.dense_lanes, cfg.sparse_dense.sparse_lanes) == (2, 4)
    assert cfg.sparse_dense.max_tokens == N and not cfg.attention.enabled
    lm = load_minilm()
    calib, _ = load_sentences()
    program = compile_program(lm.model, cfg, [lm.ids(s) for s in calib[:4]], masks=masks.keep)
    for tokens in (13, 24):
        per_layer = program_cycles(program, [tokens], act_depth=DEFAULT_ACT_DEPTH,
                                   out_depth=DEFAULT_OUT_DEPTH)
        assert [c for c, _ in masks.attention(tokens, 32, cfg.sparse_dense)] == \
            [ly["attention"] for ly in per_layer]
        lat = model_latency(cfg, tokens, masks=masks)
        assert lat.attention_cycles == sum(ly["attention"] for ly in per_layer)
        assert lat.linear_cycles == sum(ly["linear"] for ly in per_layer)
    with pytest.raises(ValueError, match="masks made for 32"):
        model_latency(cfg, N + 1, masks=masks)
    with pytest.raises(ValueError, match="only on the sparse_dense unit"):
        model_latency(AcceleratorConfig(board="ulx3s-85f"), 16, masks=masks)


#: A space where only the attention differs: one linear unit, one clock (35 MHz, which both
#: attention units route at). Over the whole space the sparse-dense unit's lower fmax costs
#: all-MiniLM-L6-v2 more than its attention saves (scripts/bench_search.py, ``masked``).
FIXED = S.SearchSpace(encodings=("mul8",), lanes=(64,), max_k=(512,), depth_factor=(1,),
                      max_n=(512,), clocks={"ecp5": (35.0,), "ice40": (24.0,)})


def _search(masks, penalty, floor=0.99, **kw):
    """The search over FIXED with one linear unit (the attention choice alone)."""
    return S.search("ulx3s-85f", trials=80, accuracy=ACC, min_cosine=floor, masks=masks,
                    mask_penalty=penalty, space=FIXED, second_unit=False, **kw)


def test_search_chooses_the_sparse_dense_unit_when_it_pays(masks):
    dense = S.search("ulx3s-85f", trials=40, accuracy=ACC, min_cosine=0.99, space=FIXED,
                     second_unit=False)
    res = _search(masks, 0.0)
    b = res.best
    assert S.attention_mode(b.params) == "sparse_dense" and b.feasible
    assert b.config.sparse_dense.enabled and not b.config.attention.enabled
    assert b.objective_s < dense.best.objective_s
    assert b.latency.attention_cycles < dense.best.latency.attention_cycles
    assert b.latency.linear_cycles == dense.best.latency.linear_cycles
    r, t = b.resources, b.resources.totals
    assert r.lut <= 0.85 * t["lut"] and r.bram <= t["bram"] and r.dsp <= t["dsp"]
    assert b.clock_mhz <= r.feasible_clock_mhz
    row = b.row()
    assert row["attention"] == "sparse_dense" and row["sd_dense"] + row["sd_sparse"] >= 2
    # the masks' cost in cosine puts it under the floor: dense attention again
    res = _search(masks, 0.02)
    assert S.attention_mode(res.best.params) == "softmax"
    assert all(c.cosine == pytest.approx(ACC["mul8"] - 0.02) for c in res.candidates
               if c is not None and S.attention_mode(c.params) == "sparse_dense")


def test_the_sparse_dense_unit_costs_fmax(masks, model):
    """The fmax model has terms for each attention unit, fitted on placed points: with the
    sparse-dense unit's lanes the estimate falls (44.7, 39.6 and 35.3 MHz placed with 2, 4
    and 6 lanes), below the softmax unit's."""
    icpt, slope, (att_step, sd_step, sd_lane, _), margin = model.fmax_fit["ecp5"]
    assert att_step < 0 and sd_step + 4 * sd_lane < att_step
    p = dict(encoding="mul8", lanes=64, att_lanes=8, max_k=512, depth_factor=1, max_n=512,
             clock=35.0)
    soft = S.evaluate("ulx3s-85f", p, accuracy=ACC)
    sd = S.evaluate("ulx3s-85f", dict(p, attention="sparse_dense", att_lanes=0, sd_dense=2,
                                      sd_sparse=4), accuracy=ACC, masks=masks)
    assert sd.resources.fmax_mhz < soft.resources.fmax_mhz


def test_sentences_longer_than_the_masks_rule_the_unit_out():
    # at 16 tokens and up to 8 softmax lanes the sparse-dense unit is the faster choice (16
    # softmax lanes tie with it within 0.3 %, on the fmax model's edge at 35 MHz)
    from dataclasses import replace
    space = replace(FIXED, att_lanes=(1, 2, 4, 8))
    short = MaskSchedule(_keep(n=16))
    res = S.search("ulx3s-85f", trials=60, accuracy=ACC, min_cosine=0.99, masks=short,
                   tokens=16, mask_penalty=0.0, space=space, second_unit=False)
    assert S.attention_mode(res.best.params) == "sparse_dense"
    res = S.search("ulx3s-85f", trials=60, accuracy=ACC, min_cosine=0.99, masks=short,
                   tokens=20, mask_penalty=0.0, space=space, second_unit=False)
    assert S.attention_mode(res.best.params) == "softmax"
    assert not any(c is not None and S.attention_mode(c.params) == "sparse_dense"
                   for c in res.candidates)         # no schedule: sentences beyond the masks


def test_neighbours_switch_the_attention_mode(masks):
    space = S.SearchSpace()
    p = dict(encoding="mul8", lanes=16, att_lanes=4, max_k=512, depth_factor=1, max_n=512,
             clock=40.0)
    modes = {S.attention_mode(q) for q in S.neighbours(p, space, "ecp5", ["mul8"], masks=True)}
    assert modes == {"softmax", "sparse_dense"}
    q = dict(p, attention="sparse_dense", att_lanes=0, sd_dense=2, sd_sparse=4)
    near = list(S.neighbours(q, space, "ecp5", ["mul8"], masks=True))
    assert dict(q, sd_sparse=6) in near and dict(q, sd_dense=1) in near
    assert any(S.attention_mode(x) == "softmax" for x in near)
    assert not any(S.attention_mode(x) == "sparse_dense"
                   for x in S.neighbours(p, space, "ecp5", ["mul8"]))


def test_accuracy_key_separates_masked_splits(masks):
    from amaformer.gen.search_accuracy import accuracy_key
    p = dict(encoding="mul8", lanes=16, attention="sparse_dense", att_lanes=0, sd_dense=2,
             sd_sparse=4, max_k=512, depth_factor=1, max_n=512, clock=40.0)
    key = accuracy_key(S.make_config("ulx3s-85f", p, masks=masks))
    assert accuracy_key(S.make_config("ulx3s-85f", dict(p, lanes=32), masks=masks)) == key
    assert accuracy_key(S.make_config("ulx3s-85f", dict(p, sd_sparse=6), masks=masks)) != key
    dense = {k: v for k, v in p.items() if k not in ("attention", "sd_dense", "sd_sparse")}
    assert accuracy_key(S.make_config("ulx3s-85f", dict(dense, att_lanes=4))) != key


def test_no_sparse_dense_calibration_on_ice40(masks):
    """The iCE40 family has no sparse-dense points (the unit does not fit an UP5K): no
    estimate, so the search never places one there."""
    sd = masks.unit(1, 3)
    with pytest.raises(ValueError, match="no calibration of the sparse_dense unit"):
        ResourceModel(load_calibration()).estimate(
            AcceleratorConfig(board="icebreaker", sparse_dense=sd))
    res = S.search("icebreaker", trials=40, accuracy=ACC, min_cosine=0.99, masks=masks,
                   host_attention=True)
    assert S.attention_mode(res.best.params) != "sparse_dense"


def test_cli_search_with_masks(tmp_path, capsys, mask_file):
    """The masks' cost is measured on the compiler's path first (one sentence here), the
    search and its final check run with the masks, search.json records them."""
    from amaformer.gen import cli, search_cli
    if "search" not in cli.SUBCOMMANDS:
        search_cli.register(cli.subcommand, cli.arg)
    out = tmp_path / "s"
    assert cli.main(["search", "--board", "ulx3s-85f", "--out", str(out), "--trials", "30",
                     "--min-cosine", "0.9", "--verify", "1", "--sentences", "1",
                     "--masks", str(mask_file)]) == 0
    summary = json.loads((out / "search.json").read_text())
    m = summary["masks"]
    assert m["file"] == str(mask_file) and m["tokens"] == N
    assert 0.005 < m["cosine_penalty"] < 0.5          # half the attention gone costs cosine
    (check,) = summary["accuracy_checks"]
    assert check["cosine_min"] >= 0.9 and not check["error"]
    text = capsys.readouterr().out
    if m["used"]:
        assert summary["best"]["attention"] == "sparse_dense"
        assert f"--masks {mask_file}" in text
    assert cli.main(["config", str(out / "config.toml")]) == 0
    capsys.readouterr()
    assert cli.main(["search", "--board", "ulx3s-85f", "--out", str(tmp_path / "x"),
                     "--masks", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.npz" in err[0]
    assert not (tmp_path / "x").exists()
