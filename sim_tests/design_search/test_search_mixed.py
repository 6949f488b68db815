"""Weight encoding per layer in the search (issue 14): a second linear unit (``[linear2]``)
with a multiplier-free encoding, its lanes and how many layers it takes, the layers ranked by
the shipped per-layer sensitivity table; resources summed per unit and fitted on two-unit
builds; latency per op on its unit, equal to the compiler's ``program_cycles``; the mixed
program's measured cosine equal to the table's figure."""

import pytest

from amaformer.gen import search as S
from amaformer.gen.config import AcceleratorConfig, ConfigError, LinearConfig
from amaformer.gen.latency import MINILM, model_latency
from amaformer.gen.resources import (ResourceModel, linear_units_bram, linear_units_dsp_total,
                                     load_calibration)

ACC = {"mul8": 0.99802, "mul6": 0.99291}
P = dict(encoding="mul8", lanes=32, att_lanes=4, max_k=512, depth_factor=4, max_n=512,
         clock=40.0)
MIX = dict(P, encoding2="shift7", lanes2=32, shift_inputs2=2, depth_factor2=4, layers2=2)


@pytest.fixture(scope="module")
def model():
    return ResourceModel(load_calibration())


@pytest.fixture(scope="module")
def sens():
    return S.sensitivity_table()


def test_sensitivity_table_is_shipped_for_every_second_encoding(sens):
    assert set(S.SearchSpace().encodings2) <= set(sens)
    for enc, costs in sens.items():
        assert len(costs) == MINILM.layers
        assert all(-0.002 < c < 0.5 for c in costs)      # one layer: a small loss, maybe none


def test_second_unit_takes_the_least_sensitive_layers():
    costs = (0.03, 0.01, 0.02, 0.01, 0.05, 0.00)
    assert S.second_unit_layers(costs, 1) == (5,)
    assert S.second_unit_layers(costs, 3) == (1, 3, 5)        # tie: the earlier layer first
    assert S.second_unit_layers(costs, 6) == tuple(range(6))


def test_make_config_places_the_layers_and_refuses_what_cannot_be(sens):
    cfg = S.make_config("ulx3s-85f", MIX, sensitivity=sens)
    l2 = cfg.linear2
    assert l2.enabled and (l2.mode, l2.shift_levels, l2.shift_inputs, l2.lanes) == \
        ("shift", 7, 2, 32)
    assert l2.layers == S.second_unit_layers(sens["shift7"], 2)
    assert l2.max_k == cfg.linear.max_k and l2.weight_depth >= l2.weight_words(512, 1)
    assert not S.make_config("ulx3s-85f", P).linear2.enabled
    bcq = S.make_config("ulx3s-85f", dict(P, encoding2="bcq4", lanes2=16, layers2=1),
                        sensitivity=sens).linear2
    assert (bcq.mode, bcq.bcq_bits, bcq.bcq_group) == ("bcq", 4, S.BCQ_GROUP)
    with pytest.raises(ConfigError, match="bcq_group must be an integer in \\[256"):
        S.make_config("ulx3s-85f", dict(P, encoding2="bcq4", lanes2=32, layers2=1),
                      sensitivity=sens)
    with pytest.raises(ConfigError, match="needs its per-layer sensitivity"):
        S.make_config("ulx3s-85f", MIX, sensitivity={})


def test_cosine_is_the_table_minus_the_layers_costs(sens):
    c = S.evaluate("ulx3s-85f", MIX, accuracy=ACC, sensitivity=sens)
    layers = c.config.linear2.layers
    assert c.cosine == pytest.approx(ACC["mul8"] - sum(sens["shift7"][i] for i in layers))
    assert "shift7 32 lanes on layers" in c.describe()           # 2 layers
    assert c.row()["layers2"] == " ".join(map(str, layers))


def test_latency_runs_each_layer_on_its_unit():
    """The per-unit composition: layers on the second unit cost its cycles, the others the
    first's (checked against the compiler's program_cycles below)."""
    from dataclasses import replace
    cfg = S.make_config("ulx3s-85f", MIX, sensitivity={"shift7": (0.0,) * 6})
    off = LinearConfig(enabled=False)
    first = model_latency(cfg.replace(linear2=off), 24)
    second = model_latency(cfg.replace(linear=replace(cfg.linear2, layers=()), linear2=off), 24)
    mixed = model_latency(cfg, 24)
    n2 = len(cfg.linear2.layers)
    assert mixed.linear_cycles * MINILM.layers == (first.linear_cycles * (MINILM.layers - n2)
                                                   + second.linear_cycles * n2)
    # 32 lanes × 2 products per cycle, 5 column groups per job (weight_depth 4 × 256 words)
    assert second.linear_cycles < 0.6 * first.linear_cycles
    assert mixed.attention_cycles == first.attention_cycles


