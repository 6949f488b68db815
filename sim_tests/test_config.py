"""Configuration: validation messages (exact text), TOML round trip, unknown keys, bad TOML."""

import dataclasses
import re
import tomllib

import pytest

from amaformer.gen.config import (LINEAR_MODES, AcceleratorConfig, ConfigError, LinearConfig,
                                  UartConfig, dump_toml, load_config, save_config)


def raises_exactly(message):
    return pytest.raises(ConfigError, match="^" + re.escape(message) + "$")


VALIDATION_CASES = [
    (lambda: LinearConfig(lanes=0), "linear.lanes must be an integer in [1, 64], not 0"),
    (lambda: LinearConfig(lanes=65), "linear.lanes must be an integer in [1, 64], not 65"),
    (lambda: LinearConfig(lanes=True), "linear.lanes must be an integer in [1, 64], not True"),
    (lambda: LinearConfig(lanes="8"), "linear.lanes must be an integer in [1, 64], not '8'"),
    (lambda: LinearConfig(lanes=4.0), "linear.lanes must be an integer in [1, 64], not 4.0"),
    (lambda: LinearConfig(dsp_lanes=9), "linear.dsp_lanes must be an integer in [0, 8], not 9"),
    (lambda: LinearConfig(lanes=2, dsp_lanes=-1),
     "linear.dsp_lanes must be an integer in [0, 2], not -1"),
    (lambda: LinearConfig(max_k=0), "linear.max_k must be an integer in [1, 65536], not 0"),
    (lambda: LinearConfig(max_n=70000),
     "linear.max_n must be an integer in [1, 65536], not 70000"),
    (lambda: LinearConfig(max_m=0), "linear.max_m must be an integer in [1, 1048576], not 0"),
    (lambda: LinearConfig(act_bits=9), "linear.act_bits must be an integer in [2, 8], not 9"),
    (lambda: LinearConfig(weight_bits=1), "linear.weight_bits must be an integer in [2, 8], not 1"),
    (lambda: LinearConfig(max_k=512, weight_depth=100),
     "linear.weight_depth must be an integer in [512, 1048576], not 100"),
    (lambda: LinearConfig(shift_inputs=0),
     "linear.shift_inputs must be an integer in [1, 64], not 0"),
    (lambda: LinearConfig(shift_inputs=65),
     "linear.shift_inputs must be an integer in [1, 64], not 65"),
    (lambda: LinearConfig(mode="shift", shift_inputs=8, max_k=512, weight_depth=63),
     "linear.weight_depth must be an integer in [64, 1048576], not 63"),
    (lambda: LinearConfig(mode="fp16"),
     f"linear.mode must be one of {', '.join(map(repr, LINEAR_MODES))}, not 'fp16'"),
    (lambda: UartConfig(baud=100), "uart.baud must be an integer in [1200, 12000000], not 100"),
    (lambda: AcceleratorConfig(name="my design"),
     "name must be an identifier (letters, digits, _), not 'my design'"),
    (lambda: AcceleratorConfig(board=""), "board must be a board name, not ''"),
    (lambda: AcceleratorConfig(clock_mhz=0),
     "clock_mhz must be a number in [1, 500] or absent, not 0"),
    (lambda: AcceleratorConfig(clock_mhz=True),
     "clock_mhz must be a number in [1, 500] or absent, not True"),
    (lambda: AcceleratorConfig(clock_mhz="12"),
     "clock_mhz must be a number in [1, 500] or absent, not '12'"),
    (lambda: AcceleratorConfig(linear={}), "linear must be a LinearConfig, not {}"),
    (lambda: AcceleratorConfig().replace(name="1x"),
     "name must be an identifier (letters, digits, _), not '1x'"),
]


@pytest.mark.parametrize("make, message", VALIDATION_CASES,
                         ids=[message for _, message in VALIDATION_CASES])
def test_validation_messages(make, message):
    with raises_exactly(message):
        make()


def test_config_error_is_value_error_and_one_line():
    with pytest.raises(ValueError) as info:
        LinearConfig(lanes=-3)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_frozen():
    cfg = AcceleratorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"


