"""Board-specific memory primitives, chosen by the platform in one place.

:class:`ByteMemory` is a single-port byte memory: four ``SB_SPRAM256KA`` (16K × 16 bit each) on
an iCE40 UltraPlus, ``lib.memory`` (block RAM or LUT RAM, as Yosys infers it) elsewhere. Every
unit and the link get their memories through here, never instantiating primitives themselves.
Multipliers are not instantiated either: Yosys maps them to ``SB_MAC16`` (iCE40, with
``synth_ice40 -dsp``) or ``MULT18X18D`` (ECP5); how many lanes use them is the configuration's
``linear.dsp_lanes``.
"""

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ByteMemory", "is_ice40_up", "spram_block", "SPRAM_BYTES", "SPRAM_WORDS"]

SPRAM_BYTES = 32768             #: bytes of one iCE40 SB_SPRAM256KA (16K × 16 bit)
SPRAM_WORDS = 16384             #: 16-bit words of one SB_SPRAM256KA


def spram_block(*, addr, data_in, mask, we, data_out, select=1):
    """One iCE40 UltraPlus ``SB_SPRAM256KA`` (16K × 16 bit, single port, read latency 1),
    powered and awake: the only place the primitive is instantiated.

    Parameters
    ----------
    addr : 14-bit value
    data_in : 16-bit value
    mask : 4-bit value
        Write enables of the four nibbles.
    we, select : 1-bit values
        Write enable, chip select (a deselected SPRAM keeps its output).
    data_out : Signal(16)
    """
    return Instance("SB_SPRAM256KA", i_ADDRESS=addr, i_DATAIN=data_in, i_MASKWREN=mask,
                    i_WREN=we, i_CHIPSELECT=select, i_CLOCK=ClockSignal(), i_STANDBY=0,
                    i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=data_out)


def is_ice40_up(platform):
    """Whether ``platform`` is an iCE40 UltraPlus (which has SPRAM)."""
    return (platform is not None and str(getattr(platform, "family", "")).lower() == "ice40"
            and str(getattr(platform, "device", "")).upper().startswith("ICE40UP"))


class ByteMemory(wiring.Component):
    """Single-port byte memory: SB_SPRAM256KA on iCE40 UltraPlus, ``lib.memory`` elsewhere.

    Parameters
    ----------
    depth : int
        Bytes. With SPRAM, a multiple of :data:`SPRAM_BYTES` (one SPRAM per 32 KiB).
    spram : bool or None
        Use SPRAM; ``None`` picks it when the platform is an iCE40 UltraPlus and ``depth`` is a
        multiple of :data:`SPRAM_BYTES`.

    Members
    -------
    addr : ``In(range(depth))``
    wdata : ``In(8)``
    we : ``In(1)``
        Write ``wdata`` at ``addr`` at the next clock edge.
    rdata : ``Out(8)``
        The byte at the ``addr`` of the previous cycle (read latency 1); undefined after a write.
    """

    def __init__(self, depth, *, spram=None):
        if not isinstance(depth, int) or depth < 2:
            self._MustUse__silence = True       # never elaborated: no "unused" warning
            raise ValueError(f"depth must be an integer >= 2, not {depth!r}")
        if spram and depth % SPRAM_BYTES:
            self._MustUse__silence = True
            raise ValueError(f"depth must be a multiple of {SPRAM_BYTES} with SPRAM, "
                             f"not {depth!r}")
        self.depth = depth
        self.spram = spram
        super().__init__({
            "addr": In(range(depth)), "wdata": In(8), "we": In(1), "rdata": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        if self.spram is None:
            use_spram = is_ice40_up(platform) and self.depth % SPRAM_BYTES == 0
        else:
            use_spram = self.spram
        if use_spram:
            banks = self.depth // SPRAM_BYTES
            lane_d = Signal()
            bank_d = Signal(range(banks))
            bank = self.addr[15:] if banks > 1 else C(0, 1)
            m.d.sync += [lane_d.eq(self.addr[0]), bank_d.eq(bank)]
            outs = []
            for i in range(banks):
                dout = Signal(16, name=f"spram{i}_dout")
                m.submodules[f"spram{i}"] = spram_block(
                    addr=self.addr[1:15], data_in=Cat(self.wdata, self.wdata),
                    mask=Mux(self.addr[0], 0b1100, 0b0011), we=self.we & (bank == i),
                    data_out=dout)
                outs.append(dout)
            word = Array(outs)[bank_d] if banks > 1 else outs[0]
            m.d.comb += self.rdata.eq(word.word_select(lane_d, 8))
        else:
            m.submodules.mem = mem = memory.Memory(shape=8, depth=self.depth, init=[])
            rd = mem.read_port()
            wr = mem.write_port()
            m.d.comb += [rd.addr.eq(self.addr), self.rdata.eq(rd.data),
                         wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we)]
        return m
