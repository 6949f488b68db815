"""The top's pipelined descriptor check (registered bounds, one extra state per product) at the
exact edges: a job that ends on the last byte of a memory runs, one byte more is refused."""

import pytest

from amaformer.gen.config import AcceleratorConfig, LinearConfig
from amaformer.hdl import protocol as P
from amaformer.host import Device, DeviceError

from conftest import sim_transport

DEPTH = 1024


@pytest.fixture(scope="module")
def dev(sim_backend):
    config = AcceleratorConfig(linear=LinearConfig(lanes=4, max_k=64, max_n=64, max_m=64,
                                                   weight_depth=128))
    tr = sim_transport(config, sim_backend, timeout_cycles=300, act_depth=DEPTH,
                       out_depth=DEPTH)
    return Device(tr, timeout=0.01, retries=0, expect=config)


@pytest.mark.parametrize("field, m, k, n", [
    ("x_addr", 16, 64, 4),      # reads M·K = 1024 activation bytes from x_addr
    ("y_addr", 16, 4, 64),      # writes M·N = 1024 output bytes from y_addr
    ("x_addr", 3, 5, 4),
    ("y_addr", 7, 4, 9),
])
def test_descriptor_edges(dev, field, m, k, n):
    span = m * (k if field == "x_addr" else n)
    last = DEPTH - span                 # the job ends exactly at the end of the memory
    dev.unit("linear").run(m, k, n, wait=False, **{field: last})
    dev.abort()
    assert not dev.status().busy
    with pytest.raises(DeviceError) as e:
        dev.unit("linear").run(m, k, n, wait=False, **{field: last + 1})
    assert e.value.code == P.Status.DESCRIPTOR
    assert not dev.status().busy
