"""Run a linear layer on a device (a board or the simulated one) and check it.

Used by ``amaformer run`` and ``scripts/demo.py``: open the device, compile or draw a layer,
run it through :class:`amaformer.host.Device`, compare with the bit-exact golden model (and with
float PyTorch for a real model layer).
"""

import time
from dataclasses import dataclass, field

import torch

from .compile import compile_linear
from .golden import golden_linear, linear_mul
from .numerics import requant_params

__all__ = ["compare_encodings", "open_device", "minilm_embeddings", "minilm_linear", "random_layer", "run_layer",
           "RunResult", "MINILM_SENTENCE", "MINILM_CALIBRATION", "MINILM_LAYERS"]

MINILM_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
MINILM_CALIBRATION = [
    MINILM_SENTENCE,
    "Field-programmable gate arrays run transformer layers with integer arithmetic.",
    "A sentence embedding model maps text to a vector of 384 numbers.",
    "My grandmother's garden was full of tomatoes, beans, roses and a stubborn fig tree.",
]
#: Layer-0 linear layers of all-MiniLM-L6-v2 whose input is the embedding output.
MINILM_LAYERS = {"query": "encoder.layer.0.attention.self.query",
                 "key": "encoder.layer.0.attention.self.key",
                 "value": "encoder.layer.0.attention.self.value"}


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
    from ..host import Device, SerialTransport
    if spec == "sim":
        from ..host.sim import make_sim_transport
        transport = make_sim_transport(config, **sim_kwargs)
    else:
        transport = SerialTransport(spec, config.uart.baud)
    try:
        return Device(transport, timeout=timeout, retries=retries, expect=config)
    except Exception:
        transport.close()
        raise


def minilm_embeddings(sentences):
    """Hidden states entering all-MiniLM-L6-v2's layer 0 (token + position + type embeddings,
    LayerNorm), one ``T×384`` tensor per sentence, and the model's tensors (float32; the one
    loader, :func:`amaformer.gen.model.minilm.load_minilm`)."""
    from .model.minilm import load_minilm
    minilm = load_minilm(torch.float32)
    with torch.no_grad():
        hidden = [minilm.model.embeddings(input_ids=minilm.ids(s)[None])[0] for s in sentences]
    return hidden, minilm.model.state_dict()


def minilm_linear(which="query", cols=384, sentence=MINILM_SENTENCE):
    """``(layer, x, calib)``: the first ``cols`` output columns of a layer-0 projection of
    all-MiniLM-L6-v2 as a ``torch.nn.Linear``, the hidden states of ``sentence`` (``T×384``) and
    calibration hidden states (``sentence`` plus three more)."""
    if which not in MINILM_LAYERS:
        raise ValueError(f"which must be one of {', '.join(MINILM_LAYERS)}, not {which!r}")
    if not isinstance(cols, int) or not 1 <= cols <= 384:
        raise ValueError(f"cols must be an integer in [1, 384], not {cols!r}")
    hidden, t = minilm_embeddings([sentence] + MINILM_CALIBRATION)
    name = MINILM_LAYERS[which]
    layer = torch.nn.Linear(384, cols)
    with torch.no_grad():
        layer.weight.copy_(t[f"{name}.weight"][:cols])
        layer.bias.copy_(t[f"{name}.bias"][:cols])
    return layer, hidden[0], torch.cat(hidden)


def random_layer(m, k, n, seed=0, act_bits=8, weight_bits=8, linear=None):
    """Random integer operands ``(x, w, bias, mult, shift)`` with a fixed seed.

    ``linear`` (a :class:`~amaformer.gen.config.LinearConfig`, optional) picks the weight
    encoding: ``mul`` (default) gives ``weight_bits``-bit integers, ``shift`` weights
    ``{0, ±2^s}`` with ``s < shift_levels``, ``bcq`` a :class:`~amaformer.hdl.linear_layout.BcqMatrix`
    of ``bcq_bits`` planes (α per ``bcq_group`` inputs) fitted to a random float matrix."""
    g = torch.Generator().manual_seed(seed)
    a, b = 1 << (act_bits - 1), 1 << (weight_bits - 1)
    x = torch.randint(-a, a, (m, k), generator=g)
    w = torch.randint(-b, b, (k, n), generator=g)
    mode = getattr(linear, "mode", "mul")
    if mode == "shift":
        s = torch.randint(0, linear.shift_levels, (k, n), generator=g)
        sign = torch.randint(-1, 2, (k, n), generator=g)        # a third are zero
        w = sign * (1 << s)
    elif mode == "bcq":
        from .quant import quantize_bcq
        w_f = torch.randn(k, n, generator=g, dtype=torch.float64)
        w = quantize_bcq(w_f, linear.bcq_bits, group=linear.bcq_group).matrix()
    # requantization scaled per column so that outputs mostly land inside the int8 range (a
    # saturated output would hide a wrong accumulator): the largest |acc| maps to 0.6·127
    zero, one = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
    acc = golden_linear(x, w, zero, one, zero, act_bits=40)
    peak = acc.abs().amax(0).clamp(min=1).to(torch.float64)
    bias = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5).mul(peak / 2).round()
    mult, shift = requant_params(0.6 * ((1 << (act_bits - 1)) - 1) / peak)
    return x, w, bias.to(torch.int64), mult, shift


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


def compile_minilm(which="query", cols=384, sentence=MINILM_SENTENCE, linear=None):
    """``(prog, layer, x)`` for :func:`minilm_linear`, compiled with :func:`compile_linear`
    (for the engine ``linear`` describes, default ``mul``)."""
    layer, x, calib = minilm_linear(which, cols, sentence)
    return compile_linear(layer, calib, linear=linear), layer, x


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
    from ..host import Device
    from ..host.sim import make_sim_transport
    from .config import AcceleratorConfig, LinearConfig
    from .golden import linear_bcq, linear_shift
    from .numerics import quantize
    from .quant import quantize_bcq, quantize_shift, relative_error
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
