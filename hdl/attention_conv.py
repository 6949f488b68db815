"""What the two linear attention kernels (:mod:`.attention_linear`, :mod:`.attention_angular`)
share: their stream ports, the per-lane counters of their load and output phases, and the
depthwise convolution over V along tokens (weights written through ``cw_wr``, one multiply-add
per lane and cycle, results kept per lane group).
"""

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .attention_spec import conv_bank_bits
from .common import MemWriteSignature, job_ports
from .linear import lut_multiply

__all__ = ["LinearKernel", "kernel_ports", "conv_ports", "accept_job", "load_elements", "count_lanes", "sweep_groups",
           "count_to", "conv_memories", "conv_mac"]


class LinearKernel(wiring.Component):
    """Base of the two linear kernels: their 8-bit multiplier and the configuration fields they
    share. Subclasses set ``lut_macs`` (multipliers in logic instead of DSP blocks)."""

    lut_macs = False
    #: Constructor argument → ``AttentionConfig`` field, besides :meth:`shared_kwargs`.
    CONFIG_FIELDS = {}

    def __init__(self, max_tokens, mode_ports):
        """The ports: :func:`kernel_ports`, the kernel's own ``mode_ports`` and
        :func:`conv_ports` (subclasses set ``lanes``, ``max_dim``, ``conv_taps`` first)."""
        super().__init__(kernel_ports(max_tokens, self.max_dim) | mode_ports
                         | conv_ports(self.conv_taps, self.lanes, self.max_dim))

    @classmethod
    def from_config(cls, att):
        """Build from an :class:`amaformer.gen.config.AttentionConfig` (duck-typed)."""
        return cls(**cls.shared_kwargs(att),
                   **{arg: getattr(att, name) for arg, name in cls.CONFIG_FIELDS.items()})

    @staticmethod
    def shared_kwargs(att):
        """Constructor arguments read from an ``AttentionConfig`` (duck-typed) that both
        kernels take: lanes (at most the head dimension), ``max_dim``, ``conv_taps``,
        ``lut_macs``."""
        return dict(lanes=min(att.lanes, att.head_dim), max_dim=att.head_dim,
                    conv_taps=att.conv_taps, lut_macs=getattr(att, "lut_macs", "none") == "all")

    def _mul8(self, a, b):
        """``a·b`` for an 8-bit ``a``: in logic with ``lut_macs``, else ``*`` (a DSP)."""
        return lut_multiply(b, a) if self.lut_macs else a * b


def kernel_ports(max_tokens, max_dim):
    """Ports of a linear kernel: ``qkv`` (q, k, v int8 of one element per beat) in, ``o`` (int8)
    out, ``start`` with ``tokens`` (up to ``max_tokens``) and ``dim`` (up to ``max_dim``),
    ``busy`` and ``done`` (one cycle)."""
    return {
        "qkv":    In(stream.Signature(data.StructLayout(
            {"q": signed(8), "k": signed(8), "v": signed(8)}))),
        "o":      Out(stream.Signature(signed(8))),
        **job_ports(tokens=max_tokens, dim=max_dim),
    }


def conv_ports(conv_taps, lanes, max_dim):
    """Ports the convolution adds (none without taps): ``conv_mult`` (16 bits) and
    ``conv_shift`` (6 bits) of its requantizer, and ``cw_wr``: int8 weights, one bank per lane
    (:func:`~amaformer.hdl.attention_spec.conv_bank_bits` address bits within a bank)."""
    if not conv_taps:
        return {}
    return {"conv_mult":  In(16),
            "conv_shift": In(6),
            "cw_wr":      In(MemWriteSignature(
                lanes << conv_bank_bits(conv_taps, lanes, max_dim), signed(8)))}


def accept_job(m, kernel, conv_regs, next_state):
    """In the idle state, on ``start``: latch the convolution's requantizer into ``conv_regs``
    (``(mult, shift)`` registers, or ``None`` without taps); a job with no tokens or ``dim = 0``
    is done at once (``done`` the next cycle), else the kernel turns ``busy`` and its FSM goes to
    ``next_state``."""
    if conv_regs:
        m.d.sync += [conv_regs[0].eq(kernel.conv_mult), conv_regs[1].eq(kernel.conv_shift)]
    with m.If((kernel.tokens == 0) | (kernel.dim == 0)):
        m.d.sync += kernel.done.eq(1)
    with m.Else():
        m.d.sync += kernel.busy.eq(1)
        m.next = next_state


