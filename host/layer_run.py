"""Run one linear layer on a device (a board or the simulated one) and check it.

Used by ``amaformer run`` and ``scripts/demo.py``: open the device (:func:`open_device`), run a
layer through :class:`amaformer.host.Device`, compare with the bit-exact golden model (and with
float PyTorch for a real model layer). The layers themselves come from
:mod:`amaformer.gen.layers`.
"""

import time
from dataclasses import dataclass, field

import torch

from ..gen.golden import golden_linear, linear_mul
from ..gen.numerics import requant_params

__all__ = ["compare_encodings", "open_device", "run_layer", "RunResult"]


def open_device(spec, config, *, timeout=2.0, retries=3, **sim_kwargs):
    """A :class:`~amaformer.host.Device` for ``spec``: ``"sim"`` (the simulated top of
    ``config``, :func:`~amaformer.host.sim.make_sim_transport` with ``sim_kwargs``: Verilator
    when it works, else Amaranth's simulator; ``backend=`` or ``$AMAFORMER_SIM_BACKEND``
    chooses) or a serial port path (at ``config.uart.baud``).

    Raises
    ------
    OSError
        The serial port cannot be opened.
    amaformer.host.DeviceError
        The device does not answer, or is not the design ``config`` describes.
    amaformer.host.verilator.VerilatorUnavailable
        ``backend="verilator"`` and the Verilator build cannot run (``"auto"`` falls back).
    """
    from . import Device, SerialTransport
    if spec == "sim":
        from .sim import make_sim_transport
        transport = make_sim_transport(config, **sim_kwargs)
    else:
        transport = SerialTransport(spec, config.uart.baud)
    try:
        return Device(transport, timeout=timeout, retries=retries, expect=config)
    except Exception:
        transport.close()
        raise



@dataclass
class RunResult:
    """What :func:`run_layer` measured."""
    bit_exact: bool
    cycles: int
    jobs: int
    wall_seconds: float
    rel_err_vs_float: float | None = None
    cosine_vs_float: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


def run_layer(dev, x, w, bias, mult, shift, *, float_layer=None, float_x=None, out_scale=None):
    """Run ``Y = requant(X·W + b)`` on ``dev``, compare with the golden model and, when a float
    layer is given, with float PyTorch (``y_dev · out_scale`` against ``float_layer(float_x)``).
    """
    t0 = time.perf_counter()
    y = dev.unit("linear").linear(x, w, bias, mult, shift, as_tensor=True).to(torch.int64)
    wall = time.perf_counter() - t0
    gold = golden_linear(x, w, bias, mult, shift, dev.unit("linear").info.act_bits)
    res = RunResult(bit_exact=bool(torch.equal(y, gold)), cycles=dev.last_cycles,
                    jobs=len(dev.job_cycles), wall_seconds=round(wall, 2))
    if hasattr(dev.transport, "sim_figures"):       # a simulated device: backend, speed
        res.extra.update(dev.transport.sim_figures())
    if float_layer is not None:
        with torch.no_grad():
            ref = float_layer(float_x).to(torch.float64)
        y_f = y.to(torch.float64) * out_scale
        res.rel_err_vs_float = float(torch.linalg.norm(y_f - ref) / torch.linalg.norm(ref))
        res.cosine_vs_float = float(torch.nn.functional.cosine_similarity(
            y_f.flatten(), ref.flatten(), dim=0))
    return res


#: ``shift`` shape of :func:`compare_encodings`: products per lane per cycle and magnitudes.
SHIFT_DEMO_INPUTS, SHIFT_DEMO_LEVELS = 16, 4


