"""cocotb bench: the Verilog of the linear attention kernels against their bit-exact PyTorch models.

``AMAFORMER_ATTENTION_LINEAR`` (JSON) selects the kernel and its parameters: ``kind``
(``"angular"``: :class:`amaformer.hdl.attention_angular.LinearAngularAttention` against
:func:`amaformer.gen.attention.attention_linear_angular`; ``"causal"``:
:class:`amaformer.hdl.attention_linear.LinearCausalAttention` against
:func:`amaformer.gen.attention.attention_linear_causal`), ``lanes``, ``max_dim``, ``max_tokens``
and ``conv_taps``; ``AMAFORMER_SEED`` the seed. Launched by
``sim_tests/test_attention_linear_cocotb.py``; not collected by pytest itself.

Both kernels run with their depthwise convolution (random int8 weights, written once through
``cw_wr``). Unstalled jobs are also checked cycle for cycle against the cycle models.
"""

import json
import math
import os
import random
import zlib

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.gen.attention import attention_linear_angular, attention_linear_causal
from amaformer.gen.numerics import requant_params
from amaformer.hdl.attention_angular import conv_weight_writes, linear_angular_job_cycles
from amaformer.hdl.attention_linear import linear_causal_job_cycles
from cocotb_streams import StreamSink, StreamSource, bit

PARAMS = json.loads(os.environ.get("AMAFORMER_ATTENTION_LINEAR", "{}"))
KIND = PARAMS.get("kind", "angular")
LANES = PARAMS.get("lanes", 2)
MAX_DIM = PARAMS.get("max_dim", 5)
MAX_TOKENS = PARAMS.get("max_tokens", 8)
TAPS = PARAMS.get("conv_taps", 3)
SEED = int(os.environ.get("AMAFORMER_SEED", "0"))

#: probability of an idle cycle before an input transfer, of ``o.ready`` low in a cycle
FLOWS = {"free": (0.0, 0.0), "both": (0.3, 0.4)}

HALF = tuple(int(x) for x in requant_params(0.5))
ANG = tuple(int(x) for x in requant_params(1 / (math.pi * 127 * 40)))
OUT = tuple(int(x) for x in requant_params(1 / (40.0 * 256)))
CONV = tuple(int(x) for x in requant_params(1 / 400))


