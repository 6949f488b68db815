"""Host driver: one :class:`Device` over any :class:`~amaformer.host.transport.Transport`.

:class:`Device` is the link: frames, retries, ``IDENT``, ``STATUS``, ``ABORT``, memory reads and
writes, ``RUN`` of a descriptor. Each unit of the design gets a driver half
(:class:`~amaformer.host.units.UnitDriver`, from its kind in :mod:`amaformer.hdl.registry`)
that packs, tiles and validates its jobs: ``dev.unit("linear")``, ``dev.unit("attention")``.

Example (simulated device; a board is ``SerialTransport("/dev/ttyUSB1")``)::

    from amaformer.gen.config import AcceleratorConfig
    from amaformer.host import Device, SimTransport

    dev = Device(SimTransport(AcceleratorConfig()))
    y = dev.unit("linear").linear(x_q, w_q, bias_q, mult, shift)  # int8 M×N, bit-exact
    print(dev.last_cycles)

This module imports neither gateware nor torch.
"""

import dataclasses
import struct

import numpy as np

from ..hdl import protocol as P
from ..hdl import registry

__all__ = ["Device", "DeviceError", "DeviceTimeout", "DeviceInfo", "UnitInfo", "DeviceStatus",
           "as_int_array", "qkv_arrays"]


class DeviceError(Exception):
    """The device answered with an error, or the link failed.

    Members
    -------
    code : :class:`~amaformer.hdl.protocol.Status` or None
        The device's status code; ``None`` for link failures (no or malformed response).
    """

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class DeviceTimeout(DeviceError):
    """No (complete) response within the timeout, after all retries."""


@dataclasses.dataclass(frozen=True)
class UnitInfo:
    """One row of the ``IDENT`` unit table.

    Members
    -------
    kind : str or None
        The kind's name (``None`` for a kind this host does not know: ``code`` says which).
    code : int
    index : int
        Its index: ``RUN`` with ``space = index``; its spaces are
        :func:`~amaformer.hdl.protocol.unit_space` ``(index, j)``.
    record : dict
        The kind's record fields (also readable as attributes: ``info.lanes``).
    """
    kind: object
    code: int
    index: int
    record: dict

    def __getattr__(self, name):
        record = self.__dict__.get("record", {})
        if name in record:
            return record[name]
        raise AttributeError(f"{self.kind or 'unit'} record has no field {name!r}")


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The ``IDENT`` answer: the link's parameters and the table of units."""
    version: int
    act_depth: int
    out_depth: int
    max_payload: int
    clk_hz: int
    baud: int
    units: tuple

    def find(self, kind):
        """The units of ``kind`` (a name), in index order."""
        return [u for u in self.units if u.kind == kind]


@dataclasses.dataclass(frozen=True)
class DeviceStatus:
    """The ``STATUS`` answer."""
    busy: bool
    aborted: bool
    last_error: int
    cycles: int
    jobs: int
    rx_errors: int


