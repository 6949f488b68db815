"""The testbench base of the engine benches (:mod:`.linear`, :mod:`.shiftadd`,
:mod:`.attention`, :mod:`.attention_linear`): driver, monitor, model, checker.

A bench subclasses :class:`TB`, names its ports and implements four hooks: the control inputs
of a job, its input beats, the golden model's outputs and the cycle model. The base owns clock
and reset, one :class:`StreamDriver` per input stream, a :class:`StreamMonitor` on the output
stream feeding an in-order :class:`Checker`, and job control (start, ``done``, back-to-back
jobs, cycle counts). :class:`LinearEngineTB` does this once for the three linear engines,
which share their ports.

Flow control follows cocotbext-axi's ``tests/axis/test_axis.py``: a pause generator yields one
value per clock cycle, ``1`` meaning *pause* (no new beat offered; ``ready`` low). :data:`FLOWS`
names the combinations every bench runs: none, the deterministic ``cycle([1, 1, 1, 0])`` on both
sides, and seeded random pauses on one side or both.

Timing discipline: drivers write inputs just after the falling clock edge and sample the design
in the read-only phase of the same time step, so a handshake seen there is exactly the one the
next rising edge performs. Ports are found by Amaranth's flattened names (``x__valid``, ...).
"""

import itertools
import os
import random
import zlib
from collections import deque

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaformer.hdl.linear_layout import pack_requant_params

__all__ = ["SEED", "FLOWS", "CYCLE", "bit", "case_seed", "pause_generator", "labelled",
           "StreamDriver", "StreamMonitor", "Checker", "TB", "LinearEngineTB"]

#: Run seed (``AMAFORMER_SEED``); each test mixes in its name (:func:`case_seed`).
SEED = int(os.environ.get("AMAFORMER_SEED", "0"))

#: The deterministic pause pattern (pause three cycles of four), as cocotbext-axi's tests.
CYCLE = (1, 1, 1, 0)

#: Flows: name -> (pauses of every input stream, pauses of the output stream). A pause spec is
#: ``None`` (never), a tuple (repeated forever) or a float (probability of a pause per cycle).
FLOWS = {
    "free": (None, None),
    "cycle": (CYCLE, CYCLE),
    "both": (0.3, 0.3),
    "idle_in": (0.4, None),
    "bp_out": (None, 0.5),
}


def bit(sig):
    """A one-bit signal as an int, X/Z read as 0 (Icarus leaves combinational outputs X at
    time 0 until one of their inputs changes)."""
    v = sig.value
    return int(v) if v.is_resolvable else 0


