"""cocotb bench: the Verilog of :class:`amaformer.hdl.attention.SoftmaxAttention` against the
bit-exact PyTorch model :func:`amaformer.gen.attention.attention_softmax`.

The engine's parameters come from ``AMAFORMER_ATTENTION`` (JSON: ``lanes``, ``max_dim``,
``max_tokens``, ``max_heads``), the seed from ``AMAFORMER_SEED``. Launched by
``sim_tests/test_attention_cocotb.py``; not collected by pytest itself.

Drivers write inputs just after the falling edge and sample handshakes in the read-only phase
of the same step, so what they see is what the next rising edge does. Unstalled jobs are also
checked cycle for cycle against :func:`amaformer.hdl.attention.softmax_cycle_model`.
"""

import json
import os
import random
import zlib

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.gen.attention import (attention_softmax, causal_mask, random_mask,
                                     softmax_schedule, softmax_scales, softmax_streams)
from amaformer.hdl.attention import HeadParams, softmax_cycle_model
from cocotb_streams import StreamSink, StreamSource, bit

PARAMS = json.loads(os.environ.get("AMAFORMER_ATTENTION", "{}"))
LANES = PARAMS.get("lanes", 4)
MAX_DIM = PARAMS.get("max_dim", 16)
MAX_TOKENS = PARAMS.get("max_tokens", 32)
MAX_HEADS = PARAMS.get("max_heads", 2)
SEED = int(os.environ.get("AMAFORMER_SEED", "0"))

#: probability of an idle cycle before an input transfer, of ``o.ready`` low in a cycle
FLOWS = {"free": (0.0, 0.0), "both": (0.3, 0.4)}


