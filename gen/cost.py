"""Cycle models of the hardware components, exact for unstalled streams.

Each model counts clock edges from the edge that samples ``start`` to the edge that raises
``done``, with inputs always valid and outputs always ready; tests check them against the
RTL cycle for cycle.
"""

__all__ = ["linear_cycles", "linear_macs", "linear_utilization", "shift_cycles", "bcq_cycles",
           "bcq_macs_per_cycle", "attention_cycles", "linear_job_cycles"]

#: LinearEngine: cycles from issuing the last k of a group until the lanes may issue the last k
#: of the next group, beyond the drain of the group's columns (one column per cycle).
LINEAR_HOLD_LATENCY = 4
#: LinearEngine: cycles from the last issue to ``done``, beyond the drain of the last group
#: (6 + the latency of its six-stage ``PipelinedRequantizer``).
LINEAR_TAIL = 12


def linear_cycles(m, k, n, lanes):
    """Cycles of one ``M×K @ K×N`` job on a ``lanes``-lane :class:`LinearEngine`.

    The lanes issue one k per cycle (``M·ceil(N/lanes)·K`` issues). The last k of a group can
    only issue once the previous group's accumulators have left the holding register, which
    takes ``LINEAR_HOLD_LATENCY + columns`` cycles after that group's last issue, so very short
    K stalls. The job ends ``LINEAR_TAIL + columns`` cycles after the last issue.
    """
    if min(m, k, n) <= 0:
        return 2
    groups = [min(lanes, n - c) for c in range(0, n, lanes)]
    t = 0               # cycle of the latest last-k issue (first issue is in cycle 1)
    release = 0         # first cycle in which the holding register is free again
    for _ in range(m):
        for cnt in groups:
            t = max(t + k, release)
            release = t + LINEAR_HOLD_LATENCY + cnt
    return t + LINEAR_TAIL + groups[-1]


def linear_macs(m, k, n):
    """Useful multiply-accumulates of an ``M×K @ K×N`` job."""
    return m * k * n


def linear_utilization(m, k, n, lanes):
    """Useful MACs / (lanes × cycles)."""
    return linear_macs(m, k, n) / (lanes * linear_cycles(m, k, n, lanes))


def shift_cycles(m, k, n, lanes, inputs=1):
    """Cycles of one ``M×K @ K×N`` job on a :class:`~amaformer.hdl.shift.ShiftEngine` with
    ``inputs`` = g products per lane and cycle.

    The engine takes one activation per cycle into a two-row buffer: row ``r + 1`` streams in
    (``K`` cycles) while the groups of row ``r`` issue, and row ``r + 2`` waits until the
    last issue of row ``r``. A group issues one chunk of g per cycle (``ceil(K/g)``); in a
    row's first group a chunk issues no earlier than the cycle after its last byte arrives,
    so a row costs about ``max(K, groups·ceil(K/g))`` cycles and the first ``K + 1``. As in
    :func:`linear_cycles`, the last chunk of a group waits until the previous group has left
    the holding register, ``LINEAR_HOLD_LATENCY + T + columns`` cycles after that group's
    last issue (``T = ceil(log2 g)`` adder-tree stages), and the job ends
    ``LINEAR_TAIL + T + columns`` cycles after the last issue.
    """
    if min(m, k, n) <= 0:
        return 2
    tree = max(inputs - 1, 0).bit_length()
    chunks = -(-k // inputs)
    groups = [min(lanes, n - c) for c in range(0, n, lanes)]
    t = 0               # cycle of the latest last-chunk issue
    release = 0         # first cycle in which the holding register is free again
    row_start = 1       # first cycle of the row's activations
    prev_end = 0        # cycle of the previous row's last issue
    for _ in range(m):
        written = row_start + k - 1         # cycle of the row's last activation
        for i, cnt in enumerate(groups):
            t = max(t + chunks, written + 1 if i == 0 else 0, release)
            release = t + LINEAR_HOLD_LATENCY + tree + cnt
        row_start, prev_end = max(written, prev_end) + 1, t
    return t + LINEAR_TAIL + tree + groups[-1]


#: BcqEngine: cycles from the last query issue to ``done`` (pipeline, requantizer, y).
BCQ_TAIL = 15


def bcq_cycles(m, k, n, slots, planes):
    """Cycles of one ``M×K @ K×N`` job on a :class:`~amaformer.hdl.shiftadd.BcqEngine`.

    Per row and per chunk of ``8·slots`` inputs: a table build of ``8·slots + 255`` cycles
    (one more when ``slots == 1`` and queries precede it, which must leave the tables first),
    then ``N·planes`` query cycles; the job ends ``BCQ_TAIL`` cycles after the last query.
    """
    if min(m, k, n) <= 0:
        return 2
    chunks = -(-k // (8 * slots))
    build = 8 * slots + 255
    wait = 1 if slots == 1 else 0
    total = m * chunks * (build + n * planes) + (m * chunks - 1) * wait
    return total + BCQ_TAIL


def bcq_macs_per_cycle(slots, planes):
    """Peak MAC-equivalents per cycle while querying: ``8·slots / planes``."""
    return 8 * slots / planes


def attention_cycles(mode, heads, tokens, dim, lanes, *, mask="dense", keep=None, conv_taps=0):
    """Cycles of one attention job through the top (start edge to done edge): the
    sequencer's reads from the single-port activation memory (two per ``kv`` beat, three per
    ``qkv`` beat) and the engine's pipeline. Exact; defined next to the RTL as
    :func:`amaformer.hdl.attention_top.attention_job_cycles`.

    ``mask`` (``softmax``): ``"dense"``, ``"causal"`` or ``"sparse"`` with ``keep`` the N×N
    bool mask. ``lanes``: the unit's (``IDENT`` ``att_lanes``); ``conv_taps``: its convolution
    (``linear_causal``, ``IDENT`` ``att_conv_taps``)."""
    from amaformer.hdl.attention_top import attention_job_cycles

    from .attention import causal_mask, softmax_schedule
    if mode != "softmax":
        return attention_job_cycles(mode, heads, tokens, dim, lanes, conv_taps=conv_taps)
    if mask == "causal":
        keep = causal_mask(tokens)
    elif mask == "dense":
        keep = None
    return attention_job_cycles(mode, heads, tokens, dim, lanes,
                                softmax_schedule(tokens, lanes, keep), sparse=mask == "sparse")


def linear_job_cycles(linear, m, k, n):
    """Cycles of one ``M×K @ K×N`` job on the linear unit that ``linear`` (a ``LinearConfig``,
    read duck-typed) describes, start edge to done edge: the one place that picks the engine's
    cycle model by weight encoding."""
    if linear.mode == "shift":
        return shift_cycles(m, k, n, linear.lanes, getattr(linear, "shift_inputs", 1))
    if linear.mode == "bcq":
        return bcq_cycles(m, k, n, linear.lanes, linear.bcq_bits)
    return linear_cycles(m, k, n, linear.lanes)
