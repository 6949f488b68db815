"""cocotb bench: the Verilog of :class:`amaformer.hdl.linear.LinearEngine` against PyTorch.

The engine's parameters come from the environment variable ``AMAFORMER_LINEAR`` (a JSON object
of :class:`amaformer.gen.config.LinearConfig` fields), the random seed from ``AMAFORMER_SEED``,
and ``AMAFORMER_QUICK=1`` trims the case list. Launched by ``sim_tests/linear_unit/test_linear_cocotb.py``
(pytest) and by :func:`amaformer.gen.sim.verify` (``amaformer sim``); not run by pytest itself.

The bench is a :class:`.tb.TB` (driver on ``x``, monitor and in-order checker on ``y``,
pause patterns of :data:`.tb.FLOWS`). Expected outputs come from
:func:`amaformer.gen.golden.linear_mul`; cycle counts of unstalled jobs from
:func:`amaformer.gen.cost.linear_cycles`.
"""

import itertools
import json
import os
from dataclasses import dataclass

import cocotb
import torch
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.gen.config import LinearConfig
from amaformer.gen.cost import linear_cycles
from amaformer.gen.golden import linear_mul
from amaformer.hdl.linear_layout import pack_linear_weights
from amaformer.gen.numerics import requant_params
from .tb import LinearEngineTB

CFG = LinearConfig(**json.loads(os.environ.get("AMAFORMER_LINEAR", "{}")))
QUICK = os.environ.get("AMAFORMER_QUICK", "0") == "1"


# --- jobs and the PyTorch model -------------------------------------------------------------

@dataclass
class Job:
    """One ``M×K @ K×N`` job: int8 operands, per-column bias, multiplier and shift (int64);
    its golden outputs, weight words and cycle model (for :class:`.tb.LinearEngineTB`)."""
    x: torch.Tensor
    w: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: torch.Tensor

    @property
    def shape(self):
        return self.x.shape[0], self.x.shape[1], self.w.shape[1]

    def expected(self):
        return linear_mul(self.x, self.w, self.bias, self.mult, self.shift, CFG.act_bits)

    def words(self):
        return pack_linear_weights(self.w, CFG.lanes, CFG.weight_bits)

    def cycles(self):
        return linear_cycles(*self.shape, CFG.lanes)


def random_params(gen, k, n, *, saturate=False):
    """Bias, multiplier and shift that spread outputs over the int8 range (or saturate them)."""
    amax_a, amax_w = 1 << (CFG.act_bits - 1), 1 << (CFG.weight_bits - 1)
    acc_std = (k ** 0.5) * amax_a * amax_w / 3          # std of a sum of k uniform products
    bias = (torch.randn(n, generator=gen, dtype=torch.float64) * acc_std).round().to(torch.int64)
    if saturate:
        real = torch.full((n,), 1000.0 / acc_std, dtype=torch.float64)
    else:
        spread = 2.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1)
        real = spread * (1 << (CFG.act_bits - 1)) / (2.5 * acc_std)
    mult, shift = requant_params(real)
    return bias, mult, shift


def random_job(gen, m, k, n, *, like=None, saturate=False):
    """Random job; with ``like``, reuses its weights and parameters (first ``k``, ``n``)."""
    lo, hi = -(1 << (CFG.act_bits - 1)), 1 << (CFG.act_bits - 1)
    x = torch.randint(lo, hi, (m, k), generator=gen)
    if like is not None:
        return Job(x, like.w[:k, :n], like.bias[:n], like.mult[:n], like.shift[:n])
    wlo, whi = -(1 << (CFG.weight_bits - 1)), 1 << (CFG.weight_bits - 1)
    w = torch.randint(wlo, whi, (k, n), generator=gen)
    return Job(x, w, *random_params(gen, k, n, saturate=saturate))


def fits(m, k, n):
    """The job fits the configured engine (``LinearConfig.check_job``)."""
    try:
        CFG.check_job(m, k, n)
    except ValueError:
        return False
    return True


