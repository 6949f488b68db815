"""Core clock for board builds: the board oscillator, or a PLL when a frequency is requested.

nextpnr optimizes placement and routing for the constrained clock. With the iCEBreaker's
12 MHz oscillator as the only constraint it has no reason to go faster, so the fmax it reports
understates the design. A configuration with ``clock_mhz`` set gets a PLL that makes that
frequency (as close as the PLL's dividers allow), and nextpnr then works towards it.
"""

from amaranth import *
from amaranth.lib import io, wiring

__all__ = ["ice40_pll_params", "ecp5_pll_params", "PLLClock"]


def ice40_pll_params(f_in_mhz, f_out_mhz):
    """Divider settings of an iCE40 ``SB_PLL40`` in ``SIMPLE`` feedback mode (as ``icepll``).

    ``f_out = f_in · (DIVF + 1) / ((DIVR + 1) · 2^DIVQ)`` with the phase detector at
    10..133 MHz and the VCO at 533..1066 MHz.

    Returns
    -------
    dict
        ``divr``, ``divf``, ``divq``, ``filter_range`` and the achieved ``f_out_mhz``.

    Raises
    ------
    ValueError
        No setting reaches 16..275 MHz.
    """
    if not 16 <= f_out_mhz <= 275:
        raise ValueError(f"iCE40 PLL output must be in [16, 275] MHz, not {f_out_mhz!r}")
    best = None
    for divr in range(16):
        f_pfd = f_in_mhz / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                f_out = f_vco / (1 << divq)
                if not 16 <= f_out <= 275:
                    continue
                err = abs(f_out - f_out_mhz)
                if best is None or err < best[0] - 1e-9:
                    best = (err, divr, divf, divq, f_pfd, f_out)
    if best is None:
        raise ValueError(f"iCE40 PLL cannot make {f_out_mhz} MHz from {f_in_mhz} MHz")
    _, divr, divf, divq, f_pfd, f_out = best
    filter_range = next((i + 1 for i, lim in enumerate((17, 26, 44, 66, 101)) if f_pfd < lim), 6)
    return dict(divr=divr, divf=divf, divq=divq, filter_range=filter_range, f_out_mhz=f_out)


def ecp5_pll_params(f_in_mhz, f_out_mhz):
    """Divider settings of an ECP5 ``EHXPLLL`` with ``CLKOP`` feedback (as ``ecppll``).

    ``f_out = f_in / CLKI_DIV · CLKFB_DIV``, VCO ``f_out · CLKOP_DIV`` in 400..800 MHz.

    Returns
    -------
    dict
        ``clki_div``, ``clkfb_div``, ``clkop_div`` and the achieved ``f_out_mhz``.
    """
    if not 3.125 <= f_out_mhz <= 400:
        raise ValueError(f"ECP5 PLL output must be in [3.125, 400] MHz, not {f_out_mhz!r}")
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in_mhz / clki_div
        if not 3.125 <= f_pfd <= 400:
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            if not 3.125 <= f_out <= 400:
                continue
            for clkop_div in range(1, 129):
                if 400 <= f_out * clkop_div <= 800:
                    err = abs(f_out - f_out_mhz)
                    if best is None or err < best[0] - 1e-9:
                        best = (err, clki_div, clkfb_div, clkop_div, f_out)
                    break
    if best is None:
        raise ValueError(f"ECP5 PLL cannot make {f_out_mhz} MHz from {f_in_mhz} MHz")
    _, clki_div, clkfb_div, clkop_div, f_out = best
    return dict(clki_div=clki_div, clkfb_div=clkfb_div, clkop_div=clkop_div, f_out_mhz=f_out)


class PLLClock(wiring.Component):
    """Board top that drives the ``sync`` domain from a PLL and contains ``design``.

    The ``sync`` reset is held until the PLL locks and then for another ``15 µs`` (iCE40 block
    RAMs read as zero for about 3 µs after configuration), and released synchronously.

    Parameters
    ----------
    design : Elaboratable
        The design; it may request the board's resources (UART, LEDs) through the platform.
    family : str
        ``"ice40"`` (``SB_PLL40_PAD``) or ``"ecp5"`` (``EHXPLLL``).
    f_in_mhz : float
        Board oscillator frequency.
    f_out_mhz : float
        Requested frequency; the achieved one (nearest the dividers allow) is
        ``self.f_out_mhz``.
    """

    def __init__(self, design, family, f_in_mhz, f_out_mhz):
        if family == "ice40":
            self.params = ice40_pll_params(f_in_mhz, f_out_mhz)
        elif family == "ecp5":
            self.params = ecp5_pll_params(f_in_mhz, f_out_mhz)
        else:
            raise ValueError(f"family must be 'ice40' or 'ecp5', not {family!r}")
        self.design = design
        self.family = family
        self.f_in_mhz = f_in_mhz
        self.f_out_mhz = self.params["f_out_mhz"]
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.design = self.design
        f_in = self.f_in_mhz
        p = self.params
        clk_port = platform.request(platform.default_clk, dir="-")
        pll_clk = Signal()
        lock = Signal()
        if self.family == "ice40":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=p["divr"], p_DIVF=p["divf"], p_DIVQ=p["divq"],
                p_FILTER_RANGE=p["filter_range"],
                i_PACKAGEPIN=clk_port.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=pll_clk, o_LOCK=lock)
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{f_in:g}", a_FREQUENCY_PIN_CLKOP=f"{p['f_out_mhz']:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["clkop_div"],
                p_CLKOP_CPHASE=p["clkop_div"] - 1, p_CLKOP_FPHASE=0,
                p_CLKI_DIV=p["clki_div"], p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p["clkfb_div"],
                i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, i_CLKFB=pll_clk, o_CLKOP=pll_clk,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=lock)

        m.domains.por = ClockDomain(reset_less=True, local=True)
        m.domains.sync = ClockDomain()
        m.d.comb += [ClockSignal("por").eq(pll_clk), ClockSignal("sync").eq(pll_clk)]
        delay = int(15e-6 * self.f_out_mhz * 1e6)
        timer = Signal(range(delay + 1))
        lock_s = Signal(2)
        m.d.por += lock_s.eq(Cat(lock, lock_s[0]))
        with m.If(~lock_s[1]):
            m.d.por += timer.eq(0)
        with m.Elif(timer != delay):
            m.d.por += timer.eq(timer + 1)
        rst = Signal(init=1)
        m.d.por += rst.eq(timer != delay)
        m.d.comb += ResetSignal("sync").eq(rst)
        platform.add_clock_constraint(pll_clk, self.f_out_mhz * 1e6)
        return m
