"""Building blocks shared by the engines: a memory write-port signature and the requantizer."""

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["check_int", "drive_write_port", "job_ports", "lane_memories", "linear_engine_ports",
           "params_memory",
           "MemWriteSignature", "RequantParams", "Requantizer"]

#: Per-column requantization word: bias (accumulator units), multiplier M, shift S.
RequantParams = data.StructLayout({
    "bias":  signed(32),
    "mult":  unsigned(16),
    "shift": unsigned(6),
})


def check_int(name, value, lo, hi=None):
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) in ``[lo, hi]``.

    The message names the parameter, what is allowed and the value, e.g.
    ``lanes must be a positive integer, not 0``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        if hi is not None:
            allowed = f"an integer in [{lo}, {hi}]"
        elif lo == 1:
            allowed = "a positive integer"
        else:
            allowed = f"an integer >= {lo}"
        raise ValueError(f"{name} must be {allowed}, not {value!r}")


def lane_memories(m, count, name, shape, depth):
    """``count`` memories ``{name}0``, ``{name}1``, ... of ``depth`` words of ``shape``, added
    to ``m`` (one per lane or bank, the names the build's memory audit knows them by); returns
    their ``(read ports, write ports)``, both synchronous, read ports not transparent."""
    reads, writes = [], []
    for p in range(count):
        mem = memory.Memory(shape=shape, depth=depth, init=[])
        m.submodules[f"{name}{p}"] = mem
        reads.append(mem.read_port())
        writes.append(mem.write_port())
    return reads, writes


def job_ports(**sizes):
    """The job control members every engine has: ``start`` in (one cycle), one
    ``In(range(largest + 1))`` per named job size (``m=max_m``, ``tokens=max_tokens``, ...), read
    on ``start``, and ``busy`` and ``done`` (one cycle) out."""
    return {"start": In(1), **{name: In(range(hi + 1)) for name, hi in sizes.items()},
            "busy": Out(1), "done": Out(1)}


def linear_engine_ports(*, act_bits, max_m, max_k, max_n, weight_depth, weight_word,
                        weight_granularity):
    """Signature members shared by every linear engine (``mul``, ``shift``, ``bcq``), so that
    the top and the host driver use any of them unchanged.

    ``x``/``y`` are the activation and output streams (``signed(act_bits)``), ``start``/``m``/
    ``k``/``n``/``busy``/``done`` the job control, ``w_wr`` the weight buffer write port
    (``weight_depth`` words of ``weight_word`` bits, one enable per ``weight_granularity`` bits)
    and ``p_wr`` the per-column :data:`RequantParams` write port.
    """
    return {
        "x":     In(stream.Signature(signed(act_bits))),
        "y":     Out(stream.Signature(signed(act_bits))),
        **job_ports(m=max_m, k=max_k, n=max_n),
        "w_wr":  In(MemWriteSignature(weight_depth, weight_word, weight_granularity)),
        "p_wr":  In(MemWriteSignature(max_n, RequantParams.size)),
    }


def drive_write_port(m, mem_port, bus):
    """Drive a ``lib.memory`` write port from a :class:`MemWriteSignature` bus (no latency)."""
    m.d.comb += [mem_port.addr.eq(bus.addr), mem_port.data.eq(bus.data),
                 mem_port.en.eq(bus.en)]


def params_memory(m, engine):
    """The per-column :data:`RequantParams` memory of a linear engine, ``m.submodules.pmem``.

    ``engine.max_n`` words, written by the host through ``engine.p_wr`` (no latency); the
    engine adds its own read ports (synchronous, so the words may live in block RAM).
    """
    m.submodules.pmem = pmem = memory.Memory(shape=RequantParams, depth=engine.max_n, init=[])
    p_w = pmem.write_port()
    drive_write_port(m, p_w, engine.p_wr)
    return pmem


class MemWriteSignature(wiring.Signature):
    """Write port of an on-chip memory, from the writer's side.

    Members
    -------
    addr : ``Out(range(depth))``
    data : ``Out(shape)``
    en : ``Out(width // granularity)``
        One enable per ``granularity`` bits (one enable when ``granularity`` is ``None``).
    """

    def __init__(self, depth, shape, granularity=None):
        width = Shape.cast(shape).width
        if granularity is not None and width % granularity:
            raise ValueError(f"granularity must divide the data width {width}, "
                             f"not {granularity!r}")
        self.depth = depth
        super().__init__({
            "addr": Out(range(depth)),
            "data": Out(shape),
            "en":   Out(1 if granularity is None else width // granularity),
        })


class Requantizer(wiring.Component):
    """``y = clamp(((acc + bias) · mult + R) >> shift)``, ``R = 2^(shift-1)`` (0 when shift = 0).

    Round half up, saturating to ``out_bits`` signed; bit-exact with
    :func:`amaformer.gen.numerics.requantize` applied to ``acc + bias``.

    Parameters
    ----------
    acc_width : int
        Signed width of ``acc``.
    out_bits : int
        Signed width of ``y``.

    Members
    -------
    i : ``In(stream.Signature(...))``
        Payload ``acc`` (``signed(acc_width)``) and ``params`` (:data:`RequantParams`).
    o : ``Out(stream.Signature(signed(out_bits)))``
    busy : ``Out(1)``
        A value is inside the pipeline (not counting ``o``).

    Latency 3 cycles from an ``i`` transfer to ``o.valid``; one value per cycle; the whole
    pipeline stalls while ``o`` is valid and not ready.
    """

    LATENCY = 3

    def __init__(self, acc_width, out_bits=8):
        self.acc_width = acc_width
        self.out_bits = out_bits
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "acc": signed(acc_width), "params": RequantParams}))),
            "o": Out(stream.Signature(signed(out_bits))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        sum_w = max(self.acc_width, 32) + 1
        v1, v2 = Signal(), Signal()
        s1 = Signal(signed(sum_w))
        mult1 = Signal(16)
        shift1, shift2 = Signal(6), Signal(6)
        p2 = Signal(signed(sum_w + 17))
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        with m.If(en):
            par = self.i.payload.params
            m.d.sync += [v1.eq(self.i.valid), s1.eq(self.i.payload.acc + par.bias),
                         mult1.eq(par.mult), shift1.eq(par.shift)]
            m.d.sync += [v2.eq(v1), p2.eq(s1 * mult1), shift2.eq(shift1)]
            rnd = (C(1, 64) << shift2)[1:]
            shifted = Signal(signed(len(p2) + 1))
            m.d.comb += shifted.eq((p2 + rnd) >> shift2)
            m.d.sync += [
                self.o.valid.eq(v2),
                self.o.payload.eq(Mux(shifted > hi, hi, Mux(shifted < lo, lo, shifted))),
            ]
        m.d.comb += self.busy.eq(v1 | v2)
        return m
