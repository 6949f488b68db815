"""Shared helpers for the Amaranth-simulator tests (importable as ``conftest`` from tests in
this folder): stream drivers with random gaps and back-pressure, and a one-call simulation."""

import random

import pytest

from amaformer.hdl.simulation import simulate

__all__ = ["simulate", "stream_send", "stream_collect", "write_words", "SIM_BACKENDS",
           "sim_transport", "sim_backend", "needs_verilator", "verilator_missing",
           "thin_on_amaranth"]


async def stream_send(ctx, stream, payloads, *, idle=0.0, rng=None):
    """Send ``payloads`` on ``stream`` in order, one per transfer.

    Before each transfer the sender stays idle for a cycle with probability ``idle``; once
    ``valid`` is raised it is held, payload unchanged, until ``ready`` (the stream rules).
    A structured payload takes a (nested) dict of its fields.
    """
    rng = rng or random.Random(0)
    for value in payloads:
        while rng.random() < idle:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, value)
        # explicit loop rather than ``tick().until()``: a failing sibling testbench then ends
        # the simulation without "asynchronous generator is already running" noise
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            if ready:
                break
    ctx.set(stream.valid, 0)


async def stream_collect(ctx, stream, count, *, stall=0.0, rng=None, out=None):
    """Receive ``count`` payloads from ``stream``, with ``ready`` low in a cycle with
    probability ``stall``. Checks that a stalled ``valid`` stays up with a stable payload.
    Returns the list of payloads (also appended to ``out`` if given, as they arrive)."""
    rng = rng or random.Random(0)
    got = [] if out is None else out
    start = len(got)
    held = None
    while len(got) - start < count:
        ready = rng.random() >= stall
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if held is not None:
            assert valid and payload == held, \
                f"stream rule broken: valid/payload changed while stalled ({held} -> {payload})"
        held = payload if valid and not ready else None
        if valid and ready:
            got.append(payload)
    ctx.set(stream.ready, 0)
    return got[start:]


def requantize_stream(dut, cases, *, idle=0.0, stall=0.0):
    """Outputs of a requantizer ``dut`` for ``cases`` = ``(acc, bias, mult, shift)`` tuples,
    streamed in with input gaps (``idle``) and output back-pressure (``stall``)."""
    got = []

    async def producer(ctx):
        payloads = [{"acc": a, "params": {"bias": b, "mult": m, "shift": s}}
                    for a, b, m, s in cases]
        await stream_send(ctx, dut.i, payloads, idle=idle, rng=random.Random(1))

    async def consumer(ctx):
        await stream_collect(ctx, dut.o, len(cases), stall=stall, rng=random.Random(2), out=got)

    simulate(dut, producer, consumer)
    return got


async def write_words(ctx, port, words, en=None):
    """Write ``words`` to consecutive addresses from 0 through a :class:`MemWriteSignature`
    port, one per cycle, with enables ``en`` (default: all ones); enables are low afterwards."""
    en = (1 << len(port.en)) - 1 if en is None else en
    for addr, word in enumerate(words):
        ctx.set(port.addr, addr)
        ctx.set(port.data, word)
        ctx.set(port.en, en)
        await ctx.tick()
    ctx.set(port.en, 0)


# ---------------------------------------------------------------------- simulated-device backends

def verilator_missing():
    """Why the Verilator backend cannot run here (``None`` if it can): no build is attempted."""
    from amaformer.host.verilator import VerilatorUnavailable, find_toolchain
    try:
        find_toolchain()
    except VerilatorUnavailable as e:
        return str(e)
    return None


_VERILATOR_MISSING = verilator_missing()
#: Skips a test where the Verilator backend's toolchain is missing (the reason says what).
needs_verilator = pytest.mark.skipif(bool(_VERILATOR_MISSING), reason=_VERILATOR_MISSING or "")
#: ``params`` for fixtures that run on every simulated-device backend.
SIM_BACKENDS = [pytest.param("amaranth", id="amaranth"),
                pytest.param("verilator", id="verilator", marks=needs_verilator)]


def sim_transport(config, backend="amaranth", **kwargs):
    """The simulated device of ``config`` on ``backend`` (``"amaranth"``, ``"verilator"`` or
    ``"auto"``), keyword arguments as :func:`amaformer.host.sim.make_sim_transport`; Verilator
    builds (once per design, cached) without progress output."""
    from amaformer.host.sim import make_sim_transport
    return make_sim_transport(config, backend, progress=False, **kwargs)


def thin_on_amaranth(backend, keep):
    """Skip the calling test on the Amaranth backend unless ``keep``, where Verilator runs it.

    For long parametrized families of slow device tests: every case runs on Verilator (a few
    milliseconds each), a representative few also on Amaranth's simulator (seconds each); the
    two backends give the same bytes at the same cycles (``test_sim_backends.py``). Where
    Verilator is missing, every case runs on Amaranth."""
    if backend == "amaranth" and not keep and not _VERILATOR_MISSING:
        pytest.skip("slow on the Amaranth simulator: this case runs on Verilator only")


@pytest.fixture(scope="module", params=SIM_BACKENDS)
def sim_backend(request):
    """Each simulated-device backend in turn (module scope, so module-scoped devices can use it):
    ``"amaranth"``, then ``"verilator"``."""
    return request.param