def test_latency_equals_the_compilers_program_cycles(sens):
    """all-MiniLM-L6-v2 compiled for a two-unit configuration: the search's composition
    equals program_cycles (the units' exact models over the compiler's tiles; the two-unit
    device run matches program_cycles in whole_model/test_program_mixed.py)."""
    from amaformer.gen.model.minilm import load_minilm, load_sentences
    from amaformer.gen.program import compile_program, program_cycles
    from amaformer.hdl.top import DEFAULT_ACT_DEPTH, DEFAULT_OUT_DEPTH
    cfg = S.make_config("ulx3s-85f", dict(MIX, encoding2="bcq4", lanes2=16, layers2=3,
                                          max_k=384), sensitivity=sens)
    lm = load_minilm()
    calib, _ = load_sentences()
    program = compile_program(lm.model, cfg, [lm.ids(s) for s in calib[:4]])
    assert {s.where for s in program.schedule if s.layer in cfg.linear2.layers
            and s.module} == {"linear2"}
    for tokens in (9, 24):
        per_layer = program_cycles(program, [tokens], act_depth=DEFAULT_ACT_DEPTH,
                                   out_depth=DEFAULT_OUT_DEPTH)
        lat = model_latency(cfg, tokens)
        assert lat.linear_cycles == sum(ly["linear"] for ly in per_layer)
        assert lat.attention_cycles == sum(ly["attention"] for ly in per_layer)


def test_resources_are_summed_per_unit(model, sens):
    """Block RAM lists both units' memories, DSP gives the second unit what the first
    leaves, logic adds the second unit's lanes and its fixed part."""
    from dataclasses import replace
    cfg = S.make_config("ulx3s-85f", MIX, sensitivity=sens)
    one = cfg.replace(linear2=LinearConfig(enabled=False))
    alone2 = cfg.replace(linear=replace(cfg.linear2, layers=()),
                         linear2=LinearConfig(enabled=False))
    assert linear_units_bram(cfg, "ecp5") == (linear_units_bram(one, "ecp5")
                                              + linear_units_bram(alone2, "ecp5"))
    r, r1 = model.estimate(cfg), model.estimate(one)
    assert r.bram - r1.bram == linear_units_bram(alone2, "ecp5")
    assert r.dsp - r1.dsp == 2                  # shift: only the requantizer's two
    assert r.lut > r1.lut + 1000
    # two mul units on a board with few DSPs: the second gets what the first leaves
    two_mul = AcceleratorConfig(board="ulx3s-85f", linear=LinearConfig(lanes=64),
                                linear2=LinearConfig(lanes=64, layers=(0,)))
    assert linear_units_dsp_total(two_mul, "ecp5", 100) == 100           # 64+2, then 32+2
    assert linear_units_dsp_total(two_mul, "ecp5", 156) == 132           # both in full
    from amaformer.boards import get_board
    from amaformer.boards.build import resolve_config
    res = resolve_config(two_mul.replace(board="icebreaker"), get_board("icebreaker"))
    assert (res.linear.hw_lanes, res.linear2.hw_lanes) == (6, 0)         # 8 DSPs: 6 + 2


def test_two_unit_builds_are_estimated_exactly_in_dsp_and_bram(model):
    """The calibration has two-unit ECP5 builds (fitted, and held out) and none on iCE40,
    where the estimate refuses (so the search never adds a second unit there)."""
    pts = [p for p in model.points if p["config"].get("linear2", {}).get("enabled")]
    assert {p["set"] for p in pts} == {"calib", "heldout"}
    assert all(p["family"] == "ecp5" for p in pts)
    from amaformer.gen.resources import _point_config, measured
    for p in pts:
        est, m = model.estimate(_point_config(p), p["board"]), measured(p)
        assert (est.dsp, est.bram) == (m["dsp"], m["bram"]), p["name"]
    with pytest.raises(ValueError, match="no calibration of a second linear unit"):
        model.estimate(AcceleratorConfig(board="icebreaker",
                                         linear2=LinearConfig(mode="shift", layers=(0,))))


def test_neighbours_add_drop_and_change_the_second_unit():
    space, second = S.SearchSpace(), {"encodings": ["shift7", "bcq4"], "layers": (1, 2, 3)}
    near = list(S.neighbours(P, space, "ecp5", ["mul8"], second=second))
    added = [q for q in near if q.get("encoding2")]
    assert {q["encoding2"] for q in added} == {"shift7", "bcq4"}
    assert all(q["layers2"] == 1 for q in added)
    near = list(S.neighbours(MIX, space, "ecp5", ["mul8"], second=second))
    assert P in near                                                # dropped
    assert dict(MIX, layers2=3) in near and dict(MIX, layers2=1) in near
    assert dict(MIX, lanes2=48) in near and dict(MIX, shift_inputs2=4) in near
    assert any(q.get("encoding2") == "bcq4" and "shift_inputs2" not in q for q in near)
    assert not any(q.get("encoding2") for q in S.neighbours(P, space, "ecp5", ["mul8"]))


