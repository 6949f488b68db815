"""Programming a board with a bitstream: openFPGALoader, or iceprog for iCE40 boards.

:func:`flash` runs the programmer and turns its failures into one-line
:class:`FlashError` messages; "no board attached" is recognised and said as such.
"""

import shutil
import subprocess
from pathlib import Path

from .catalogue import BoardError, get_board

__all__ = ["FlashError", "flash_command", "flash", "PROGRAMMERS"]

PROGRAMMERS = ("auto", "openfpgaloader", "iceprog")

#: Programmer output that means no cable/board answered.
_NO_DEVICE = ("device not found", "unable to open ftdi device", "failed to claim cable",
              "no cable", "jtag init failed", "can't find iceprog", "no device found",
              "cable not found", "usb device not found")


class FlashError(RuntimeError):
    """Programming failed (no board attached, programmer missing or refused)."""


def flash_command(board_name, bitstream, *, programmer="auto", to_flash=False, which=None):
    """The programmer command line for a board, without running it.

    Parameters
    ----------
    board_name : str
    bitstream : str or Path
        ``.bin`` (iCE40) or ``.bit`` (ECP5) file.
    programmer : str
        ``"openfpgaloader"``, ``"iceprog"`` (iCE40 only) or ``"auto"``: openFPGALoader when
        installed, else iceprog on iCE40 boards.
    to_flash : bool
        Write the configuration flash (kept over power cycles) instead of the FPGA's SRAM.
        iCE40 boards are always programmed through their flash.
    which : callable or None
        ``shutil.which`` replacement (tests).

    Raises
    ------
    BoardError
        Unknown board, or iceprog asked for a non-iCE40 board.
    FlashError
        No programmer is installed.
    """
    which = which or shutil.which
    board = get_board(board_name)
    if programmer not in PROGRAMMERS:
        raise BoardError(f"programmer must be one of {', '.join(PROGRAMMERS)}, "
                         f"not {programmer!r}")
    if programmer == "iceprog" and board.family != "ice40":
        raise BoardError(f"programmer 'iceprog' only programs iCE40 boards, "
                         f"not {board.name!r} ({board.device.part})")
    if programmer == "auto":
        if which("openFPGALoader"):
            programmer = "openfpgaloader"
        elif board.family == "ice40" and which("iceprog"):
            programmer = "iceprog"
        else:
            need = "openFPGALoader" + (" or iceprog" if board.family == "ice40" else "")
            raise FlashError(f"no programmer found: install {need} "
                             f"(Debian package openfpgaloader)")
    if programmer == "iceprog":
        return ["iceprog", str(bitstream)]
    argv = ["openFPGALoader", "-b", board.flash_board]
    if to_flash and board.family != "ice40":
        argv.append("-f")
    return argv + [str(bitstream)]


def flash(board_name, bitstream, *, programmer="auto", to_flash=False, timeout=300):
    """Program a board.

    Raises
    ------
    BoardError
        Unknown board or unsuitable programmer.
    FileNotFoundError
        The bitstream does not exist.
    FlashError
        No board answered (the message says so), or the programmer failed.
    """
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise FileNotFoundError(f"bitstream {str(bitstream)!r} does not exist")
    board = get_board(board_name)
    argv = flash_command(board_name, bitstream, programmer=programmer, to_flash=to_flash)
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=timeout)
    except FileNotFoundError:
        raise FlashError(f"programmer {argv[0]!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise FlashError(f"{argv[0]} did not finish within {timeout} s") from None
    out = proc.stdout or ""
    low = out.lower()
    if proc.returncode != 0 or any(s in low for s in _NO_DEVICE):
        if any(s in low for s in _NO_DEVICE):
            raise FlashError(f"no board attached: {argv[0]} found no {board.name} board "
                             f"({board.description}); is it plugged in over USB?")
        last = [line.strip() for line in out.splitlines() if line.strip()][-1:]
        raise FlashError(f"{argv[0]} failed (exit {proc.returncode})"
                         + (f": {last[0]}" if last else ""))
    return out
