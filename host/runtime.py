"""Run a compiled whole-model :class:`~amaformer.gen.program.Program` on a ``Device``.

The host's part of the model (embeddings, per-token quantization and scaling, LayerNorm,
activation, residuals, pooling) is the very code of :func:`amaformer.gen.model.exact.
exact_forward`; only the device parts change hands: each linear op's jobs go to the linear
unit as the program compiled them (its weight and parameter memory images and its job
descriptors with allocated addresses, :meth:`~amaformer.gen.program.Program.linear_tiles` and
:meth:`~amaformer.gen.program.Program.linear_jobs`, run by ``dev.unit("linear", i).run_jobs``
on the op's unit ``i`` (:meth:`~amaformer.gen.program.Program.linear_unit`: the second linear
unit for the layers in ``[linear2] layers``); only the activations are packed here) and each
attention to the attention unit at the program's addresses
(:meth:`~amaformer.gen.program.Program.attention_layout`), or, for a program compiled with
fixed masks, to the sparse-dense unit (``dev.unit("sparse_dense").attention`` under the
layer's masks cropped to the sentence, :meth:`~amaformer.gen.program.Program.layer_masks`).
So a run on a correct device
returns exactly what the golden path computes, bit for bit, and :func:`run_program` can be
checked against it.

The trace (:class:`LayerTrace`, one per encoder layer) counts the device cycles of every job
(the units' own counters), the jobs, and the bytes that crossed the link each way (a counting
wrapper around the transport).
"""

import time
from dataclasses import asdict, dataclass, field

import torch

from ..gen.model.exact import exact_forward

__all__ = ["LayerTrace", "RunResult", "DeviceExecutor", "max_tokens", "run_program"]


@dataclass
class LayerTrace:
    """Device work of one encoder layer: cycles per unit kind, jobs, link bytes, MACs."""
    layer: int
    linear_cycles: int = 0
    attention_cycles: int = 0
    linear_jobs: int = 0
    attention_jobs: int = 0
    bytes_to_device: int = 0
    bytes_from_device: int = 0
    linear_macs: int = 0
    ops: dict = field(default_factory=dict)      # op role -> cycles
    attention_unit: str = "attention"            # or "sparse_dense" (fixed masks)

    @property
    def cycles(self):
        return self.linear_cycles + self.attention_cycles

    @property
    def bytes_moved(self):
        return self.bytes_to_device + self.bytes_from_device

    def to_dict(self):
        d = asdict(self)
        d.update(cycles=self.cycles, bytes_moved=self.bytes_moved)
        return d


@dataclass
class RunResult:
    """Hidden states per sentence (``T×hidden`` float64), pooled embeddings, the hidden states
    after each layer (all tokens), the trace, and the run's wall-clock seconds."""
    hidden: list
    embeddings: torch.Tensor
    layers: list
    trace: list
    seconds: float

    @property
    def cycles(self):
        return sum(t.cycles for t in self.trace)

    @property
    def bytes_moved(self):
        return sum(t.bytes_moved for t in self.trace)


class _CountingTransport:
    """Passes every call to ``inner`` and counts the bytes each way."""

    def __init__(self, inner):
        self.inner = inner
        self.written = 0
        self.read_bytes = 0

    def write(self, data):
        self.written += len(data)
        return self.inner.write(data)

    def read(self, n, timeout):
        got = self.inner.read(n, timeout)
        self.read_bytes += len(got)
        return got

    def __getattr__(self, name):
        return getattr(self.inner, name)