def case_seed(name):
    """Seed of one test: the run's seed mixed with the test's name (stable across runs)."""
    return (SEED * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


def pause_generator(spec, rng=None):
    """An endless iterator of per-cycle pause flags (``1``: pause) for a pause ``spec``: ``None``
    (no pauses), a tuple of flags repeated forever, or a float, the probability of a pause in
    each cycle drawn from ``rng``."""
    if spec is None:
        return itertools.repeat(0)
    if isinstance(spec, tuple):
        return itertools.cycle(spec)
    if isinstance(spec, float) and 0.0 <= spec <= 1.0 and rng is not None:
        return (int(rng.random() < spec) for _ in itertools.count())
    raise ValueError(f"pause spec must be None, a tuple or a probability with an rng, "
                     f"not {spec!r}")


def labelled(name, tensor):
    """``(label, value)`` pairs of ``tensor`` in row-major order, labelled ``name[i, j, ...]``:
    the order in which the engines stream their outputs."""
    values = tensor.flatten().tolist()
    index = itertools.product(*(range(s) for s in tensor.shape))
    return [(f"{name}[{', '.join(map(str, i))}]", int(v)) for i, v in zip(index, values)]


class _StreamEnd:
    """One end of stream ``name`` of ``dut``: its ports, the clock and reset, and a pause
    generator (one flag a cycle, ``1`` = pause) that a running coroutine follows."""

    def __init__(self, dut, name):
        self.name, self.clk, self.rst = name, dut.clk, dut.rst
        self.valid, self.ready, self.payload = (getattr(dut, f"{name}__{m}")
                                                for m in ("valid", "ready", "payload"))
        self.pauses = pause_generator(None)

    def set_pause_generator(self, pauses=None):
        """Pause flags, one per cycle (``None``: no pauses)."""
        self.pauses = pause_generator(None) if pauses is None else iter(pauses)

    def start(self):
        return cocotb.start_soon(self._run())

    async def _run(self):
        raise NotImplementedError


class StreamDriver(_StreamEnd):
    """Drive stream ``name`` of ``dut`` (valid/ready, as ``amaranth.lib.stream``) from
    :attr:`queue`.

    A beat is offered only in a cycle its pause generator does not pause, and once offered it
    is held, payload unchanged, until taken: ``valid`` never drops before the transfer. A beat
    offered while ``rst`` is high is not counted and is offered again afterwards.

    Members
    -------
    queue : deque
        Payloads to send, in order (masked with ``mask`` if given).
    sent : int
        Transfers so far.
    """

    def __init__(self, dut, name, *, mask=None):
        super().__init__(dut, name)
        self.mask = mask
        self.queue = deque()
        self.sent = 0

    async def _run(self):
        offering = False
        while True:
            await FallingEdge(self.clk)
            pause = next(self.pauses)
            if not offering and self.queue and not pause:
                offering = True
                value = self.queue[0]
                self.payload.value = value if self.mask is None else value & self.mask
            if not self.queue:
                offering = False
            self.valid.value = int(offering)
            await ReadOnly()
            if bit(self.rst) or not self.queue:
                offering = False
            elif offering and bit(self.ready):
                self.queue.popleft()
                self.sent += 1
                offering = False


class StreamMonitor(_StreamEnd):
    """Receive stream ``name`` of ``dut`` and pass every transfer, as a signed integer, to
    ``checker.receive``; ``ready`` is low in the cycles its pause generator pauses.

    It also checks the stream rule that a stalled beat stays offered unchanged, reporting a
    break to ``checker.protocol_error``. Cycles with ``rst`` high are ignored.

    Members
    -------
    received : int
        Transfers so far.
    """

    def __init__(self, dut, name, checker):
        super().__init__(dut, name)
        self.checker = checker
        self.received = 0

    async def _run(self):
        stalled = None                  # payload of a valid beat not yet taken
        while True:
            await FallingEdge(self.clk)
            ready = not next(self.pauses)
            self.ready.value = int(ready)
            await ReadOnly()
            if bit(self.rst):
                stalled = None
                continue
            valid = bit(self.valid)
            value = self.payload.value.to_signed() if valid else None
            if stalled is not None and value != stalled:
                self.checker.protocol_error(
                    f"{self.name} changed while stalled: {stalled} -> {value}")
            stalled = value if valid and not ready else None
            if valid and ready:
                self.received += 1
                self.checker.receive(value)


class Checker:
    """In-order scoreboard of one output stream: received values against the model's.

    :meth:`expect` appends a job's expected ``(label, value)`` pairs; :meth:`receive` compares
    each transfer with the oldest expectation. :meth:`check` fails with the first mismatch,
    naming the transfer's index on the stream, its job and label, e.g.
    ``"y[17] (job b2b1 Y[2, 3]) = 5, expected 6"``.
    """

    def __init__(self, name):
        self.name = name
        self.expected = deque()         # (tag, label, value)
        self.index = 0                  # transfers received so far
        self.errors = []

    def expect(self, tag, pairs):
        self.expected.extend((tag, label, value) for label, value in pairs)

    def outstanding(self, tag):
        """Expected outputs of job ``tag`` not received yet."""
        return sum(1 for t, _, _ in self.expected if t == tag)

    def clear(self):
        """Forget the expectations (after a reset); received indices keep counting."""
        self.expected.clear()

    def receive(self, value):
        i = self.index
        self.index += 1
        if not self.expected:
            self.errors.append(f"{self.name}[{i}] = {value}, no output expected")
            return
        tag, label, exp = self.expected.popleft()
        if value != exp:
            self.errors.append(f"{self.name}[{i}] (job {tag} {label}) = {value}, "
                               f"expected {exp}")

    def protocol_error(self, message):
        self.errors.append(message)

    def check(self):
        """Fail with the first error and the number of errors, if any."""
        if self.errors:
            raise AssertionError(f"{len(self.errors)} error(s) on {self.name}, first: "
                                 f"{self.errors[0]}")


class TB:
    """Base of the engine benches: clock, reset, drivers, monitor, model hook, checker, jobs.

    Subclasses set the port names and implement the hooks :meth:`controls`, :meth:`stimulus`,
    :meth:`model` and :meth:`model_cycles` (and :meth:`setup` for memories loaded once).
    A job is whatever object the hooks understand.

    Class attributes
    ----------------
    SOURCES : dict
        Input stream name -> payload mask (``None``: payloads as given).
    SINK : str
        Output stream name.
    CONTROLS : tuple of str
        Other input ports, zeroed before the first reset (``start`` and ``rst`` always are).
    HOLD_START : bool
        Back to back, ``True`` keeps ``start`` high with the next job's controls, so the engine
        takes it on the edge after ``done``; ``False`` drops ``start`` and raises it again at
        the falling edge after ``done``.

    Members
    -------
    seed : int
        Per-test seed (:func:`case_seed`); random pause generators derive theirs from it.
    gen : torch.Generator
        Per-test generator of the jobs' operands.
    sources : dict of StreamDriver
    sink : StreamMonitor
    checker : Checker
    """

    SOURCES = {}
    SINK = "y"
    CONTROLS = ()
    HOLD_START = True

    def __init__(self, dut, name):
        self.dut, self.name = dut, name
        self.seed = case_seed(name)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.sources = {s: StreamDriver(dut, s, mask=m) for s, m in self.SOURCES.items()}
        self.checker = Checker(self.SINK)
        self.sink = StreamMonitor(dut, self.SINK, self.checker)

    @classmethod
    async def create(cls, dut, name, flow="free"):
        """A started bench for the test ``name`` (which also seeds it), in ``flow``."""
        tb = cls(dut, name)
        tb.set_flow(flow)
        await tb.start()
        return tb

    # --- hooks ------------------------------------------------------------------------------

    def controls(self, job):
        """Control inputs of ``job`` (port name -> value), set with ``start``."""
        raise NotImplementedError

    def stimulus(self, job):
        """Input beats of ``job``: stream name -> list of payloads."""
        raise NotImplementedError

    def model(self, job):
        """The golden model's outputs of ``job``, in stream order: ``(label, value)`` pairs."""
        raise NotImplementedError

    def model_cycles(self, job):
        """Cycles of ``job`` unstalled, as :meth:`wait_done` counts them."""
        raise NotImplementedError

    async def setup(self):
        """Called after the first reset, before the drivers start (e.g. to load memories)."""

    # --- clock, reset, flow control ---------------------------------------------------------

    def set_flow(self, flow):
        """Pause generators of ``FLOWS[flow]`` on every input stream and on the output."""
        src, snk = FLOWS[flow]
        for name, drv in self.sources.items():
            drv.set_pause_generator(pause_generator(src, random.Random(f"{self.seed}{name}")))
        self.sink.set_pause_generator(pause_generator(snk, random.Random(f"{self.seed}out")))

    async def start(self):
        """Start the clock, zero the inputs, reset for two cycles, :meth:`setup`, then start the
        drivers and the monitor."""
        d = self.dut
        Clock(d.clk, 10, unit="ns").start()
        ports = [f"{s}__{m}" for s in self.SOURCES for m in ("valid", "payload")]
        for port in (*ports, f"{self.SINK}__ready", "start", *self.CONTROLS):
            getattr(d, port).value = 0
        await self.reset()
        await self.setup()
        for drv in (*self.sources.values(), self.sink):
            drv.start()

    async def reset(self, cycles=2):
        """Assert ``rst`` for ``cycles`` rising edges; forget queued inputs and expectations."""
        d = self.dut
        await FallingEdge(d.clk)
        d.rst.value = 1
        d.start.value = 0
        for drv in self.sources.values():
            drv.queue.clear()
        self.checker.clear()
        for _ in range(cycles):
            await RisingEdge(d.clk)
        await FallingEdge(d.clk)
        d.rst.value = 0

    async def write_mem(self, port, writes):
        """Write ``(addr, data)`` pairs through the memory write port ``port`` (``w_wr``, ...),
        one per cycle, all byte enables set; the enables are low afterwards."""
        d = self.dut
        en = getattr(d, f"{port}__en")
        addr, data = getattr(d, f"{port}__addr"), getattr(d, f"{port}__data")
        for a, word in writes:
            await FallingEdge(d.clk)
            addr.value, data.value, en.value = a, word, (1 << len(en)) - 1
        await FallingEdge(d.clk)
        en.value = 0

    def check(self):
        """Fail on the checker's first error."""
        self.checker.check()

    # --- jobs -------------------------------------------------------------------------------

    def queue_job(self, job, tag):
        """Queue the job's input beats on the drivers and the model's outputs on the checker.
        Returns the beats queued per stream."""
        beats = self.stimulus(job)
        for name, payloads in beats.items():
            self.sources[name].queue.extend(payloads)
        self.checker.expect(tag, self.model(job))
        return {name: len(payloads) for name, payloads in beats.items()}

    def _set_controls(self, controls):
        for port, value in controls.items():
            getattr(self.dut, port).value = value

    async def start_job(self, controls):
        """At the next falling edge set ``controls`` and ``start``; return just after the
        rising edge that samples them."""
        await FallingEdge(self.dut.clk)
        self._set_controls(controls)
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)

    async def wait_done(self, limit, next_controls=None):
        """Wait for ``done``; return the cycle count (rising edges from the one sampling
        ``start`` to the one raising ``done``, both counted).

        Called just after the edge that sampled ``start``. With ``next_controls``, ``start``
        stays high with them, so the engine takes the next job on the first edge at which it
        is idle (the one after ``done``). Returns in the read-only phase of the cycle in which
        ``done`` is high."""
        d = self.dut
        cycles = 1
        await FallingEdge(d.clk)
        if next_controls is None:
            d.start.value = 0
        else:
            self._set_controls(next_controls)
        while True:
            await ReadOnly()
            if bit(d.done):
                return cycles
            assert cycles <= limit, f"no done after {limit} cycles"
            await RisingEdge(d.clk)
            cycles += 1
            await FallingEdge(d.clk)

    async def run_jobs(self, jobs, tags, *, check_cycles=False):
        """Run ``jobs`` back to back (see ``HOLD_START``), all inputs queued ahead, and return
        their cycle counts. After each ``done``: the checker has no error, the job's outputs
        all came out, every stream took exactly its inputs (none of the next job's) and, with
        ``check_cycles``, the count equals :meth:`model_cycles`."""
        d = self.dut
        sent = {name: drv.sent for name, drv in self.sources.items()}
        counts = [self.queue_job(job, tag) for job, tag in zip(jobs, tags)]
        await FallingEdge(d.clk)
        assert not bit(d.busy), "engine busy at start"
        self._set_controls(self.controls(jobs[0]))
        d.start.value = 1
        await RisingEdge(d.clk)
        all_cycles = []
        for i, (job, tag, count) in enumerate(zip(jobs, tags, counts)):
            last = i + 1 == len(jobs)
            nxt = self.controls(jobs[i + 1]) if self.HOLD_START and not last else None
            model = self.model_cycles(job)
            cycles = await self.wait_done(limit=30 * model + 500, next_controls=nxt)
            self.check()
            missing = self.checker.outstanding(tag)
            assert not missing, f"job {tag}: done with {missing} outputs missing"
            for name, n in count.items():
                sent[name] += n
                got = self.sources[name].sent
                assert got == sent[name], \
                    f"job {tag}: {got} beats taken on {name}, expected {sent[name]}"
            if check_cycles:
                assert cycles == model, f"job {tag}: {cycles} cycles, model {model}"
            self.dut._log.info("job %s: %d cycles (model %d)", tag, cycles, model)
            all_cycles.append(cycles)
            if last:
                break
            if self.HOLD_START:
                await RisingEdge(d.clk)         # samples ``start`` of the next job
            else:
                await self.start_job(self.controls(jobs[i + 1]))
        return all_cycles

    async def run_job(self, job, tag="", *, check_cycles=False):
        """Run one job to ``done``; see :meth:`run_jobs`."""
        return (await self.run_jobs([job], [tag], check_cycles=check_cycles))[0]

    async def quiet(self, cycles):
        """For ``cycles`` rising edges: no output offered, no ``done``, not ``busy``."""
        d = self.dut
        valid = getattr(d, f"{self.SINK}__valid")
        for _ in range(cycles):
            await RisingEdge(d.clk)
            await ReadOnly()
            assert not (bit(valid) or bit(d.done) or bit(d.busy)), "activity while idle"

    async def run_empty(self, controls, cycles):
        """Start a job with a zero dimension: ``done`` after ``cycles``, idle at once, then
        quiet for five cycles (no output, no ``done``)."""
        await self.start_job(controls)
        got = await self.wait_done(limit=50)
        assert got == cycles, f"empty job: {got} cycles, expected {cycles}"
        assert not bit(self.dut.busy), "busy after an empty job"
        await self.quiet(5)
        self.check()