def load_elements(m, kernel, fire, flat, lane, group, lanes, last):
    """The load phase: ``qkv`` ready; every accepted element (``fire``) advances the element
    counters (:func:`count_lanes`). Returns the condition "the last element (``flat ==
    last``) is accepted this cycle" for the caller's next state (its assignments win over the
    counters')."""
    m.d.comb += kernel.qkv.ready.eq(1)
    with m.If(fire):
        count_lanes(m, flat, lane, group, lanes)
    return fire & (flat == last)


def count_lanes(m, flat, lane, group, lanes):
    """One step of an element counter over lane groups: ``flat`` counts elements, ``lane``
    (0 to ``lanes - 1``) and ``group`` say where the element sits (synchronous)."""
    m.d.sync += [flat.eq(flat + 1), lane.eq(lane + 1)]
    with m.If(lane == lanes - 1):
        m.d.sync += [lane.eq(0), group.eq(group + 1)]


def sweep_groups(m, active, inner, inner_max, group, last_group, *, then, clear):
    """One cycle of a sweep over lane groups (``active`` high, combinationally): ``inner``
    counts 0 to ``inner_max`` within a group, then ``group`` advances (synchronous). After the
    last cycle of group ``last_group`` the FSM goes to state ``then`` with ``clear`` zeroed
    (the next state's cycle counter)."""
    m.d.comb += active.eq(1)
    m.d.sync += inner.eq(inner + 1)
    with m.If(inner == inner_max):
        m.d.sync += [inner.eq(0), group.eq(group + 1)]
        with m.If(group == last_group):
            m.d.sync += clear.eq(0)
            m.next = then


def count_to(m, counter, last):
    """Advance ``counter`` (synchronous); returns the condition ``counter == last`` (a wait of
    ``last + 1`` cycles from zero)."""
    m.d.sync += counter.eq(counter + 1)
    return counter == last


def conv_memories(m, cw_wr, *, taps, lanes, max_dim, groups, conv_width):
    """Per lane ``p``: ``cmem{p}`` (``groups`` results of ``conv_width`` bits) and ``wmem{p}``
    (``groups · taps`` int8 weights, written from bank ``p`` of ``cw_wr``).

    Returns ``(c_r, c_w, w_r)``: per lane, the results' read and write ports and the weights'
    read port (all synchronous).
    """
    c_r, c_w, w_r = [], [], []
    bank_bits = conv_bank_bits(taps, lanes, max_dim)
    for p in range(lanes):
        cmm = memory.Memory(shape=signed(conv_width), depth=groups, init=[])
        wm = memory.Memory(shape=signed(8), depth=groups * taps, init=[])
        m.submodules[f"cmem{p}"] = cmm
        m.submodules[f"wmem{p}"] = wm
        c_r.append(cmm.read_port())
        c_w.append(cmm.write_port())
        w_r.append(wm.read_port())
        ww = wm.write_port()
        m.d.comb += [ww.addr.eq(cw_wr.addr[:bank_bits]), ww.data.eq(cw_wr.data),
                     ww.en.eq(cw_wr.en & (cw_wr.addr[bank_bits:] == p))]
    return c_r, c_w, w_r


def conv_mac(m, *, issue, first, last, ok, group, tap, taps, w_r, v_r, c_w, mul, conv_width):
    """The convolution's multiply-add pipeline, two stages: ``issue`` (weight address ``group ·
    taps + tap`` and the V read set up by the caller) → c1 (``acc = first ? 0 : acc``, plus
    ``w · v`` when ``ok``, else 0) → c2 (the sum written at ``group`` after the ``last`` tap).

    ``mul(a, b)`` builds an 8-bit product (DSP or logic). Latency 2 cycles from ``issue``.
    """
    names = ("c1_valid", "c1_first", "c1_last", "c1_ok", "c2_valid")
    c1_valid, c1_first, c1_last, c1_ok, c2_valid = (Signal(name=n) for n in names)
    c1_g, c2_g = Signal.like(group, name="c1_g"), Signal.like(group, name="c2_g")
    m.d.sync += [c1_valid.eq(issue), c1_first.eq(first), c1_last.eq(last), c1_ok.eq(ok),
                 c1_g.eq(group), c2_valid.eq(c1_valid & c1_last), c2_g.eq(c1_g)]
    for p, (wr, vr, cw) in enumerate(zip(w_r, v_r, c_w)):
        acc = Signal(signed(conv_width), name=f"cacc{p}")
        m.d.comb += wr.addr.eq(group * taps + tap)
        with m.If(c1_valid):
            m.d.sync += acc.eq(Mux(c1_first, 0, acc) + Mux(c1_ok, mul(wr.data, vr.data), 0))
        m.d.comb += [cw.addr.eq(c2_g), cw.data.eq(acc), cw.en.eq(c2_valid)]
