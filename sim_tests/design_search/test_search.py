"""Design-space search (issue 14): the calibrated resource model against its calibration
points, the latency composition against the exact cycle models, the search (feasible result,
infeasible requests, TOML round trip, CLI) and the Dask path on a LocalCluster. No synthesis."""

import math

import pytest

from amaformer.gen import search as S
from amaformer.gen.config import AcceleratorConfig, LinearConfig, load_config
from amaformer.gen.latency import MINILM, linear_jobs, model_latency, softmax_attention_cycles
from amaformer.gen.resources import (ResourceModel, _point_config, estimate, load_calibration,
                                     map_bram, measured)

ACC = {"mul8": 0.99802, "bcq4": 0.95, "shift7": 0.92}


@pytest.fixture(scope="module")
def model():
    return ResourceModel(load_calibration())


def test_calibration_shipped(model):
    assert model.points, "gen/calibration.json has no points"
    assert {p["family"] for p in model.fit_points} == {"ice40", "ecp5"}


def test_dsp_bram_spram_exact_on_calibration_points(model):
    """Every measured point (calibration and held out): DSP, block RAM and SPRAM exact."""
    for p in model.points:
        e = estimate(_point_config(p), p["board"], model=model)
        m = measured(p)
        assert (e.dsp, e.bram, e.spram) == (m["dsp"], m["bram"], m["spram"]), p["name"]


def test_logic_within_10_percent_of_calibration_points(model):
    from amaformer.gen.resources import _yosys_logic
    for p in model.fit_points:
        e = estimate(_point_config(p), p["board"], model=model)
        m = measured(p)
        target = m.get("lut_placed", _yosys_logic(m, p["family"]) * model.pack[p["family"]])
        assert abs(e.lut - target) <= 0.10 * target, (p["name"], e.lut, target)


@pytest.mark.parametrize("family,w,d,g,blocks", [
    ("ice40", 64, 1024, 8, 16),      # 8-lane int8 weight buffer
    ("ice40", 8, 512, 8, 1),         # activation row buffer
    ("ice40", 54, 512, 54, 7),       # requantization parameters
    ("ecp5", 8, 32768, 8, 16),       # the link's 32 KiB memories
    ("ecp5", 54, 512, 54, 2),
    ("ecp5", 8, 16, 8, 0),           # small: LUT RAM
])
def test_bram_mapping(family, w, d, g, blocks):
    assert map_bram(w, d, g, family) == blocks


@pytest.mark.parametrize("tokens,lanes", [(16, 4), (17, 16)])
def test_softmax_composition_is_exact(tokens, lanes):
    from amaformer.gen.cost import attention_cycles
    assert softmax_attention_cycles(12, tokens, 32, lanes) == attention_cycles(
        "softmax", 12, tokens, 32, lanes)


def test_linear_jobs_follow_the_driver():
    lin = LinearConfig(lanes=8, max_k=512, weight_depth=1024)
    jobs, nbytes = linear_jobs(lin, 24, 1536, 384)
    assert {k for _, k, _ in jobs} == {512}                  # three K chunks of 512
    assert all(n <= lin.max_n_for_k(512) for _, _, n in jobs)
    assert sum(n for _, _, n in jobs) == 3 * 384
    assert nbytes > 1536 * 384                               # the weights cross the link


def test_model_latency_composes_the_schedule():
    from amaformer.gen.minilm_presets import minilm_config
    cfg = minilm_config()
    r = model_latency(cfg, tokens=16)
    assert r.cycles == sum(r.per_op.values())
    assert r.attention_cycles == 6 * softmax_attention_cycles(12, 16, 32, 4)
    assert set(r.per_op) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out",
                             "attention"}
    assert r.compute_s == pytest.approx(r.cycles / 25e6)
    lin, att = MINILM.macs(16)
    assert r.linear_cycles >= lin / cfg.linear.lanes


def _assert_fits(c):
    r, t = c.resources, c.resources.totals
    assert c.feasible
    assert r.lut <= 0.85 * t["lut"] and r.dsp <= t["dsp"] and r.bram <= t["bram"]
    assert r.spram <= t["spram"] and r.ff <= t["ff"]
    assert c.clock_mhz <= r.feasible_clock_mhz


def test_search_returns_a_feasible_config_that_fits(tmp_path):
    res = S.search("ulx3s-85f", trials=40, accuracy=ACC, min_cosine=0.99)
    _assert_fits(res.best)
    assert res.best.params["encoding"] == "mul8"            # the only one above 0.99
    assert res.best.config.attention.enabled
    default = model_latency(S.default_config("ulx3s-85f"))
    assert res.best.latency.compute_s < default.compute_s
    assert res.pareto and all(c.feasible for c in res.pareto)
    S.write_outputs(res, tmp_path, board="ulx3s-85f", min_cosine=0.99, tokens=24,
                    link_counts=False)
    # TOML round trip: what generate/build/run --config read
    assert load_config(tmp_path / "config.toml") == res.best.config
    assert (tmp_path / "pareto.csv").read_text().startswith("encoding,lanes")
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_link_counts_changes_the_objective():
    res = S.search("ulx3s-85f", trials=20, accuracy=ACC, link_counts=True)
    b = res.best
    assert b.objective_s == pytest.approx(b.latency.compute_s + b.latency.link_s)


def test_infeasible_accuracy_floor():
    with pytest.raises(S.Infeasible, match=r"accuracy: .*mul8.* below the floor 0\.9999"):
        S.search("ulx3s-85f", trials=5, accuracy=ACC, min_cosine=0.9999)


def test_infeasible_resources_name_the_constraint():
    """The whole-model program needs an attention unit; next to a linear unit it does not fit
    an iCE40UP5K: the message names the constraint and the amount."""
    with pytest.raises(S.Infeasible) as e:
        S.search("icebreaker", trials=20, accuracy=ACC)
    msg = str(e.value)
    assert "no configuration fits icebreaker" in msg and "over by" in msg
    assert "\n" not in msg


def test_icebreaker_with_host_attention():
    res = S.search("icebreaker", trials=25, accuracy=ACC, host_attention=True)
    _assert_fits(res.best)
    assert not res.best.config.attention.enabled


def _score(params):
    c = S.evaluate("ulx3s-85f", params, accuracy=ACC)
    return None if c is None else (c.latency.cycles, c.resources.lut, c.feasible)


def test_dask_local_cluster_evaluates_candidates():
    from amaformer.gen.parallel import map_parallel
    pts = [dict(encoding="mul8", lanes=lanes, att_lanes=4, max_k=512, depth_factor=1,
                max_n=512, clock=50.0) for lanes in (8, 16, 32)]
    got = []
    res = map_parallel(_score, pts, workers=2, processes=False,
                       on_result=lambda i, r: got.append(i))
    assert sorted(got) == [0, 1, 2]
    assert res == [_score(p) for p in pts]
    assert res[0][0] > res[1][0] > res[2][0]           # more lanes, fewer cycles


def test_cli_search(tmp_path, capsys):
    from amaformer.gen import cli, search_cli
    if "search" not in cli.SUBCOMMANDS:
        search_cli.register(cli.subcommand, cli.arg)
    out = tmp_path / "s"
    assert cli.main(["search", "--board", "ulx3s-85f", "--out", str(out), "--trials", "20",
                     "--min-cosine", "0.99"]) == 0
    assert cli.main(["config", str(out / "config.toml")]) == 0
    capsys.readouterr()
    assert cli.main(["search", "--board", "ulx3s-85f", "--out", str(out), "--trials", "5",
                     "--min-cosine", "0.99999"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "infeasible" in err[0] and "by" in err[0]
