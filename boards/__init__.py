"""amaformer.boards: board catalogue, bitstream builds and flashing.

>>> from amaformer.boards import get_board, build
>>> get_board("icebreaker").device.dsp
8
"""

from .catalogue import (BOARDS, Board, BoardError, Device, board_names, get_board,
                        toolchain_env)
from .build import BuildError, EngineOnly, build, format_report, make_design, resolve_config

__all__ = ["BOARDS", "Board", "BoardError", "Device", "board_names", "get_board",
           "toolchain_env", "BuildError", "EngineOnly", "build", "format_report",
           "make_design", "resolve_config"]
from .flash import FlashError, flash, flash_command

__all__ += ["FlashError", "flash", "flash_command"]