def case_shapes():
    """Job shapes for this engine: the edges (K = 1, K prime, N < lanes, N not a multiple of
    lanes, M = 1) and K = N = 64, clipped to the configured maxima."""
    L = CFG.lanes
    want = [(1, 1, 1), (3, 1, 2 * L + 1), (2, 13, max(1, L - 1)), (1, 37, 2 * L + 3),
            (4, 5, L), (2, 64, 64)]
    if QUICK:
        want = [want[1], want[3], want[5]]
    shapes = []
    for m, k, n in want:
        m, k = min(m, CFG.max_m), min(k, CFG.max_k)
        n = min(n, CFG.max_n_for_k(k))
        if (m, k, n) not in shapes and fits(m, k, n):
            shapes.append((m, k, n))
    return shapes


def case_list():
    """(``"m{M}_k{K}_n{N}"``, flow) pairs: every shape unstalled (cycle check) and with random
    pauses on both sides; all but the largest with the deterministic pause pattern, the middle
    shapes also with random pauses on one side only (quick: neither of these)."""
    shapes = [f"m{m}_k{k}_n{n}" for m, k, n in case_shapes()]
    cases = [(s, "free") for s in shapes] + [(s, "both") for s in shapes]
    if not QUICK:
        cases += [(s, "cycle") for s in shapes[:-1]]
        cases += [(s, f) for s in shapes[1:4] for f in ("idle_in", "bp_out")]
    return cases


def parse_shape(shape):
    """``"m2_k13_n3"`` -> ``(2, 13, 3)``."""
    return tuple(int(v[1:]) for v in shape.split("_"))


# --- the bench ------------------------------------------------------------------------------

class LinearTB(LinearEngineTB):
    """One ``LinearEngine``; activations masked to ``act_bits``."""

    SOURCES = {"x": (1 << CFG.act_bits) - 1}


# --- tests ----------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize((("shape", "flow"), case_list()))
async def test_job(dut, shape, flow):
    """One job per shape against ``linear_mul``; exact cycle count when unstalled."""
    tb = await LinearTB.create(dut, f"job{shape}{flow}", flow)
    job = random_job(tb.gen, *parse_shape(shape))
    await tb.load(job)
    await tb.run_job(job, shape, check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=["free", "cycle", "both"] if not QUICK else ["cycle"])