class DeviceExecutor:
    """The device parts of a program on ``device``; fills one :class:`LayerTrace` per layer."""

    def __init__(self, program, device):
        self.program = program
        self.device = device
        self.lins = [device.unit("linear", i)
                     for i in range(len(program.config.linear_units()))]
        units = {program.attention_unit(ly.index) for ly in program.graph.layers}
        self.att = device.unit("attention") if "attention" in units else None
        self.sd = device.unit("sparse_dense") if "sparse_dense" in units else None
        for i, (drv, sec) in enumerate(zip(self.lins, program.config.linear_units())):
            if drv.mode != sec.mode:
                raise ValueError(f"the device's linear unit #{i} runs {drv.mode!r}, the "
                                 f"program was compiled for {sec.mode!r}")
        self.trace = {ly.index: LayerTrace(ly.index,
                                           attention_unit=program.attention_unit(ly.index))
                      for ly in program.graph.layers}
        self._counter = None

    def __enter__(self):
        self._counter = _CountingTransport(self.device.transport)
        self.device.transport = self._counter
        return self

    def __exit__(self, *exc):
        self.device.transport = self._counter.inner

    def _account(self, layer, before):
        t = self.trace[layer]
        t.bytes_to_device += self._counter.written - before[0]
        t.bytes_from_device += self._counter.read_bytes - before[1]
        return t

    def linear(self, ql, x_q):
        """Every K-chunk job of ``ql`` on its linear unit; the int8 outputs summed."""
        before = (self._counter.written, self._counter.read_bytes)
        y = None
        cycles = jobs = 0
        name, info = ql.op.name, self.device.info
        lin = self.lins[self.program.linear_unit(name)]
        tiles = self.program.linear_tiles(name)
        chunks = self.program.linear_jobs(name, x_q.shape[0], act_depth=info.act_depth,
                                          out_depth=info.out_depth)
        for (k0, k1), chunk_jobs in chunks.items():
            part = torch.from_numpy(lin.run_jobs(x_q[:, k0:k1], tiles, chunk_jobs))
            y = part.to(torch.int64) if y is None else y + part.to(torch.int64)
            cycles += self.device.last_cycles
            jobs += len(self.device.job_cycles)
        t = self._account(ql.op.layer, before)
        t.linear_cycles += cycles
        t.linear_jobs += jobs
        t.linear_macs += x_q.shape[0] * ql.op.macs_per_token
        t.ops[ql.op.role] = t.ops.get(ql.op.role, 0) + cycles
        return y

    def attention(self, q, k, v, score_mult, score_shift, out_mult, out_shift, layer):
        """One attention job (``H×T×d`` int8 in and out): softmax on the attention unit, or,
        under the program's masks, on the sparse-dense unit."""
        before = (self._counter.written, self._counter.read_bytes)
        if self.program.attention_unit(layer) == "sparse_dense":
            params = [tuple(int(x) for x in p)
                      for p in zip(score_mult, score_shift, out_mult, out_shift)]
            keep = self.program.layer_masks(layer, q.shape[-2])
            y = self.sd.attention(q, k, v, params, keep, as_tensor=True)
        else:
            y = self.att.attention(q, k, v, out_mult, out_shift, score_mult=score_mult,
                                   score_shift=score_shift, as_tensor=True,
                                   layout=self.program.attention_layout(layer, q.shape[-2]))
        t = self._account(layer, before)
        t.attention_cycles += self.device.last_cycles
        t.attention_jobs += 1
        t.ops["attention"] = t.ops.get("attention", 0) + self.device.last_cycles
        return y


def max_tokens(program, device=None):
    """Longest sentence ``program`` runs on ``device``: the program's ``max_tokens``, and the
    attention job's Q, K and V (``3·heads·tokens·head_dim`` bytes) inside the device's
    activation memory."""
    limit = program.max_tokens
    info = getattr(device, "info", None)
    if info is not None:
        per_token = max(3 * ly.heads * ly.head_dim for ly in program.graph.layers)
        limit = min(limit, info.act_depth // per_token)
    return limit


def run_program(program, device, ids_list):
    """Run the sentences ``ids_list`` (1-D token-id tensors) through ``program`` on ``device``.

    Linear ops run once over the tokens of all sentences (weights written once per tile),
    attention once per sentence. Raises ``ValueError`` for a sentence longer than the
    program's ``max_tokens`` (:class:`~amaformer.gen.program.ProgramError` if longer than its
    masks) or a device that lacks a unit the program needs (one line).
    """
    ids_list = [torch.as_tensor(i).reshape(-1) for i in ids_list]
    if not ids_list:
        raise ValueError("ids_list must hold at least one sentence")
    for i, ids in enumerate(ids_list):
        program.check_tokens(len(ids), i)
    limit = max_tokens(program, device)
    for i, ids in enumerate(ids_list):
        if not 1 <= len(ids) <= limit:
            raise ValueError(f"sentence {i} has {len(ids)} tokens; this device takes 1 to "
                             f"{limit}")
    t0 = time.monotonic()
    with DeviceExecutor(program, device) as ex:
        hidden, layers, _ = exact_forward(program.compiled, ids_list, linear=ex.linear,
                                          attention=ex.attention)
    emb = torch.stack([program.graph.pool(h) for h in hidden])
    return RunResult(hidden, emb, layers, [ex.trace[k] for k in sorted(ex.trace)],
                     time.monotonic() - t0)
