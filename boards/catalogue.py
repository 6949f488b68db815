"""Board catalogue: amaranth-boards platforms with device resources and toolchain defaults.

Each board is a subclass of an amaranth-boards platform (a private base per board family, one
subclass per device variant) plus a :class:`Board` entry holding the device's resources, which
the generator uses to size the design (e.g. how many lanes get DSP multipliers) and the build
report uses as totals.

The toolchain defaults make builds work with the open tools from PyPI: when ``YOSYS``,
``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5`` or ``ECPPACK`` are not set and no native tool of
that name is on ``PATH``, they point at the ``yowasp-*`` commands (:func:`toolchain_env`).
"""

import os
import shutil
import sys
from dataclasses import dataclass

from amaranth.build import Attrs, Pins, Resource, Subsignal
from amaranth_boards.icebreaker import ICEBreakerPlatform as _ICEBreakerBase
from amaranth_boards.orangecrab_r0_2 import _OrangeCrabR0_2Platform
from amaranth_boards.ulx3s import _ULX3SPlatform

__all__ = ["BoardError", "Device", "Board", "BOARDS", "get_board", "board_names",
           "toolchain_env", "TOOL_ENV_VARS"]


class BoardError(ValueError):
    """Unknown board, or a board that cannot do what was asked. The message is one line."""


#: Environment variable → tool name, for the tools Amaranth invokes on Lattice devices.
TOOL_ENV_VARS = {
    "YOSYS": "yosys",
    "NEXTPNR_ICE40": "nextpnr-ice40",
    "ICEPACK": "icepack",
    "NEXTPNR_ECP5": "nextpnr-ecp5",
    "ECPPACK": "ecppack",
}


def toolchain_env(environ=None):
    """Environment for a build: each tool variable set to the native tool when it is on
    ``PATH``, else to the ``yowasp-*`` command, unless already set.

    Parameters
    ----------
    environ : dict or None
        Base environment (default: :data:`os.environ`); not modified.

    Returns
    -------
    dict
        A new environment.
    """
    env = dict(os.environ if environ is None else environ)
    for var, tool in TOOL_ENV_VARS.items():
        if not env.get(var):
            env[var] = tool if shutil.which(tool, path=env.get("PATH")) else f"yowasp-{tool}"
    # The yowasp-* commands live next to the Python interpreter of the virtual environment,
    # which may not be on PATH when amaformer is called by its absolute path.
    bindir = os.path.dirname(sys.executable)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


@dataclass(frozen=True)
class Device:
    """Resources of one FPGA device.

    Parameters
    ----------
    part : str
        Device name as the vendor writes it (``"iCE40UP5K"``, ``"LFE5U-85F"``).
    family : str
        ``"ice40"`` or ``"ecp5"``.
    lut : int
        4-input LUTs (iCE40 logic cells; each has one flip-flop).
    ff : int
        Flip-flops.
    dsp : int
        Hardware multipliers: iCE40 ``SB_MAC16`` (16×16), ECP5 ``MULT18X18D`` (18×18).
    bram : int
        Block RAMs (iCE40 EBR of 4 kbit, ECP5 EBR of 18 kbit).
    bram_kbit : int
        Size of one block RAM in kbit.
    spram : int
        Single-port RAMs (iCE40UP ``SB_SPRAM256KA``, 256 kbit each); 0 where absent.
    """
    part: str
    family: str
    lut: int
    ff: int
    dsp: int
    bram: int
    bram_kbit: int
    spram: int = 0
    spram_kbit: int = 256

    @property
    def bram_total_kbit(self):
        return self.bram * self.bram_kbit

    @property
    def spram_total_kbit(self):
        return self.spram * self.spram_kbit


ICE40UP5K = Device("iCE40UP5K", "ice40", lut=5280, ff=5280, dsp=8, bram=30, bram_kbit=4,
                   spram=4)
LFE5U_25F = Device("LFE5U-25F", "ecp5", lut=24288, ff=24288, dsp=28, bram=56, bram_kbit=18)
LFE5U_45F = Device("LFE5U-45F", "ecp5", lut=43848, ff=43848, dsp=72, bram=108, bram_kbit=18)
LFE5U_85F = Device("LFE5U-85F", "ecp5", lut=83640, ff=83640, dsp=156, bram=208, bram_kbit=18)


class _AmaformerPlatform:
    """Mixin for the catalogue's platforms: build options that every amaformer build uses.

    * ``synth_opts``: family-specific Yosys options (``-dsp`` on iCE40, so that multipliers map
      to ``SB_MAC16``; without it they are built from logic).
    * ``nextpnr_opts``: ``--report report.json`` (utilization and fmax, read by the build
      report) and ``--timing-allow-fail`` (a design slower than the requested clock still
      produces a bitstream; the report says whether timing was met).
    """
    _amaformer_synth_opts = ""
    #: Frequency of the clock driving ``sync`` when it is not the oscillator (a PLL), in Hz.
    core_clock_hz = None

    @property
    def default_clk_frequency(self):
        """Frequency of the ``sync`` domain: the PLL's when a build adds one, else the
        oscillator's (:attr:`oscillator_frequency`). Designs derive baud divisors from it."""
        if self.core_clock_hz is not None:
            return self.core_clock_hz
        return super().default_clk_frequency

    @property
    def oscillator_frequency(self):
        """Frequency of the board oscillator (``default_clk``), in Hz."""
        return self.lookup(self.default_clk).clock.frequency

    def toolchain_prepare(self, fragment, name, **kwargs):
        overrides = {}
        if self._amaformer_synth_opts:
            overrides["synth_opts"] = self._amaformer_synth_opts
        overrides["nextpnr_opts"] = "--report report.json --timing-allow-fail"
        for key, value in kwargs.items():
            if key in ("synth_opts", "nextpnr_opts") and key in overrides and value:
                value = f"{overrides[key]} {value}"
            overrides[key] = value
        return super().toolchain_prepare(fragment, name, **overrides)


