"""The linear unit kind's wire format: ``IDENT`` record, ``RUN`` descriptor, write spaces.

Shared by the gateware (:mod:`amaformer.hdl.linear_unit`) and the host driver
(:mod:`amaformer.host.linear`); imports no gateware.

``RUN`` descriptor (:data:`DESCRIPTOR`): job ``M×K @ K×N``; X read row-major (``M×K`` int8) from
``x_addr`` of the activation memory, Y written row-major (``M×N`` int8) to ``y_addr`` of the
output memory. Spaces: ``weights`` (engine weight words, ``weight_word_bytes`` each) and
``params`` (per-column requantization words: bias, mult, shift).
"""

from dataclasses import dataclass, field

from amaranth import unsigned
from amaranth.lib import data

from .registry import UnitKind

__all__ = ["job_tiles", "LinearTile", "LinearJob", "LINEAR", "DESCRIPTOR", "RECORD", "MODE_CODES", "SHIFT_CODE_BITS", "SHIFT_ZERO",
           "ALPHA_TERMS", "ALPHA_EXP_MAX", "ALPHA_CODE_BITS"]

#: ``shift`` weight code: bits [0:3] = ``s`` for ``±2^s`` (``s`` < levels) or
#: :data:`SHIFT_ZERO` for a zero weight; bit 3 = negative.
SHIFT_CODE_BITS = 4
#: Shift field of a zero weight.
SHIFT_ZERO = 7
#: ``bcq`` α: at most this many signed powers of two ...
ALPHA_TERMS = 3
#: ... with exponents 0 .. ALPHA_EXP_MAX. One term is 5 bits: [0:3] exponent, 3 negative,
#: 4 enable; term ``t`` sits at bits ``[5t, 5t+5)`` of a 16-bit α code.
ALPHA_EXP_MAX = 7
ALPHA_CODE_BITS = 16

#: Weight encodings as reported by the record's ``mode``.
MODE_CODES = {"mul": 0, "shift": 1, "bcq": 2}

#: ``RUN`` payload of a linear unit.
DESCRIPTOR = data.StructLayout({
    "m": unsigned(32), "k": unsigned(32), "n": unsigned(32),
    "x_addr": unsigned(32), "y_addr": unsigned(32),
})

#: ``IDENT`` record: ``weight_bits`` is the code width (shift: 4; bcq: bit planes q);
#: ``lin_inputs`` the products per lane and cycle (shift: g; else 1).
RECORD = (
    ("mode", "B"), ("lanes", "B"), ("act_bits", "B"), ("weight_bits", "B"),
    ("weight_word_bytes", "B"), ("param_word_bytes", "B"), ("lin_inputs", "B"),
    ("max_k", "I"), ("max_n", "I"), ("max_m", "I"), ("weight_depth", "I"),
)

#: Audited: the engine's memories. Weights and parameters are written only while the engine
#: is idle (WRITE answers BUSY during a job), when their reads are ignored; row buffers and bcq
#: tables: see the engines.
LINEAR = UnitKind(
    "linear", 1, RECORD, DESCRIPTOR, ("weights", "params"), audit=("engine",),
    gateware=".hdl.linear_unit:LinearUnit", driver=".host.linear:LinearDriver",
    golden=".gen.golden:linear_mul", cycles=".gen.cost:linear_job_cycles",
    doc="Y = requant(X·W + b): mul (int8 DSP), shift (power of two), bcq (binary-coded LUT)")


def job_tiles(m, k, n, *, max_m, max_n, act_depth, out_depth):
    """Jobs of an ``M×K @ K×N`` layer on a linear unit, as the host driver runs them.

    ``max_n`` is the largest N whose weights fit the buffer for this K (``max_n_for_k``). N is
    split into tiles of ``min(max_n, N, out_depth)`` columns (weights written once per tile), M
    into tiles that fit ``max_m`` and the activation (``M·K`` bytes) and output (``M·N``
    bytes) memories. Returns ``(m_tile, n_tile, [(r0, r1, c0, c1), ...])`` in run order
    (column tile outer); raises ``ValueError`` when not even one row fits.
    """
    n_tile = min(max_n, n, out_depth)
    if n_tile < 1:
        raise ValueError(f"K = {k} does not fit the weight buffer")
    m_tile = min(m, max_m, act_depth // k, out_depth // n_tile)
    if m_tile < 1:
        raise ValueError(f"one row of K = {k} does not fit the activation memory "
                         f"({act_depth} bytes)")
    return m_tile, n_tile, [(r0, min(m, r0 + m_tile), c0, min(n, c0 + n_tile))
                            for c0 in range(0, n, n_tile) for r0 in range(0, m, m_tile)]


@dataclass(frozen=True)
class LinearTile:
    """One weight tile of a linear layer: reduction rows ``k0:k1`` (one K chunk) and output
    columns ``n0:n1``, with its memory images packed as the linear unit holds them:
    ``weight_words`` for the ``weights`` space (written at word 0) and ``param_words``
    (per-column bias and requantizer, :func:`~amaformer.hdl.linear_layout.pack_requant_params`)
    for the ``params`` space (column 0); ``op``: the layer's name, if any."""
    k0: int
    k1: int
    n0: int
    n1: int
    weight_words: tuple = field(repr=False)
    param_words: tuple = field(repr=False)
    op: str = ""


@dataclass(frozen=True)
class LinearJob:
    """One ``RUN`` of the linear unit: rows ``r0:r1`` of the input through ``tiles[tile]``,
    with its descriptor (:data:`DESCRIPTOR` fields ``m, k, n, x_addr, y_addr``)."""
    tile: int
    r0: int
    r1: int
    descriptor: dict
