"""The ``amaformer`` command line: subcommands through ``main()``, errors, the console script."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from amaformer.gen.cli import SUBCOMMANDS, main
from amaformer.gen.config import AcceleratorConfig, LinearConfig, save_config


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("amaformer: error: "), err
    assert "Traceback" not in err
    return lines[0][len("amaformer: error: "):]


@pytest.fixture
def small_config(tmp_path):
    path = tmp_path / "small.toml"
    save_config(AcceleratorConfig(name="tiny", linear=LinearConfig(
        lanes=4, max_k=32, max_n=32, max_m=8, weight_depth=64)), path)
    return path


def test_help_explains_every_option(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("generate", "build", "sim", "boards", "config", "flash"):
        assert name in SUBCOMMANDS and name in out
    for name, (_help, _desc, args, _func) in SUBCOMMANDS.items():
        code, out, _ = run(capsys, name, "--help")
        assert code == 0, name
        for names, kwargs in args:
            assert kwargs.get("help"), (name, names)
            assert kwargs.get("metavar", names[0]) in out, (name, names)


def test_boards_lists_catalogue(capsys):
    code, out, _ = run(capsys, "boards")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"icebreaker", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f", "orangecrab"}
    assert rows["icebreaker"].split()[1:5] == ["iCE40UP5K", "5280", "5280", "8"]
    assert "4×256k" in rows["icebreaker"] and "208×18k" in rows["ulx3s-85f"]


def test_config_default_roundtrip(capsys, tmp_path):
    code, out, _ = run(capsys, "config")
    assert code == 0
    assert AcceleratorConfig.from_dict(tomllib.loads(out)) == AcceleratorConfig()
    path = tmp_path / "c.toml"
    path.write_text(out)
    code, out2, err = run(capsys, "config", str(path))
    assert code == 0 and out2 == out and err.strip() == f"{path}: ok"
    code, out3, _ = run(capsys, "config", "--board", "icebreaker")
    assert tomllib.loads(out3)["linear"]["dsp_lanes"] == 6


@pytest.mark.parametrize("text, message", [
    ("[linear]\nlanes = 0\n", "linear.lanes must be an integer in [1, 64], not 0"),
    ("[linear]\nlanez = 4\n", "unknown key linear.lanez; allowed keys in linear: "),
    ("name = \n", "is not valid TOML"),
])
def test_config_bad_file(capsys, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for argv in (["config", str(path)], ["build", "--config", str(path)],
                 ["generate", "--config", str(path), "--out", str(tmp_path / "g")],
                 ["sim", "--config", str(path)]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert message in one_line_error(err), argv


def test_missing_config_and_unknown_board(capsys, tmp_path):
    code, _, err = run(capsys, "config", str(tmp_path / "nope.toml"))
    assert code == 2
    assert one_line_error(err) == (f"cannot read config '{tmp_path / 'nope.toml'}': "
                                   f"No such file or directory")
    code, out, err = run(capsys, "build", "--board", "de10", "--out", str(tmp_path / "b"))
    assert code == 2 and out == ""
    assert one_line_error(err) == ("unknown board 'de10'; known boards: icebreaker, "
                                   "ulx3s-25f, ulx3s-45f, ulx3s-85f, orangecrab")
    assert not (tmp_path / "b").exists()
    code, _, err = run(capsys, "build", "--bogus")
    assert code == 2
    assert one_line_error(err) == "unrecognized arguments: --bogus (see amaformer --help)"
    code, _, err = run(capsys, "flash", "--board", "icebreaker")
    assert code == 2
    assert one_line_error(err) == ("the following arguments are required: --bitstream "
                                   "(see amaformer flash --help)")


def test_flash_no_board(capsys, tmp_path):
    """The installed openFPGALoader with no board attached: one line, exit 1."""
    bit = tmp_path / "x.bin"
    bit.write_bytes(bytes(100))
    code, _, err = run(capsys, "flash", "--board", "icebreaker", "--bitstream", str(bit))
    assert code == 1
    assert one_line_error(err).startswith("no board attached: openFPGALoader found no "
                                          "icebreaker board")
    code, _, err = run(capsys, "flash", "--board", "ulx3s-85f", "--bitstream", str(bit),
                       "--programmer", "iceprog")
    assert code == 2
    assert "only programs iCE40 boards" in one_line_error(err)
    code, _, err = run(capsys, "flash", "--board", "ulx3s-85f", "--bitstream", "missing.bit")
    assert code == 2 and one_line_error(err) == "bitstream 'missing.bit' does not exist"
    code, out, _ = run(capsys, "flash", "--board", "ulx3s-85f", "--bitstream", str(bit),
                       "--persist", "--dry-run")
    assert code == 0 and out.split() == ["openFPGALoader", "-b", "ulx3s", "-f", str(bit)]


def test_generate(capsys, tmp_path, small_config):
    out_dir = tmp_path / "gen"
    code, out, err = run(capsys, "generate", "--config", str(small_config), "--out",
                         str(out_dir), "--design", "engine")
    assert code == 0, err
    top = (out_dir / "tiny.v").read_text()
    engine = (out_dir / "linear_engine.v").read_text()
    assert "module tiny(" in top.replace(" (", "(") and "uart_0__rx" in top
    for port in ("x__valid", "x__ready", "x__payload", "y__payload", "w_wr__data", "start"):
        assert port in engine
    assert "module \\linear_engine" in (out_dir / "linear_engine.il").read_text()
    assert "attribute \\top 1" in (out_dir / "tiny.il").read_text()
    saved = tomllib.loads((out_dir / "tiny.toml").read_text())
    assert saved["linear"]["lanes"] == 4 and saved["board"] == "icebreaker"


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs iverilog")
def test_sim_quick(capsys, tmp_path, small_config):
    code, out, err = run(capsys, "sim", "--config", str(small_config), "--quick",
                         "--out", str(tmp_path / "sim"))
    assert code == 0, out + err
    assert out.startswith("PASS: ") and " 0 failed (icarus" in out
    code, _, err = run(capsys, "sim", "--simulator", "ghdl")
    assert code == 2
    assert "argument --simulator: invalid choice: 'ghdl'" in one_line_error(err)


def test_console_script(tmp_path):
    """The installed ``amaformer`` entry point: bad config → one line on stderr, exit 2."""
    exe = Path(sys.executable).parent / "amaformer"
    assert exe.exists(), "the console script is installed by `pip install -e .`"
    bad = tmp_path / "bad.toml"
    bad.write_text("clock_mhz = 9000\n")
    proc = subprocess.run([str(exe), "build", "--config", str(bad), "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert one_line_error(proc.stderr) == ("clock_mhz must be a number in [1, 500] or absent, "
                                           "not 9000")


@pytest.mark.parametrize("argv, message", [
    (["--verify", "-1"], "--verify must be at least 0, not -1"),
    (["--sentences", "0"], "--sentences must be at least 1, not 0"),
    (["--trials", "0"], "--trials must be at least 1, not 0"),
    (["--lut-margin", "1.5"], "--lut-margin must be in (0, 1], not 1.5"),
    (["--min-cosine", "0"], "--min-cosine must be in (0, 1], not 0.0"),
])
def test_search_bad_arguments(capsys, tmp_path, argv, message):
    out = tmp_path / "s"
    code, _, err = run(capsys, "search", "--board", "ulx3s-85f", "--out", str(out), *argv)
    assert code == 2 and one_line_error(err) == message
    assert not out.exists()
