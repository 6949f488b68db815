"""The whole-model compiler with fixed attention masks: every attention on the sparse-dense unit.

A small random BERT-style encoder (as ``test_program.py``'s: 2 layers, 2 heads of 16) is
compiled for a configuration with a linear unit and a sparse-dense unit (no softmax attention
unit) and a mask file made from calibration attention maps of the model itself (one mask per
layer and head, 12×12, saved with :func:`amaformer.gen.masks.save_masks`). The masks flow from
calibration through the compiler and the runtime's driver to the simulated device (Verilator):
the run must equal the golden path (``Program.forward``: the sparse-dense bit-exact golden model
under the same masks) bit for bit, for sentences shorter than the masks' 12 tokens too (the
top-left crop), and its cycles per layer must equal ``program_cycles``. Bad masks and
configurations get one-line ``ProgramError``s.
"""

import dataclasses
import re

import pytest
import torch

from amaformer.gen.config import (AcceleratorConfig, AttentionConfig, LinearConfig,
                                  SparseDenseConfig)
from amaformer.gen.masks import calibration_masks, density, save_masks, synthetic_mask
from amaformer.gen.model.exact import exact_forward, reference
from amaformer.gen.program import ProgramError, compile_program, program_cycles
from amaformer.host import Device
from amaformer.host.runtime import run_program

from conftest import needs_verilator, sim_transport
from test_program import sentences, tiny_bert     # the same random BERT as the dense test

LIN = LinearConfig(lanes=2, max_k=32, max_n=64, max_m=64, weight_depth=256)
SD = SparseDenseConfig(dense_lanes=1, sparse_lanes=3, heads=2, head_dim=16, max_tokens=12,
                       dense_depth=256, sparse_depth=128, qkv_buffers=2, enabled=True)
CFG = AcceleratorConfig(linear=LIN, sparse_dense=SD)
N = 12
ACT, OUT = 4096, 2048


