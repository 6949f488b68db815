"""cocotb bench: the Verilog of the ``shift`` and ``bcq`` engines against the PyTorch golden models.

Same environment interface as :mod:`.linear`: ``AMAFORMER_LINEAR`` (JSON of
:class:`amaformer.gen.config.LinearConfig` fields, ``mode`` ``"shift"`` or ``"bcq"``),
``AMAFORMER_SEED`` and ``AMAFORMER_QUICK``. Launched by ``sim_tests/linear_unit/test_shiftadd_cocotb.py``;
not run by pytest itself.

The bench is a :class:`.tb.LinearEngineTB` (driver on ``x``, monitor and in-order checker
on ``y``, pause patterns of :data:`.tb.FLOWS`). Expected outputs come from
:func:`amaformer.gen.golden.linear_shift` / :func:`~amaformer.gen.golden.linear_bcq`, cycle
counts of unstalled jobs from :mod:`amaformer.gen.cost`.
"""

import itertools
import json
import os

import cocotb
import torch
from cocotb.triggers import FallingEdge, RisingEdge

from amaformer.gen.config import LinearConfig
from amaformer.gen.cost import bcq_cycles, shift_cycles
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.hdl.linear_layout import pack_bcq_weights, pack_shift_weights
from amaformer.gen.numerics import requant_params
from amaformer.gen.quant import round_pow2_sum
from .tb import LinearEngineTB

CFG = LinearConfig(**json.loads(os.environ.get("AMAFORMER_LINEAR", '{"mode": "bcq"}')))
QUICK = os.environ.get("AMAFORMER_QUICK", "0") == "1"


class Job:
    """An ``M×K @ K×N`` job in the configured encoding, with its golden outputs, weight words
    and cycle model (for :class:`.tb.LinearEngineTB`)."""

    def __init__(self, gen, m, k, n, like=None):
        self.x = torch.randint(-128, 128, (m, k), generator=gen)
        self.shape = (m, k, n)
        if like is not None:            # same weights (already loaded), new activations
            self.w, self.bias, self.mult, self.shift = like.w, like.bias, like.mult, like.shift
            self.group = like.group
            return
        if CFG.mode == "shift":
            s = torch.randint(0, CFG.shift_levels, (k, n), generator=gen)
            self.w = torch.randint(-1, 2, (k, n), generator=gen) * (1 << s)
            self.group = None
            std = (k ** 0.5) * 128 * (1 << (CFG.shift_levels - 1)) / 3
        else:
            self.group = CFG.bcq_group or k
            q, ng = CFG.bcq_bits, -(-k // self.group)
            planes = torch.randint(0, 2, (q, k, n), generator=gen) * 2 - 1
            alpha = round_pow2_sum(torch.rand(q, ng, n, generator=gen, dtype=torch.float64)
                                   * 400 - 200).to(torch.int64)
            self.w = (planes, alpha)
            std = (k ** 0.5) * 74 * 200 * q ** 0.5 / 2
        self.bias = (torch.randn(n, generator=gen, dtype=torch.float64) * std).round().long()
        self.mult, self.shift = requant_params(torch.full((n,), 128 / (2.5 * std),
                                                          dtype=torch.float64))

    def expected(self):
        if CFG.mode == "shift":
            return linear_shift(self.x, self.w, self.bias, self.mult, self.shift)
        return linear_bcq(self.x, *self.w, self.group, self.bias, self.mult, self.shift)

    def words(self):
        if CFG.mode == "shift":
            return pack_shift_weights(self.w, CFG.lanes, CFG.shift_inputs)
        return pack_bcq_weights(*self.w, self.group, CFG.lanes)

    def cycles(self):
        m, k, n = self.shape
        if CFG.mode == "shift":
            return shift_cycles(m, k, n, CFG.lanes, CFG.shift_inputs)
        return bcq_cycles(m, k, n, CFG.lanes, CFG.bcq_bits)


def shapes():
    """Edges: K = 1, K not a multiple of the lane/chunk size (shift with g > 1: of g, and
    K < g), N = 1, N < lanes, M = 1."""
    if CFG.mode == "bcq":
        c = 8 * CFG.lanes
    else:
        c = CFG.shift_inputs if CFG.shift_inputs > 1 else CFG.lanes
    want = [(2, 1, 3), (1, 2 * c + 3, 2 * CFG.lanes + 1), (3, c, 1), (2, c - 1, 5)]
    if QUICK:
        want = want[:2]
    out = []
    for m, k, n in want:
        k = max(1, min(k, CFG.max_k))
        n = min(n, CFG.max_n_for_k(k))
        if (m, k, n) not in out:
            out.append((m, k, n))
    return out


def case_list():
    """(shape, flow) pairs: every shape unstalled (cycle check), with random pauses on both
    sides and with the deterministic pause pattern; the second also with random pauses on one
    side only (quick: unstalled and random on both sides)."""
    flows = ("free", "both") if QUICK else ("free", "both", "cycle")
    cases = [(s, f) for f in flows for s in shapes()]
    if not QUICK:
        cases += [(shapes()[1], "idle_in"), (shapes()[1], "bp_out")]
    return cases


@cocotb.test()
@cocotb.parametrize((("shape", "flow"), case_list()))
async def test_job(dut, shape, flow):
    """One job against the golden model; exact cycle count when unstalled."""
    tb = await LinearEngineTB.create(dut, f"job{shape}{flow}", flow)
    job = Job(tb.gen, *shape)
    await tb.load(job)
    await tb.run_job(job, "0", check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=["cycle", "both"] if not QUICK else ["cycle"])
async def test_back_to_back(dut, flow):
    """Three jobs on the same weights, each started on the edge after the previous ``done``,
    with pauses; then an empty job (M = 0)."""
    tb = await LinearEngineTB.create(dut, f"b2b{flow}", flow)
    m, k, n = shapes()[1]
    first = Job(tb.gen, m, k, n)
    await tb.load(first)
    await tb.run_jobs([first, Job(tb.gen, 2, k, n, like=first), Job(tb.gen, 1, k, n, like=first)],
                      ["0", "1", "2"])
    empty = Job(tb.gen, 0, k, n, like=first)
    await tb.run_job(empty, "empty", check_cycles=True)


@cocotb.test()
async def test_reset_mid_job(dut):
    """Reset in the middle of a job; the next job after it is correct."""
    tb = await LinearEngineTB.create(dut, "reset")
    m, k, n = shapes()[1]
    job = Job(tb.gen, m, k, n)
    await tb.load(job)
    tb.sink.set_pause_generator(itertools.repeat(1))    # hold the outputs until the reset
    tb.queue_job(job, "aborted")                        # (which forgets them)
    await tb.start_job(tb.controls(job))
    await FallingEdge(dut.clk)
    dut.start.value = 0
    for _ in range(job.cycles() // 2):
        await RisingEdge(dut.clk)
    assert int(dut.busy.value)
    await tb.reset()
    tb.set_flow("free")
    await tb.run_job(Job(tb.gen, m, k, n, like=job), "after-reset", check_cycles=True)