async def test_back_to_back(dut, flow):
    """Jobs of different shapes, each started on the edge after its predecessor's ``done``,
    with all activations queued ahead on ``x`` (none may go to the wrong job). The first three
    share one weight load (smaller M and N reuse the leading columns); then new weights with
    K = 1 and another K."""
    tb = await LinearTB.create(dut, f"b2b{flow}", flow)
    L = CFG.lanes
    k = min(24, CFG.max_k)
    n = min(2 * L + 5, CFG.max_n_for_k(k))
    base = random_job(tb.gen, min(3, CFG.max_m), k, n)
    jobs = [base, random_job(tb.gen, 1, k, max(1, n // 3), like=base),
            random_job(tb.gen, min(5, CFG.max_m), k, max(1, n - L + 1), like=base)]
    await tb.load(base)
    await tb.run_jobs(jobs, ["b2b0", "b2b1", "b2b2"], check_cycles=flow == "free")
    for i, (m, k2, n2) in enumerate([(4, 1, L + 2), (2, 9, 3)]):
        m, k2 = min(m, CFG.max_m), min(k2, CFG.max_k)
        job = random_job(tb.gen, m, k2, min(n2, CFG.max_n_for_k(k2)))
        await tb.load(job)
        await tb.run_jobs([job, random_job(tb.gen, 1, k2, job.shape[2], like=job)],
                          [f"new{i}a", f"new{i}b"], check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=["free", "cycle", "both"] if not QUICK else ["both"],
                    blocked=[False, True])
async def test_reset_mid_job(dut, flow, blocked):
    """``rst`` in the middle of a job, with outputs partly sent; with ``blocked``, after
    ``y.ready`` has been held low long enough to fill the output pipeline and the holding
    register. Afterwards nothing may come out and ``done`` may not pulse; then a new job with
    new weights and shape must be exact, with the modelled cycle count when unstalled."""
    tb = await LinearTB.create(dut, f"reset{flow}{blocked}", flow)
    d = dut
    k = min(20, CFG.max_k)
    n = min(2 * CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(4, CFG.max_m), k, n)
    await tb.load(job)
    tb.queue_job(job, "aborted")
    await tb.start_job(tb.controls(job))
    await FallingEdge(d.clk)
    d.start.value = 0
    total = job.shape[0] * n
    while tb.sink.received < max(1, total // 3):
        await RisingEdge(d.clk)
    if blocked:
        tb.sink.set_pause_generator(itertools.repeat(1))
        for _ in range(k + 2 * CFG.lanes + 10):
            await RisingEdge(d.clk)
    await ReadOnly()
    assert int(d.busy.value), "job ended before the reset"
    if blocked:
        assert int(d.y__valid.value), "output not blocked"
    await tb.reset(cycles=3)
    tb.set_flow("free")
    await ReadOnly()
    assert not int(d.busy.value) and not int(d.y__valid.value), "reset did not clear"
    await tb.quiet(k + 2 * CFG.lanes + 10)          # no output, no done
    tb.check()                                      # the monitor saw no unexpected output
    tb.set_flow(flow)
    k2 = min(7, CFG.max_k)
    job2 = random_job(tb.gen, min(3, CFG.max_m), k2, min(CFG.lanes + 2, CFG.max_n_for_k(k2)))
    await tb.load(job2)
    await tb.run_job(job2, "after-reset", check_cycles=flow == "free")


@cocotb.test()
async def test_saturation(dut):
    """Parameters that drive most outputs to the rails: +max and -max-1 both appear (column 0
    with shift 0 as well) and match the model."""
    tb = await LinearTB.create(dut, "sat", "both")
    k = min(16, CFG.max_k)
    n = min(CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(4, CFG.max_m), k, n, saturate=True)
    job.mult[0], job.shift[0] = 3, 0
    exp = job.expected()
    hi, lo = (1 << (CFG.act_bits - 1)) - 1, -(1 << (CFG.act_bits - 1))
    assert (exp == hi).any() and (exp == lo).any(), "case does not reach both rails"
    await tb.load(job)
    await tb.run_job(job, "sat")


@cocotb.test()
async def test_rounding_ties(dut):
    """Small weights and shifts 1 to 3 with small multipliers, so that many accumulators sit
    exactly on a .5 boundary (both signs): the round-half-up rule is visible in the output."""
    tb = await LinearTB.create(dut, "ties", "both")
    k = min(3, CFG.max_k)
    n = min(2 * CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(6, CFG.max_m), k, n)
    job.w = torch.randint(-1, 2, (k, n), generator=tb.gen)
    job.bias = torch.randint(-8, 9, (n,), generator=tb.gen)
    job.mult = torch.tensor([(1, 3, 1, 5)[c % 4] for c in range(n)])
    job.shift = torch.tensor([(1, 2, 2, 3)[c % 4] for c in range(n)])
    acc = job.x @ job.w + job.bias
    ties = (acc * job.mult) % (1 << job.shift) == (1 << (job.shift - 1))
    assert int(ties.sum()) >= job.x.shape[0] * n // 8, "too few ties"
    await tb.load(job)
    await tb.run_job(job, "ties")


@cocotb.test()
@cocotb.parametrize(zero=["m", "k", "n"])
async def test_empty_job(dut, zero):
    """A job with one dimension 0: ``done`` after ``linear_cycles`` (2), no input taken although
    inputs wait on ``x``, no output; then a real job, started right after, is exact."""
    tb = await LinearTB.create(dut, f"empty{zero}")
    k = min(6, CFG.max_k)
    n = min(CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(2, CFG.max_m), k, n)
    await tb.load(job)
    tb.queue_job(job, "after-empty")        # its inputs wait on x during the empty job
    dims = dict(m=job.shape[0], k=k, n=n)
    dims[zero] = 0
    x = tb.sources["x"]
    await tb.start_job(dims)
    cycles = await tb.wait_done(limit=50, next_controls=tb.controls(job))
    assert cycles == linear_cycles(dims["m"], dims["k"], dims["n"], CFG.lanes), cycles
    assert x.sent == 0 and tb.sink.received == 0, (x.sent, tb.sink.received)
    await RisingEdge(dut.clk)               # samples ``start`` of the real job
    m, k, n = job.shape
    cycles = await tb.wait_done(limit=20 * job.cycles() + 200)
    tb.check()
    assert not tb.checker.outstanding("after-empty") and x.sent == m * k, x.sent
    assert cycles == job.cycles(), cycles
