"""One-call Amaranth simulation of a design, shared by the tools that run gateware in Python
(the kernel-alone runners in :mod:`amaformer.gen`, the tests' helpers)."""

from amaranth.sim import Simulator

__all__ = ["simulate"]


def simulate(dut, *testbenches, processes=(), period=1e-6, vcd=None):
    """Run ``testbenches`` and ``processes`` (async functions of ``ctx``, see
    :meth:`amaranth.sim.Simulator.add_testbench` / ``add_process``) on ``dut`` until every
    testbench returns.

    ``period`` is the ``sync`` clock period in seconds (``None``: no clock, for purely
    combinational designs); ``vcd`` a path to write a waveform to (``None``: none).
    """
    sim = Simulator(dut)
    if period is not None:
        sim.add_clock(period)
    for tb in testbenches:
        sim.add_testbench(tb)
    for proc in processes:
        sim.add_process(proc)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
