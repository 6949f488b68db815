"""Masks for the sparse-dense coordinator: generators (calibration mass cut, structured,
synthetic, real all-MiniLM-L6-v2 paragraphs), polarization, the file format and its errors."""

import re

import numpy as np
import pytest
import torch

from amaformer.gen.masks import (
    MaskError, calibration_masks, check_mask, density, enforce_required, load_masks,
    mass_cut_mask, minilm_attention_maps, paragraph_text, polarize, polarize_for_split,
    save_masks, structured_mask, synthetic_mask)


def test_mass_cut_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    assert mass_cut_mask(p, 0.8).tolist() == [[True, True, False, False],
                                               [True, True, True, True]]
    assert mass_cut_mask(p, 0.5).tolist() == [[True, False, False, False],
                                               [True, True, False, False]]
    with pytest.raises(MaskError, match=re.escape("cut must be in (0, 1], not 0.0")):
        mass_cut_mask(p, 0.0)


def test_calibration_keeps_required():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(torch.randn(3, 2, 2, 16, 16, generator=g) * 3, -1)
    keep = calibration_masks(maps, cut=0.5)
    assert keep.shape == (2, 2, 16, 16)
    assert keep.diagonal(dim1=-2, dim2=-1).all()
    assert keep[..., 0, :].all() and keep[..., :, 0].all()
    # the cut reaches its mass on the averaged maps
    avg = maps.mean(0)
    assert ((avg * keep).sum(-1) >= 0.5 - 1e-9).all()


def test_structured_kinds():
    w = structured_mask(10, "window", window=1)
    assert w.sum(1).tolist() == [2] + [3] * 8 + [2]
    gl = structured_mask(10, "global", window=1, globals=2)
    assert gl[:2].all() and gl[:, :2].all()
    bb = structured_mask(10, "bigbird", window=1, globals=1, random=2, seed=3)
    assert (bb >= gl[:, :]).sum() > 0 and bb.sum() >= structured_mask(10, "global", window=1,
                                                                      globals=1).sum()
    with pytest.raises(MaskError, match=re.escape(
            "kind must be 'window', 'global' or 'bigbird', not 'star'")):
        structured_mask(10, "star")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_synthetic_exact_density(sparsity):
    n = 64
    keep = synthetic_mask(n, sparsity, seed=1)
    required = int(enforce_required(torch.zeros(n, n, dtype=torch.bool)).sum())
    assert int(keep.sum()) == max(required, round((1 - sparsity) * n * n))
    assert keep.diagonal().all() and keep[0].all() and keep[:, 0].all()
    assert torch.equal(keep, synthetic_mask(n, sparsity, seed=1))     # seeded


def test_polarize_roundtrip_and_order():
    keep = synthetic_mask(48, 0.8, seed=2, heavy_cols=0.05, col_share=0.6)
    pol = polarize(keep, threshold=0.5)
    counts = keep.sum(0)
    assert pol.globals == [j for j in range(48) if counts[j] > 24]
    assert 0 in pol.globals                      # the first column is kept by every row
    assert torch.equal(pol.keep(), keep)
    assert pol.coo == sorted(pol.coo)            # row-major, keys ascending
    assert all(j not in pol.globals for _, j in pol.coo)
    assert pol.perm[:pol.g] == pol.globals and sorted(pol.perm) == list(range(48))
    assert torch.equal(pol.permuted()[:, :pol.g], keep[:, pol.globals])


def test_polarize_for_split_balances_work():
    keep = synthetic_mask(64, 0.75, seed=4, heavy_cols=0.05, col_share=0.7)
    pol = polarize_for_split(keep, 1, 3)
    assert torch.equal(pol.keep(), keep)
    dense, sparse = 64 * pol.g, len(pol.coo) / 3
    assert 0.5 < dense / sparse < 2.0
    # scattered entries: no global column is worth it for one dense lane of 7
    scattered = synthetic_mask(64, 0.95, seed=5, col_share=0.0, first=False)
    assert polarize_for_split(scattered, 1, 7).g == 0


def test_file_roundtrip(tmp_path):
    keep = torch.stack([torch.stack([synthetic_mask(20, s, seed=h) for h in range(3)])
                        for s in (0.5, 0.9)])
    path = tmp_path / "m.npz"
    save_masks(path, keep, source="synthetic", note="test")
    back, meta = load_masks(path)
    assert torch.equal(back, keep)
    assert meta["source"] == "synthetic" and len(meta["density"]) == 2
    assert abs(meta["density"][1][0] - density(keep[1, 0])) < 1e-12


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, format=np.array("other"), version=np.array(1), shape=np.array([1]),
             keep=np.zeros(1, np.uint8), meta=np.array("{}"))
    with pytest.raises(MaskError, match=re.escape(
            "mask file must be amaformer-masks version 1, not other 1")):
        load_masks(bad)
    with pytest.raises(MaskError, match=r"^mask file must be an amaformer-masks archive, not "):
        load_masks(tmp_path / "missing.npz")


def test_check_mask_errors():
    with pytest.raises(MaskError, match=re.escape(
            "mask must be square in its last two dimensions, not (4, 5)")):
        check_mask(torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(MaskError, match=re.escape("mask must be 8×8 per head, not 4×4")):
        check_mask(torch.ones(4, 4, dtype=torch.bool), 8)
    keep = torch.eye(4, dtype=torch.bool)
    keep[2, 2] = False
    with pytest.raises(MaskError, match=re.escape(
            "every row must keep at least one key, not row 2")):
        check_mask(keep)
    check_mask(keep, allow_empty_rows=True)


def test_minilm_paragraph_masks():
    """Real masks: all-MiniLM-L6-v2 on 128-token windows of the repository's paragraphs."""
    assert len(paragraph_text().split()) > 500
    maps, qkv = minilm_attention_maps(n=128, windows=2)
    assert maps.shape == (2, 6, 12, 128, 128) and len(qkv[0]["ids"]) == 128
    assert torch.allclose(maps.sum(-1), torch.ones(()).double(), atol=1e-6)
    keep = calibration_masks(maps, cut=0.9)
    dens = [density(keep[li, h]) for li in range(6) for h in range(12)]
    assert 0.01 < min(dens) and max(dens) < 0.9
    assert max(dens) / min(dens) > 2            # heads differ: what the lane split must absorb
    # real maps have strong columns ([CLS], [SEP], punctuation): polarization finds them
    pols = [polarize(keep[li, h], 0.3) for li in range(6) for h in range(12)]
    assert sum(p.g > 1 for p in pols) >= 12
