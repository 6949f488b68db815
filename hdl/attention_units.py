"""Fixed-point units of the attention datapaths: base-2 exponent, reciprocal, 1/sqrt.

All are fixed-latency pipelines advanced by ``en`` (like a DSP block with clock enable): the
result of the input presented in a cycle with ``en`` high appears ``LATENCY`` enabled cycles
later. Their arithmetic is bit-exact with :func:`amaformer.gen.attention.exp2_fixed` and
:func:`amaformer.gen.attention.recip_fixed`; the tables are computed here from the same formulas.
"""

import math

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .common import check_int

__all__ = ["Exp2Unit", "ReciprocalUnit", "RsqrtUnit", "rshift_round"]


def rshift_round(a, sh, width):
    """``(a + 2^(sh-1)) >> sh`` (round half up; ``sh = 0`` gives ``a``) for a value ``a``
    of at most ``width`` bits and a shift signal ``sh``; computed in ``width + 2`` bits."""
    half = (C(1, width + 2) << sh)[1:]
    return (a + half) >> sh


class Exp2Unit(wiring.Component):
    """``p = 2^(t / 2^F)`` in fixed point, for ``t < 2^F``.

    ``t = ti·2^F + tf`` with ``ti <= 0``; ``p = (T[tf] + 2^(s-1)) >> s``, ``s = min(-ti, PB+2)``
    (round half up), with the ``2^F``-entry table ``T[tf] = round(2^(PB + tf/2^F))`` in
    ``[2^PB, 2^(PB+1))``. So ``p`` has ``PB`` fractional bits, is in ``[0, 2^(PB+1))``, and its
    error is at most half an LSB of the table plus half an LSB of the shift. The table is a ROM
    read through a synchronous port (block RAM on FPGAs, no logic).

    Parameters
    ----------
    in_width : int
        Signed width of ``t``.
    frac_bits : int
        ``F``, fractional bits of ``t`` (table index width).
    p_bits : int
        ``PB``, fractional bits of ``p``.

    Members
    -------
    en : ``In(1)``
        Advance the pipeline.
    t : ``In(signed(in_width))``
        Must be below ``2^F`` (a log2-domain value minus its running integer maximum).
    p : ``Out(p_bits + 1)``

    Latency ``LATENCY = 2`` enabled cycles.
    """

    LATENCY = 2

    def __init__(self, *, in_width, frac_bits=6, p_bits=12):
        check_int("frac_bits", frac_bits, 1, 10)
        check_int("p_bits", p_bits, 1, 24)
        check_int("in_width", in_width, frac_bits + 1)
        self.in_width = in_width
        self.frac_bits = frac_bits
        self.p_bits = p_bits
        n = 1 << frac_bits
        self.table = [min((1 << (p_bits + 1)) - 1, math.floor(2.0 ** (p_bits + i / n) + 0.5))
                      for i in range(n)]
        super().__init__({"en": In(1), "t": In(signed(in_width)), "p": Out(p_bits + 1)})

    def elaborate(self, platform):
        m = Module()
        f, pb = self.frac_bits, self.p_bits
        m.submodules.table = rom = memory.Memory(shape=unsigned(pb + 1), depth=1 << f,
                                                 init=self.table)
        rd = rom.read_port()
        neg = Signal(signed(self.in_width + 1))
        m.d.comb += neg.eq(-(self.t >> f))
        tval = Signal(pb + 1)
        sh = Signal(range(pb + 3))
        m.d.comb += [rd.addr.eq(self.t[:f]), rd.en.eq(self.en), tval.eq(rd.data)]
        with m.If(self.en):
            m.d.sync += sh.eq(Mux(neg > pb + 2, pb + 2, neg[:len(sh)]))
            m.d.sync += self.p.eq(rshift_round(tval, sh, pb + 2))
        return m


