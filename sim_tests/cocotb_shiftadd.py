"""cocotb bench: the Verilog of the ``shift`` and ``bcq`` engines against the PyTorch golden models.

Same environment interface as ``cocotb_linear.py``: ``AMAFORMER_LINEAR`` (JSON of
:class:`amaformer.gen.config.LinearConfig` fields, ``mode`` ``"shift"`` or ``"bcq"``),
``AMAFORMER_SEED`` and ``AMAFORMER_QUICK``. Launched by ``sim_tests/test_shiftadd_cocotb.py``;
not run by pytest itself.

Drivers write inputs just after the falling edge and sample in the read-only phase, so a
handshake seen there is the one the next rising edge performs. Expected outputs come from
:func:`amaformer.gen.golden.linear_shift` / :func:`~amaformer.gen.golden.linear_bcq`, cycle
counts of unstalled jobs from :mod:`amaformer.gen.cost`.
"""

import json
import os
import random
import zlib

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.gen.config import LinearConfig
from amaformer.gen.cost import bcq_cycles, shift_cycles
from amaformer.gen.golden import linear_bcq, linear_shift
from amaformer.gen.layout import pack_bcq_weights, pack_requant_params, pack_shift_weights
from amaformer.gen.numerics import requant_params
from amaformer.gen.quant import round_pow2_sum
from cocotb_streams import StreamSink, StreamSource

CFG = LinearConfig(**json.loads(os.environ.get("AMAFORMER_LINEAR", '{"mode": "bcq"}')))
SEED = int(os.environ.get("AMAFORMER_SEED", "0"))
QUICK = os.environ.get("AMAFORMER_QUICK", "0") == "1"
FLOWS = {"free": (0.0, 0.0), "idle_in": (0.4, 0.0), "bp_out": (0.0, 0.5), "both": (0.3, 0.3)}


class Job:
    """An ``M×K @ K×N`` job in the configured encoding, with its golden outputs."""

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


class TB:
    """Clock, reset, loaders, an input driver with random idle cycles, an output monitor with
    random back-pressure and an in-order checker against the golden model."""

    def __init__(self, dut, name):
        self.dut = dut
        seed = (SEED * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.errors = []
        self.x = StreamSource(dut, "x", self.rng, mask=0xFF)
        self.y = StreamSink(dut, "y", self.rng, self.errors)   # expects ("job T Y[r, c]", v)

    async def start(self):
        d = self.dut
        Clock(d.clk, 10, unit="ns").start()
        for sig in (d.x__valid, d.x__payload, d.y__ready, d.start, d.m, d.k, d.n,
                    d.w_wr__en, d.w_wr__addr, d.w_wr__data, d.p_wr__en, d.p_wr__addr,
                    d.p_wr__data):
            sig.value = 0
        await self.reset()
        self.x.start()
        self.y.start()

    async def reset(self):
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 1
        self.dut.start.value = 0
        self.x.queue.clear()
        self.y.expect.clear()
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def load(self, job):
        d = self.dut
        en = (1 << len(d.w_wr__en)) - 1
        for prefix, words, enable in (("w_wr", job.words(), en),
                                      ("p_wr", pack_requant_params(job.bias, job.mult,
                                                                   job.shift), 1)):
            for addr, word in enumerate(words):
                await FallingEdge(d.clk)
                getattr(d, f"{prefix}__addr").value = addr
                getattr(d, f"{prefix}__data").value = word
                getattr(d, f"{prefix}__en").value = enable
            await FallingEdge(d.clk)
            getattr(d, f"{prefix}__en").value = 0

    async def run(self, jobs, *, check_cycles=False):
        """Run ``jobs`` back to back (``start`` held with the next job's shape, so it is taken
        on the edge after ``done``); check outputs, inputs taken and cycle counts."""
        d = self.dut
        for t, job in enumerate(jobs):
            self.x.queue.extend(job.x.flatten().tolist())
            exp = job.expected()
            m, _, n = job.shape
            self.y.expect.extend(((f"job {t} Y[{r}, {c}]"), int(exp[r, c]))
                               for r in range(m) for c in range(n))
        await FallingEdge(d.clk)
        assert not int(d.busy.value)
        d.m.value, d.k.value, d.n.value = jobs[0].shape
        d.start.value = 1
        await RisingEdge(d.clk)
        sent = self.x.sent
        for t, job in enumerate(jobs):
            nxt = jobs[t + 1].shape if t + 1 < len(jobs) else None
            cycles = 1
            await FallingEdge(d.clk)
            if nxt is None:
                d.start.value = 0
            else:
                d.m.value, d.k.value, d.n.value = nxt
            while True:
                await ReadOnly()
                if int(d.done.value):
                    break
                assert cycles < 30 * job.cycles() + 200, "no done"
                await RisingEdge(d.clk)
                cycles += 1
                await FallingEdge(d.clk)
            assert not self.errors, self.errors[:5]
            m, k, n = job.shape
            sent += m * k
            assert self.x.sent == sent, f"job {t}: {self.x.sent} inputs taken, expected {sent}"
            pending = self.y.expect[0][0] if self.y.expect else ""
            assert not pending.startswith(f"job {t} "), f"job {t}: done with outputs missing"
            if check_cycles:
                assert cycles == job.cycles(), f"job {t}: {cycles} cycles, model {job.cycles()}"
            if nxt is not None:
                await RisingEdge(d.clk)


async def make_tb(dut, name):
    tb = TB(dut, name)
    await tb.start()
    return tb


def case_list():
    cases = [(s, "free") for s in shapes()] + [(s, "both") for s in shapes()]
    if not QUICK:
        cases += [(shapes()[1], "idle_in"), (shapes()[1], "bp_out")]
    return cases


@cocotb.test()
@cocotb.parametrize((("shape", "flow"), case_list()))
async def test_job(dut, shape, flow):
    """One job against the golden model; exact cycle count when unstalled."""
    tb = await make_tb(dut, f"job{shape}{flow}")
    tb.x.idle, tb.y.stall = FLOWS[flow]
    job = Job(tb.gen, *shape)
    await tb.load(job)
    await tb.run([job], check_cycles=flow == "free")


@cocotb.test()
async def test_back_to_back(dut):
    """Three jobs on the same weights, each started on the edge after the previous ``done``,
    with stalls; then an empty job (M = 0)."""
    tb = await make_tb(dut, "b2b")
    tb.x.idle, tb.y.stall = FLOWS["both"]
    m, k, n = shapes()[1]
    first = Job(tb.gen, m, k, n)
    await tb.load(first)
    await tb.run([first, Job(tb.gen, 2, k, n, like=first), Job(tb.gen, 1, k, n, like=first)])
    empty = Job(tb.gen, 0, k, n, like=first)
    await tb.run([empty], check_cycles=True)


@cocotb.test()
async def test_reset_mid_job(dut):
    """Reset in the middle of a job; the next job after it is correct."""
    tb = await make_tb(dut, "reset")
    m, k, n = shapes()[1]
    job = Job(tb.gen, m, k, n)
    await tb.load(job)
    tb.y.stall = 1.0                     # hold the outputs: none is expected from this job
    tb.x.queue.extend(job.x.flatten().tolist())
    await FallingEdge(dut.clk)
    dut.m.value, dut.k.value, dut.n.value = job.shape
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0
    for _ in range(job.cycles() // 2):
        await RisingEdge(dut.clk)
    assert int(dut.busy.value)
    await tb.reset()
    tb.y.stall = 0.0
    await tb.run([Job(tb.gen, m, k, n, like=job)], check_cycles=True)