class _ICEBreaker(_AmaformerPlatform, _ICEBreakerBase):
    _amaformer_synth_opts = "-dsp"


class ICEBreakerPlatform(_ICEBreaker):
    """1BitSquared iCEBreaker: iCE40UP5K-SG48, 12 MHz oscillator, FTDI UART (``uart`` 0)."""


class _ULX3S(_AmaformerPlatform, _ULX3SPlatform):
    #: ``-nolutram``: small memories go to block RAM, or flip-flops up to 128 bits, not
    #: ``TRELLIS_DPR16X4`` (``gen/calibration.json`` is measured with it). Yosys 0.70's ``abc9``
    #: reintegration (``abc_ops_reintegrate``) asserts ``GetSize(conn.first) ==
    #: GetSize(conn.second)`` (kernel/rtlil.cc) with LUT RAM on the 32-lane linear + 4-lane
    #: attention accelerator; with ``-nolutram`` 23 of the 25 ECP5 calibration configurations
    #: give clean netlists (a 32-lane ``shift`` one still asserts, and the 32 + 4-lane one gets
    #: a multiply driven net that nextpnr rejects).
    _amaformer_synth_opts = "-nolutram"


class ULX3S25FPlatform(_ULX3S):
    """Radiona ULX3S with an LFE5U-25F: 25 MHz oscillator, FTDI UART (``uart`` 0)."""
    device = "LFE5U-25F"


class ULX3S45FPlatform(_ULX3S):
    """Radiona ULX3S with an LFE5U-45F."""
    device = "LFE5U-45F"


class ULX3S85FPlatform(_ULX3S):
    """Radiona ULX3S with an LFE5U-85F."""
    device = "LFE5U-85F"


class _OrangeCrab(_AmaformerPlatform, _OrangeCrabR0_2Platform):
    # The OrangeCrab has no USB-UART bridge (its USB port goes to the FPGA); amaformer's command
    # link uses the Feather header pins 1 (TX) and 0 (RX), for a 3.3 V USB-serial adapter.
    resources = _OrangeCrabR0_2Platform.resources + [
        Resource("uart", 0,
                 Subsignal("tx", Pins("1", dir="o", conn=("io", 0))),
                 Subsignal("rx", Pins("0", dir="i", conn=("io", 0))),
                 Attrs(IO_TYPE="LVCMOS33")),
    ]

    @property
    def required_tools(self):
        # dfu-suffix only tags the bitstream for DFU flashing; it is not needed to build one.
        return [t for t in super().required_tools if t != "dfu-suffix"]

    @property
    def command_templates(self):
        return [t for t in super().command_templates if "dfu-suffix" not in t]


class OrangeCrab25FPlatform(_OrangeCrab):
    """Good Stuff Department OrangeCrab r0.2 with an LFE5U-25F, 48 MHz oscillator; UART on the
    Feather header pins 1 (TX) and 0 (RX)."""
    device = "LFE5U-25F"


@dataclass(frozen=True)
class Board:
    """One entry of the catalogue.

    Parameters
    ----------
    name : str
        Catalogue name (``amaformer build --board NAME``).
    platform : type
        The amaranth-boards platform subclass.
    device : Device
    clock_mhz : float
        Oscillator frequency.
    description : str
    flash_board : str
        ``openFPGALoader -b`` name of the board.
    """
    name: str
    platform: type
    device: Device
    clock_mhz: float
    description: str
    flash_board: str

    @property
    def family(self):
        return self.device.family

    def make_platform(self):
        """A fresh platform instance (platforms keep per-build state)."""
        return self.platform()


BOARDS = {b.name: b for b in [
    Board("icebreaker", ICEBreakerPlatform, ICE40UP5K, 12.0,
          "iCEBreaker, iCE40UP5K-SG48", "ice40_generic"),
    Board("ulx3s-25f", ULX3S25FPlatform, LFE5U_25F, 25.0, "ULX3S, ECP5 LFE5U-25F", "ulx3s"),
    Board("ulx3s-45f", ULX3S45FPlatform, LFE5U_45F, 25.0, "ULX3S, ECP5 LFE5U-45F", "ulx3s"),
    Board("ulx3s-85f", ULX3S85FPlatform, LFE5U_85F, 25.0, "ULX3S, ECP5 LFE5U-85F", "ulx3s"),
    Board("orangecrab", OrangeCrab25FPlatform, LFE5U_25F, 48.0,
          "OrangeCrab r0.2, ECP5 LFE5U-25F (UART on Feather pins 1/0)", "orangeCrab"),
]}


def board_names():
    """Names of the catalogue's boards, in catalogue order."""
    return list(BOARDS)


def get_board(name):
    """The :class:`Board` called ``name``.

    Raises
    ------
    BoardError
        No such board; the message lists the known ones.
    """
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise BoardError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
