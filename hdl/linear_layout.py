"""The linear unit's memory images: how weights and per-column parameters are laid out on chip.

Part of the linear unit's wire format (with :mod:`amaformer.hdl.linear_spec`), shared by the
compiler, the host driver and the testbenches, so that every writer of the weight buffer uses
one layout. Imports no gateware; torch only inside the functions that take tensors.
"""

import itertools
from dataclasses import dataclass

import numpy as np

from .linear_spec import ALPHA_EXP_MAX, ALPHA_TERMS, MODE_CODES, SHIFT_ZERO

__all__ = ["pack_linear_weights", "pack_requant_params", "REQUANT_PARAM_BITS",
           "pack_shift_weights", "pack_bcq_weights", "alpha_code", "BcqMatrix",
           "pack_engine_weights"]

REQUANT_PARAM_BITS = 32 + 16 + 6   #: width of one parameter word (bias, mult, shift; LSB first)


def pack_linear_weights(w, lanes, bits=8):
    """Weight-buffer words for a ``K×N`` integer matrix.

    Word ``g·K + k`` holds ``W[k, g·lanes + j]`` in bits ``[j·bits, (j+1)·bits)`` (two's
    complement); columns past N in the last group are zero.

    Returns
    -------
    list of int
        ``K · ceil(N / lanes)`` words, each ``lanes · bits`` bits wide.
    """
    import torch
    w = torch.as_tensor(w).to(torch.int64)
    k, n = w.shape
    groups = -(-n // lanes)
    padded = torch.zeros(k, groups * lanes, dtype=torch.int64)
    padded[:, :n] = w
    lanes_u = (padded & ((1 << bits) - 1)).reshape(k, groups, lanes).permute(1, 0, 2)
    words = []
    for row in lanes_u.reshape(groups * k, lanes).tolist():
        word = 0
        for j, v in enumerate(row):
            word |= v << (j * bits)
        words.append(word)
    return words


def pack_requant_params(bias, mult, shift):
    """Parameter words, one per column: ``bias`` (int32) | ``mult`` << 32 | ``shift`` << 48."""
    import torch
    bias = np.asarray(torch.as_tensor(bias).to(torch.int64)).tolist()
    mult = np.asarray(torch.as_tensor(mult).to(torch.int64)).tolist()
    shift = np.asarray(torch.as_tensor(shift).to(torch.int64)).tolist()
    if not (len(bias) == len(mult) == len(shift)):
        raise ValueError(f"bias, mult and shift must have one entry per column, not "
                         f"{len(bias)}, {len(mult)}, {len(shift)}")
    return [(b & 0xFFFF_FFFF) | (m << 32) | (s << 48) for b, m, s in zip(bias, mult, shift)]


def pack_shift_weights(w_int, lanes, inputs=1):
    """Weight-buffer words of the ``shift`` engine for ``K×N`` weights in ``{0, ±2^s}``.

    4-bit codes (:data:`amaformer.hdl.shift.SHIFT_CODE_BITS`): bits ``[0:3]`` hold ``s`` for
    ``±2^s`` (``s`` in 0..6) or 7 for zero, bit 3 is set for negative weights. With ``inputs`` = g
    (:class:`~amaformer.hdl.shift.ShiftEngine`), word ``grp·ceil(K/g) + c`` holds the code of
    ``W[c·g + i, grp·lanes + j]`` in bits ``[4(j·g + i), 4(j·g + i) + 4)``; inputs past K and
    columns past N hold the zero code. ``inputs = 1`` is :func:`pack_linear_weights`'s layout.

    Returns
    -------
    list of int
        ``ceil(K/g) · ceil(N/lanes)`` words, each ``4·lanes·g`` bits wide.
    """
    import torch
    w = torch.as_tensor(w_int).to(torch.int64)
    a = w.abs()
    if bool(torch.any((a > 64) | ((a & (a - 1)) != 0))):
        raise ValueError("shift weights must be 0 or ±2^s with s in [0, 6]")
    k, n = w.shape
    groups = -(-n // lanes)
    chunks = -(-k // inputs)
    s = torch.full((chunks * inputs, groups * lanes), SHIFT_ZERO, dtype=torch.int64)
    exp = torch.log2(a.clamp(min=1).double()).round().to(torch.int64)
    s[:k, :n] = torch.where(a == 0, SHIFT_ZERO, exp) | torch.where(w < 0, 8, 0)
    # [chunk, i, group, j] -> word (group, chunk), code index j·g + i
    codes = s.reshape(chunks, inputs, groups, lanes).permute(2, 0, 3, 1)
    words = []
    for row in codes.reshape(groups * chunks, lanes * inputs).tolist():
        word = 0
        for t, v in enumerate(row):
            word |= v << (4 * t)
        words.append(word)
    return words


def _alpha_table():
    terms = [None] + [(neg, e) for e in range(ALPHA_EXP_MAX + 1) for neg in (0, 1)]
    table = {}
    for combo in itertools.product(terms, repeat=ALPHA_TERMS):
        value = sum((-1 if t[0] else 1) << t[1] for t in combo if t is not None)
        used = [t for t in combo if t is not None]
        if value not in table or len(used) < len(table[value]):
            table[value] = used
    return table


_ALPHA_TABLE = None


def alpha_code(value):
    """16-bit α code of the ``bcq`` engine for an integer that is a sum of at most three signed
    powers of two ``±2^e``, ``e`` in 0..7: term ``t`` in bits ``[5t, 5t+5)`` as exponent (3
    bits), negative, enable.

    Raises
    ------
    ValueError
        ``value`` has no such representation.
    """
    global _ALPHA_TABLE
    if _ALPHA_TABLE is None:
        _ALPHA_TABLE = _alpha_table()
    value = int(value)
    if value not in _ALPHA_TABLE:
        raise ValueError(f"alpha must be a sum of at most three signed powers of two 2^0..2^7, "
                         f"not {value!r}")
    code = 0
    for i, (neg, e) in enumerate(_ALPHA_TABLE[value]):
        code |= (e | neg << 3 | 1 << 4) << (5 * i)
    return code


def pack_bcq_weights(planes, alpha, group, slots):
    """Weight-buffer words of the ``bcq`` engine (see :class:`amaformer.hdl.shiftadd.BcqEngine`).

    Parameters
    ----------
    planes : torch.Tensor
        ``q×K×N`` in {-1, +1}.
    alpha : torch.Tensor
        ``q×G×N`` integers, one per plane, group of ``group`` inputs and column.
    group : int
        Inputs per α group; a multiple of the chunk ``8·slots`` (or at least K).
    slots : int
        Table slots of the engine.

    Returns
    -------
    list of int
        ``ceil(K / (8·slots)) · N · q`` words: word ``(c·N + n)·q + i`` holds in byte ``s``,
        bit ``t``, the plane-i bit (1 for +1) of input ``c·8·slots + t·slots + s`` of column n,
        and the α code in bits ``[8·slots, 8·slots + 16)``.
    """
    import torch
    planes = torch.as_tensor(planes).to(torch.int64)
    alpha = torch.as_tensor(alpha).to(torch.int64)
    q, k, n = planes.shape
    chunk = 8 * slots
    if group % chunk and group < k:
        raise ValueError(f"group must be a multiple of the chunk 8·slots = {chunk} or at least "
                         f"K = {k}, not {group!r}")
    nc = -(-k // chunk)
    bits = torch.zeros(q, nc * chunk, n, dtype=torch.int64)
    bits[:, :k, :] = (planes > 0).to(torch.int64)
    # input c·chunk + t·slots + s  ->  [q, c, t, s, n]
    bits = bits.reshape(q, nc, 8, slots, n)
    weights = (1 << torch.arange(8, dtype=torch.int64)).reshape(1, 1, 8, 1, 1)
    byte = (bits * weights).sum(2)                       # q, c, s, n
    codes = {}
    words = []
    for c in range(nc):
        g = (c * chunk) // group
        for col in range(n):
            for i in range(q):
                a = int(alpha[i, g, col])
                if a not in codes:
                    codes[a] = alpha_code(a)
                word = codes[a] << (8 * slots)
                for s, b in enumerate(byte[i, c, :, col].tolist()):
                    word |= b << (8 * s)
                words.append(word)
    return words


@dataclass(frozen=True)
class BcqMatrix:
    """``K×N`` binary-coded weights for the host driver: ``planes`` (``q×K×N`` in {-1, +1}),
    ``alpha`` (``q×G×N`` integers), ``group`` (inputs per α). ``w[:, c0:c1]`` selects columns,
    as the driver does when it splits N."""
    planes: object      # torch.Tensor
    alpha: object       # torch.Tensor
    group: int

    @property
    def shape(self):
        return tuple(self.planes.shape[1:])

    def __getitem__(self, index):
        rows, cols = index
        if rows != slice(None) or not isinstance(cols, slice):
            raise IndexError("BcqMatrix supports only column slices w[:, c0:c1]")
        return BcqMatrix(self.planes[:, :, cols], self.alpha[:, :, cols], self.group)


def pack_engine_weights(mode, w, lanes, weight_bits=8, inputs=1):
    """Weight-buffer words for an engine of ``mode`` (a name or a ``linear_spec.MODE_CODES`` code).

    ``inputs``: products per lane and cycle of a ``shift`` engine (ignored otherwise).

    ``mul``: ``K×N`` integers in ``[-2^(weight_bits-1), 2^(weight_bits-1) - 1]``;
    ``shift``: ``K×N`` integers 0 or ``±2^s``; ``bcq``: a :class:`BcqMatrix`.
    """
    import torch
    names = {code: name for name, code in MODE_CODES.items()}
    mode = names.get(mode, mode)
    if mode == "bcq":
        if not isinstance(w, BcqMatrix):
            raise TypeError(f"bcq weights must be a BcqMatrix, not {type(w).__name__}")
        return pack_bcq_weights(w.planes, w.alpha, w.group, lanes)
    w = torch.as_tensor(np.asarray(w)).to(torch.int64)
    if mode == "shift":
        return pack_shift_weights(w, lanes, inputs)
    if mode != "mul":
        raise ValueError(f"mode must be one of 'mul', 'shift', 'bcq', not {mode!r}")
    lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    if w.numel() and (int(w.min()) < lo or int(w.max()) > hi):
        raise ValueError(f"weights must be integers in [{lo}, {hi}], not "
                         f"[{int(w.min())}, {int(w.max())}]")
    return pack_linear_weights(w, lanes, weight_bits)