def compare_encodings(m=4, k=64, n=40, seed=0, lanes=None, backend=None):
    """Run one random float layer ``Y = X·W + b`` (``M×K @ K×N``) in each weight encoding (mul,
    shift, bcq with q = 2) on the simulated device through the host driver: the demo's table of
    the three modes. ``backend``: as :func:`~amaformer.host.sim.make_sim_transport` (three small
    designs: on Verilator about 30 s to build the first time, then well under a second; about
    25 s every time on the Amaranth simulator).

    Returns
    -------
    list of dict
        ``mode``, ``lanes`` (bcq: table slots), ``peak_macs_per_cycle`` (shift: ``lanes`` ×
        :data:`SHIFT_DEMO_INPUTS`), ``cycles`` (measured), ``macs_per_cycle``, ``bit_exact``
        (device output equals the golden model), ``rel_error`` (dequantized output vs float).
    """
    from ..gen.config import AcceleratorConfig, LinearConfig
    from ..gen.golden import linear_bcq, linear_shift
    from ..gen.numerics import quantize
    from ..gen.quant import quantize_bcq, quantize_shift, relative_error
    from . import Device
    from .sim import make_sim_transport
    lanes = {"mul": 8, "shift": 4, "bcq": 8} | (lanes or {})
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    w = torch.randn(k, n, generator=g, dtype=torch.float64) / k ** 0.5
    bias = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    y_ref = x @ w + bias
    xq, sx = quantize(x)
    sy = float(y_ref.abs().max()) / 127
    rows = []
    for mode in ("mul", "shift", "bcq2"):
        kind = mode[:3] if mode.startswith("bcq") else mode
        if kind == "mul":
            wq, sw = quantize(w, dim=1)
            sw = sw.flatten()
            cfg = LinearConfig(mode="mul", lanes=lanes["mul"], max_k=k, max_n=n, max_m=m,
                               weight_depth=k * -(-n // lanes["mul"]))
        elif kind == "shift":
            # the iCE40 64-MAC-eq shape: 4 lanes × 16 products per cycle, 4 magnitudes
            qw = quantize_shift(w, levels=SHIFT_DEMO_LEVELS)
            wq, sw = qw.w_int, qw.scale
            cfg = LinearConfig(mode="shift", lanes=lanes["shift"], max_k=k, max_n=n, max_m=m,
                               shift_inputs=SHIFT_DEMO_INPUTS, shift_levels=SHIFT_DEMO_LEVELS,
                               weight_depth=-(-k // SHIFT_DEMO_INPUTS) * -(-n // lanes["shift"]))
        else:
            qw = quantize_bcq(w, 2)
            wq, sw = qw.matrix(), qw.scale
            cfg = LinearConfig(mode="bcq", lanes=lanes["bcq"], bcq_bits=2, max_k=k, max_n=n,
                               max_m=m, weight_depth=-(-k // (8 * lanes["bcq"])) * n * 2)
        acc_scale = float(sx) * sw
        b_int = torch.round(bias / acc_scale).to(torch.int64)
        mult, shift = requant_params(acc_scale / sy)
        acfg = AcceleratorConfig(linear=cfg)
        dev = Device(make_sim_transport(acfg, backend, act_depth=1024, out_depth=1024),
                     expect=acfg)
        y = dev.unit("linear").linear(xq, wq, b_int, mult, shift, as_tensor=True).to(torch.int64)
        if kind == "mul":
            gold = linear_mul(xq, wq, b_int, mult, shift)
        elif kind == "shift":
            gold = linear_shift(xq, wq, b_int, mult, shift)
        else:
            gold = linear_bcq(xq, qw.planes, qw.alpha, qw.group, b_int, mult, shift)
        peak = {"mul": cfg.lanes, "shift": cfg.lanes * SHIFT_DEMO_INPUTS,
                "bcq": 8 * cfg.lanes // 2}[kind]
        rows.append({"mode": mode, "lanes": cfg.lanes, "peak_macs_per_cycle": peak,
                     "cycles": dev.last_cycles,
                     "macs_per_cycle": round(m * k * n / dev.last_cycles, 2),
                     "bit_exact": bool(torch.equal(y, gold)),
                     "rel_error": round(relative_error(y.double() * sy, y_ref), 4)})
    return rows