def test_accuracy_key_names_the_second_unit(sens):
    from amaformer.gen.search_accuracy import accuracy_key
    key = accuracy_key(S.make_config("ulx3s-85f", MIX, sensitivity=sens))
    assert accuracy_key(S.make_config("ulx3s-85f", dict(MIX, lanes2=64),
                                      sensitivity=sens)) == key
    for change in (dict(layers2=3), dict(encoding2="shift4"), dict(encoding2=None)):
        other = {k: v for k, v in dict(MIX, **change).items() if v is not None}
        assert accuracy_key(S.make_config("ulx3s-85f", other, sensitivity=sens)) != key


#: A space where the second unit is what varies: the first unit fixed at 16 int8 lanes, one
#: clock; the second unit's lanes and layers are free.
FIXED = S.SearchSpace(encodings=("mul8",), lanes=(16,), att_lanes=(4,), max_k=(512,),
                      depth_factor=(1,), max_n=(512,), clocks={"ecp5": (40.0,), "ice40": (24.0,)})


def test_search_adds_a_second_unit_when_it_pays_and_the_floor_allows(sens):
    one = S.search("ulx3s-85f", trials=40, accuracy=ACC, min_cosine=0.95, space=FIXED,
                   second_unit=False)
    assert not one.best.config.linear2.enabled
    res = S.search("ulx3s-85f", trials=150, accuracy=ACC, min_cosine=0.95, space=FIXED,
                   sensitivity=sens)
    b = res.best
    assert b.feasible and b.config.linear2.enabled
    assert b.objective_s < one.best.objective_s
    assert b.cosine >= 0.95
    costs = sens[b.params["encoding2"]]
    chosen = b.config.linear2.layers
    assert max(costs[i] for i in chosen) <= min(
        [costs[i] for i in range(MINILM.layers) if i not in chosen], default=1.0)
    # a floor no layer can meet in any encoding: one unit again
    top = ACC["mul8"] - min(min(c) for c in sens.values()) + 1e-4
    res = S.search("ulx3s-85f", trials=60, accuracy=ACC, min_cosine=top, space=FIXED,
                   sensitivity=sens)
    assert not res.best.config.linear2.enabled


def test_icebreaker_search_never_adds_a_second_unit(sens):
    res = S.search("icebreaker", trials=40, accuracy=ACC, min_cosine=0.95, sensitivity=sens,
                   host_attention=True)
    assert not any(c is not None and c.config.linear2.enabled for c in res.candidates)


def test_mixed_program_measures_the_tables_figure(sens):
    """The final check's path (measure_cosine: compile_program for the two-unit
    configuration, its bit-exact golden path) reproduces the sensitivity table's one-layer
    figure (within 1e-5; another layer on shift7 is 1e-3 away or more): the table and the
    compiler compute the same mixed program."""
    from amaformer.gen.search_accuracy import measure_cosine
    data = load_calibration()["sensitivity"]["shift7"]
    layer = S.second_unit_layers(sens["shift7"], 1)
    cfg = S.make_config("ulx3s-85f", dict(MIX, layers2=1), sensitivity=sens)
    assert cfg.linear2.layers == layer
    got = measure_cosine((cfg.to_dict(), data["sentences"]))
    assert got["cosine_min"] == pytest.approx(data["layers"][layer[0]]["cosine_min"], abs=1e-5)


def test_outputs_record_the_second_unit(tmp_path, sens):
    """config.toml carries [linear2] as `run` needs it; search.json names the layers and
    their table costs; the Pareto CSV has the second unit's columns."""
    import csv
    import json

    from amaformer.gen.config import load_config
    res = S.search("ulx3s-85f", trials=60, accuracy=ACC, min_cosine=0.98, space=FIXED,
                   sensitivity=sens)
    summary = S.write_outputs(res, tmp_path, board="ulx3s-85f", min_cosine=0.98, tokens=24,
                              link_counts=False)
    l2 = res.best.config.linear2
    assert l2.enabled and load_config(tmp_path / "config.toml") == res.best.config
    second = json.loads((tmp_path / "search.json").read_text())["second_unit"]
    assert second == summary["second_unit"]
    assert second["layers"] == list(l2.layers) and second["encoding"] == res.best.params[
        "encoding2"]
    assert [second["layer_costs"][str(i)] for i in l2.layers] == [
        sens[second["encoding"]][i] for i in l2.layers]
    with open(tmp_path / "pareto.csv") as f:
        header = next(csv.reader(f))
    assert {"encoding2", "lanes2", "layers2", "weight_depth2"} <= set(header)


def test_cli_one_linear_unit_turns_the_second_unit_off(tmp_path, monkeypatch):
    from amaformer.gen import cli, search_cli
    if "search" not in cli.SUBCOMMANDS:
        search_cli.register(cli.subcommand, cli.arg)
    seen, real = [], S.search

    def spy(*a, **k):
        seen.append(k["second_unit"])
        return real(*a, **k)
    monkeypatch.setattr(S, "search", spy)
    base = ["search", "--board", "ulx3s-85f", "--trials", "40", "--verify", "0"]
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--one-linear-unit"]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "b")]) == 0
    assert seen == [False, True]
