"""The attention unit kind's wire format: ``IDENT`` record, ``RUN`` descriptor, write spaces,
per-head parameter words and the sparse keep-mask image.

Shared by the gateware (:mod:`amaformer.hdl.attention_top`) and the host driver
(:mod:`amaformer.host.attention`); imports no gateware.

``RUN`` descriptor (:data:`DESCRIPTOR`): Q, K, V are ``heads×tokens×dim`` int8, head-major then
row-major, at ``q_addr``, ``k_addr``, ``v_addr`` of the activation memory; the output (same
shape) goes to ``o_addr`` of the output memory. ``mask`` is one of :data:`MASKS` (sparse: the
image of :func:`keep_mask_image` at ``mask_addr`` of the activation memory); ``flags`` bit 0
(``linear_causal`` only, one head) continues the previous sequence. Spaces: ``heads`` (one
:data:`HEAD_PARAM_FIELDS` word per head) and ``conv`` (``linear_causal`` convolution taps, int8).
"""

import math
from dataclasses import dataclass, fields

from amaranth import unsigned
from amaranth.lib import data

from .registry import UnitKind

__all__ = ["SoftmaxFormat", "ATTENTION", "DESCRIPTOR", "RECORD", "MODE_CODES", "MASKS", "FLAG_CONTINUE",
           "HEAD_PARAM_FIELDS", "head_param_word", "keep_mask_image", "conv_bank_bits",
           "conv_weight_writes"]

@dataclass(frozen=True)
class SoftmaxFormat:
    """Fixed-point format of the softmax datapath.

    Parameters
    ----------
    exp_frac_bits : int
        ``F``: fractional bits of the log2-domain logit; the exp2 table has ``2^F`` entries.
    p_bits : int
        ``PB``: fractional bits of the probabilities ``p`` (``p < 2``, ``PB + 1`` bits).
    recip_table_bits : int
        Index bits of the reciprocal seed table (``2^bits`` entries).
    recip_bits : int
        ``RB``: fractional bits of the reciprocal ``r`` (``RB + 1`` bits).
    recip_mant_bits : int
        Bits of the normalized running sum that enter the reciprocal (truncated).
    guard_bits : int
        ``G``: fractional bits of the normalized output before the final requantization.

    The configurations of the units that compute a softmax
    (:class:`~amaformer.gen.config.AttentionConfig`,
    :class:`~amaformer.gen.config.SparseDenseConfig`) inherit these fields, so they are written
    once; the gateware and the golden models take a ``SoftmaxFormat``.
    """
    exp_frac_bits: int = 6
    p_bits: int = 12
    recip_table_bits: int = 6
    recip_bits: int = 15
    recip_mant_bits: int = 16
    guard_bits: int = 8

    @classmethod
    def from_config(cls, att):
        """The format fields of an ``AttentionConfig`` (read duck-typed)."""
        return cls(*(getattr(att, f.name) for f in fields(cls)))

    def sum_bits(self, max_tokens):
        """Unsigned width of the running sum ``l``: ``PB + 3 + ceil(log2 max_tokens)``."""
        return self.p_bits + 3 + max(0, math.ceil(math.log2(max_tokens)))

    def acc_bits(self, max_tokens, v_bits=8):
        """Signed width of the running weighted sum ``a`` (``|a| <= l·2^(v_bits-1)``)."""
        return self.sum_bits(max_tokens) + v_bits


#: Attention engines as reported by the record's ``mode``.
MODE_CODES = {"softmax": 0, "linear_causal": 1, "linear_angular": 2}
#: Mask kinds (the descriptor's ``mask``); the record's ``masks`` has bit i set when kind i
#: is supported.
MASKS = {"dense": 0, "causal": 1, "sparse": 2}
#: ``flags`` bit: continue the running state (``linear_causal``).
FLAG_CONTINUE = 1

DESCRIPTOR = data.StructLayout({
    "heads": unsigned(16), "mask": unsigned(8), "flags": unsigned(8), "tokens": unsigned(16),
    "dim": unsigned(16), "q_addr": unsigned(32), "k_addr": unsigned(32),
    "v_addr": unsigned(32), "o_addr": unsigned(32), "mask_addr": unsigned(32),
})

RECORD = (
    ("mode", "B"), ("lanes", "B"), ("masks", "B"), ("head_word_bytes", "B"),
    ("heads", "H"), ("head_dim", "H"), ("max_tokens", "I"), ("conv_taps", "B"),
)

