"""cocotb bench: the Verilog of :class:`amaformer.hdl.linear.LinearEngine` against PyTorch.

The engine's parameters come from the environment variable ``AMAFORMER_LINEAR`` (a JSON object
of :class:`amaformer.gen.config.LinearConfig` fields), the random seed from ``AMAFORMER_SEED``,
and ``AMAFORMER_QUICK=1`` trims the case list. Launched by ``sim_tests/test_linear_cocotb.py``
(pytest) and by :func:`amaformer.gen.sim.verify` (``amaformer sim``); not run by pytest itself.

Timing discipline: every driver writes its inputs just after the falling clock edge and samples
the design in the read-only phase of the same time step, so a handshake seen there is exactly
the one the next rising edge performs. Expected outputs come from
:func:`amaformer.gen.golden.linear_mul`; cycle counts of unstalled jobs from
:func:`amaformer.gen.cost.linear_cycles`.
"""

import json
import os
import random
import zlib
from dataclasses import dataclass

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.gen.config import LinearConfig
from amaformer.gen.cost import linear_cycles
from amaformer.gen.golden import linear_mul
from amaformer.gen.layout import pack_linear_weights, pack_requant_params
from amaformer.gen.numerics import requant_params
from cocotb_streams import StreamSink, StreamSource

ENV_CONFIG = "AMAFORMER_LINEAR"
ENV_SEED = "AMAFORMER_SEED"
ENV_QUICK = "AMAFORMER_QUICK"

#: Probabilities of an idle input cycle and of a back-pressured output cycle, per flow.
FLOWS = {"free": (0.0, 0.0), "idle_in": (0.4, 0.0), "bp_out": (0.0, 0.5), "both": (0.3, 0.3)}

CFG = LinearConfig(**json.loads(os.environ.get(ENV_CONFIG, "{}")))
SEED = int(os.environ.get(ENV_SEED, "0"))
QUICK = os.environ.get(ENV_QUICK, "0") == "1"


# --- jobs and the PyTorch model -------------------------------------------------------------

@dataclass
class Job:
    """One ``M×K @ K×N`` job: int8 operands, per-column bias, multiplier and shift (int64)."""
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
    """(``"m{M}_k{K}_n{N}"``, flow) pairs: every shape unstalled (cycle check) and with
    stalls on both sides, the middle shapes also with stalls on one side only."""
    shapes = [f"m{m}_k{k}_n{n}" for m, k, n in case_shapes()]
    cases = [(s, "free") for s in shapes] + [(s, "both") for s in shapes]
    if not QUICK:
        cases += [(s, f) for s in shapes[1:4] for f in ("idle_in", "bp_out")]
    return cases


