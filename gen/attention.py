"""Attention: bit-exact integer golden models, float references, tables and cycle models.

Three modes (see :class:`amaformer.gen.config.AttentionConfig`):

``softmax``
    Online (running-max) softmax attention in fixed point, the arithmetic of
    :class:`amaformer.hdl.attention.SoftmaxAttention`. For each query row and each *kept* key
    ``j`` in ascending order (masked keys are skipped, never computed)::

        s   = Σ_i q[i]·k_j[i]                                   exact integer score
        x   = (s·score_mult + R) >> score_shift                 log2-domain logit, F frac bits
        m'  = max(m, x >> F)       (first kept key: m' = x >> F) running max, an integer
        sh  = m' - m               (first kept key: 0)
        p   = exp2(x - (m' << F))                               PB frac bits, in (0, 2)
        l   = rs(l, sh) + p                                     running sum
        a   = rs(a, sh) + p·v_j                                 running weighted sum of V

    where ``rs(a, sh) = (a + 2^(sh-1)) >> sh`` (round half up; ``sh = 0`` leaves ``a``). Because
    the running maximum is kept as an *integer* in base 2, rescaling old sums is a shift.
    ``exp2(t)`` splits ``t = ti·2^F + tf`` and returns ``rs(T[tf], -ti)`` with the table
    ``T[tf] = round(2^(PB + tf/2^F))`` of ``2^F`` entries. At the end of the row::

        (r, e) = recip(l)              1/l ≈ r·2^-(RB + e), table + one Newton step
        t      = rs(a·r, e + RB - G)   the output in V units with G guard bits
        y      = clamp(rs(t·out_mult, out_shift))              int8

``linear_causal``
    Causal linear attention with running state ``S = Σ φ(k)ᵀv``, ``z = Σ φ(k)``,
    ``φ(x) = relu(x) + 1`` (in LSB units), plus an optional causal depthwise convolution of V.

``linear_angular``
    Castling-ViT: ``0.5·V + (1/π)·q̂(k̂ᵀV)`` with integer-normalized q̂, k̂ (unit vectors of norm
    127 through a table of ``1/sqrt``) plus a depthwise convolution of V along tokens (centred
    kernel).

All integers are int64 torch tensors; every function is deterministic.
"""

import math

import torch

from ..hdl.attention_spec import SoftmaxFormat
from .numerics import requant_params

__all__ = [
    "SoftmaxFormat", "exp2_table", "exp2_fixed", "recip_table", "recip_fixed", "rshift_round",
    "softmax_scales", "attention_softmax", "softmax_reference", "causal_mask", "random_mask",
    "softmax_schedule", "softmax_streams", "softmax_normalize", "attention_linear_causal",
    "linear_causal_reference", "recip_mantissa", "rsqrt_table", "unit_int",
    "attention_linear_angular", "linear_angular_reference", "softmax_cycles", "softmax_macs",
    "softmax_utilization", "linear_causal_cycles_per_token", "linear_angular_cycles",
    "linear_angular_macs", "attention_engine_from_config",
    "cosine", "minilm_attention_inputs",
]

LOG2E = 1.0 / math.log(2.0)


def _i64(t):
    return torch.as_tensor(t).to(torch.int64)


def rshift_round(a, sh):
    """``(a + 2^(sh-1)) >> sh``, round half up; ``sh = 0`` returns ``a``; ``sh`` is clamped to 62
    (any shift at least as wide as ``a`` gives 0 or -0 alike)."""
    a, sh = _i64(a), torch.clamp(_i64(sh), 0, 62)
    half = torch.where(sh > 0, torch.ones_like(sh) << torch.clamp(sh - 1, min=0), 0)
    return (a + half) >> sh


def exp2_table(frac_bits, p_bits):
    """``T[tf] = round(2^(p_bits + tf/2^frac_bits))``, ``2^frac_bits`` entries in
    ``[2^p_bits, 2^(p_bits+1))``."""
    n = 1 << frac_bits
    return [min((1 << (p_bits + 1)) - 1, int(math.floor(2.0 ** (p_bits + tf / n) + 0.5)))
            for tf in range(n)]


