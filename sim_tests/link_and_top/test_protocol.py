"""Wire protocol (shared definitions) and the UART PHY, including frames end to end through it."""

import random
import struct

import numpy as np
import pytest
import torch

from amaranth.sim import Simulator

from amaformer.gen.config import AcceleratorConfig, LinearConfig, UartConfig
from amaformer.gen.golden import linear_mul
from amaformer.hdl import attention_spec, linear_spec, registry
from amaformer.hdl import protocol as P
from amaformer.hdl.uart import UARTRx, UARTTx, baud_divisor
from amaformer.host import Device
from amaformer.host.sim import SimTransport


def crc16_reference(data):
    """Bitwise CRC-16/CCITT-FALSE, written independently of amaranth.lib.crc."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc16():
    assert P.crc16(b"123456789") == 0x29B1           # the catalogue check value
    rng = random.Random(1)
    for n in (0, 1, 7, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert P.crc16(data) == crc16_reference(data)
        # big-endian CRC appended: the residue is 0 (what the gateware checks)
        assert P.crc16(data + struct.pack(">H", P.crc16(data))) == 0


def test_request_layout():
    frame = P.encode_request(P.Op.WRITE, P.unit_space(0, 1), 0x01020304, b"\xAA\xBB")
    assert frame[:11] == bytes([0xA5, 0x02, 0x11, 0x04, 0x03, 0x02, 0x01, 0x02, 0x00,
                                0xAA, 0xBB])
    assert frame[11:] == struct.pack(">H", crc16_reference(frame[:11]))
    with pytest.raises(ValueError, match=r"^addr must be an integer in \[0, 2\*\*32\), not -1$"):
        P.encode_request(P.Op.READ, 0, -1)


def test_response_parse():
    frame = P.encode_response(P.Status.ADDRESS, P.Op.READ, b"xyz")
    assert P.parse_response(frame) == (P.Status.ADDRESS, P.Op.READ, b"xyz")
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 0x10
        with pytest.raises(P.ProtocolError):
            P.parse_response(bad)
    with pytest.raises(P.ProtocolError, match="length"):
        P.parse_response(frame[:-1])


def test_definitions():
    assert len({int(v) for v in P.Op}) == len(P.Op)
    assert len({int(v) for v in P.Status}) == len(P.Status)
    assert registry.descriptor_bytes(linear_spec.DESCRIPTOR) == 20
    assert registry.descriptor_bytes(attention_spec.DESCRIPTOR) == 28
    assert [P.unit_space(i, j) for i, j in ((0, 0), (0, 1), (1, 0), (13, 15))] == \
        [0x10, 0x11, 0x20, 0xEF]
    assert P.fields_size(P.STATUS_FIELDS) == 10
    assert [P.word_bytes(b) for b in (1, 8, 9, 18, 24, 30, 54, 64, 65)] == \
        [1, 1, 2, 4, 4, 4, 8, 8, 16]
    values = {name: i + 1 for i, (name, _) in enumerate(P.STATUS_FIELDS)}
    assert P.unpack_fields(P.STATUS_FIELDS, P.pack_fields(P.STATUS_FIELDS, values)) == values


# ---------------------------------------------------------------------- UART PHY


def uart_levels(byte, div, stop=1):
    return [lvl for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]
            for lvl in [bit] * div]


@pytest.mark.parametrize("div,skew", [(5, 0), (13, 0), (104, 2), (104, -2)])   # skew <= 2 %
def test_uart_rx(div, skew):
    """Bytes at a slightly-off bit time are received; a 0 stop bit is a framing error."""
    dut = UARTRx(div)
    rng = random.Random(div)
    data = [rng.randrange(256) for _ in range(12)]
    bad = {3, 7}                                            # these get a 0 stop bit
    got, errors = [], []

    async def tb(ctx):
        for i, byte in enumerate(data):
            levels = uart_levels(byte, div + skew, stop=0 if i in bad else 1)
            levels += [1] * (div + 2 + rng.randrange(3))    # idle (and a break recovers)
            for lvl in levels:
                ctx.set(dut.rx, lvl)
                ctx.set(dut.o.ready, 1)
                _, _, v, p, fe = await ctx.tick().sample(dut.o.valid, dut.o.payload,
                                                          dut.framing_error)
                if v:
                    got.append(p)
                if fe:
                    errors.append(i)
        # A glitch shorter than half a bit is not a start bit.
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(max(1, div // 2 - 2))
        ctx.set(dut.rx, 1)
        for _ in range(12 * div):
            _, _, v = await ctx.tick().sample(dut.o.valid)
            assert not v

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == [b for i, b in enumerate(data) if i not in bad]
    assert errors == sorted(bad)


@pytest.mark.parametrize("div", [4, 9])
def test_uart_tx(div):
    dut = UARTTx(div)
    data = [0x00, 0xFF, 0xA5, 0x3C]
    line = []

    async def send(ctx):
        for byte in data:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, byte)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def watch(ctx):
        for _ in range(len(data) * 10 * div + 20):
            _, _, lvl = await ctx.tick().sample(dut.tx)
            line.append(lvl)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(watch)
    sim.run()
    start = line.index(0)
    expect = [lvl for b in data for lvl in uart_levels(b, div)]
    assert line[start:start + len(expect)] == expect      # back to back, exact bit times
    assert all(line[:start]) and all(line[start + len(expect):])


def test_baud_divisor_errors():
    assert baud_divisor(12_000_000, 115200) == 104
    with pytest.raises(ValueError, match=r"^baud must be at most clk_hz / 4 = 3e\+06, "
                                         r"not 4000000$"):
        baud_divisor(12_000_000, 4_000_000)
    with pytest.raises(ValueError, match=r"^baud 2500000 is 4\.0% off at 1\.2e\+07 Hz"):
        baud_divisor(12_000_000, 2_500_000)
    with pytest.raises(ValueError, match=r"^divisor must be an integer >= 4, not 2$"):
        UARTRx(2)


def test_frames_through_uart_phy():
    """The host driver through the bit-level UART of the full top: ident, memory, a layer."""
    cfg = AcceleratorConfig(linear=LinearConfig(lanes=4, max_k=16, max_n=16, max_m=16,
                                                weight_depth=16),
                            uart=UartConfig(baud=115200))
    tr = SimTransport(cfg, uart=True, clk_hz=115200 * 6, timeout_cycles=2000,
                      act_depth=256, out_depth=256)
    assert tr.divisor == 6
    dev = Device(tr, timeout=0.05, retries=0, expect=cfg)
    assert (dev.info.baud, dev.info.clk_hz) == (115200, 691200)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (2, 5), generator=g)
    w = torch.randint(-128, 128, (5, 4), generator=g)
    b = torch.randint(-500, 500, (4,), generator=g)
    mult = torch.randint(1 << 14, 1 << 15, (4,), generator=g)
    shift = torch.randint(10, 16, (4,), generator=g)
    y = dev.unit("linear").linear(x, w, b, mult, shift)
    assert torch.equal(y.to(torch.int64), linear_mul(x, w, b, mult, shift))
    assert np.array_equal(np.frombuffer(dev.read_memory(P.Space.ACT, 0, 10), np.int8),
                          x.flatten().numpy())
    st = dev.status()
    assert (st.jobs, st.rx_errors) == (1, 0)
