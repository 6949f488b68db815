"""Whole-model latency of an accelerator configuration: the units' exact cycle models
(:mod:`amaformer.gen.cost`) composed over the whole-model compiler's schedule
(:mod:`amaformer.gen.program`), and the link's time for the bytes it moves, as separate figures.

The schedule of a BERT-style encoder layer on the device (``gen.program.compile_program``):
Q, K, V and the attention output projection (``hidden × hidden``), the MLP's ``ffn_in``
(``hidden × ffn``) and ``ffn_out`` (``ffn × hidden``) on the linear unit (or, for the layers in
a second linear unit's ``layers``, on that one), each split into jobs as
the linear driver does it (:meth:`amaformer.host.linear.LinearDriver.linear`: K in chunks of
``max_k`` (bcq: a multiple of the quantizer's group), N in tiles that fit the weight buffer and
the output memory, M in tiles that fit the memories), and one softmax attention job of all heads
on the attention unit, or, under fixed masks (:class:`MaskSchedule`), one job of all heads on
the sparse-dense unit. Host work (LayerNorm, GELU, scaling) is not counted.

Attention cycles use the exact model's structure: a dense softmax job of ``H`` heads costs
``offset(lanes, d) + H·(ceil(T/lanes)·2·T·d + T·d)`` cycles (two byte reads per ``kv`` beat,
one per ``q`` byte); ``offset`` comes from the exact cycle model
(:func:`amaformer.gen.cost.attention_cycles`) of a short one-head job with the same last block
(tabulated in the calibration data for lanes up to 16, computed otherwise), and
``scripts/bench_search.py`` checks the composition against the exact model
(``cycle_err_max``).

Sparse-dense attention cycles are the unit's exact model
(:func:`amaformer.gen.sparse_dense.sparse_dense_job_cycles`) of the plans the driver makes for
each layer's masks cropped to the sentence, in the driver's head order, as
:func:`amaformer.gen.program.program_cycles` computes them; :class:`MaskSchedule` caches them
per lane split.
"""

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from .cost import attention_cycles, linear_job_cycles

__all__ = ["ModelShape", "MINILM", "LatencyReport", "linear_jobs", "softmax_attention_cycles",
           "MaskSchedule", "model_latency", "LINK_BITS_PER_BYTE", "FRAME_OVERHEAD", "MAX_PAYLOAD"]

#: UART 8N1: ten bit times per byte.
LINK_BITS_PER_BYTE = 10
#: Bytes of a request and its response beyond the payload (``hdl/protocol.py``: request
#: ``A5 op space addr4 len2 … crc2`` = 11, response ``5A status op len2 … crc2`` = 7).
FRAME_OVERHEAD = 18
#: Largest WRITE payload (the link's staging buffer, ``hdl.top.DEFAULT_MAX_PAYLOAD``).
MAX_PAYLOAD = 256
#: Bytes of one per-column requantization word on the link (bias int32, M u16, S u8, padded).
PARAM_BYTES = 8
#: Default device memories (``hdl.top.DEFAULT_ACT_DEPTH`` / ``DEFAULT_OUT_DEPTH``).
ACT_DEPTH = OUT_DEPTH = 32768
#: Group of the bcq quantizer (``gen.model.exact.Encoding``'s default): a K chunk of a bcq
#: layer is a multiple of it.
BCQ_GROUP = 128


@dataclass(frozen=True)
class ModelShape:
    """A BERT-style encoder as the schedule sees it."""
    name: str = "all-MiniLM-L6-v2"
    layers: int = 6
    hidden: int = 384
    ffn: int = 1536
    heads: int = 12
    head_dim: int = 32

    def linear_ops(self):
        """``[(role, K, N)]`` of one layer, in schedule order."""
        h, f = self.hidden, self.ffn
        return [("query", h, h), ("key", h, h), ("value", h, h), ("attn_out", h, h),
                ("ffn_in", h, f), ("ffn_out", f, h)]

    def macs(self, tokens):
        """Linear and attention MACs of one sentence (attention: ``2·H·T²·d``)."""
        lin = sum(k * n for _, k, n in self.linear_ops()) * tokens * self.layers
        att = 2 * self.heads * tokens * tokens * self.head_dim * self.layers
        return lin, att