def calibration_maps(model, count=8, seed=3):
    """``S×L×H×N×N`` float attention maps of ``model`` on random sentences of ``N`` tokens."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    with torch.no_grad():
        for _ in range(count):
            ids = torch.randint(1, 64, (1, N), generator=g)
            out = model(input_ids=ids, output_attentions=True)
            maps.append(torch.stack([a[0] for a in out.attentions]))
    return torch.stack(maps)


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


@pytest.fixture(scope="module")
def mask_file(model, tmp_path_factory):
    keep = calibration_masks(calibration_maps(model), cut=0.6)
    path = tmp_path_factory.mktemp("masks") / "tiny.npz"
    save_masks(path, keep, source="tiny_bert calibration", cut=0.6)
    return path, keep


@pytest.fixture(scope="module")
def program(model, mask_file):
    return compile_program(model, CFG, sentences(6, 1), masks=mask_file[0])


@pytest.fixture(scope="module")
def dev():
    tr = sim_transport(CFG, "verilator", timeout_cycles=300, act_depth=ACT, out_depth=OUT)
    return Device(tr, timeout=0.05, retries=0, expect=CFG)


def test_masks_are_sparse_and_every_attention_is_placed_on_the_unit(program, mask_file):
    _, keep = mask_file
    assert 0.2 < density(keep) < 0.8                 # a real mask: neither dense nor trivial
    assert bool(keep.diagonal(dim1=-2, dim2=-1).all())
    where = program.placement()
    assert where["sparse_dense"] == ["attention"] and "attention" not in where
    assert where["linear"] == ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
    assert [program.attention_unit(ly.index) for ly in program.graph.layers] == \
        ["sparse_dense"] * 2
    assert program.max_tokens == N and program.mask_tokens == N
    assert torch.equal(program.masks, keep)
    # the golden path under the masks differs from the dense one: the masks are really used
    ids = sentences(2, 5, lo=N, hi=N)
    masked, _, _ = program.forward(ids)
    dense, _, _ = exact_forward(program.compiled, ids)
    assert not torch.equal(masked[0], dense[0])
    cyc = program_cycles(program, [N], act_depth=ACT, out_depth=OUT)
    assert all(c["attention_unit"] == "sparse_dense" and c["attention"] > 0 for c in cyc)


@needs_verilator
def test_device_run_equals_golden_bit_for_bit(program, dev):
    """Sentences of 12 tokens (the masks' N) and shorter (the masks' top-left crop)."""
    ids = sentences(3, 7, lo=5, hi=N) + [torch.randint(1, 64, (N,))]
    res = run_program(program, dev, ids)
    hidden, layers, _ = program.forward(ids)
    for got, want in zip(res.hidden, hidden):
        assert torch.equal(got, want)
    for got, want in zip(res.layers, layers):
        assert torch.equal(got, want)
    model = program_cycles(program, [len(i) for i in ids], act_depth=ACT, out_depth=OUT)
    for t, c in zip(res.trace, model):
        assert t.attention_unit == "sparse_dense" and t.attention_jobs == len(ids)
        assert t.attention_cycles == c["attention"] and t.linear_cycles == c["linear"]
        assert t.ops["attention"] == t.attention_cycles
        assert t.bytes_to_device > t.bytes_from_device > 0
    g = program.graph
    for emb, i in zip(res.embeddings, ids):
        assert torch.nn.functional.cosine_similarity(emb, reference(g, i)[0], dim=0) > 0.9


def test_error_cases_are_one_line(model, mask_file, tmp_path):
    path, keep = mask_file
    cal = sentences(2, 1)

    def refused(pattern, config=CFG, **kw):
        with pytest.raises(ProgramError, match=pattern) as e:
            compile_program(model, config, cal, **kw)
        assert "\n" not in str(e.value)

    att = AttentionConfig(mode="softmax", heads=2, head_dim=16, max_tokens=12, enabled=True)
    refused(re.escape("masks were given but the configuration has no sparse_dense unit "
                      "([sparse_dense] enabled = true); masks run only on it"),
            AcceleratorConfig(linear=LIN, attention=att), masks=path)
    refused(re.escape("the configuration has no softmax attention unit ([attention] enabled = "
                      "true, mode = \"softmax\"); the program needs one (or give masks to run "
                      "attention on the sparse_dense unit)"))
    refused(re.escape("masks have 1 layers of 2 heads; the model has 2 layers of 2 heads"),
            masks=keep[:1])
    refused(re.escape("masks have 2 layers of 1 heads; the model has 2 layers of 2 heads"),
            masks=keep[:, :1])
    refused(re.escape("max_tokens 12 exceeds the masks' 8 tokens"),
            masks=keep[:, :, :8, :8], max_tokens=12)
    hole = keep.clone()
    hole[1, 0, 4, :5] = False
    refused(re.escape("masks' row 4 of head 0 of layer 1 keeps no key at or before its own "
                      "position, so a sentence of 5 tokens would leave it empty"), masks=hole)
    refused(re.escape("masks must be a mask file or an L×H×N×N bool tensor, not torch.uint8"),
            masks=keep.to(torch.uint8))
    refused(r"^mask file must be an amaformer-masks archive, not", masks=tmp_path / "none.npz")
    small = dataclasses.replace(SD, head_dim=8)
    refused(re.escape("layer 0 has 2 heads of 16; the sparse_dense unit takes at most 2 heads "
                      "of 8"), AcceleratorConfig(linear=LIN, sparse_dense=small), masks=path)
    tight = dataclasses.replace(SD, sparse_depth=8)
    refused(r"^layer 0's masks at 12 tokens do not fit the sparse_dense unit: sparse lane \d's "
            r"list must fit in the unit's 8 entries", AcceleratorConfig(linear=LIN,
                                                                         sparse_dense=tight),
            masks=path)
    # a sentence longer than the masks: refused by the golden path and the runtime alike
    short = compile_program(model, CFG, cal, masks=keep[:, :, :8, :8])
    assert short.max_tokens == 8
    msg = re.escape("sentence 1 has 10 tokens; the masks are for at most 8")
    with pytest.raises(ProgramError, match=msg):
        short.forward([torch.arange(1, 6), torch.arange(1, 11)])
    with pytest.raises(ProgramError, match=msg):
        run_program(short, object(), [torch.arange(1, 6), torch.arange(1, 11)])


def test_synthetic_masks_tensor_and_cycles_model(model):
    """Masks given as a tensor (synthetic, 50 and 90 % per head); program_cycles follows the
    sparsity: the sparser masks take fewer attention cycles."""
    def masks(sp):
        return torch.stack([torch.stack([synthetic_mask(N, sp, seed=10 * li + h)
                                         for h in range(2)]) for li in range(2)])
    cyc = {}
    for sp in (0.5, 0.9):
        p = compile_program(model, CFG, sentences(2, 1), masks=masks(sp))
        cyc[sp] = sum(c["attention"] for c in program_cycles(p, [N], act_depth=ACT,
                                                             out_depth=OUT))
    assert cyc[0.9] < cyc[0.5]


def test_cli_masks_and_run_refusals(tmp_path, capsys):
    """``amaformer masks`` writes MiniLM calibration masks at the asked sparsity; ``amaformer
    run --model minilm --masks`` refuses a missing file and a configuration without a
    sparse-dense unit in one line, before a device is opened."""
    from amaformer.gen.cli import main
    from amaformer.gen.config import save_config
    from amaformer.gen.masks import load_masks
    out = tmp_path / "m.npz"
    assert main(["masks", "--tokens", "16", "--windows", "2", "--sparsity", "0.5",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 6 layers × 12 heads × 16×16")
    keep, meta = load_masks(out)
    assert keep.shape == (6, 12, 16, 16) and abs(density(keep) - 0.5) < 0.02
    assert bool(keep.diagonal(dim1=-2, dim2=-1).all()) and meta["windows"] == 2
    assert main(["run", "--model", "minilm", "--masks", str(tmp_path / "no.npz"), "hi"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"amaformer: error: --masks {tmp_path / 'no.npz'}: no such file (amaformer masks "
        f"--out {tmp_path / 'no.npz'} makes one)")
    cfg = tmp_path / "c.toml"
    save_config(AcceleratorConfig(attention=AttentionConfig(mode="softmax", enabled=True)), cfg)
    assert main(["run", "--model", "minilm", "--config", str(cfg), "--masks", str(out),
                 "hi"]) == 2
    assert capsys.readouterr().err.strip() == (
        "amaformer: error: cannot compile the model for this configuration: masks were given "
        "but the configuration has no sparse_dense unit ([sparse_dense] enabled = true); "
        "masks run only on it")
