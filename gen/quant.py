"""Multiplication-free weight quantizers (PyTorch): power-of-two ``shift`` and binary-coded ``bcq``.

Weights are ``K×N`` (``Y = X·W``, the transpose of ``torch.nn.Linear.weight``). Each quantizer
returns *integer* effective weights plus a float scale per output column, so that
``W ≈ W_int · scale[n]``; the scale is folded into the requantization multiplier on the host,
and the hardware computes ``X·W_int`` exactly (see :mod:`amaformer.gen.golden`).

``shift``
    ``W_int[k, n] = sign · 2^s``, sign in {-1, 0, +1}, ``s`` in ``[0, levels-1]`` (the
    ``w = sign·2^-e`` of ShiftAddViT with ``e = levels-1-s`` and the ``2^-(levels-1)`` folded
    into the column scale). Nearest level in the linear domain; the column scale is searched on a
    small grid for the least squared error.
``bcq``
    ``W[:, n] ≈ Σ_i α_i · B_i``, ``B_i`` in {-1, +1}, q bit planes, one α per output column, plane
    and group of ``group`` inputs (ShiftAddLLM). Greedy start, then alternating refinement
    (least-squares α for fixed B, B re-assigned for fixed α). Finally α is divided by a column
    scale and rounded to a sum of at most ``ALPHA_TERMS`` signed powers of two ``±2^e``,
    ``e`` in ``[0, ALPHA_EXP_MAX]``, and B is re-assigned once more for the rounded α.
Error compensation
    With ``hessian=hessian(x)`` from calibration inputs ``x``, both quantizers minimize the
    layer's output error ``‖X·Ŵ − X·W‖`` instead of the weight error: they quantize inputs (shift)
    or α groups (bcq) in order and move each rounding error onto the inputs not yet quantized
    (GPTQ; ShiftAddLLM does the same for BCQ). Use calibration text that is not the evaluation
    text.
"""

import itertools
import math
from dataclasses import dataclass

import torch

from ..hdl.shiftadd import ALPHA_EXP_MAX, ALPHA_TERMS

__all__ = ["ShiftWeights", "BcqWeights", "quantize_shift", "quantize_bcq", "round_pow2_sum",
           "hessian", "relative_error", "layer_sensitivity", "allocate_bits"]


@dataclass
class ShiftWeights:
    """``W ≈ w_int · scale``: ``w_int`` ``K×N`` int64 in ``{0, ±1, ±2, …, ±2^(levels-1)}``,
    ``scale`` ``N`` float64."""
    w_int: torch.Tensor
    scale: torch.Tensor
    levels: int

    def dequantize(self):
        return self.w_int.to(torch.float64) * self.scale


@dataclass
class BcqWeights:
    """Binary-coded weights.

    Members
    -------
    planes : torch.Tensor
        ``q×K×N`` int64 in {-1, +1}.
    alpha : torch.Tensor
        ``q×G×N`` int64, each a sum of at most ``ALPHA_TERMS`` signed powers of two
        ``2^0 .. 2^ALPHA_EXP_MAX`` (``G = ceil(K / group)``).
    scale : torch.Tensor
        ``N`` float64 column scale.
    group : int
        Inputs per α group.
    """
    planes: torch.Tensor
    alpha: torch.Tensor
    scale: torch.Tensor
    group: int

    @property
    def bits(self):
        return self.planes.shape[0]

    def w_int(self):
        """Effective integer weights ``K×N``: ``Σ_i alpha[i, k // group, n] · planes[i, k, n]``."""
        q, k, n = self.planes.shape
        a = self.alpha.repeat_interleave(self.group, dim=1)[:, :k, :]
        return (a * self.planes).sum(0)

    def dequantize(self):
        return self.w_int().to(torch.float64) * self.scale

    def matrix(self):
        """The :class:`~amaformer.hdl.linear_layout.BcqMatrix` the host driver loads."""
        from ..hdl.linear_layout import BcqMatrix
        return BcqMatrix(self.planes, self.alpha, self.group)


def _check_weights(w):
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise TypeError(f"w must be a K×N torch.Tensor, not {w!r:.60}")
    return w.detach().to(torch.float64)