def exp2_fixed(t, frac_bits, p_bits):
    """``2^(t / 2^F)`` for integer ``t < 2^F``, with ``p_bits`` fractional bits (see module)."""
    t = _i64(t)
    table = torch.tensor(exp2_table(frac_bits, p_bits), dtype=torch.int64)
    tf = t & ((1 << frac_bits) - 1)
    neg = -(t >> frac_bits)                   # >= 0 for t < 2^F
    if bool(torch.any(neg < 0)):
        raise ValueError("exp2_fixed input must be below 2^frac_bits")
    sh = torch.clamp(neg, max=p_bits + 2)     # beyond this every entry rounds to 0
    return rshift_round(table[tf], sh)


def recip_table(table_bits, recip_bits):
    """Seed table of the reciprocal: entry ``i`` is ``round(2^RB / (1 + (i + 0.5)/2^bits))``."""
    n = 1 << table_bits
    return [int(math.floor((1 << recip_bits) / (1 + (i + 0.5) / n) + 0.5)) for i in range(n)]


def recip_mantissa(lm, fmt):
    """Reciprocal of a normalized mantissa ``lm`` in ``[2^(MB-1), 2^MB)`` (value ``lm/2^(MB-1)``
    in [1, 2)): table seed then one Newton step, ``x1 ≈ 2^RB · 2^(MB-1) / lm`` in
    ``(2^(RB-1), 2^RB]``."""
    mb, rb, tb = fmt.recip_mant_bits, fmt.recip_bits, fmt.recip_table_bits
    lm = _i64(lm)
    table = torch.tensor(recip_table(tb, rb), dtype=torch.int64)
    x0 = table[(lm >> (mb - 1 - tb)) & ((1 << tb) - 1)]
    e1 = (1 << (mb + rb)) - lm * x0                           # (2 - lm·x0), scaled 2^(MB-1+RB)
    x1 = (x0 * e1 + (1 << (mb + rb - 2))) >> (mb - 1 + rb)
    return torch.clamp(x1, max=1 << rb)


def recip_fixed(l, fmt):
    """``(r, e)`` with ``1/l ≈ r · 2^-(RB + e)``, ``e = floor(log2 l)``, for integers ``l >= 1``.

    ``l`` is normalized to ``MB`` bits (truncating low bits) and passed to
    :func:`recip_mantissa`. ``l = 0`` gives ``(0, 0)``.
    """
    l = _i64(l)
    mb = fmt.recip_mant_bits
    safe = torch.clamp(l, min=1)
    e = torch.floor(torch.log2(safe.to(torch.float64))).to(torch.int64)
    # correct float log2 rounding at exact powers of two
    e = torch.where((torch.ones_like(e) << e) > safe, e - 1, e)
    e = torch.where((torch.ones_like(e) << (e + 1)) <= safe, e + 1, e)
    up = torch.clamp(mb - 1 - e, min=0)
    down = torch.clamp(e - (mb - 1), min=0)
    lm = (safe << up) >> down
    r = recip_mantissa(lm, fmt)
    return torch.where(l > 0, r, 0), torch.where(l > 0, e, 0)


def softmax_scales(q_scale, k_scale, v_scale, out_scale, head_dim, fmt=SoftmaxFormat()):
    """Integer ``(score_mult, score_shift, out_mult, out_shift)`` for one head.

    ``score_mult·2^-score_shift ≈ q_scale·k_scale·log2(e)/sqrt(head_dim)·2^F`` turns an integer
    score into a base-2 logit with ``F`` fractional bits; ``out_mult·2^-out_shift ≈
    v_scale/(out_scale·2^G)`` maps the normalized output to int8.
    """
    sm, ss = requant_params(q_scale * k_scale * LOG2E / math.sqrt(head_dim)
                            * (1 << fmt.exp_frac_bits))
    om, os_ = requant_params(v_scale / (out_scale * (1 << fmt.guard_bits)))
    return int(sm), int(ss), int(om), int(os_)


