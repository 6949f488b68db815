"""cocotb bench: the Verilog of :class:`amaformer.hdl.attention.SoftmaxAttention` against the
bit-exact PyTorch model :func:`amaformer.gen.attention.attention_softmax`.

The engine's parameters come from ``AMAFORMER_ATTENTION`` (JSON: ``lanes``, ``max_dim``,
``max_tokens``, ``max_heads``), the seed from ``AMAFORMER_SEED``. Launched by
``sim_tests/attention_unit/test_attention_cocotb.py``; not collected by pytest itself.

The bench is a :class:`.tb.TB` (drivers on ``q`` and ``kv``, monitor and in-order checker
on ``o``, pause patterns of :data:`.tb.FLOWS`). Unstalled jobs are also checked cycle for
cycle against :func:`amaformer.hdl.attention.softmax_cycle_model`.
"""

import json
import os

import cocotb
import torch

from amaformer.gen.attention import (attention_softmax, causal_mask, random_mask,
                                     softmax_schedule, softmax_scales, softmax_streams)
from amaformer.hdl.attention import HeadParams, softmax_cycle_model
from .tb import TB, labelled

PARAMS = json.loads(os.environ.get("AMAFORMER_ATTENTION", "{}"))
LANES = PARAMS.get("lanes", 4)
MAX_DIM = PARAMS.get("max_dim", 16)
MAX_TOKENS = PARAMS.get("max_tokens", 32)
MAX_HEADS = PARAMS.get("max_heads", 2)


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


class AttentionTB(TB):
    """One ``SoftmaxAttention``: Q beats on ``q``, K/V/mask beats on ``kv``, outputs on ``o``
    against ``attention_softmax``; per-head scales written through ``hp_wr``."""

    SOURCES = {"q": None, "kv": None}
    SINK = "o"
    CONTROLS = ("heads", "tokens", "dim", "hp_wr__en", "hp_wr__addr", "hp_wr__data")
    HOLD_START = False

    def controls(self, job):
        return {"heads": job.heads, "tokens": job.n, "dim": job.d}

    def stimulus(self, job):
        qb, kvb = job.streams()
        mask = (1 << 8) - 1
        # kv payload bits, LSB first: k (8), v (8), keep (lanes), last (1)
        return {"q": qb, "kv": [(k & mask) | (v & mask) << 8 | keep << 16 | last << (16 + LANES)
                                for k, v, keep, last in kvb]}

    def model(self, job):
        return labelled("O", job.expected())

    def model_cycles(self, job):
        return job.model_cycles()

    async def load_params(self, job):
        """Write the job's per-head scales into the head-parameter memory."""
        fields = ("score_mult", "score_shift", "out_mult", "out_shift")
        await self.write_mem("hp_wr", ((h, HeadParams.const(dict(zip(fields, p))).as_value().value)
                                       for h, p in enumerate(job.params)))


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


def case_flows():
    """(case, flow) pairs: every case unstalled and with random pauses; the single-head cases
    but the largest also with the deterministic pause pattern (back-to-back has it too)."""
    pairs = [(c, f) for f in ("free", "both") for c in cases()]
    return pairs + [(c, "cycle") for c in cases()[:-1] if parse(c)[0] == 1]


@cocotb.test()
@cocotb.parametrize((("case", "flow"), case_flows()))
async def test_job(dut, case, flow):
    """One job against ``attention_softmax``; exact cycle count when unstalled."""
    tb = await AttentionTB.create(dut, case + flow, flow)
    job = Job(tb.gen, *parse(case))
    await tb.load_params(job)
    await tb.run_job(job, case, check_cycles=flow == "free")


@cocotb.test()
@cocotb.parametrize(flow=["free", "cycle", "both"])
async def test_back_to_back(dut, flow):
    """Three jobs of different shapes and masks back to back, inputs all queued ahead (a beat
    taken by the wrong job shows up as a mismatch); the head parameters stay loaded."""
    tb = await AttentionTB.create(dut, "b2b" + flow, flow)
    n = min(MAX_TOKENS, LANES + 2)
    jobs = [Job(tb.gen, MAX_HEADS, n, MAX_DIM, "causal"),
            Job(tb.gen, 1, max(1, n - 1), max(1, MAX_DIM - 1), "dense"),
            Job(tb.gen, MAX_HEADS, n, 2, "sparse")]
    for j in jobs[1:]:
        j.params = jobs[0].params[:j.heads]
    await tb.load_params(jobs[0])
    await tb.run_jobs(jobs, ["b2b0", "b2b1", "b2b2"], check_cycles=flow == "free")


@cocotb.test()
async def test_empty_job(dut):
    """A zero dimension gives ``done`` on the next cycle and no output."""
    tb = await AttentionTB.create(dut, "empty")
    await tb.run_empty({"heads": 1, "tokens": 0, "dim": 4}, cycles=1)
