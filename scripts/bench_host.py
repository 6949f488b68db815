#!/usr/bin/env python3
"""Throughput of the host driver and the wire protocol.

Measured through :class:`amaformer.host.SimTransport` (the default configuration's top in
Amaranth's simulator, byte streams instead of the bit-level UART):

* ``WRITE`` frames with a full staging buffer of payload (``max_payload`` bytes), ``READ``
  frames of 1024 bytes and ``STATUS`` frames: frames per second and payload bytes per second
  of wall time, simulated cycles per frame, and the share of wall time spent inside the
  simulator (the rest is the driver, framing and CRCs in Python).

Computed for the serial link at the configured baud rate (8N1: 10 bit times per byte):

* the raw byte rate ``baud / 10``, and the payload rate the protocol leaves for writes and
  reads: payload over (request + response bytes on the wire, plus the device's commit time),
  i.e. the framing overhead (sync, header, CRC, the response frame) of a half-duplex exchange.
  USB latency of a real adapter (about 1 ms per exchange with FTDI defaults) comes on top and is
  reported separately.

Usage: ``python scripts/bench_host.py [--json OUT.json] [--frames N] [--config C.toml]``
"""

import argparse
import json
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--frames", type=int, default=20, help="frames per measurement (default 20)")
    ap.add_argument("--config", help="accelerator config TOML (default: the default config)")
    args = ap.parse_args(argv)

    from amaformer.gen.config import AcceleratorConfig, load_config
    from amaformer.hdl import protocol as P
    from amaformer.host import Device
    from amaformer.host.sim import SimTransport

    config = load_config(args.config) if args.config else AcceleratorConfig()
    tr = SimTransport(config)
    dev = Device(tr, expect=config)
    info = dev.info
    payload = bytes(i & 0xFF for i in range(info.max_payload))
    read_n = 1024
    out = {"config": config.name, "clk_hz": info.clk_hz, "baud": info.baud,
           "max_payload": info.max_payload}

    def measure(name, func, payload_bytes):
        w0, s0, c0 = time.perf_counter(), tr.sim_seconds, tr.cycles
        for _ in range(args.frames):
            func()
        wall = time.perf_counter() - w0
        sim = tr.sim_seconds - s0
        out[name] = {
            "frames": args.frames,
            "frames_per_s": round(args.frames / wall, 2),
            "payload_bytes_per_s": round(args.frames * payload_bytes / wall, 1),
            "cycles_per_frame": round((tr.cycles - c0) / args.frames, 1),
            "sim_share": round(sim / wall, 3),
        }

    measure("sim_write", lambda: dev.transact(P.Op.WRITE, P.Space.ACT, 0, payload),
            len(payload))
    measure("sim_read", lambda: dev.transact(P.Op.READ, P.Space.ACT, 0,
                                             read_n.to_bytes(2, "little")), read_n)
    measure("sim_status", dev.status, 0)

    # Serial link, computed: 8N1, request then response (half duplex in time).
    byte_s = info.baud / 10
    w_req = P.REQ_HEADER_BYTES + len(payload) + 2
    w_rsp = P.RSP_HEADER_BYTES + 2
    w_commit = (len(payload) + 4) / info.clk_hz
    w_time = (w_req + w_rsp) / byte_s + w_commit
    r_req = P.REQ_HEADER_BYTES + 2 + 2
    r_rsp = P.RSP_HEADER_BYTES + read_n + 2
    r_time = (r_req + r_rsp) / byte_s
    usb = 1e-3
    out["serial"] = {
        "raw_bytes_per_s": byte_s,
        "write_payload_bytes_per_s": round(len(payload) / w_time, 1),
        "write_efficiency": round(len(payload) / w_time / byte_s, 4),
        "read_payload_bytes_per_s": round(read_n / r_time, 1),
        "read_efficiency": round(read_n / r_time / byte_s, 4),
        "write_payload_bytes_per_s_with_1ms_usb_latency": round(len(payload) / (w_time + usb), 1),
    }
    for key in ("sim_write", "sim_read", "sim_status"):
        r = out[key]
        print(f"{key:<11} {r['frames_per_s']:8.1f} frames/s  {r['payload_bytes_per_s']:9.1f} "
              f"payload B/s  {r['cycles_per_frame']:7.1f} cycles/frame  "
              f"{100 * r['sim_share']:4.1f} % of wall time in the simulator")
    s = out["serial"]
    print(f"serial      {info.baud} baud: {s['raw_bytes_per_s']:.0f} B/s raw; writes "
          f"{s['write_payload_bytes_per_s']:.0f} B/s payload ({100 * s['write_efficiency']:.1f} %),"
          f" reads {s['read_payload_bytes_per_s']:.0f} B/s ({100 * s['read_efficiency']:.1f} %)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