def seed_of(name):
    return (SEED * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


class Job:
    """One job of ``n`` tokens of dimension ``d``: random int8 Q, K, V. For ``causal``,
    ``history`` holds the tokens of the same sequence before it (``clear`` low)."""

    def __init__(self, gen, n, d, weights, history=None):
        self.n, self.d, self.weights = n, d, weights
        self.q, self.k, self.v = (torch.randint(-128, 128, (n, d), generator=gen)
                                  for _ in range(3))
        self.history = history
        self.clear = history is None

    def expected(self):
        if KIND == "angular":
            return attention_linear_angular(self.q, self.k, self.v, *HALF, *ANG,
                                            self.weights[:, :self.d], *CONV)
        q, k, v = self.q, self.k, self.v
        if self.history is not None:
            q, k, v = (torch.cat([h, x]) for h, x in zip(self.history, (q, k, v)))
        y = attention_linear_causal(q, k, v, *OUT, self.weights[:, :self.d], *CONV)
        return y[-self.n:]

    def beats(self):
        one = [(int(self.q[t, i]) & 255) | (int(self.k[t, i]) & 255) << 8
               | (int(self.v[t, i]) & 255) << 16 for t in range(self.n) for i in range(self.d)]
        return one * 2 if KIND == "angular" else one

    def model_cycles(self):
        if KIND == "angular":
            return linear_angular_job_cycles(self.n, self.d, LANES, TAPS)
        return linear_causal_job_cycles(self.n, self.d, LANES, TAPS)

    def controls(self):
        if KIND == "angular":
            return {"half_mult": HALF[0], "half_shift": HALF[1], "ang_mult": ANG[0],
                    "ang_shift": ANG[1]}
        return {"clear": int(self.clear), "out_mult": OUT[0], "out_shift": OUT[1]}


class TB:
    """Clock, reset, weight loader, ``qkv`` driver, ``o`` monitor with an in-order checker,
    job control."""

    def __init__(self, dut, seed):
        self.dut = dut
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.errors = []
        self.qkv = StreamSource(dut, "qkv", self.rng, reset=False)
        self.o = StreamSink(dut, "o", self.rng, self.errors, reset=False)
        self.weights = torch.randint(-128, 128, (TAPS, MAX_DIM), generator=self.gen)

    def set_flow(self, flow):
        self.qkv.idle, self.o.stall = FLOWS[flow]

    async def start(self):
        Clock(self.dut.clk, 10, unit="ns").start()
        d = self.dut
        for sig in (d.qkv__valid, d.qkv__payload, d.o__ready, d.start, d.tokens, d.dim,
                    d.cw_wr__en, d.cw_wr__addr, d.cw_wr__data):
            sig.value = 0
        await FallingEdge(d.clk)
        d.rst.value = 1
        for _ in range(2):
            await RisingEdge(d.clk)
        await FallingEdge(d.clk)
        d.rst.value = 0
        for addr, value in conv_weight_writes(self.weights, LANES, MAX_DIM):
            d.cw_wr__addr.value, d.cw_wr__data.value, d.cw_wr__en.value = addr, value & 255, 1
            await FallingEdge(d.clk)
        d.cw_wr__en.value = 0
        d.conv_mult.value, d.conv_shift.value = CONV
        self.qkv.start()
        self.o.start()

    def job(self, n, d, history=None):
        return Job(self.gen, n, d, self.weights, history)

    async def run(self, jobs, tags, check_cycles=False):
        """Run ``jobs`` back to back, all inputs queued ahead; check outputs and, if asked,
        cycle counts."""
        d = self.dut
        for job, tag in zip(jobs, tags):
            self.qkv.queue.extend(job.beats())
            exp = job.expected()
            self.o.expect.extend(((tag, t, j), int(exp[t, j])) for t in range(job.n)
                                 for j in range(job.d))
        await FallingEdge(d.clk)
        assert not bit(d.busy)
        for i, (job, tag) in enumerate(zip(jobs, tags)):
            d.tokens.value, d.dim.value = job.n, job.d
            for name, value in job.controls().items():
                getattr(d, name).value = value
            d.start.value = 1
            await RisingEdge(d.clk)
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
        assert not self.qkv.queue, "inputs left over"


def cases():
    """(tokens, dim) per test, clipped to the built maxima."""
    want = [(1, MAX_DIM),                                   # one token
            (min(MAX_TOKENS, 2 * LANES + 1), MAX_DIM),      # not a multiple of the lanes
            (min(MAX_TOKENS, 3), 1),                        # d = 1
            (MAX_TOKENS, max(1, MAX_DIM - 2))]
    return [f"n{n}_d{d}" for n, d in want]


def parse(case):
    n, d = case.split("_")
    return int(n[1:]), int(d[1:])


@cocotb.test()
@cocotb.parametrize(case=cases(), flow=list(FLOWS))
async def test_job(dut, case, flow):
    """One job against the golden model; exact cycle count when unstalled."""
    tb = TB(dut, seed_of(case + flow))
    tb.set_flow(flow)
    await tb.start()
    await tb.run([tb.job(*parse(case))], [case], check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=list(FLOWS))
async def test_back_to_back(dut, flow):
    """Three jobs back to back, inputs all queued ahead (a beat taken by the wrong job shows up
    as a mismatch). ``causal``: the second job continues the first one's sequence (state and
    convolution window carry over), the third clears."""
    tb = TB(dut, seed_of("b2b" + flow))
    tb.set_flow(flow)
    await tb.start()
    n = min(MAX_TOKENS, LANES + 2)
    first = tb.job(n, MAX_DIM)
    second = tb.job(max(1, n - 1), MAX_DIM,
                    (first.q, first.k, first.v) if KIND == "causal" else None)
    third = tb.job(2, max(1, MAX_DIM - 1))
    await tb.run([first, second, third], ["b2b0", "b2b1", "b2b2"],
                 check_cycles=flow == "free")


@cocotb.test()
async def test_empty_job(dut):
    """Zero tokens give ``done`` on the next cycle and no output."""
    tb = TB(dut, seed_of("empty"))
    await tb.start()
    d = dut
    await FallingEdge(d.clk)
    d.tokens.value, d.dim.value = 0, 2
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
