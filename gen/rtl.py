"""RTL generation: hardware components built from a configuration, and written out as Verilog.

Port names in the generated Verilog
-----------------------------------
Amaranth flattens a component's signature into top-level ports, joining the path of each
member with a double underscore: the stream ``x`` becomes ``x__valid``, ``x__ready`` and
``x__payload``; the weight write port ``w_wr`` becomes ``w_wr__addr``, ``w_wr__data`` and
``w_wr__en``. Plain members keep their name (``start``, ``busy``, ``done``, ``m``, ``k``,
``n``). The clock and the synchronous reset of the ``sync`` domain are ``clk`` and ``rst``
(active high). Testbenches and board tops that instantiate the Verilog use these names.
"""

from pathlib import Path

from amaranth.back import verilog

from ..hdl.linear_unit import make_linear_engine
from .config import LinearConfig

__all__ = ["linear_engine_from_config", "write_verilog", "verilog_port_names"]


def linear_engine_from_config(linear_cfg):
    """Build the :class:`~amaformer.hdl.linear.LinearEngine` that a :class:`LinearConfig` describes.

    ``LinearConfig.dsp_lanes`` is passed on as ``hw_lanes`` (lanes with ``$mul`` multipliers;
    the others use :func:`~amaformer.hdl.linear.lut_multiply`).

    Raises
    ------
    TypeError
        ``linear_cfg`` is not a :class:`LinearConfig`.
    ValueError
        ``linear_cfg.mode`` has no engine here.

    The one engine factory is :func:`amaformer.hdl.linear_unit.make_linear_engine`; this adds
    the type check.
    """
    if not isinstance(linear_cfg, LinearConfig):
        raise TypeError(f"linear_cfg must be a LinearConfig, not {linear_cfg!r}")
    return make_linear_engine(linear_cfg)


def verilog_port_names(component):
    """Names of the top-level Verilog ports of ``component`` (without ``clk`` and ``rst``).

    Each signature member path is joined with ``__``, as :func:`amaranth.back.verilog.convert`
    does: ``["x__valid", "x__ready", "x__payload", ...]``.
    """
    return ["__".join(str(p) for p in path) for path, _member, _value
            in component.signature.flatten(component)]


def write_verilog(component, path, name):
    """Write ``component`` as one Verilog file whose top module is ``name``.

    The ports are the component's signature, flattened as described in the module docstring,
    plus ``clk`` and ``rst``. Submodules are emitted in the same file, with ``name.`` prefixed
    to their module names.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
    path : str or pathlib.Path
        Output file; parent directories are created.
    name : str
        Verilog module name of the top, a Verilog identifier.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Verilog identifier, not {name!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component, name=name, emit_src=False)
    path.write_text(text)
    return path
