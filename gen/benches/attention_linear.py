"""cocotb bench: the Verilog of the linear attention kernels against their bit-exact PyTorch models.

``AMAFORMER_ATTENTION_LINEAR`` (JSON) selects the kernel and its parameters: ``kind``
(``"angular"``: :class:`amaformer.hdl.attention_angular.LinearAngularAttention` against
:func:`amaformer.gen.attention.attention_linear_angular`; ``"causal"``:
:class:`amaformer.hdl.attention_linear.LinearCausalAttention` against
:func:`amaformer.gen.attention.attention_linear_causal`), ``lanes``, ``max_dim``, ``max_tokens``
and ``conv_taps``; ``AMAFORMER_SEED`` the seed. Launched by
``sim_tests/attention_unit/test_attention_linear_cocotb.py``; not collected by pytest itself.

Both kernels run with their depthwise convolution (random int8 weights, written once through
``cw_wr``). The bench is a :class:`.tb.TB` (driver on ``qkv``, monitor and in-order checker
on ``o``, pause patterns of :data:`.tb.FLOWS`). Unstalled jobs are also checked cycle for
cycle against the cycle models.
"""

import json
import math
import os

import cocotb
import torch

from amaformer.gen.attention import attention_linear_angular, attention_linear_causal
from amaformer.gen.numerics import requant_params
from amaformer.hdl.attention_angular import conv_weight_writes, linear_angular_job_cycles
from amaformer.hdl.attention_linear import linear_causal_job_cycles
from .tb import TB, labelled

PARAMS = json.loads(os.environ.get("AMAFORMER_ATTENTION_LINEAR", "{}"))
KIND = PARAMS.get("kind", "angular")
LANES = PARAMS.get("lanes", 2)
MAX_DIM = PARAMS.get("max_dim", 5)
MAX_TOKENS = PARAMS.get("max_tokens", 8)
TAPS = PARAMS.get("conv_taps", 3)

HALF = tuple(int(x) for x in requant_params(0.5))
ANG = tuple(int(x) for x in requant_params(1 / (math.pi * 127 * 40)))
OUT = tuple(int(x) for x in requant_params(1 / (40.0 * 256)))
CONV = tuple(int(x) for x in requant_params(1 / 400))


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


class LinearAttentionTB(TB):
    """One linear attention kernel: Q/K/V beats on ``qkv``, outputs on ``o`` against the golden
    model of ``KIND``; random convolution weights, written once through ``cw_wr``."""

    SOURCES = {"qkv": None}
    SINK = "o"
    CONTROLS = ("tokens", "dim", "cw_wr__en", "cw_wr__addr", "cw_wr__data")
    HOLD_START = False

    def __init__(self, dut, name):
        super().__init__(dut, name)
        self.weights = torch.randint(-128, 128, (TAPS, MAX_DIM), generator=self.gen)

    async def setup(self):
        writes = conv_weight_writes(self.weights, LANES, MAX_DIM)
        await self.write_mem("cw_wr", ((addr, value & 255) for addr, value in writes))
        self.dut.conv_mult.value, self.dut.conv_shift.value = CONV

    def job(self, n, d, history=None):
        return Job(self.gen, n, d, self.weights, history)

    def controls(self, job):
        return {"tokens": job.n, "dim": job.d, **job.controls()}

    def stimulus(self, job):
        return {"qkv": job.beats()}

    def model(self, job):
        return labelled("O", job.expected())

    def model_cycles(self, job):
        return job.model_cycles()


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


def case_flows():
    """(case, flow) pairs: every case unstalled and with random pauses, all but the largest
    also with the deterministic pause pattern."""
    pairs = [(c, f) for f in ("free", "both") for c in cases()]
    return pairs + [(c, "cycle") for c in cases()[:-1]]


@cocotb.test()
@cocotb.parametrize((("case", "flow"), case_flows()))
async def test_job(dut, case, flow):
    """One job against the golden model; exact cycle count when unstalled."""
    tb = await LinearAttentionTB.create(dut, case + flow, flow)
    await tb.run_job(tb.job(*parse(case)), case, check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=["free", "cycle", "both"])
async def test_back_to_back(dut, flow):
    """Three jobs back to back, inputs all queued ahead (a beat taken by the wrong job shows up
    as a mismatch). ``causal``: the second job continues the first one's sequence (state and
    convolution window carry over), the third clears."""
    tb = await LinearAttentionTB.create(dut, "b2b" + flow, flow)
    n = min(MAX_TOKENS, LANES + 2)
    first = tb.job(n, MAX_DIM)
    second = tb.job(max(1, n - 1), MAX_DIM,
                    (first.q, first.k, first.v) if KIND == "causal" else None)
    third = tb.job(2, max(1, MAX_DIM - 1))
    await tb.run_jobs([first, second, third], ["b2b0", "b2b1", "b2b2"],
                      check_cycles=flow == "free")


@cocotb.test()
async def test_empty_job(dut):
    """Zero tokens give ``done`` on the next cycle and no output."""
    tb = await LinearAttentionTB.create(dut, "empty")
    await tb.run_empty({"tokens": 0, "dim": 2}, cycles=1)