class Device:
    """Driver of one accelerator's link.

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for each response byte (device time for a simulated device).
    retries : int
        Times a request is sent again after a lost, garbled or CRC-rejected exchange.
    resync : float or None
        Seconds of silence that make the device drop a half-received frame; waited before a
        retry. ``None``: the transport's ``resync_seconds`` or 0.1 s.
    expect : object or None
        An ``AcceleratorConfig``; if given, :class:`DeviceError` unless the device has the
        units it describes (:meth:`check_config`).

    Members
    -------
    info : DeviceInfo
    last_cycles : int
        Sum of the device cycle counts of the jobs of the last driver call.
    job_cycles : list of int
        Cycle count of each of those jobs.
    """

    def __init__(self, transport, *, timeout=1.0, retries=3, resync=None, expect=None):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.resync = resync if resync is not None else getattr(transport, "resync_seconds", 0.1)
        self.last_cycles = 0
        self.job_cycles = []
        self._drivers = {}
        self.info = self.identify()
        if expect is not None:
            self.check_config(expect)

    READ_CHUNK = 1024

    # ------------------------------------------------------------------ frames
    def _read_response(self):
        head = self.transport.read(P.RSP_HEADER_BYTES, self.timeout)
        if len(head) < P.RSP_HEADER_BYTES:
            raise DeviceTimeout(f"no response from the device within {self.timeout} s")
        if head[0] != P.RSP_SYNC:
            raise P.ProtocolError(f"bad response sync byte {head[0]:#04x}")
        length = int.from_bytes(head[3:5], "little")
        rest = self.transport.read(length + 2, self.timeout)
        if len(rest) < length + 2:
            raise DeviceTimeout(f"response truncated ({len(rest)} of {length + 2} bytes)")
        return P.parse_response(head + rest)

    def transact(self, op, space=0, addr=0, payload=b""):
        """Send one request and return the response payload.

        Lost or garbled responses, and requests the device rejects as corrupted (CRC,
        truncated, length), are retried up to ``retries`` times after the line has been quiet for
        ``resync`` seconds.

        Raises
        ------
        DeviceError
            The device answered with an error status (``code`` says which).
        DeviceTimeout
            No valid response after all retries.
        """
        frame = P.encode_request(op, space, addr, payload)
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.transport.pause(self.resync)
                self.transport.reset_input()
            self.transport.write(frame)
            try:
                status, rop, data = self._read_response()
            except (DeviceTimeout, P.ProtocolError) as e:
                last = e
                continue
            # The driver only sends well-formed frames, so these mean corruption on the link
            # (LENGTH: a garbled length field).
            if status in (P.Status.CRC, P.Status.TRUNCATED, P.Status.LENGTH):
                last = DeviceError(f"device rejected the request: {P.Status(status).name}",
                                   P.Status(status))
                continue
            if status == P.Status.BUSY and op == P.Op.RUN and attempt:
                return b""      # the first RUN did start; only its response was lost
            if status != P.Status.OK:
                try:
                    code = P.Status(status)
                    name = code.name
                except ValueError:
                    code, name = status, f"unknown status {status:#04x}"
                raise DeviceError(f"{P.Op(op).name} failed: {name}", code)
            if rop != int(op):
                last = P.ProtocolError(f"response to opcode {rop:#04x}, expected {int(op):#04x}")
                continue
            return data
        if isinstance(last, DeviceError) and not isinstance(last, DeviceTimeout):
            raise last
        raise DeviceTimeout(f"{P.Op(op).name}: no valid response after {self.retries + 1} "
                            f"attempts ({last})")

    # ------------------------------------------------------------------ commands
    def identify(self):
        """Ask the device for its parameters and units (``IDENT``)."""
        data = self.transact(P.Op.IDENT)
        try:
            link, rows = P.unpack_ident(data)
        except P.ProtocolError as e:
            raise DeviceError(str(e)) from None
        units = []
        for code, index, record in rows:
            kind = registry.kind_by_code(code)
            if kind is None or len(record) != kind.record_bytes:
                units.append(UnitInfo(None, code, index, {}))
                continue
            fields = dict(zip((n for n, _ in kind.record),
                              struct.unpack("<" + "".join(f for _, f in kind.record), record)))
            units.append(UnitInfo(kind.name, code, index, fields))
        return DeviceInfo(version=link["version"], act_depth=link["act_depth"],
                          out_depth=link["out_depth"], max_payload=link["max_payload"],
                          clk_hz=link["clk_hz"], baud=link["baud"], units=tuple(units))

    def unit(self, kind, instance=0):
        """The driver half of the ``instance``-th unit of ``kind`` (a name).

        Raises
        ------
        DeviceError
            The design has no such unit.
        """
        found = self.info.find(kind)
        if instance >= len(found):
            have = ", ".join(u.kind or f"kind {u.code}" for u in self.info.units) or "none"
            raise DeviceError(f"the device has no {kind} unit"
                              f"{f' #{instance}' if instance else ''} (its units: {have}); "
                              f"enable it in the configuration and rebuild")
        info = found[instance]
        if info.index not in self._drivers:
            self._drivers[info.index] = registry.kind(kind).driver_class()(self, info)
        return self._drivers[info.index]

    def check_config(self, config):
        """Raise :class:`DeviceError` unless the device has the units ``config`` describes,
        with the parameters each kind's driver checks."""
        for kind in registry.kinds():
            want = kind.driver_class().expected(config)
            have = self.info.find(kind.name)
            if len(want) != len(have):
                raise DeviceError(f"device has {len(have)} {kind.name} unit(s), the "
                                  f"configuration expects {len(want)}")
            for w, h in zip(want, have):
                for key, value in w.items():
                    if h.record.get(key) != value:
                        raise DeviceError(f"device has {kind.name}.{key} = "
                                          f"{h.record.get(key)}, the configuration expects "
                                          f"{value}")

    def status(self):
        """Read busy/aborted flags, the last error code and the last job's cycle count."""
        d = P.unpack_fields(P.STATUS_FIELDS, self.transact(P.Op.STATUS))
        return DeviceStatus(busy=bool(d["flags"] & P.FLAG_BUSY),
                            aborted=bool(d["flags"] & P.FLAG_ABORTED),
                            last_error=d["last_error"], cycles=d["cycles"], jobs=d["jobs"],
                            rx_errors=d["rx_errors"])

    def abort(self):
        """Stop the running job (memories keep their contents)."""
        self.transact(P.Op.ABORT)

    def write_memory(self, space, addr, data, *, word_bytes=1):
        """Write bytes to a space, in frames of at most ``max_payload`` bytes (whole words of
        ``word_bytes``)."""
        data = bytes(data)
        step = self.info.max_payload // word_bytes * word_bytes
        for off in range(0, len(data), step):
            self.transact(P.Op.WRITE, space, addr + off, data[off:off + step])

    def read_memory(self, space, addr, count):
        """Read ``count`` bytes from a readable space (activations, outputs)."""
        out = bytearray()
        for off in range(0, count, self.READ_CHUNK):
            n = min(self.READ_CHUNK, count - off)
            data = self.transact(P.Op.READ, space, addr + off, n.to_bytes(2, "little"))
            if len(data) != n:
                raise DeviceError(f"READ returned {len(data)} bytes, asked for {n}")
            out += data
        return bytes(out)

    def write_activations(self, x, addr=0):
        """Write an integer ``M×K`` int8 matrix, row-major, at byte ``addr`` of the activation
        memory."""
        x = as_int_array(x, "x", 2)
        if x.size and (x.min() < -128 or x.max() > 127):
            raise ValueError(f"activations must be integers in [-128, 127], not "
                             f"[{x.min()}, {x.max()}]")
        self.write_memory(P.Space.ACT, addr, x.astype(np.int8).tobytes())

    def read_outputs(self, m, n, addr=0, *, as_tensor=False):
        """Read an ``M×N`` int8 result from the output memory (numpy, or torch if asked)."""
        y = np.frombuffer(self.read_memory(P.Space.OUT, addr, m * n), dtype=np.int8)
        y = y.reshape(m, n).copy()
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y

    def run(self, index, descriptor, *, wait=True, expected_cycles=0):
        """Send ``RUN`` of a descriptor (bytes) to unit ``index``; with ``wait``, block until the
        job ends and return its cycles.

        Raises
        ------
        DeviceError
            ``code`` :attr:`~amaformer.hdl.protocol.Status.DESCRIPTOR` if the unit refuses the
            job, :attr:`~amaformer.hdl.protocol.Status.UNIT` if there is no such unit.
        """
        self.transact(P.Op.RUN, index, 0, descriptor)
        if not wait:
            return None
        return self.wait(expected_cycles)

    def wait(self, expected_cycles=0, *, timeout=None):
        """Wait until the device is idle; return the cycle count of the last job.

        Sleeps ``expected_cycles`` first, then polls ``STATUS`` with growing pauses.

        Raises
        ------
        DeviceTimeout
            Still busy after ``timeout`` seconds of device time (default: 10 × the expected
            time + 1 s).
        """
        clk = self.info.clk_hz
        if timeout is None:
            timeout = 10 * expected_cycles / clk + 1.0
        waited = 0.0
        step = max(expected_cycles, 64) / clk
        self.transport.pause(step)
        waited += step
        step = max(step / 8, 256 / clk)
        while True:
            st = self.status()
            if not st.busy:
                return st.cycles
            if waited > timeout:
                raise DeviceTimeout(f"job still running after {waited:.3g} s")
            self.transport.pause(step)
            waited += step
            step *= 2

    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def as_int_array(v, name, ndim):
    if type(v).__module__.startswith("torch"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), not {a.ndim}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integers")
    return a.astype(np.int64)


def qkv_arrays(q, k, v):
    """Q, K, V of an attention job as ``H×N×d`` integer arrays (an ``N×d`` one is one head),
    and whether the caller gave ``N×d`` (to squeeze the output back). Raises ``ValueError``
    naming the shapes when they differ."""
    q0 = as_int_array(q, "q", None)
    squeeze = q0.ndim == 2
    q, k, v = (as_int_array(t, name, None) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    q, k, v = (t[None] if t.ndim == 2 else t for t in (q, k, v))
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape H×N×d (or N×d), not "
                         f"{q0.shape}, {k.shape}, {v.shape}")
    return q, k, v, squeeze