def case_seed(name):
    """Seed of one test: the run's seed mixed with the test's name (stable across runs)."""
    return (SEED * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


# --- the bench ------------------------------------------------------------------------------

class TB:
    """Owns clock, reset, the memory loaders, the input driver, the output monitor with its
    in-order checker, and job control of one ``LinearEngine`` instance."""

    def __init__(self, dut, seed):
        self.dut = dut
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.lanes = CFG.lanes
        self.errors = []
        self.x = StreamSource(dut, "x", self.rng, mask=(1 << CFG.act_bits) - 1)
        self.y = StreamSink(dut, "y", self.rng, self.errors)   # expects ("job T Y[r, c]", v)
        self._tasks = []

    def set_flow(self, flow):
        self.x.idle, self.y.stall = FLOWS[flow]

    async def start(self):
        """Start the clock and the driver/monitor, then reset for two cycles."""
        Clock(self.dut.clk, 10, unit="ns").start()
        d = self.dut
        for sig in (d.x__valid, d.y__ready, d.start, d.m, d.k, d.n, d.w_wr__en, d.p_wr__en,
                    d.w_wr__addr, d.w_wr__data, d.p_wr__addr, d.p_wr__data, d.x__payload):
            sig.value = 0
        await self.reset()
        self._tasks = [self.x.start(), self.y.start()]

    async def reset(self, cycles=2):
        """Assert ``rst`` for ``cycles`` rising edges; forget queued inputs and expectations."""
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 1
        self.dut.start.value = 0
        self.x.queue.clear()
        self.y.expect.clear()
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    # memory loaders: one word per cycle through the write ports
    async def load_weights(self, w):
        """Write ``w`` (``K×N``) into the weight buffer, laid out by ``pack_linear_weights``."""
        d = self.dut
        words = pack_linear_weights(w, self.lanes, CFG.weight_bits)
        for addr, word in enumerate(words):
            await FallingEdge(d.clk)
            d.w_wr__addr.value = addr
            d.w_wr__data.value = word
            d.w_wr__en.value = (1 << self.lanes) - 1
        await FallingEdge(d.clk)
        d.w_wr__en.value = 0

    async def load_params(self, bias, mult, shift):
        """Write per-column bias, multiplier and shift into the parameter memory."""
        d = self.dut
        for addr, word in enumerate(pack_requant_params(bias, mult, shift)):
            await FallingEdge(d.clk)
            d.p_wr__addr.value = addr
            d.p_wr__data.value = word
            d.p_wr__en.value = 1
        await FallingEdge(d.clk)
        d.p_wr__en.value = 0

    async def load(self, job):
        await self.load_weights(job.w)
        await self.load_params(job.bias, job.mult, job.shift)

    def check(self):
        assert not self.errors, f"{len(self.errors)} errors, first: {self.errors[:5]}"

    def queue_job(self, job, tag):
        """Queue the job's activations on the driver and its expected outputs on the checker."""
        m, _, n = job.shape
        self.x.queue.extend(job.x.flatten().tolist())
        exp = job.expected()
        self.y.expect.extend((f"job {tag} Y[{r}, {c}]", int(exp[r, c]))
                             for r in range(m) for c in range(n))

    async def wait_done(self, limit, next_shape=None):
        """Wait for ``done``; return the cycle count as ``linear_cycles`` defines it (rising
        edges from the one sampling ``start`` to the one raising ``done``, both counted).

        Called just after the edge that sampled ``start``. With ``next_shape``, ``start`` stays
        asserted with the next job's dimensions, so the engine takes it on the first edge at
        which it is idle (the one after ``done``), and the caller awaits that edge. Returns in
        the read-only phase of the cycle in which ``done`` is high."""
        d = self.dut
        cycles = 1
        await FallingEdge(d.clk)
        if next_shape is None:
            d.start.value = 0
        else:
            d.m.value, d.k.value, d.n.value = next_shape
        while True:
            await ReadOnly()
            if int(d.done.value):
                return cycles
            assert cycles <= limit, f"no done after {limit} cycles"
            await RisingEdge(d.clk)
            cycles += 1
            await FallingEdge(d.clk)

    async def run_jobs(self, jobs, tags, *, check_cycles=False):
        """Run jobs back to back (each started on the edge after its predecessor's ``done``,
        all inputs queued ahead); check outputs, inputs taken and, if asked, cycle counts."""
        d = self.dut
        for job, tag in zip(jobs, tags):
            self.queue_job(job, tag)
        sent = self.x.sent
        await FallingEdge(d.clk)
        assert not int(d.busy.value), "engine busy at start"
        d.m.value, d.k.value, d.n.value = jobs[0].shape
        d.start.value = 1
        await RisingEdge(d.clk)
        all_cycles = []
        for i, (job, tag) in enumerate(zip(jobs, tags)):
            m, k, n = job.shape
            nxt = jobs[i + 1].shape if i + 1 < len(jobs) else None
            model = linear_cycles(m, k, n, self.lanes)
            cycles = await self.wait_done(limit=20 * model + 200, next_shape=nxt)
            self.check()
            pending = self.y.expect[0][0] if self.y.expect else ""
            assert not pending.startswith(f"job {tag} "), f"job {tag}: done with outputs missing"
            sent += m * k
            assert self.x.sent == sent, f"job {tag}: {self.x.sent} inputs taken, expected {sent}"
            if check_cycles:
                assert cycles == model, f"job {tag} {m}x{k}x{n}: {cycles} cycles, model {model}"
            all_cycles.append(cycles)
            if nxt is not None:
                await RisingEdge(d.clk)         # samples ``start`` of the next job
        return all_cycles

    async def run_job(self, job, tag="", *, check_cycles=False):
        """Run one job to ``done``; see :meth:`run_jobs`."""
        return (await self.run_jobs([job], [tag], check_cycles=check_cycles))[0]


async def make_tb(dut, name):
    tb = TB(dut, case_seed(name))
    await tb.start()
    return tb


# --- tests ----------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize((("shape", "flow"), case_list()))
async def test_job(dut, shape, flow):
    """One job per shape against ``linear_mul``; exact cycle count when unstalled."""
    tb = await make_tb(dut, f"job{shape}{flow}")
    tb.set_flow(flow)
    job = random_job(tb.gen, *(int(v[1:]) for v in shape.split("_")))
    await tb.load(job)
    cycles = await tb.run_job(job, shape, check_cycles=flow == "free")
    dut._log.info("shape %s flow %s: %d cycles", shape, flow, cycles)


@cocotb.test()
@cocotb.parametrize(flow=["free", "both"] if not QUICK else ["both"])
async def test_back_to_back(dut, flow):
    """Jobs of different shapes, each started on the edge after its predecessor's ``done``,
    with all activations queued ahead on ``x`` (none may go to the wrong job). The first three
    share one weight load (smaller M and N reuse the leading columns); then new weights with
    K = 1 and another K."""
    tb = await make_tb(dut, f"b2b{flow}")
    tb.set_flow(flow)
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
@cocotb.parametrize(flow=["free", "both"] if not QUICK else ["both"],
                    blocked=[False, True])
async def test_reset_mid_job(dut, flow, blocked):
    """``rst`` in the middle of a job, with outputs partly sent; with ``blocked``, after
    ``y.ready`` has been held low long enough to fill the output pipeline and the holding
    register. Afterwards nothing may come out and ``done`` may not pulse; then a new job with
    new weights and shape must be exact, with the modelled cycle count when unstalled."""
    tb = await make_tb(dut, f"reset{flow}{blocked}")
    tb.set_flow(flow)
    d = dut
    k = min(20, CFG.max_k)
    n = min(2 * CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(4, CFG.max_m), k, n)
    await tb.load(job)
    tb.queue_job(job, "aborted")
    await FallingEdge(d.clk)
    d.m.value, d.k.value, d.n.value = job.shape
    d.start.value = 1
    await RisingEdge(d.clk)
    await FallingEdge(d.clk)
    d.start.value = 0
    total = job.shape[0] * n
    while tb.y.received < max(1, total // 3):
        await RisingEdge(d.clk)
    if blocked:
        tb.y.stall = 1.0
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
    for _ in range(k + 2 * CFG.lanes + 10):       # quiet: no output, no done
        await RisingEdge(d.clk)
        await ReadOnly()
        assert not int(d.done.value) and not int(d.busy.value), "activity after reset"
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
    tb = await make_tb(dut, "sat")
    tb.set_flow("both")
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
    tb = await make_tb(dut, "ties")
    tb.set_flow("both")
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
    tb = await make_tb(dut, f"empty{zero}")
    k = min(6, CFG.max_k)
    n = min(CFG.lanes + 1, CFG.max_n_for_k(k))
    job = random_job(tb.gen, min(2, CFG.max_m), k, n)
    await tb.load(job)
    tb.queue_job(job, "after-empty")        # its inputs wait on x during the empty job
    dims = dict(m=job.shape[0], k=k, n=n)
    dims[zero] = 0
    d = dut
    await FallingEdge(d.clk)
    d.m.value, d.k.value, d.n.value = dims["m"], dims["k"], dims["n"]
    d.start.value = 1
    await RisingEdge(d.clk)
    cycles = await tb.wait_done(limit=50, next_shape=job.shape)
    assert cycles == linear_cycles(dims["m"], dims["k"], dims["n"], CFG.lanes), cycles
    assert tb.x.sent == 0 and tb.y.received == 0, (tb.x.sent, tb.y.received)
    await RisingEdge(d.clk)                 # samples ``start`` of the real job
    m, k, n = job.shape
    cycles = await tb.wait_done(limit=20 * linear_cycles(m, k, n, CFG.lanes) + 200)
    tb.check()
    assert not tb.y.expect and tb.x.sent == m * k, (len(tb.y.expect), tb.x.sent)
    assert cycles == linear_cycles(m, k, n, CFG.lanes), cycles