def causal_mask(n):
    """``n×n`` bool, True where query ``i`` may see key ``j`` (``j <= i``)."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def random_mask(n, density, generator=None, empty_rows=0.0):
    """Random fixed sparse mask with the diagonal always kept; a fraction ``empty_rows`` of the
    rows keep only the diagonal."""
    keep = torch.rand(n, n, generator=generator) < density
    empty = torch.rand(n, generator=generator) < empty_rows
    keep[empty] = False
    keep |= torch.eye(n, dtype=torch.bool)
    return keep


def softmax_schedule(n, lanes, keep=None):
    """Order in which keys stream past the lanes, per block of ``lanes`` queries.

    Returns a list of blocks ``(row0, rows, keys)`` where ``keys`` is a list of
    ``(j, lane_mask)``: key ``j`` is sent once for the block, ascending, and only if at least
    one row of the block keeps it (fully masked keys are skipped); bit ``r`` of ``lane_mask``
    says whether row ``row0 + r`` keeps it.
    """
    keep = torch.ones(n, n, dtype=torch.bool) if keep is None else torch.as_tensor(keep)
    blocks = []
    for row0 in range(0, n, lanes):
        rows = min(lanes, n - row0)
        sub = keep[row0:row0 + rows]
        weights = (1 << torch.arange(rows, dtype=torch.int64))[:, None]
        masks = (sub.to(torch.int64) * weights).sum(0).tolist()
        blocks.append((row0, rows, [(j, mk) for j, mk in enumerate(masks) if mk]))
    return blocks


def softmax_streams(q, k, v, lanes, keep=None):
    """Beats of the ``q`` and ``kv`` input streams of :class:`SoftmaxAttention` for one head.

    Returns ``(q_beats, kv_beats)``: ``q_beats`` a list of ints; ``kv_beats`` a list of
    ``(k, v, keep, last)`` tuples, following :func:`softmax_schedule`.
    """
    q, k, v = _i64(q), _i64(k), _i64(v)
    n, d = q.shape
    q_beats, kv_beats = q.flatten().tolist(), []
    for row0, rows, keys in softmax_schedule(n, lanes, keep):
        for idx, (j, mask) in enumerate(keys):
            for i in range(d):
                last = int(idx == len(keys) - 1 and i == d - 1)
                kv_beats.append((int(k[j, i]), int(v[j, i]), mask, last))
    return q_beats, kv_beats


def attention_softmax(q, k, v, score_mult, score_shift, out_mult, out_shift, keep=None,
                      fmt=SoftmaxFormat(), out_bits=8):
    """Bit-exact online-softmax attention of one head (see the module docstring).

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``N×d`` integers (int8 range), or ``...×N×d`` for several heads at once.
    score_mult, score_shift, out_mult, out_shift : int or torch.Tensor
        From :func:`softmax_scales`; tensors of the batch shape for per-head values.
    keep : torch.Tensor or None
        ``N×N`` bool mask (row = query), ``None`` for dense. A row that keeps nothing outputs 0.

    Returns
    -------
    torch.Tensor
        ``N×d`` int64 in the ``out_bits`` signed range.
    """
    q, k, v = _i64(q), _i64(k), _i64(v)
    n, d = q.shape[-2:]
    batch = q.shape[:-2]
    keep = torch.ones(n, n, dtype=torch.bool) if keep is None else torch.as_tensor(keep)
    keep = keep.expand(*batch, n, n)
    f, pb = fmt.exp_frac_bits, fmt.p_bits
    bshape = lambda t: _i64(t).reshape(*_i64(t).shape, 1, 1) if _i64(t).dim() else _i64(t)
    scores = q @ k.transpose(-1, -2)                          # only to vectorize; rows are
    x = rshift_round(scores * bshape(score_mult), bshape(score_shift))   # consumed key by key
    m = torch.zeros(*batch, n, dtype=torch.int64)
    l = torch.zeros(*batch, n, dtype=torch.int64)
    a = torch.zeros(*batch, n, d, dtype=torch.int64)
    started = torch.zeros(*batch, n, dtype=torch.bool)
    for j in range(n):
        kj = keep[..., j]
        xj = x[..., j]
        xi = xj >> f
        m_new = torch.where(started, torch.maximum(m, xi), xi)
        sh = torch.where(started, m_new - m, 0)
        p = exp2_fixed(xj - (m_new << f), f, pb)
        l_new = rshift_round(l, sh) + p
        a_new = rshift_round(a, sh[..., None]) + p[..., None] * v[..., j, None, :]
        m = torch.where(kj, m_new, m)
        l = torch.where(kj, l_new, l)
        a = torch.where(kj[..., None], a_new, a)
        started = started | kj
    return softmax_normalize(a, l, out_mult, out_shift, fmt, out_bits)


def softmax_normalize(a, l, out_mult, out_shift, fmt=SoftmaxFormat(), out_bits=8):
    """Final normalization ``y = clamp(rs(rs(a·r, e + RB - G)·out_mult, out_shift))``."""
    r, e = recip_fixed(l, fmt)
    t = rshift_round(_i64(a) * r[..., None], (e + fmt.recip_bits - fmt.guard_bits)[..., None])
    om, os_ = _i64(out_mult), _i64(out_shift)
    if om.dim():
        om, os_ = om.reshape(*om.shape, 1, 1), os_.reshape(*os_.shape, 1, 1)
    y = rshift_round(t * om, os_)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return torch.clamp(y, lo, hi)


def softmax_reference(q, k, v, keep=None):
    """Float reference: ``torch.nn.functional.scaled_dot_product_attention`` (``N×d`` or
    ``H×N×d`` float tensors, ``keep`` a bool mask, True = attend)."""
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(),
        attn_mask=None if keep is None else torch.as_tensor(keep, dtype=torch.bool))


# --- linear modes ---------------------------------------------------------------------------

def _phi_int(x):
    return torch.clamp(_i64(x), min=0) + 1


def _phi_float(x, scale):
    return torch.relu(x) + scale


def _dwconv_int(v, w, causal):
    """Depthwise convolution of ``N×d`` ``v`` along tokens with ``taps×d`` weights ``w``.

    Causal: ``c[t] = Σ_τ w[τ]·v[t-τ]``. Centred (odd taps): ``c[t] = Σ_τ w[τ]·v[t+τ-taps//2]``.
    Out-of-range tokens are zero.
    """
    n, d = v.shape
    taps = w.shape[0]
    out = torch.zeros(n, d, dtype=v.dtype)
    for tau in range(taps):
        off = -tau if causal else tau - taps // 2
        lo, hi = max(0, -off), min(n, n - off)
        if lo < hi:
            out[lo:hi] += w[tau][None, :] * v[lo + off:hi + off]
    return out


def attention_linear_causal(q, k, v, out_mult, out_shift, conv_w=None, conv_mult=0,
                            conv_shift=0, fmt=SoftmaxFormat(), out_bits=8):
    """Bit-exact causal linear attention, one head, token by token (the decode path).

    ``S_t = Σ_{j<=t} φ(k_j)ᵀ v_j`` (d×d), ``z_t = Σ φ(k_j)``, ``φ(x) = relu(x) + 1``;
    ``num = φ(q_t)·S_t``, ``den = φ(q_t)·z_t >= 1``; ``y = clamp(rs(rs(num·r, e + RB - G)·M, S)
    + rs(conv·conv_mult, conv_shift))`` with ``(r, e) = recip(den)`` and ``conv`` the causal
    depthwise convolution of V with int8 ``conv_w`` (``taps×d``).
    """
    q, k, v = _i64(q), _i64(k), _i64(v)
    n, d = q.shape
    pq, pk = _phi_int(q), _phi_int(k)
    S = torch.zeros(d, d, dtype=torch.int64)
    z = torch.zeros(d, dtype=torch.int64)
    num = torch.zeros(n, d, dtype=torch.int64)
    den = torch.zeros(n, dtype=torch.int64)
    for t in range(n):                       # constant work per token: d² + d updates
        S += pk[t][:, None] * v[t][None, :]
        z += pk[t]
        num[t] = pq[t] @ S
        den[t] = pq[t] @ z
    r, e = recip_fixed(den, fmt)
    a = rshift_round(num * r[:, None], (e + fmt.recip_bits - fmt.guard_bits)[:, None])
    y = rshift_round(a * int(out_mult), int(out_shift))
    if conv_w is not None:
        y = y + rshift_round(_dwconv_int(v, _i64(conv_w), True) * int(conv_mult),
                             int(conv_shift))
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return torch.clamp(y, lo, hi)


def linear_causal_reference(q, k, v, q_scale, k_scale, conv_w=None):
    """Float causal linear attention with ``φ(x) = relu(x) + scale`` (the scale of x, so that
    the integer ``+1`` matches) and the causal depthwise convolution (float ``conv_w``)."""
    q, k, v = q.double(), k.double(), v.double()
    pq, pk = _phi_float(q, q_scale), _phi_float(k, k_scale)
    kv = torch.cumsum(pk[:, :, None] * v[:, None, :], 0)
    z = torch.cumsum(pk, 0)
    out = torch.einsum("ti,tij->tj", pq, kv) / (pq * z).sum(-1, keepdim=True)
    if conv_w is not None:
        out = out + _dwconv_int(v, conv_w.double(), True)
    return out


def rsqrt_table(table_bits=7, frac_bits=7, qmax=127):
    """Table of ``qmax/sqrt(u)`` for :func:`unit_int`: ``2^(table_bits+1)`` entries, entry
    ``i >= 2^(table_bits-1)`` is ``round(qmax·2^frac_bits / sqrt((i + 0.5)/2^(table_bits+1)))``
    (below ``2^(frac_bits+8)`` for ``qmax = 127``), the unused lower quarter is 0."""
    n = 1 << (table_bits + 1)
    return [0 if i < n // 4 else
            int(math.floor(qmax * (1 << frac_bits) / math.sqrt((i + 0.5) / n) + 0.5))
            for i in range(n)]


def _bit_length(t):
    """Bit length of non-negative int64 values (0 for 0)."""
    t = _i64(t)
    safe = torch.clamp(t, min=1)
    e = torch.floor(torch.log2(safe.to(torch.float64))).to(torch.int64)
    e = torch.where((torch.ones_like(e) << e) > safe, e - 1, e)
    e = torch.where((torch.ones_like(e) << (e + 1)) <= safe, e + 1, e)
    return torch.where(t > 0, e + 1, 0)


def unit_int(x, table_bits=7, frac_bits=7):
    """Rows of ``x`` scaled to integer unit vectors of norm about 127, the recipe of
    :class:`amaformer.hdl.attention_units.RsqrtUnit`::

        n2  = Σ x²,  b = bit length of n2,  e2 = ceil(b/2)       so n2/4^e2 is in [1/4, 1)
        idx = floor(n2·2^(TB+1) / 4^e2)                          TB+1 bits, >= 2^(TB-1)
        x̂   = rs(x · T[idx], RB + e2)                            T = rsqrt_table(TB, RB)

    (round half up). The table is read at the midpoint of its interval: the relative error of
    the scale is below ``2^-(TB+1)`` (0.4 % for ``TB = 7``), on top of the rounding to an
    integer; ``|x̂| <= 128`` (9 bits signed). A zero row stays zero (``T[0] = 0``).
    """
    x = _i64(x)
    n2 = (x * x).sum(-1)
    e2 = (_bit_length(n2) + 1) // 2
    sh = 2 * e2 - table_bits - 1
    idx = torch.where(sh >= 0, n2 >> torch.clamp(sh, min=0), n2 << torch.clamp(-sh, min=0))
    table = torch.tensor(rsqrt_table(table_bits, frac_bits), dtype=torch.int64)
    r = table[idx]
    return rshift_round(x * r[..., None], (frac_bits + e2)[..., None])


def attention_linear_angular(q, k, v, half_mult, half_shift, ang_mult, ang_shift, conv_w=None,
                             conv_mult=0, conv_shift=0, out_bits=8):
    """Bit-exact linear-angular attention (Castling-ViT), one head, non-causal.

    ``q̂, k̂`` are integer unit vectors of norm about 127 (:func:`unit_int`); ``G = k̂ᵀV``
    (d×d); output
    ``y = clamp(rs(v·half_mult, half_shift) + rs(q̂·G·ang_mult, ang_shift) + rs(conv·conv_mult,
    conv_shift))`` with ``conv`` the centred depthwise convolution of V.
    """
    v = _i64(v)
    qh, kh = unit_int(q), unit_int(k)
    g = kh.T @ v
    y = rshift_round(v * int(half_mult), int(half_shift))
    y = y + rshift_round((qh @ g) * int(ang_mult), int(ang_shift))
    if conv_w is not None:
        y = y + rshift_round(_dwconv_int(v, _i64(conv_w), False) * int(conv_mult),
                             int(conv_shift))
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return torch.clamp(y, lo, hi)


def linear_angular_reference(q, k, v, conv_w=None):
    """Float ``0.5·V + (1/π)·q̂(k̂ᵀV)`` (+ centred depthwise convolution of V)."""
    q, k, v = q.double(), k.double(), v.double()
    qh = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    kh = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    out = 0.5 * v + (qh @ (kh.T @ v)) / math.pi
    if conv_w is not None:
        out = out + _dwconv_int(v, conv_w.double(), False)
    return out


# --- cycle models ---------------------------------------------------------------------------

def softmax_macs(n, d, heads=1, keep=None):
    """Useful multiply-accumulates: ``2·nnz·d`` per head (``nnz = N²`` when dense)."""
    nnz = n * n if keep is None else int(torch.as_tensor(keep).sum())
    return 2 * nnz * d * heads


def softmax_cycles(n, d, lanes, heads=1, keep=None):
    """Cycles of a :class:`~amaformer.hdl.attention.SoftmaxAttention` job, see
    :mod:`amaformer.hdl.attention` for the pipeline this follows. Defined there as
    :func:`amaformer.hdl.attention.softmax_cycle_model` to stay next to the RTL constants."""
    from amaformer.hdl.attention import softmax_cycle_model
    return softmax_cycle_model(n, d, lanes, heads, softmax_schedule(n, lanes, keep))


def softmax_utilization(n, d, lanes, heads=1, keep=None):
    """Useful MACs / (``2·lanes`` MAC units × cycles)."""
    return softmax_macs(n, d, heads, keep) / (2 * lanes * softmax_cycles(n, d, lanes, heads,
                                                                          keep))


def linear_causal_cycles_per_token(d, lanes, context, conv_taps=0):
    """Cycles per decoded token of :class:`amaformer.hdl.attention_linear.LinearCausalAttention`
    (streams never stalled): ``2·d + d·ceil(d/lanes) + 12`` (``max(d, conv_taps + 1)`` in place
    of the second ``d`` with a convolution). ``context`` does not enter: the state is ``d×d``
    whatever the number of tokens before (checked against the RTL)."""
    from amaformer.hdl.attention_linear import linear_causal_token_cycles
    del context
    return linear_causal_token_cycles(d, lanes, conv_taps)


def linear_angular_cycles(n, d, lanes, conv_taps=0):
    """Cycles of one :class:`amaformer.hdl.attention_angular.LinearAngularAttention` job (one
    head, two passes over the tokens, streams never stalled; checked against the RTL)."""
    from amaformer.hdl.attention_angular import linear_angular_job_cycles
    return linear_angular_job_cycles(n, d, lanes, conv_taps)


def linear_angular_macs(n, d, conv_taps=0):
    """Useful multiply-accumulates of a linear-angular head: ``N·d²`` for ``k̂ᵀV``, ``N·d²`` for
    ``q̂·G`` and ``N·d·conv_taps`` for the convolution (normalization and output scaling are not
    counted)."""
    return 2 * n * d * d + n * d * conv_taps


def attention_engine_from_config(att):
    """The hardware kernel an :class:`~amaformer.gen.config.AttentionConfig` describes:
    :class:`~amaformer.hdl.attention.SoftmaxAttention` (``softmax``),
    :class:`~amaformer.hdl.attention_linear.LinearCausalAttention` (``linear_causal``) or
    :class:`~amaformer.hdl.attention_angular.LinearAngularAttention` (``linear_angular``), the
    linear modes with ``attention.conv_taps`` taps of depthwise convolution.
    """
    from amaformer.hdl.attention import SoftmaxAttention
    from amaformer.hdl.attention_angular import LinearAngularAttention
    from amaformer.hdl.attention_linear import LinearCausalAttention
    if att.mode == "softmax":
        return SoftmaxAttention.from_config(att)
    if att.mode == "linear_causal":
        return LinearCausalAttention.from_config(att)
    return LinearAngularAttention.from_config(att)


# --- accuracy helpers -----------------------------------------------------------------------

def cosine(a, b):
    """Cosine similarity of two tensors, flattened, as a float."""
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A transformer accelerator streams keys and values past the queries.",
    "Hello world.",
    "FPGAs trade flexibility for efficiency, and open toolchains make them easy to try.",
    "It rained all night, so the river rose above the old stone bridge by morning.",
    "Which of these sentences is the longest one in the whole list, do you think?",
    "Cats sleep.",
    "Quantization maps real numbers onto a small set of integers with a scale.",
    "She sold seashells by the seashore, and the shells she sold were surely seashells.",
    "The committee postponed the vote until every member had read the final report.",
    "Bring an umbrella.",
    "Attention weights are a softmax over the scores of one query against all keys.",
    "In 1969 two astronauts walked on the Moon while a third orbited above them.",
    "Please restart the router if the connection drops again tonight.",
    "Online softmax keeps a running maximum and a running sum.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and some milk.",
    "Why?",
    "Linear attention replaces the softmax kernel with a feature map and a running state.",
    "The museum opens at nine and closes at five, except on public holidays.",
    "He played the violin every evening, long after the neighbours had gone to sleep.",
    "Sparse masks skip most positions and keep only a few important tokens per row.",
    "A small model can still be surprisingly accurate.",
    "The train to Edinburgh leaves from platform four in ten minutes.",
    "Debugging hardware is easier when every block has a golden model in software.",
    "Birds migrate south for the winter, guided by the sun, the stars and magnetic fields.",
    "The stock market fell sharply after the announcement.",
    "Good morning!",
    "Reciprocal units often start from a small table and refine it with Newton's method.",
    "The children built a sandcastle that survived until the evening tide.",
    "Every accumulator is wide enough that no sum can ever wrap around.",
    "They argued about the ending of the film for the entire drive home.",
    "Mount Everest is the highest mountain above sea level on Earth.",
    "Transformers process tokens in parallel, but decoding generates them one at a time.",
    "My grandmother's garden was full of tomatoes, beans, roses and a stubborn fig tree.",
    "Low-power devices such as the iCE40 have only a handful of DSP blocks.",
    "The end.",
]


def minilm_attention_inputs(sentences=SENTENCES, layers=None):
    """Float Q, K, V (per head, ``H×N×d``) of all-MiniLM-L6-v2's self-attention layers.

    Loads the model offline (:func:`amaformer.gen.model.minilm.load_minilm`, float32) and
    returns a list of ``(sentence_index, layer, q, k, v)``.
    """
    from .model.minilm import load_minilm
    minilm = load_minilm(torch.float32)
    model = minilm.model
    cfg = model.config
    h, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    layers = range(cfg.num_hidden_layers) if layers is None else layers
    out = []
    for si, s in enumerate(sentences):
        captured = {}
        hooks = []
        for li in layers:
            att = model.encoder.layer[li].attention.self
            for name in ("query", "key", "value"):
                hooks.append(getattr(att, name).register_forward_hook(
                    lambda mod, inp, o, li=li, name=name: captured.__setitem__((li, name), o)))
        with torch.no_grad():
            model(input_ids=minilm.ids(s)[None])
        for hk in hooks:
            hk.remove()
        for li in layers:
            q, k, v = (captured[(li, nm)][0].reshape(-1, h, dh).transpose(0, 1).double()
                       for nm in ("query", "key", "value"))
            out.append((si, li, q, k, v))
    return out