def test_check_job():
    cfg = LinearConfig(lanes=8, max_k=512, max_n=512, max_m=4096, weight_depth=1024)
    cfg.check_job(4096, 512, 16)
    cfg.check_job(1, 1, 512)
    with raises_exactly("job M must be an integer in [1, 4096], not 0"):
        cfg.check_job(0, 4, 4)
    with raises_exactly("job K must be an integer in [1, 512], not 513"):
        cfg.check_job(1, 513, 4)
    with raises_exactly("job N must be an integer in [1, 512], not 600"):
        cfg.check_job(1, 4, 600)
    with raises_exactly("job K·ceil(N/lanes) = 512·ceil(24/8) = 1536 weight words does not fit "
                        "linear.weight_depth = 1024; split N (at most 16 columns for K = 512)"):
        cfg.check_job(1, 512, 24)
    assert cfg.max_n_for_k(512) == 16 and cfg.max_n_for_k(1) == 512
    wide = LinearConfig(mode="shift", lanes=8, shift_inputs=8, max_k=512, max_n=512,
                        weight_depth=256)
    assert wide.weight_words(100, 20) == 13 * 3 and wide.max_n_for_k(512) == 32
    with raises_exactly("job ceil(K/g)·ceil(N/lanes) = ceil(512/8)·ceil(40/8) = 320 weight "
                        "words does not fit linear.weight_depth = 256; split N (at most 32 "
                        "columns for K = 512)"):
        wide.check_job(1, 512, 40)
    assert LinearConfig(dsp_lanes=3).hw_lanes == 3 and LinearConfig().hw_lanes == 8


@pytest.mark.parametrize("cfg", [
    AcceleratorConfig(),
    AcceleratorConfig(name="tiny_1", board="ulx3s-85f", clock_mhz=24.5,
                      linear=LinearConfig(lanes=4, dsp_lanes=2, max_k=64, max_n=96, max_m=16,
                                          weight_depth=2048, act_bits=6, weight_bits=4),
                      uart=UartConfig(baud=9600)),
    AcceleratorConfig(clock_mhz=48),
    AcceleratorConfig(linear=LinearConfig(mode="shift", lanes=8, shift_inputs=8,
                                          shift_levels=4, weight_depth=256)),
], ids=["default", "custom", "int-clock", "shift-wide"])
def test_toml_round_trip(tmp_path, cfg):
    path = tmp_path / "c.toml"
    save_config(cfg, path)
    text = path.read_text()
    assert "[linear]" in text and "[uart]" in text
    assert tomllib.loads(text) == cfg.to_dict()     # valid TOML, None fields left out
    assert load_config(path) == cfg
    assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg


def test_partial_toml_keeps_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "small"\n[linear]\nlanes = 2\n')
    cfg = load_config(path)
    assert cfg == AcceleratorConfig(name="small", linear=LinearConfig(lanes=2))


def test_toml_string_escapes():
    text = dump_toml({"name": 'a"b\\c', "x": {"flag": True, "f": 1.5}})
    assert tomllib.loads(text) == {"name": 'a"b\\c', "x": {"flag": True, "f": 1.5}}


@pytest.mark.parametrize("d, message", [
    ({"nme": "x"}, "unknown key nme; allowed keys in the top level: "
                   + ", ".join(f.name for f in dataclasses.fields(AcceleratorConfig))),
    ({"linear": {"lane": 4}}, "unknown key linear.lane; allowed keys in linear: "
                              + ", ".join(f.name for f in dataclasses.fields(LinearConfig))),
    ({"uart": {"baud": 9600, "parity": "n"}}, "unknown key uart.parity; allowed keys in uart: "
                                              "baud"),
    ({"linear": 3}, "linear must be a table, not 3"),
    ({"linear": {"lanes": 0}}, "linear.lanes must be an integer in [1, 64], not 0"),
])
def test_from_dict_errors(d, message):
    with raises_exactly(message):
        AcceleratorConfig.from_dict(d)


def test_load_errors(tmp_path):
    missing = tmp_path / "none.toml"
    with raises_exactly(f"cannot read config {str(missing)!r}: No such file or directory"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[linear\nlanes = 4\n")
    with pytest.raises(tomllib.TOMLDecodeError) as parse:
        tomllib.loads(bad.read_text())
    with raises_exactly(f"config {str(bad)!r} is not valid TOML: {parse.value}"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[linear]\nlanes = 4\nspeed = 9\n")
    with pytest.raises(ConfigError, match=r"^unknown key linear\.speed; allowed keys in linear: "):
        load_config(unknown)
    value = tmp_path / "value.toml"
    value.write_text("[uart]\nbaud = 1\n")
    with raises_exactly("uart.baud must be an integer in [1200, 12000000], not 1"):
        load_config(value)
