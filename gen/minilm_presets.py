"""The whole-model presets of all-MiniLM-L6-v2: the configuration it runs on by default
(:func:`minilm_config`) and its fixed attention masks from calibration (:func:`minilm_masks`,
``amaformer masks``).

With masks (``amaformer run --model minilm --masks FILE``), every attention runs on the
sparse-dense unit under its layer's masks (:func:`amaformer.gen.program.compile_program`'s
``masks``); the default configuration then is :func:`minilm_config` ``(masks=FILE)``: the linear
unit and a sparse-dense unit sized from the masks
(:func:`amaformer.gen.sparse_dense.config_from_masks`). Running it is
:func:`amaformer.host.model_run.run_minilm`.
"""

import torch

__all__ = ["MINILM_PRESET", "minilm_config", "minilm_masks"]

#: Configuration the whole model runs on by default (linear unit + softmax attention unit, the
#: pair that fits the ULX3S-85F; README "Attention on the device").
MINILM_PRESET = "ulx3s-85f"


def minilm_config(masks=None, lanes=4):
    """The default whole-model configuration: the default linear unit (8 lanes, ``mul``) and a
    softmax attention unit (12 heads of 32, 4 lanes) on the ULX3S-85F. With ``masks`` (a mask
    file or an ``L×H×N×N`` tensor), a sparse-dense unit of ``lanes`` lanes instead, its lane
    split and list memories chosen from the masks
    (:func:`~amaformer.gen.sparse_dense.config_from_masks`, 12 heads of 32)."""
    from .config import AcceleratorConfig, AttentionConfig
    if masks is not None:
        from .sparse_dense import config_from_masks
        return AcceleratorConfig(board=MINILM_PRESET,
                                 sparse_dense=config_from_masks(masks, lanes, head_dim=32))
    return AcceleratorConfig(board=MINILM_PRESET,
                             attention=AttentionConfig(mode="softmax", enabled=True))


def _masks_at_density(avg, target):
    """Masks of one layer (``H×N×N`` averaged maps) whose mean density is ``target``: one
    mass cut for the whole layer, found by bisection (its heads keep their own densities);
    as ``scripts/bench_sparse.py``. Returns ``(keep, cut)``."""
    from .masks import density, enforce_required, mass_before, mass_cut_mask
    before = mass_before(avg)
    lo, hi = 1e-4, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if density(enforce_required(mass_cut_mask(avg, mid, before))) > target:
            hi = mid
        else:
            lo = mid
    return enforce_required(mass_cut_mask(avg, lo, before)), lo


def minilm_masks(tokens=32, *, sparsity=None, cut=None, windows=None):
    """Calibration masks of all-MiniLM-L6-v2 for ``tokens`` tokens: its softmax attention maps
    on consecutive windows of the repository's paragraphs
    (:func:`amaformer.gen.masks.minilm_attention_maps`, up to ``windows`` of them), averaged,
    cut per row by probability mass (:func:`~amaformer.gen.masks.calibration_masks`, ``cut``),
    or, with ``sparsity``, with one cut per layer chosen so that the layer's mean density is
    ``1 - sparsity``; the diagonal and the first token's row and column are always kept.
    Returns ``(keep, meta)``: ``L×H×N×N`` bool and the metadata to save with it."""
    from .masks import MaskError, calibration_masks, density, minilm_attention_maps
    if (sparsity is None) == (cut is None):
        raise MaskError("give exactly one of sparsity and cut")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise MaskError(f"sparsity must be in [0, 1), not {sparsity!r}")
    maps, _ = minilm_attention_maps(n=tokens, windows=windows)
    if cut is not None:
        keep = calibration_masks(maps, cut=cut)
        cuts = [cut] * keep.shape[0]
    else:
        avg = maps.mean(0)
        got = [_masks_at_density(avg[li], 1.0 - sparsity) for li in range(avg.shape[0])]
        keep = torch.stack([k for k, _ in got])
        cuts = [round(c, 6) for _, c in got]
    meta = {"source": "all-MiniLM-L6-v2 calibration maps (gen/model_texts/paragraphs.txt)",
            "tokens": tokens, "windows": int(maps.shape[0]), "sparsity_target": sparsity,
            "cut": cuts, "sparsity": round(1.0 - density(keep), 6)}
    return keep, meta


