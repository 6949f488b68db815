"""The sparse-dense coordinator's unit kind (ViTCoD): ``IDENT`` record, ``RUN`` descriptor,
write spaces and the entry formats of its two engines.

Shared by the gateware (:mod:`amaformer.hdl.sparse_dense`, :mod:`amaformer.hdl.sparse_dense_unit`),
the compiler (:func:`amaformer.gen.sparse_dense.pack_job`) and the host driver
(:mod:`amaformer.host.sparse_dense`); imports no gateware.

``RUN`` descriptor (:data:`DESCRIPTOR`): Q, K, V ``heads×tokens×dim`` int8 at ``q_addr``,
``k_addr``, ``v_addr`` of the activation memory (head-major, row-major), the output likewise at
``o_addr`` of the output memory; the job's entries start at word ``dense_addr`` of the ``dense``
space and at word ``sparse_addr`` of every sparse lane's bank.

Spaces:

``heads``
    One :data:`HEAD_PARAMS` word per head (the softmax scales, as the attention unit's).
``dense``
    The denser engine's entries (:func:`dense_entry_layout`): per head, per block of ``W_d``
    rows, the block's dense keys with one keep bit per row; an ``eoh`` entry ends the head.
``sparse``
    The sparser engine's lists (:func:`sparse_entry_layout`): lane ``s``'s bank at word
    ``s·sparse_depth``; per head, the lane's run of kept ``(row, key)`` pairs, then ``eoh``.
"""

from amaranth import unsigned
from amaranth.lib import data

from .attention_spec import HEAD_PARAM_FIELDS
from .registry import UnitKind

__all__ = ["SPARSE_DENSE", "DESCRIPTOR", "RECORD", "HEAD_PARAMS", "dense_entry_layout",
           "sparse_entry_layout", "index_bits", "PAIR_MIN", "LANE_DRAIN", "MERGE_ROW",
           "MERGE_TAIL"]

#: Shortest pair period of a lane in cycles (``T = max(dim, PAIR_MIN)``).
PAIR_MIN = 4
#: Cycles from a lane's last beat of a pair to the end of its last write (weighted sum).
LANE_DRAIN = 8
#: Cycles of the merge per row beyond ``dim`` (state read, max, shifts, sum, reciprocal).
MERGE_ROW = 10
#: Cycles from the merge's last element read to the output write.
MERGE_TAIL = 6

DESCRIPTOR = data.StructLayout({
    "heads":       unsigned(16),
    "tokens":      unsigned(16),
    "dim":         unsigned(16),
    "q_addr":      unsigned(32),
    "k_addr":      unsigned(32),
    "v_addr":      unsigned(32),
    "o_addr":      unsigned(32),
    "dense_addr":  unsigned(32),
    "sparse_addr": unsigned(32),
})

#: Per-head parameters (logit ``x = rs(q·k·score_mult, score_shift)``, output
#: ``rs(t·out_mult, out_shift)``): the attention unit's word, same fields and widths.
HEAD_PARAMS = data.StructLayout({name: unsigned(bits) for name, bits in HEAD_PARAM_FIELDS})

#: ``IDENT`` record: the lane split (``dense_lanes`` + ``sparse_lanes``, fixed when the design
#: is generated), the largest job, the entry memories and the words of the three spaces.
RECORD = (
    ("dense_lanes", "B"), ("sparse_lanes", "B"), ("qkv_buffers", "B"),
    ("head_word_bytes", "B"), ("dense_word_bytes", "B"), ("sparse_word_bytes", "B"),
    ("heads", "H"), ("head_dim", "H"), ("max_tokens", "I"),
    ("dense_depth", "I"), ("sparse_depth", "I"),
)


def index_bits(max_tokens):
    """Bits of a row or key index."""
    return max(1, (max_tokens - 1).bit_length())


def dense_entry_layout(max_tokens, dense_lanes):
    """A dense-engine entry: one key for the ``W_d`` rows of block ``blk`` (rows
    ``blk·W_d + p``) with their keep bits (bit ``p``; 0 for rows at or beyond ``tokens``);
    ``first``/``last`` delimit the block's run; ``eoh`` ends the head's list (no pair).

    Per head, per block of rows, the block's dense keys (the global columns, plus possibly a
    partial column, :func:`amaformer.gen.sparse_dense.plan_head`), ascending."""
    blocks = -(-max_tokens // dense_lanes)
    return data.StructLayout({"key": unsigned(index_bits(max_tokens)),
                              "keep": unsigned(dense_lanes),
                              "blk": unsigned(index_bits(blocks)),
                              "first": unsigned(1), "last": unsigned(1), "eoh": unsigned(1)})


def sparse_entry_layout(max_tokens):
    """A sparse-lane entry: one kept ``(row, key)`` pair; ``first``/``last`` delimit the lane's
    run of a row; ``eoh`` marks the end of the lane's list for a head (no pair)."""
    kb = index_bits(max_tokens)
    return data.StructLayout({"key": unsigned(kb), "row": unsigned(kb), "first": unsigned(1),
                              "last": unsigned(1), "eoh": unsigned(1)})


#: No memory audited: the unit's memories keep Amaranth's read-during-write semantics.
SPARSE_DENSE = UnitKind(
    "sparse_dense", 3, RECORD, DESCRIPTOR, ("heads", "dense", "sparse"),
    doc="sparse-dense coordinator (ViTCoD): softmax attention under a polarized fixed mask, "
        "denser and sparser engines concurrently",
    gateware=".hdl.sparse_dense_unit:SparseDenseUnit",
    driver=".host.sparse_dense:SparseDenseDriver",
    golden=".gen.sparse_dense:sparse_dense_golden",
    cycles=".gen.sparse_dense:sparse_dense_job_cycles")