def seed_of(name):
    return (SEED * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


class Job:
    """A multi-head job: int8 Q, K, V (``H×N×d``), per-head scales, an optional mask."""

    def __init__(self, gen, heads, n, d, mask):
        self.heads, self.n, self.d = heads, n, d
        self.q, self.k, self.v = (torch.randint(-128, 128, (heads, n, d), generator=gen)
                                  for _ in range(3))
        if mask == "dense":
            self.keep = None
        elif mask == "causal":
            self.keep = causal_mask(n)
        elif mask == "sparse":      # random, a third of the rows keep only the diagonal
            self.keep = random_mask(n, 0.35, gen, empty_rows=0.35)
        elif mask == "diag":        # every row keeps only its diagonal
            self.keep = torch.eye(n, dtype=torch.bool)
        else:
            raise ValueError(mask)
        # logit scales from gentle to sharp (one head nearly one-hot), output scale = V's
        self.params = [softmax_scales(0.004 * (1 + 6 * h), 0.02, 0.05, 0.05 * (1 + h), d)
                       for h in range(heads)]

    def expected(self):
        return torch.stack([attention_softmax(self.q[h], self.k[h], self.v[h], *self.params[h],
                                              keep=self.keep) for h in range(self.heads)])

    def streams(self):
        qb, kvb = [], []
        for h in range(self.heads):
            a, b = softmax_streams(self.q[h], self.k[h], self.v[h], LANES, self.keep)
            qb += a
            kvb += b
        return qb, kvb

    def model_cycles(self):
        return softmax_cycle_model(self.n, self.d, LANES, self.heads,
                                   softmax_schedule(self.n, LANES, self.keep))


class TB:
    """Clock, reset, head-parameter loader, ``q``/``kv`` drivers, ``o`` monitor with an
    in-order checker, job control."""

    def __init__(self, dut, seed):
        self.dut = dut
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.errors = []
        self.q = StreamSource(dut, "q", self.rng, reset=False)
        self.kv = StreamSource(dut, "kv", self.rng, reset=False)
        self.o = StreamSink(dut, "o", self.rng, self.errors, reset=False)

    def set_flow(self, flow):
        """Idle probability of both inputs and back-pressure probability of the output."""
        self.q.idle, self.o.stall = FLOWS[flow]
        self.kv.idle = self.q.idle

    async def start(self):
        Clock(self.dut.clk, 10, unit="ns").start()
        d = self.dut
        for sig in (d.q__valid, d.kv__valid, d.o__ready, d.start, d.heads, d.tokens, d.dim,
                    d.hp_wr__en, d.hp_wr__addr, d.hp_wr__data, d.q__payload, d.kv__payload):
            sig.value = 0
        await FallingEdge(d.clk)
        d.rst.value = 1
        for _ in range(2):
            await RisingEdge(d.clk)
        await FallingEdge(d.clk)
        d.rst.value = 0
        self.q.start()
        self.kv.start()
        self.o.start()

    async def load_params(self, job):
        d = self.dut
        for h, (sm, ss, om, os_) in enumerate(job.params):
            await FallingEdge(d.clk)
            d.hp_wr__addr.value = h
            d.hp_wr__data.value = HeadParams.const({"score_mult": sm, "score_shift": ss,
                                                    "out_mult": om, "out_shift": os_}
                                                   ).as_value().value
            d.hp_wr__en.value = 1
        await FallingEdge(d.clk)
        d.hp_wr__en.value = 0

    def queue(self, job, tag):
        qb, kvb = job.streams()
        self.q.queue.extend(qb)
        mask = (1 << 8) - 1
        # payload bits, LSB first: k (8), v (8), keep (lanes), last (1)
        self.kv.queue.extend((k & mask) | (v & mask) << 8 | keep << 16 | last << (16 + LANES)
                             for k, v, keep, last in kvb)
        exp = job.expected()
        self.o.expect.extend(((tag, h, r, c), int(exp[h, r, c])) for h in range(job.heads)
                             for r in range(job.n) for c in range(job.d))

    async def run(self, jobs, tags, check_cycles=False):
        """Run ``jobs`` back to back (each started on the edge after the previous ``done``,
        all inputs queued ahead); check outputs, and cycle counts if asked."""
        d = self.dut
        for job, tag in zip(jobs, tags):
            self.queue(job, tag)
        await FallingEdge(d.clk)
        assert not bit(d.busy)
        for i, (job, tag) in enumerate(zip(jobs, tags)):
            d.heads.value, d.tokens.value, d.dim.value = job.heads, job.n, job.d
            d.start.value = 1
            await RisingEdge(d.clk)                      # samples start
            await FallingEdge(d.clk)
            d.start.value = 0
            cycles = 1
            model = job.model_cycles()
            while True:
                await ReadOnly()
                if bit(d.done):
                    break
                assert cycles < 30 * model + 500, f"{tag}: no done after {cycles} cycles"
                await RisingEdge(d.clk)
                cycles += 1
                await FallingEdge(d.clk)
            assert not self.errors, f"{len(self.errors)} errors, first: {self.errors[:4]}"
            assert not self.o.expect or self.o.expect[0][0][0] != tag, f"{tag}: outputs missing"
            if check_cycles:
                assert cycles == model, f"{tag}: {cycles} cycles, model {model}"
            cocotb.log.info("%s: %d cycles (model %d)", tag, cycles, model)
            if i + 1 < len(jobs):
                await FallingEdge(d.clk)
        assert not self.q.queue and not self.kv.queue, "inputs left over"


def cases():
    """(heads, tokens, dim, mask) per test, clipped to the built maxima."""
    n_odd = min(MAX_TOKENS, 2 * LANES + 1)        # not a multiple of the lanes
    want = [(1, 1, MAX_DIM, "dense"),               # one token
            (MAX_HEADS, n_odd, MAX_DIM, "dense"),
            (1, n_odd, 1, "dense"),                 # d = 1, keys every cycle
            (1, MAX_TOKENS, 3, "causal"),
            (MAX_HEADS, min(MAX_TOKENS, 3 * LANES - 1), max(1, MAX_DIM // 2), "sparse"),
            (1, min(MAX_TOKENS, 2 * LANES + 3), 5 if MAX_DIM >= 5 else MAX_DIM, "diag"),
            (1, MAX_TOKENS, MAX_DIM, "dense")]
    return [f"h{h}_n{n}_d{d}_{mk}" for h, n, d, mk in want]


def parse(case):
    h, n, d, mk = case.split("_")
    return int(h[1:]), int(n[1:]), int(d[1:]), mk


@cocotb.test()
@cocotb.parametrize(case=cases(), flow=list(FLOWS))
async def test_job(dut, case, flow):
    """One job against ``attention_softmax``; exact cycle count when unstalled."""
    tb = TB(dut, seed_of(case + flow))
    tb.set_flow(flow)
    await tb.start()
    job = Job(tb.gen, *parse(case))
    await tb.load_params(job)
    await tb.run([job], [case], check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=list(FLOWS))
async def test_back_to_back(dut, flow):
    """Three jobs of different shapes and masks back to back, inputs all queued ahead (a beat
    taken by the wrong job shows up as a mismatch); the head parameters stay loaded."""
    tb = TB(dut, seed_of("b2b" + flow))
    tb.set_flow(flow)
    await tb.start()
    n = min(MAX_TOKENS, LANES + 2)
    jobs = [Job(tb.gen, MAX_HEADS, n, MAX_DIM, "causal"),
            Job(tb.gen, 1, max(1, n - 1), max(1, MAX_DIM - 1), "dense"),
            Job(tb.gen, MAX_HEADS, n, 2, "sparse")]
    for j in jobs[1:]:
        j.params = jobs[0].params[:j.heads]
    await tb.load_params(jobs[0])
    await tb.run(jobs, ["b2b0", "b2b1", "b2b2"], check_cycles=flow == "free")


@cocotb.test()
async def test_empty_job(dut):
    """A zero dimension gives ``done`` on the next cycle and no output."""
    tb = TB(dut, seed_of("empty"))
    await tb.start()
    d = dut
    await FallingEdge(d.clk)
    d.heads.value, d.tokens.value, d.dim.value = 1, 0, 4
    d.start.value = 1
    await RisingEdge(d.clk)
    await FallingEdge(d.clk)
    d.start.value = 0
    await ReadOnly()
    assert int(d.done.value) and not int(d.busy.value)
    for _ in range(5):
        await RisingEdge(d.clk)
        await ReadOnly()
        assert not int(d.o__valid.value) and not int(d.done.value)
    assert not tb.errors