class ReciprocalUnit(wiring.Component):
    """``(r, e)`` with ``1/l ≈ r · 2^-(RB + e)``, ``e = floor(log2 l)``, for ``l >= 1``.

    ``l`` is normalized to ``MB`` bits ``lm`` in ``[2^(MB-1), 2^MB)`` (low bits truncated); a
    ``2^TB``-entry table gives the seed ``x0 = round(2^RB / (1 + (i + 0.5)/2^TB))`` indexed by
    the ``TB`` bits after the leading one; one Newton step gives
    ``x1 = (x0·(2^(MB+RB) - lm·x0) + 2^(MB+RB-2)) >> (MB-1+RB)``, clamped to ``2^RB``. The
    table is a ROM read through a synchronous port (block RAM on FPGAs).
    Relative error of ``r`` against ``2^RB/lm`` below ``2^-13`` with the default
    ``MB, TB, RB = 16, 6, 15`` (checked over all mantissas), plus ``2^-(MB-1)`` from truncating
    ``l`` to ``MB`` bits.
    ``l = 0`` gives ``r = e = 0``.

    Parameters
    ----------
    in_width : int
        Width of the unsigned input ``l``.
    mant_bits, table_bits, recip_bits : int
        ``MB``, ``TB``, ``RB`` above.

    Members
    -------
    en : ``In(1)``
    l : ``In(in_width)``
    r : ``Out(recip_bits + 1)``
    e : ``Out(range(in_width))``

    Latency ``LATENCY = 4`` enabled cycles.
    """

    LATENCY = 4

    def __init__(self, *, in_width, mant_bits=16, table_bits=6, recip_bits=15):
        check_int("in_width", in_width, 1, 64)
        check_int("table_bits", table_bits, 1, 12)
        check_int("mant_bits", mant_bits, table_bits + 1, 32)
        check_int("recip_bits", recip_bits, 2, 32)
        self.in_width = in_width
        self.mant_bits = mant_bits
        self.table_bits = table_bits
        self.recip_bits = recip_bits
        n = 1 << table_bits
        self.table = [math.floor((1 << recip_bits) / (1 + (i + 0.5) / n) + 0.5) for i in range(n)]
        super().__init__({"en": In(1), "l": In(in_width), "r": Out(recip_bits + 1),
                          "e": Out(range(in_width))})

    def elaborate(self, platform):
        m = Module()
        w, mb, tb, rb = self.in_width, self.mant_bits, self.table_bits, self.recip_bits
        # stage 1: leading one and normalization
        lead = Signal(range(w))
        for b in range(w):
            with m.If(self.l[b]):
                m.d.comb += lead.eq(b)
        norm = Signal(w)
        m.d.comb += norm.eq(self.l << (w - 1 - lead).as_unsigned())
        lm_c = norm[w - mb:] if w >= mb else Cat(C(0, mb - w), norm)
        lm1, lm2 = Signal(mb), Signal(mb)
        e1, e2, e3 = (Signal(range(w)) for _ in range(3))
        nz1, nz2, nz3 = Signal(), Signal(), Signal()
        x0_2, x0_3 = Signal(rb + 1), Signal(rb + 1)
        err3 = Signal(mb + rb + 1)
        m.submodules.table = rom = memory.Memory(shape=unsigned(rb + 1), depth=1 << tb,
                                                 init=self.table)
        rd = rom.read_port()
        m.d.comb += [rd.addr.eq(lm1[mb - 1 - tb:mb - 1]), rd.en.eq(self.en), x0_2.eq(rd.data)]
        x1 = Signal(2 * (mb + rb) + 2)
        m.d.comb += x1.eq((x0_3 * err3 + (1 << (mb + rb - 2))) >> (mb - 1 + rb))
        with m.If(self.en):
            m.d.sync += [lm1.eq(lm_c), e1.eq(lead), nz1.eq(self.l != 0)]
            m.d.sync += [lm2.eq(lm1), e2.eq(e1), nz2.eq(nz1)]
            m.d.sync += [err3.eq(C(1 << (mb + rb), mb + rb + 1) - lm2 * x0_2), x0_3.eq(x0_2),
                         e3.eq(e2), nz3.eq(nz2)]
            m.d.sync += [self.r.eq(Mux(nz3, Mux(x1 > (1 << rb), 1 << rb, x1), 0)),
                         self.e.eq(Mux(nz3, e3, 0))]
        return m


class RsqrtUnit(wiring.Component):
    """Scale of a vector to unit norm 127: ``(r, s)`` with ``127/sqrt(n2) ≈ r · 2^-s``.

    ``b`` is the bit length of ``n2``, ``e2 = ceil(b/2)``; ``idx = floor(n2·2^(TB+1)/4^e2)``
    (``TB + 1`` bits, at least ``2^(TB-1)``) reads the ROM ``T[idx] = round(127·2^RB /
    sqrt((idx + 0.5)/2^(TB+1)))`` (``RB + 8`` bits, one block RAM for ``TB = 7, RB = 7``) and
    ``s = RB + e2``. The caller forms ``x̂ = (x·r + 2^(s-1)) >> s``; bit-exact with
    :func:`amaformer.gen.attention.unit_int`. ``n2 = 0`` gives ``r = 0``.

    Parameters
    ----------
    in_width : int
        Width of the unsigned input ``n2``.
    table_bits, frac_bits : int
        ``TB`` and ``RB`` above.

    Members
    -------
    en : ``In(1)``
    n2 : ``In(in_width)``
    r : ``Out(frac_bits + 8)``
    s : ``Out(range(frac_bits + in_width // 2 + 2))``

    Latency ``LATENCY = 2`` enabled cycles.
    """

    LATENCY = 2

    def __init__(self, *, in_width, table_bits=7, frac_bits=7):
        check_int("in_width", in_width, 1, 64)
        check_int("table_bits", table_bits, 2, 12)
        check_int("frac_bits", frac_bits, 0, 16)
        self.in_width = in_width
        self.table_bits = table_bits
        self.frac_bits = frac_bits
        n = 1 << (table_bits + 1)
        self.table = [0 if i < n // 4 else
                      math.floor(127 * (1 << frac_bits) / math.sqrt((i + 0.5) / n) + 0.5)
                      for i in range(n)]
        super().__init__({"en": In(1), "n2": In(in_width), "r": Out(frac_bits + 8),
                          "s": Out(range(frac_bits + in_width // 2 + 2))})

    def elaborate(self, platform):
        m = Module()
        tb, rb = self.table_bits, self.frac_bits
        w = max(self.in_width, tb + 1)
        n2 = Signal(w)
        m.d.comb += n2.eq(self.n2)
        lead = Signal(range(w))
        for b in range(w):
            with m.If(n2[b]):
                m.d.comb += lead.eq(b)
        norm = Signal(w)
        m.d.comb += norm.eq(n2 << (w - 1 - lead).as_unsigned())
        idx = Signal(tb + 1)
        s1 = Signal.like(self.s)
        m.submodules.rom = rom = memory.Memory(shape=unsigned(rb + 8), depth=1 << (tb + 1),
                                               init=self.table)
        rd = rom.read_port()
        m.d.comb += [rd.addr.eq(idx), rd.en.eq(self.en)]
        with m.If(self.en):
            # bit length lead + 1 even: n2/4^e2 in [1/2, 1), the top TB+1 bits; odd: [1/4, 1/2)
            m.d.sync += [idx.eq(Mux(lead[0], norm[w - tb - 1:], norm[w - tb:])),
                         s1.eq(rb + (lead >> 1) + 1), self.s.eq(s1)]
        m.d.comb += self.r.eq(rd.data)
        return m