def quantize_shift(w, levels=7, hessian=None):
    """Power-of-two quantization, one scale per output column (see the module docstring).

    Parameters
    ----------
    w : torch.Tensor
        ``K×N`` float weights.
    levels : int
        Number of magnitudes ``2^0 .. 2^(levels-1)``, 1 to 7.
    hessian : torch.Tensor or None
        ``K×K`` from :func:`hessian` (calibration inputs): quantize input by input and move
        each rounding error onto the inputs not yet quantized (GPTQ), which minimizes the
        layer's *output* error. ``None``: round every weight to its nearest level.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 7:
        raise ValueError(f"levels must be an integer in [1, 7], not {levels!r}")
    w = _check_weights(w)
    top = 1 << (levels - 1)
    amax = w.abs().amax(0).clamp(min=1e-12)
    best_err, best_q, best_s = None, None, None
    for f in torch.linspace(0.5, 1.0, 11, dtype=torch.float64):
        scale = amax * f / top
        q = _round_pow2(w / scale, levels - 1)
        err = ((q * scale - w) ** 2).sum(0)
        if best_err is None:
            best_err, best_q, best_s = err, q, scale.clone()
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_q = torch.where(better, q, best_q)
            best_s = torch.where(better, scale, best_s)
    if hessian is not None:
        k = w.shape[0]
        best_q = _shift_compensated(w, _hessian_factor(hessian, k, k), best_s, levels)
    return ShiftWeights(best_q.to(torch.int64), best_s, levels)


def _shift_compensated(w, u, scale, levels, block=64):
    """GPTQ with power-of-two levels: rows (inputs) in order, each rounded and its error moved
    onto the later rows; blocks of ``block`` rows update the rest at once (same result)."""
    w = w.clone()
    k = w.shape[0]
    q = torch.empty_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        start = w[b0:b1].clone()
        for i in range(b0, b1):
            q[i] = _round_pow2(w[i] / scale, levels - 1)
            d = q[i] * scale - w[i]
            w[i + 1:b1] += torch.outer(u[i, i + 1:b1] / u[i, i], d)
        w[b0:b1] = start
        _compensate(w, u, b0, b1, q[b0:b1] * scale)
    return q


def _round_pow2(r, emax):
    """Nearest of ``{0, ±2^0, …, ±2^emax}`` (linear distance; ties to the larger magnitude)."""
    a = r.abs()
    e = torch.floor(torch.log2(a.clamp(min=1e-300))).clamp(0, emax)
    lo = 2.0 ** e
    mag = torch.where((a >= 1.5 * lo) & (e < emax), 2 * lo, lo)
    mag = torch.where(a < 0.5, torch.zeros_like(a), mag)
    return torch.sign(r) * mag


def round_pow2_sum(a, terms=ALPHA_TERMS, emax=ALPHA_EXP_MAX):
    """Round to a sum of at most ``terms`` signed powers of two ``±2^e``, ``e`` in ``[0, emax]``,
    greedily (nearest power of two of the residual, ``terms`` times). Returns float64 integers."""
    r = torch.as_tensor(a, dtype=torch.float64)
    out = torch.zeros_like(r)
    for _ in range(terms):
        t = _round_pow2(r - out, emax)
        out = out + t
    return out


def _combos(q):
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=q)), dtype=torch.float64)


def _assign(v, alpha, combos):
    """Best ±1 codes for ``v`` (``P×g``) given ``alpha`` (``P×q``): returns ``P×g×q``."""
    values = alpha @ combos.T                                   # P×2^q
    idx = (v.unsqueeze(-1) - values.unsqueeze(1)).abs().argmin(-1)  # P×g
    return combos[idx]


def quantize_bcq(w, bits, group=None, iters=15, hessian=None):
    """Binary-coding quantization (see the module docstring).

    Parameters
    ----------
    w : torch.Tensor
        ``K×N`` float weights.
    bits : int
        Bit planes q, 1 to 4.
    group : int or None
        Inputs per α group, a multiple of 8; ``None`` for the whole row (``K``).
    iters : int
        Rounds of alternating refinement.
    hessian : torch.Tensor or None
        ``K×K`` from :func:`hessian` (calibration inputs): quantize group by group and move
        each group's error onto the inputs not yet quantized (GPTQ-style compensation, as
        ShiftAddLLM), which minimizes the layer's *output* error; the column scale comes from
        a plain fit first. ``None``: minimize ``‖Ŵ − W‖`` per group.

    Returns
    -------
    BcqWeights
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 4:
        raise ValueError(f"bits must be an integer in [1, 4], not {bits!r}")
    w = _check_weights(w)
    k, n = w.shape
    if group is None:
        group = -(-k // 8) * 8
    if isinstance(group, bool) or not isinstance(group, int) or group < 8 or group % 8:
        raise ValueError(f"group must be a positive multiple of 8 or None, not {group!r}")
    ng = -(-k // group)
    pad = torch.zeros(ng * group, n, dtype=torch.float64)
    pad[:k] = w
    mask = torch.zeros(ng * group, 1, dtype=torch.float64)
    mask[:k] = 1
    # P = N·G problems of length `group`
    v = pad.reshape(ng, group, n).permute(2, 0, 1).reshape(n * ng, group)
    msk = mask.reshape(ng, group).expand(n, ng, group).reshape(n * ng, group)
    combos = _combos(bits)
    B, alpha = _fit_bcq(v, msk, bits, iters, combos)

    # α to integers: one scale per column, then sums of signed powers of two.
    alpha_n = alpha.reshape(n, ng, bits)
    scale = alpha_n.abs().amax((1, 2)).clamp(min=1e-12) / (1 << ALPHA_EXP_MAX)
    if hessian is None:
        a_int = round_pow2_sum(alpha_n / scale[:, None, None])
        B = _assign(v, (a_int * scale[:, None, None]).reshape(n * ng, bits), combos)
        planes = B.reshape(n, ng * group, bits).permute(2, 1, 0)[:, :k, :]
    else:
        planes, a_int = _bcq_compensated(pad, mask, _hessian_factor(hessian, k, ng * group),
                                         scale, bits, group, iters, combos)
        planes = planes[:, :k, :]
    return BcqWeights(planes.to(torch.int64).contiguous(),
                      a_int.permute(2, 1, 0).to(torch.int64).contiguous(), scale, group)


def _fit_bcq(v, msk, bits, iters, combos):
    """Float BCQ of ``P`` problems ``v`` (``P×g``, ``msk`` 1 where an input exists): greedy
    start, then ``iters`` rounds of least-squares α and re-assigned codes. Returns the codes
    ``P×g×q`` and α ``P×q``."""
    cnt = msk.sum(1).clamp(min=1)
    r = v.clone()
    planes, alphas = [], []
    for _ in range(bits):                       # greedy start
        b = torch.where(r >= 0, 1.0, -1.0).to(torch.float64)
        a = (r.abs() * msk).sum(1) / cnt
        r = r - a.unsqueeze(1) * b
        planes.append(b)
        alphas.append(a)
    B = torch.stack(planes, -1)                 # P×g×q
    alpha = torch.stack(alphas, -1)             # P×q
    eye = torch.eye(bits, dtype=torch.float64) * 1e-9
    for _ in range(iters):                      # alternating refinement
        Bm = B * msk.unsqueeze(-1)
        gram = Bm.transpose(1, 2) @ B + eye
        rhs = (Bm.transpose(1, 2) @ v.unsqueeze(-1)).squeeze(-1)
        alpha = torch.linalg.solve(gram, rhs)
        B = _assign(v, alpha, combos)
    return B, alpha


def _bcq_compensated(pad, mask, u, scale, bits, group, iters, combos):
    """Group-by-group BCQ with error compensation (GPTQ / ShiftAddLLM): each group of inputs is
    fitted and rounded (α to signed powers of two of the column ``scale``), and its error is
    spread over the inputs not yet quantized by the optimal update ``W_R += (U_BB⁻¹ U_BR)ᵀ ·
    (Q_B − W_B)`` with ``U`` the upper Cholesky factor of ``H⁻¹``. Returns planes ``q×K'×N``
    and integer α ``N×G×q``."""
    w = pad.clone()
    kp, n = w.shape
    planes = torch.empty(bits, kp, n, dtype=torch.float64)
    a_ints = []
    for b0 in range(0, kp, group):
        blk = slice(b0, b0 + group)
        v = w[blk].T.contiguous()                                    # N×g
        msk = mask[blk, 0].expand(n, group)
        _, alpha = _fit_bcq(v, msk, bits, iters, combos)
        a_int = round_pow2_sum(alpha / scale[:, None])                # N×q
        B = _assign(v, a_int * scale[:, None], combos)                # N×g×q
        q_blk = (B * (a_int * scale[:, None]).unsqueeze(1)).sum(-1).T * mask[blk]
        _compensate(w, u, b0, min(b0 + group, kp), q_blk)
        planes[:, blk, :] = B.permute(2, 1, 0)
        a_ints.append(a_int)
    return planes, torch.stack(a_ints, 1)


def hessian(x, damp=0.1):
    """Proxy Hessian ``XᵀX / R`` of a layer's output error from calibration inputs ``x``
    (``R×K``, one row per token), with ``damp · mean(diag)`` added to the diagonal so it is
    positive definite and does not overfit when there are fewer calibration tokens than inputs
    (0.1 rather than GPTQ's 0.01: MiniLM's 1536-input layers see ~550 calibration tokens). Pass it as ``hessian=`` to the quantizers to make them minimize
    ``‖X·Ŵ − X·W‖`` instead of ``‖Ŵ − W‖``."""
    x = torch.as_tensor(x).to(torch.float64)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be an R×K matrix of calibration inputs, not shape "
                         f"{tuple(x.shape)}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(f"damp must be a positive number, not {damp!r}")
    h = x.T @ x / x.shape[0]
    return h + torch.eye(h.shape[0], dtype=torch.float64) * damp * h.diagonal().mean().clamp(
        min=1e-12)


def _hessian_factor(h, k, kp):
    """Upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``), ``H`` padded to ``kp`` inputs with
    an identity block (padding inputs get no compensation)."""
    h = torch.as_tensor(h).to(torch.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian must be K×K = {k}×{k}, not {tuple(h.shape)}")
    hp = torch.eye(kp, dtype=torch.float64)
    hp[:k, :k] = h
    try:
        chol = torch.linalg.cholesky(hp)
    except torch.linalg.LinAlgError:
        raise ValueError("hessian must be symmetric positive definite (use hessian(x) with "
                         "damp > 0)") from None
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


def _compensate(w, u, b0, b1, q_blk):
    """Fix rows ``b0:b1`` of ``w`` to ``q_blk`` and move their error onto the later rows."""
    d = q_blk - w[b0:b1]
    if b1 < w.shape[0]:
        coef = torch.linalg.solve_triangular(u[b0:b1, b0:b1], u[b0:b1, b1:], upper=True)
        w[b1:] += coef.T @ d
    w[b0:b1] = q_blk


def relative_error(approx, exact):
    """``‖approx − exact‖ / ‖exact‖`` (Frobenius)."""
    exact = exact.to(torch.float64)
    return float((approx.to(torch.float64) - exact).norm() / exact.norm().clamp(min=1e-300))


def layer_sensitivity(w, x, bits=(1, 2, 3, 4), group=None, iters=15):
    """Measured sensitivity of one layer: relative output error ``‖X·Ŵ − X·W‖ / ‖X·W‖`` of the
    BCQ-quantized weights for each q in ``bits``, on calibration inputs ``x`` (``R×K``).

    Returns ``{q: error}``.
    """
    w = _check_weights(w)
    ref = x.to(torch.float64) @ w
    return {q: relative_error(x.to(torch.float64) @ quantize_bcq(w, q, group, iters).dequantize(),
                              ref)
            for q in bits}


def allocate_bits(sensitivity, budget, sizes=None):
    """Per-layer bit allocation under an error budget.

    Starts every layer at its smallest q and, while the size-weighted mean error exceeds
    ``budget``, gives one more plane to the layer whose error falls most per extra weight bit.

    Parameters
    ----------
    sensitivity : dict
        ``{layer: {q: error}}`` as measured by :func:`layer_sensitivity`.
    budget : float
        Largest allowed size-weighted mean of the per-layer errors.
    sizes : dict or None
        ``{layer: number of weights}``; equal sizes when ``None``.

    Returns
    -------
    dict
        ``{layer: q}``; every layer at its largest q if the budget cannot be met.
    """
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
        raise ValueError(f"budget must be a positive number, not {budget!r}")
    if not sensitivity:
        raise ValueError("sensitivity must hold at least one layer, not {}")
    sizes = sizes or {name: 1 for name in sensitivity}
    total = sum(sizes[name] for name in sensitivity)
    choice = {name: min(errs) for name, errs in sensitivity.items()}

    def mean_err():
        return sum(sensitivity[nm][q] * sizes[nm] for nm, q in choice.items()) / total

    while mean_err() > budget:
        best, best_gain = None, -math.inf
        for name, q in choice.items():
            higher = [b for b in sensitivity[name] if b > q]
            if not higher:
                continue
            nq = min(higher)
            gain = ((sensitivity[name][q] - sensitivity[name][nq]) * sizes[name]
                    / ((nq - q) * sizes[name]))
            if gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            break
        choice[best] = min(b for b in sensitivity[best] if b > choice[best])
    return choice
