"""Mixed precision per layer: a second linear unit (``[linear2]``) with an encoding of its own.

The small random BERT of ``test_program.py`` (2 layers) is compiled for a configuration whose
first linear unit multiplies int8 weights (``mul``) and whose second, ``shift`` (power-of-two
weights, two products per lane), runs layer 1's linear ops. On the Verilator device the run
must equal the mixed golden path bit for bit (layer 0 through the ``mul`` golden model, layer
1 through the ``shift`` one), each op's jobs must reach the unit of its layer, and the units'
cycle models must predict every layer's cycles exactly.
"""

import pytest
import torch

from amaformer.gen.config import (AcceleratorConfig, AttentionConfig, ConfigError, LinearConfig,
                                  dump_toml, load_config, save_config)
from amaformer.gen.model.exact import Encoding, exact_forward
from amaformer.gen.program import ProgramError, compile_program, program_cycles
from amaformer.host import DeviceError
from amaformer.host.runtime import run_program

from conftest import needs_verilator
from test_program import ATT, LIN, compiled_tiny_bert, sentences, tiny_bert, verilator_device

LIN2 = LinearConfig(mode="shift", shift_levels=4, shift_inputs=2, lanes=2, max_k=32, max_n=64,
                    max_m=64, weight_depth=256, layers=(1,))
CFG = AcceleratorConfig(linear=LIN, attention=ATT, linear2=LIN2)


@pytest.fixture(scope="module")
def program():
    return compiled_tiny_bert(CFG)


@pytest.fixture(scope="module")
def dev():
    return verilator_device(CFG)


def test_config_round_trips_and_refuses_bad_second_units(tmp_path):
    path = tmp_path / "mixed.toml"
    save_config(CFG, path)
    assert "[linear2]" in path.read_text() and "layers = [1]" in path.read_text()
    assert load_config(path) == CFG
    assert "linear2" not in AcceleratorConfig().to_dict()          # absent by default
    assert CFG.linear_units() == [LIN, LIN2]
    assert [CFG.linear_unit_of_layer(i) for i in range(3)] == [0, 1, 0]
    bad = {
        "linear2.max_k must equal linear.max_k = 32": dict(linear2={"max_k": 64}),
        "linear2.layers must be a list of distinct": dict(linear2={"layers": [1, 1]}),
        "linear2.lanes must be an integer": dict(linear2={"lanes": 0}),
        "linear.layers must be empty": dict(linear={"layers": [0]}),
        "linear2.layers must be empty when linear2.enabled is false":
            dict(linear2={"layers": [0], "enabled": False}),
    }
    for msg, change in bad.items():
        d = CFG.to_dict()
        for sec, vals in change.items():
            d[sec].update(vals)
        path.write_text(dump_toml(d))
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(path)
        assert "\n" not in str(e.value)


def test_each_layer_runs_on_its_units_encoding(program):
    where = program.placement()
    assert where["linear"] == where["linear2"] == ["query", "key", "value", "attn_out",
                                                   "ffn_in", "ffn_out"]
    steps = [s for s in program.schedule if s.where.startswith("linear")]
    assert {(s.layer, s.where, s.unit) for s in steps} == {(0, "linear", 0), (1, "linear2", 1)}
    for ly in program.graph.layers:
        for op in ly.linear_ops:
            ql = program.compiled.ops[op.name]
            want = Encoding("mul", 8) if ly.index == 0 else Encoding("shift", 4)
            assert (ql.encoding.mode, ql.encoding.bits) == (want.mode, want.bits)
            assert program.linear_section(op.name) == (LIN, LIN2)[ly.index]
    # the mixed golden path differs from both single-encoding programs: both encodings count
    ids = sentences(2, 3)
    mixed = exact_forward(program.compiled, ids)[0]
    for enc in (Encoding("mul", 8), Encoding("shift", 4)):
        single = compile_program(tiny_bert(), AcceleratorConfig(linear=LIN, attention=ATT),
                                 sentences(6, 1), max_tokens=12, encoding=enc)
        other = exact_forward(single.compiled, ids)[0]
        assert any(not torch.equal(a, b) for a, b in zip(mixed, other))


@needs_verilator
def test_two_unit_device_run_equals_mixed_golden_bit_for_bit(program, dev):
    assert [u.kind for u in dev.info.units][:2] == ["linear", "linear"]
    assert [dev.unit("linear", i).mode for i in range(2)] == ["mul", "shift"]
    ids = sentences(3, 7)
    res = run_program(program, dev, ids)
    hidden, layers, _ = exact_forward(program.compiled, ids)
    for got, want in zip(res.hidden, hidden):
        assert torch.equal(got, want)
    for got, want in zip(res.layers, layers):
        assert torch.equal(got, want)
    model = program_cycles(program, [len(i) for i in ids], act_depth=4096, out_depth=2048)
    assert [t.linear_cycles for t in res.trace] == [c["linear"] for c in model]
    assert [t.attention_cycles for t in res.trace] == [c["attention"] for c in model]
    # the shift unit takes two products per lane and cycle: layer 1's linear work is faster
    assert res.trace[1].linear_cycles < res.trace[0].linear_cycles
    # back to back: the same sentences again give the same result
    again = run_program(program, dev, ids)
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, res.hidden))


@needs_verilator
def test_ops_reach_the_unit_of_their_layer(program, dev, monkeypatch):
    seen = []
    for i in range(2):
        drv = dev.unit("linear", i)
        orig = drv.run_jobs

        def spy(x, tiles, jobs, _orig=orig, _i=i):
            seen.append((_i, tiles[jobs[0].tile].op))
            return _orig(x, tiles, jobs)
        monkeypatch.setattr(drv, "run_jobs", spy)
    run_program(program, dev, sentences(1, 9))
    for unit, name in seen:
        assert unit == program.compiled.ops[name].op.layer


@needs_verilator
def test_device_without_the_second_unit_is_one_line_error(program):
    one_unit = verilator_device(AcceleratorConfig(linear=LIN, attention=ATT))
    with pytest.raises(DeviceError, match="no linear unit #1") as e:
        run_program(program, one_unit, sentences(1, 2))
    assert "\n" not in str(e.value)


def test_bad_layers_or_encoding_are_one_line_errors():
    one_unit = AcceleratorConfig(linear=LIN, attention=ATT)
    with pytest.raises(ProgramError, match="linear2.layers names layer 5; the model has "
                                           "layers 0 to 1"):
        compile_program(tiny_bert(), one_unit.replace(linear2=LinearConfig(
            max_k=32, layers=(5,))), sentences(2, 1))
    with pytest.raises(ProgramError, match="encoding must be None with a second linear unit"):
        compile_program(tiny_bert(), CFG, sentences(2, 1), encoding=Encoding("mul", 8))