#: One word of the ``heads`` space per head, fields from the least significant bit: (name,
#: bits). ``softmax``: logit ``x = rs(score·score_mult, score_shift)``, output
#: ``rs(t·out_mult, out_shift)``; ``linear_causal``: ``out_mult``/``out_shift``, and the
#: convolution's ``(conv_mult, conv_shift)`` in the score fields (with ``conv_taps > 0``);
#: ``linear_angular``: ``(half_mult, half_shift)`` of ``0.5·V`` in the score fields and
#: ``(ang_mult, ang_shift)`` of ``q̂(k̂ᵀV)`` in the out fields.
HEAD_PARAM_FIELDS = (("score_mult", 16), ("score_shift", 6), ("out_mult", 16), ("out_shift", 6))

#: No memory audited: the unit's memories keep Amaranth's read-during-write semantics.
ATTENTION = UnitKind(
    "attention", 2, RECORD, DESCRIPTOR, ("heads", "conv"),
    gateware=".hdl.attention_top:AttentionUnit", driver=".host.attention:AttentionDriver",
    golden=".gen.attention:attention_softmax", cycles=".gen.cost:attention_cycles",
    doc="streaming attention: softmax (online, causal/sparse masks), linear_causal, "
        "linear_angular")


def head_param_word(score_mult=0, score_shift=0, out_mult=0, out_shift=0):
    """The ``heads`` space word of one head (an int of 44 bits; 8 bytes on the wire)."""
    values = dict(score_mult=score_mult, score_shift=score_shift, out_mult=out_mult,
                  out_shift=out_shift)
    word, pos = 0, 0
    for name, bits in HEAD_PARAM_FIELDS:
        v = int(values[name])
        if not 0 <= v < (1 << bits):
            raise ValueError(f"{name} must be an integer in [0, {(1 << bits) - 1}], not {v!r}")
        word |= v << pos
        pos += bits
    return word


def keep_mask_image(keep, lanes):
    """Bytes of a sparse keep mask as a softmax job reads it from the activation memory.

    ``keep`` is ``N×N`` (nested sequences or a tensor/array of bools, row = query, True =
    attend), shared by every head. Per block of ``lanes`` query rows (``ceil(N/lanes)`` blocks,
    ``2 + N`` bytes each): the index of the last key the device must send (u16, little-endian;
    the block's last kept key), then one byte per key ``j`` whose bit ``r`` says whether row
    ``row0 + r`` keeps ``j``. Keys whose byte is zero are skipped (never computed). Needs
    ``lanes <= 8``.
    """
    rows = [[bool(x) for x in row] for row in (keep.tolist() if hasattr(keep, "tolist")
                                                 else keep)]
    n = len(rows)
    if not 1 <= lanes <= 8:
        raise ValueError(f"lanes must be an integer in [1, 8] for a sparse mask, not {lanes!r}")
    if any(len(r) != n for r in rows):
        raise ValueError("keep must be a square N×N mask")
    out = bytearray()
    for row0 in range(0, n, lanes):
        block = rows[row0:row0 + lanes]
        masks = [sum(1 << r for r, row in enumerate(block) if row[j]) for j in range(n)]
        kept = [j for j, mk in enumerate(masks) if mk]
        out += (kept[-1] if kept else 0).to_bytes(2, "little") + bytes(masks)
    return bytes(out)


def conv_bank_bits(taps, lanes, max_dim):
    """Address bits of one lane bank of the convolution weights: ``ceil_log2(G·taps)``,
    ``G = ceil(max_dim/lanes)``."""
    return max(1, (-(-max_dim // lanes) * max(taps, 1) - 1).bit_length())


def conv_weight_writes(w, lanes, max_dim):
    """``(addr, value)`` writes of a ``taps×d`` int8 weight array to the ``cw_wr`` port of
    :class:`LinearAngularAttention` or :class:`~amaformer.hdl.attention_linear.
    LinearCausalAttention`: ``w[τ][j]`` goes to lane bank ``j % lanes``, row
    ``(j // lanes)·taps + τ``, i.e. address ``(j % lanes) << conv_bank_bits(...) | row``."""
    rows = [[int(x) for x in r] for r in w]
    taps = len(rows)
    rw = conv_bank_bits(taps, lanes, max_dim)
    return [((j % lanes) << rw | (j // lanes) * taps + tau, rows[tau][j])
            for tau in range(taps) for j in range(len(rows[tau]))]