MINILM = ModelShape()


def _k_chunks(k, max_k, mode):
    chunk = max_k
    if mode == "bcq" and chunk < k:
        chunk -= chunk % BCQ_GROUP
        if chunk < 1:
            raise ValueError(f"max_k {max_k} is below the bcq group {BCQ_GROUP}")
    return [(k0, min(k, k0 + chunk)) for k0 in range(0, k, chunk)]


def _weight_bytes(lin, k, n):
    """Bytes of the weight image of a ``k×n`` tile (the buffer's words × word bytes)."""
    words = lin.weight_words(k, n)
    if lin.mode == "shift":
        word_bits = lin.lanes * lin.shift_inputs * 4
    elif lin.mode == "bcq":
        word_bits = 8 * lin.lanes
    else:
        word_bits = lin.lanes * lin.weight_bits
    return words * -(-word_bits // 8)


def _link_bytes(payload):
    """Payload plus framing, in frames of at most :data:`MAX_PAYLOAD`."""
    return payload + -(-payload // MAX_PAYLOAD) * FRAME_OVERHEAD if payload else 0


def linear_jobs(lin, m, k, n, act_depth=ACT_DEPTH, out_depth=OUT_DEPTH):
    """Jobs of one ``M×K @ K×N`` op as the driver issues them: ``[(m, k, n)]``, and the link
    bytes they move (weights, parameters, activations, outputs, framing), as
    ``(jobs, bytes)``."""
    jobs, nbytes = [], 0
    for k0, k1 in _k_chunks(k, lin.max_k, lin.mode):
        kk = k1 - k0
        n_tile = min(lin.max_n_for_k(kk), n, out_depth)
        if n_tile < 1:
            raise ValueError(f"K = {kk} does not fit the weight buffer")
        m_tile = min(m, lin.max_m, act_depth // kk, out_depth // n_tile)
        if m_tile == m:
            nbytes += _link_bytes(m * kk)
        for c0 in range(0, n, n_tile):
            nn = min(n, c0 + n_tile) - c0
            nbytes += _link_bytes(_weight_bytes(lin, kk, nn)) + _link_bytes(nn * PARAM_BYTES)
            for r0 in range(0, m, m_tile):
                mm = min(m, r0 + m_tile) - r0
                if m_tile != m:
                    nbytes += _link_bytes(mm * kk)
                jobs.append((mm, kk, nn))
                nbytes += _link_bytes(mm * nn) + 2 * FRAME_OVERHEAD + 20   # RUN, STATUS
    return jobs, nbytes


@lru_cache(maxsize=1024)
def _softmax_offset(lanes, dim, t):
    return attention_cycles("softmax", 1, t, dim, lanes) - _softmax_head_cycles(t, dim, lanes)


def _offset_tokens(tokens, lanes):
    """A short job with the same last block as ``tokens`` (the offset depends on it)."""
    return tokens if tokens <= 3 * lanes else 2 * lanes + tokens % lanes


def _softmax_head_cycles(tokens, dim, lanes):
    return -(-tokens // lanes) * 2 * tokens * dim + tokens * dim


def _offset(lanes, dim, t):
    from .resources import _model
    try:
        table = _model().data.get("softmax_offsets", {})
    except (OSError, ValueError):
        table = {}
    v = table.get(f"{lanes},{dim},{t}")
    return v if v is not None else _softmax_offset(lanes, dim, t)


def softmax_attention_cycles(heads, tokens, dim, lanes):
    """Cycles of one dense softmax attention job through the top (see the module docstring);
    equal to ``gen.cost.attention_cycles("softmax", heads, tokens, dim, lanes)``, in
    microseconds instead of seconds."""
    return (_offset(lanes, dim, _offset_tokens(tokens, lanes))
            + heads * _softmax_head_cycles(tokens, dim, lanes))


def _lin_key(lin):
    return (lin.mode, lin.lanes, lin.shift_inputs, lin.bcq_bits)


@dataclass(frozen=True)
class _Lin:
    mode: str
    lanes: int
    shift_inputs: int
    bcq_bits: int


@lru_cache(maxsize=65536)
def _job_cycles(key, m, k, n):
    return linear_job_cycles(_Lin(*key), m, k, n)


@dataclass
class LatencyReport:
    """Whole-model figures of one sentence of ``tokens`` tokens."""
    tokens: int
    clock_mhz: float
    linear_cycles: int
    attention_cycles: int
    link_bytes: int
    baud: int
    per_op: dict = field(default_factory=dict)     # role -> cycles over all layers
    jobs: int = 0

    @property
    def cycles(self):
        return self.linear_cycles + self.attention_cycles

    @property
    def compute_s(self):
        """Device time: all cycles at the clock."""
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def link_s(self):
        """The link's time for the bytes moved (UART 8N1 at ``baud``)."""
        return self.link_bytes * LINK_BITS_PER_BYTE / self.baud

    def total_s(self, link_counts=False):
        return self.compute_s + (self.link_s if link_counts else 0.0)

    def to_dict(self):
        return dict(tokens=self.tokens, clock_mhz=self.clock_mhz, cycles=self.cycles,
                    linear_cycles=self.linear_cycles, attention_cycles=self.attention_cycles,
                    compute_s=self.compute_s, link_bytes=self.link_bytes, link_s=self.link_s,
                    baud=self.baud, jobs=self.jobs, per_op=dict(self.per_op))


class MaskSchedule:
    """Fixed attention masks (``L×H×N×N`` bool: a mask file or tensor, as ``compile_program``
    takes them) as the schedule sees them: the sparse-dense unit's cycles and link bytes per
    layer for a lane split, cached (the search asks for the same few splits many times).

    ``path``: where the masks came from (recorded with the search's choice), or ``None``.
    """

    def __init__(self, masks, path=None):
        from .sparse_dense import layer_masks
        self.keep = layer_masks(masks)
        self.path = None if path is None else str(path)
        if self.path is None and (isinstance(masks, (str, bytes)) or hasattr(masks, "__fspath__")):
            self.path = str(masks)
        self._cache = {}

    @property
    def tokens(self):
        """``N``: the token count the masks were made for."""
        return int(self.keep.shape[-1])

    @property
    def layers(self):
        return int(self.keep.shape[0])

    def sparsity(self, tokens=None):
        """Fraction of the (cropped) entries the masks drop."""
        n = tokens or self.tokens
        return 1.0 - float(self.keep[..., :n, :n].float().mean())

    def unit(self, dense_lanes, sparse_lanes):
        """The sparse-dense unit of a lane split, its entry memories sized for these masks
        (:func:`amaformer.gen.sparse_dense.config_for_split`), cached."""
        key = ("unit", dense_lanes, sparse_lanes)
        if key not in self._cache:
            from .sparse_dense import config_for_split
            self._cache[key] = config_for_split(self.keep, dense_lanes, sparse_lanes)
        return self._cache[key]

    def attention(self, tokens, dim, sd):
        """``[(cycles, link bytes)]`` per layer: one sparse-dense job of every head of the
        layer's masks cropped to ``tokens``, on the unit ``sd`` (a ``SparseDenseConfig``)."""
        key = (tokens, dim, sd.dense_lanes, sd.sparse_lanes, sd.qkv_buffers)
        if key not in self._cache:
            self._cache[key] = [self._layer(li, tokens, dim, sd) for li in range(self.layers)]
        return self._cache[key]

    def _layer(self, li, tokens, dim, sd):
        from ..hdl.sparse_dense_spec import HEAD_PARAMS, dense_entry_layout, sparse_entry_layout
        from .sparse_dense import ordered_job_cycles, plan_job
        if tokens > self.tokens:
            raise ValueError(f"sentences of {tokens} tokens do not fit masks made for "
                             f"{self.tokens}")
        plans = plan_job(self.keep[li, :, :tokens, :tokens], sd.dense_lanes, sd.sparse_lanes)
        _, cycles = ordered_job_cycles(plans, tokens, dim, sd.dense_lanes, sd.qkv_buffers)
        heads = len(plans)
        word = lambda layout: -(-layout.size // 8)                # noqa: E731
        dense = sum(len(p.dense_pairs_list()) + 1 for p in plans)
        sparse = [sum(len(p.lanes[s]) + 1 for p in plans) for s in range(sd.sparse_lanes)]
        qkv = 3 * heads * tokens * dim
        nbytes = (_link_bytes(qkv) + _link_bytes(qkv // 3)
                  + _link_bytes(heads * word(HEAD_PARAMS))
                  + _link_bytes(dense * word(dense_entry_layout(sd.max_tokens, sd.dense_lanes)))
                  + sum(_link_bytes(n * word(sparse_entry_layout(sd.max_tokens))) for n in sparse)
                  + 2 * FRAME_OVERHEAD + 20)
        return cycles, nbytes


def model_latency(config, tokens=24, shape=MINILM, clock_mhz=None, masks=None):
    """Whole-model latency of one ``tokens``-token sentence on ``config`` (an
    ``AcceleratorConfig`` with a linear unit and a softmax attention unit, or a sparse-dense
    unit with ``masks``, a :class:`MaskSchedule`; attention runs on the host, uncounted, when
    the configuration has neither). With a second linear unit, the layers in its ``layers``
    run their linear ops on it, the others on the first.

    ``clock_mhz``: the clock the cycles run at (default: the configuration's, else its board's
    oscillator).

    Raises
    ------
    ValueError
        A job does not fit (K beyond the weight buffer, sentences longer than the masks), or
        masks without a sparse-dense unit.
    """
    from ..boards import get_board
    att, sd = config.attention, config.sparse_dense
    if clock_mhz is None:
        clock_mhz = config.clock_mhz or get_board(config.board).clock_mhz
    per_op, lin_cycles, nbytes, njobs = {}, 0, 0, 0
    # layers per linear unit: the second unit's ``layers`` (within the model), the rest
    on_second = sum(1 for i in range(shape.layers) if config.linear_unit_of_layer(i))
    for lin, layers in zip(config.linear_units(), (shape.layers - on_second, on_second)):
        if not layers:
            continue
        for role, k, n in shape.linear_ops():
            jobs, b = linear_jobs(lin, tokens, k, n)
            c = sum(cnt * _job_cycles(_lin_key(lin), *j)
                    for j, cnt in Counter(jobs).items()) * layers
            per_op[role] = per_op.get(role, 0) + c
            lin_cycles += c
            nbytes += b * layers
            njobs += len(jobs) * layers
    att_cycles = 0
    if masks is not None and not sd.enabled:
        raise ValueError("masks run only on the sparse_dense unit; the configuration has none")
    if masks is not None:
        if masks.layers != shape.layers:
            raise ValueError(f"masks have {masks.layers} layers, the model {shape.layers}")
        per_layer = masks.attention(tokens, shape.head_dim, sd)
        att_cycles = sum(c for c, _ in per_layer)
        per_op["attention"] = att_cycles
        nbytes += sum(b for _, b in per_layer)
        njobs += shape.layers
    elif att.enabled and att.mode == "softmax":
        att_cycles = softmax_attention_cycles(shape.heads, tokens, shape.head_dim,
                                              att.lanes) * shape.layers
        per_op["attention"] = att_cycles
        qkv = 3 * shape.heads * tokens * shape.head_dim
        nbytes += shape.layers * (_link_bytes(qkv) + _link_bytes(qkv // 3)
                                  + _link_bytes(shape.heads * 16) + 2 * FRAME_OVERHEAD + 20)
        njobs += shape.layers
    return LatencyReport(tokens, clock_mhz, lin_cycles, att_cycles, nbytes, config.uart.baud,
                         per_op, njobs)
