"""cocotb bench: ByteMemory mapped to iCE40 SB_SPRAM256KA (Yosys's simulation model).

A reference dict models the memory; random writes and reads (byte lanes, both banks, address
edges) are checked one cycle after each read, the memory's read latency. Inputs change and
outputs are sampled on the falling clock edge.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge


@cocotb.test()
async def random_bytes(dut):
    depth = int(os.environ["BYTEMEM_DEPTH"])
    rng = random.Random(int(os.environ.get("BYTEMEM_SEED", "0")))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.we.value = 0
    dut.addr.value = 0
    dut.wdata.value = 0
    model = {}
    edges = [0, 1, 2, depth // 2 - 1, depth // 2, depth - 2, depth - 1]
    pending = None              # address presented for reading in the previous cycle
    checked = 0
    for step in range(3000):
        await FallingEdge(dut.clk)
        if pending is not None and pending in model:
            got = int(dut.rdata.value)
            assert got == model[pending], \
                f"byte {pending:#x}: read {got:#04x}, expected {model[pending]:#04x}"
            checked += 1
        addr = rng.choice(edges) if rng.random() < 0.2 else rng.randrange(depth)
        if step < 200 or rng.random() < 0.4:
            data = rng.randrange(256)
            dut.addr.value, dut.wdata.value, dut.we.value = addr, data, 1
            model[addr] = data
            pending = None
        else:
            if model and rng.random() < 0.8:
                addr = rng.choice(list(model))
            dut.addr.value, dut.we.value = addr, 0
            pending = addr
    assert checked > 500, checked