class LinearEngineTB(TB):
    """Bench of the linear engines (modes ``mul``, ``shift``, ``bcq`` share their ports):
    activations on ``x``, outputs on ``y``, dimensions ``m``, ``k``, ``n``, weights through
    ``w_wr``, requantization parameters through ``p_wr``; ``start`` held back to back.

    A job has ``shape`` (M, K, N), ``x`` (M×K), ``bias``, ``mult`` and ``shift`` (per column),
    and methods ``expected()`` (the golden model's M×N outputs), ``words()`` (the weight
    memory's words) and ``cycles()`` (the cycle model).
    """

    SOURCES = {"x": 0xFF}
    SINK = "y"
    CONTROLS = ("m", "k", "n", "w_wr__en", "w_wr__addr", "w_wr__data",
                "p_wr__en", "p_wr__addr", "p_wr__data")

    def controls(self, job):
        return dict(zip("mkn", job.shape))

    def stimulus(self, job):
        return {"x": job.x.flatten().tolist()}

    def model(self, job):
        return labelled("Y", job.expected())

    def model_cycles(self, job):
        return job.cycles()

    async def load(self, job):
        """Write the job's weight words and per-column parameters (``pack_requant_params``)."""
        await self.write_mem("w_wr", enumerate(job.words()))
        await self.write_mem("p_wr", enumerate(pack_requant_params(job.bias, job.mult,
                                                                   job.shift)))
