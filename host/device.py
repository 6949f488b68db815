"""Host driver: one :class:`Device` over any :class:`~amaformer.host.transport.Transport`.

Example (simulated device; a board is ``SerialTransport("/dev/ttyUSB1")``)::

    from amaformer.gen.config import AcceleratorConfig
    from amaformer.host import Device, SimTransport

    dev = Device(SimTransport(AcceleratorConfig()))
    y = dev.linear(x_q, w_q, bias_q, mult, shift)      # int8 M×N, bit-exact with gen.golden
    print(dev.last_cycles)
"""

import dataclasses

import numpy as np

from ..gen.layout import BcqMatrix, pack_engine_weights, pack_requant_params
from ..hdl import protocol as P

__all__ = ["Device", "DeviceError", "DeviceTimeout", "DeviceInfo", "DeviceStatus"]


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
class DeviceInfo:
    """The ``IDENT`` answer: the key parameters of the design on the other end."""
    version: int
    mode: int
    lanes: int
    act_bits: int
    weight_bits: int
    weight_word_bytes: int
    param_word_bytes: int
    max_k: int
    max_n: int
    max_m: int
    weight_depth: int
    act_depth: int
    out_depth: int
    max_payload: int
    clk_hz: int
    baud: int
    att_mode: int = P.ATT_NONE
    att_lanes: int = 0
    att_masks: int = 0
    att_head_word_bytes: int = 0
    att_heads: int = 0
    att_head_dim: int = 0
    att_max_tokens: int = 0
    att_conv_taps: int = 0
    lin_inputs: int = 1

    @property
    def attention(self):
        """The attention unit's mode (``"softmax"``, ``"linear_causal"``, ``"linear_angular"``)
        or ``None``."""
        names = {code: name for name, code in P.ATT_MODE_CODES.items()}
        return names.get(self.att_mode) if self.att_mode != P.ATT_NONE else None

    def max_n_for_k(self, k):
        """Largest job N whose weights fit the buffer for reduction length ``k``."""
        if self.mode == P.MODE_CODES["bcq"]:     # words: ceil(K / (8·lanes)) · N · q
            return min(self.max_n, self.weight_depth // (-(-k // (8 * self.lanes))
                                                         * self.weight_bits))
        # words: ceil(K / g) · ceil(N / lanes), g = lin_inputs (1 but for wide shift engines)
        return min(self.max_n, (self.weight_depth // -(-k // self.lin_inputs)) * self.lanes)


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
    """Driver of one accelerator.

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
        An ``AcceleratorConfig``; if given, :class:`DeviceError` unless the device reports the
        same engine parameters.

    Members
    -------
    info : DeviceInfo
    last_cycles : int
        Sum of the device cycle counts of the jobs of the last :meth:`linear` or :meth:`run`.
    """

    READ_CHUNK = 1024

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
        self.info = self.identify()
        if expect is not None:
            self.check_config(expect)

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
        """Ask the device for its parameters (``IDENT``)."""
        data = self.transact(P.Op.IDENT)
        if len(data) != P.fields_size(P.IDENT_FIELDS):
            raise DeviceError(f"IDENT answer has {len(data)} bytes, expected "
                              f"{P.fields_size(P.IDENT_FIELDS)}")
        d = P.unpack_fields(P.IDENT_FIELDS, data)
        if d.pop("magic") != P.IDENT_MAGIC:
            raise DeviceError("the device is not an amaformer accelerator (bad IDENT magic)")
        if d["version"] != P.PROTOCOL_VERSION:
            raise DeviceError(f"device speaks protocol version {d['version']}, this driver "
                              f"{P.PROTOCOL_VERSION}")
        return DeviceInfo(**d)

    def check_config(self, config):
        """Raise :class:`DeviceError` unless the device matches ``config`` (its engine)."""
        lin = config.linear
        want = {"mode": P.MODE_CODES.get(lin.mode), "lanes": lin.lanes,
                "act_bits": lin.act_bits, "weight_bits": lin.weight_code_bits,
                "max_k": lin.max_k,
                "max_n": lin.max_n, "max_m": lin.max_m, "weight_depth": lin.weight_depth,
                "lin_inputs": getattr(lin, "shift_inputs", 1) if lin.mode == "shift" else 1}
        if not getattr(lin, "enabled", True):
            want = {"mode": P.MODE_NONE}
        att = getattr(config, "attention", None)
        if getattr(att, "enabled", False):
            want.update(att_mode=P.ATT_MODE_CODES.get(att.mode), att_heads=att.heads,
                        att_head_dim=att.head_dim, att_max_tokens=att.max_tokens)
        else:
            want["att_mode"] = P.ATT_NONE
        for key, value in want.items():
            if getattr(self.info, key) != value:
                raise DeviceError(f"device has {key} = {getattr(self.info, key)}, the "
                                  f"configuration expects {value}")

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

    def write_memory(self, space, addr, data):
        """Write bytes to a space, in frames of at most ``max_payload`` bytes."""
        space = P.Space(space)
        data = bytes(data)
        wb = {P.Space.WEIGHTS: self.info.weight_word_bytes,
              P.Space.PARAMS: self.info.param_word_bytes}.get(space, 1)
        step = self.info.max_payload // wb * wb
        for off in range(0, len(data), step):
            self.transact(P.Op.WRITE, space, addr + off, data[off:off + step])

    def read_memory(self, space, addr, count):
        """Read ``count`` bytes from a readable space (activations, outputs)."""
        space = P.Space(space)
        out = bytearray()
        for off in range(0, count, self.READ_CHUNK):
            n = min(self.READ_CHUNK, count - off)
            data = self.transact(P.Op.READ, space, addr + off, n.to_bytes(2, "little"))
            if len(data) != n:
                raise DeviceError(f"READ returned {len(data)} bytes, asked for {n}")
            out += data
        return bytes(out)

    # ------------------------------------------------------------------ typed API
    def load_weights(self, w, bias, mult, shift, *, w_addr=0, p_addr=0):
        """Write a ``K×N`` integer weight matrix and its per-column bias and (M, S).

        ``w_addr`` and ``p_addr`` are word addresses in the weight buffer and the parameter
        memory (a job reads its weights from word 0 and its parameters from column 0).
        """
        if not isinstance(w, BcqMatrix):
            w = _as_int_array(w, "w", 2)
        wb, pb = self.info.weight_word_bytes, self.info.param_word_bytes
        # mul: int K×N; shift: K×N in {0, ±2^s}; bcq: a gen.layout.BcqMatrix
        words = pack_engine_weights(self.info.mode, w, self.info.lanes, self.info.weight_bits,
                                    inputs=self.info.lin_inputs)
        self.write_memory(P.Space.WEIGHTS, w_addr * wb,
                          b"".join(v.to_bytes(wb, "little") for v in words))
        params = pack_requant_params(bias, mult, shift)
        self.write_memory(P.Space.PARAMS, p_addr * pb,
                          b"".join(v.to_bytes(pb, "little") for v in params))

    def write_activations(self, x, addr=0):
        """Write an integer ``M×K`` activation matrix, row-major, at byte ``addr``."""
        x = _as_int_array(x, "x", 2)
        lo, hi = -(1 << (self.info.act_bits - 1)), (1 << (self.info.act_bits - 1)) - 1
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"activations must be integers in [{lo}, {hi}], not "
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

    def run(self, m, k, n, *, x_addr=0, y_addr=0, wait=True):
        """Start an ``M×K @ K×N`` job; with ``wait``, block until it ends and return its cycles.

        Raises
        ------
        DeviceError
            ``code`` :attr:`~amaformer.hdl.protocol.Status.DESCRIPTOR` if the job does not fit.
        """
        self.transact(P.Op.RUN, payload=P.pack_fields(P.DESCRIPTOR_FIELDS, dict(
            m=m, k=k, n=n, x_addr=x_addr, y_addr=y_addr)))
        if not wait:
            return None
        # issue cycles, a lower bound
        est = m * -(-k // self.info.lin_inputs) * -(-n // self.info.lanes)
        return self.wait(est)

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

    def linear(self, x, w, bias, mult, shift, *, as_tensor=None):
        """``Y = requant(X·W + b)`` on the device, tiled so that every job fits.

        N is split into tiles whose weights fit the weight buffer (``max_n_for_k``), M into
        tiles that fit ``max_m`` and the activation and output memories; K must fit ``max_k``
        (it is never split, so that outputs are requantized on chip).

        Parameters
        ----------
        x : ``M×K`` integers (numpy or torch)
        w : ``K×N`` integers (``shift`` devices: 0 or ±2^s; ``bcq`` devices: a
            :class:`~amaformer.gen.layout.BcqMatrix`)
        bias, mult, shift : ``N`` integers each (see :mod:`amaformer.gen.numerics`)
        as_tensor : bool or None
            Return a torch tensor; ``None``: when ``x`` is one.

        Returns
        -------
        ``M×N`` int8 array (or tensor). :attr:`last_cycles` holds the summed job cycles.
        """
        if self.info.mode == P.MODE_NONE:
            raise DeviceError("the device has no linear engine (linear.enabled = false in its "
                              "configuration)")
        if as_tensor is None:
            as_tensor = type(x).__module__.startswith("torch")
        x = _as_int_array(x, "x", 2)
        w = w if isinstance(w, BcqMatrix) else _as_int_array(w, "w", 2)
        bias, mult, shift = (_as_int_array(v, name, 1) for v, name in
                             ((bias, "bias"), (mult, "mult"), (shift, "shift")))
        M, K = x.shape
        if w.shape[0] != K:
            raise ValueError(f"w must have K = {K} rows (x is {M}×{K}), not {w.shape[0]}")
        N = w.shape[1]
        for v, name in ((bias, "bias"), (mult, "mult"), (shift, "shift")):
            if v.shape != (N,):
                raise ValueError(f"{name} must have N = {N} entries, not {v.shape[0]}")
        info = self.info
        if not 1 <= K <= info.max_k:
            raise ValueError(f"K must be in [1, {info.max_k}] for this device, not {K}")
        n_tile = info.max_n_for_k(K)
        if n_tile < 1:
            raise ValueError(f"K = {K} does not fit the weight buffer "
                             f"({info.weight_depth} words)")
        n_tile = min(n_tile, N, info.out_depth)
        m_tile = min(M, info.max_m, info.act_depth // K, info.out_depth // n_tile)
        y = np.zeros((M, N), dtype=np.int8)
        self.job_cycles = []
        if m_tile == M:
            self.write_activations(x)
        for c0 in range(0, N, n_tile):
            c1 = min(N, c0 + n_tile)
            self.load_weights(w[:, c0:c1], bias[c0:c1], mult[c0:c1], shift[c0:c1])
            for r0 in range(0, M, m_tile):
                r1 = min(M, r0 + m_tile)
                if m_tile != M:
                    self.write_activations(x[r0:r1])
                self.job_cycles.append(self.run(r1 - r0, K, c1 - c0))
                y[r0:r1, c0:c1] = self.read_outputs(r1 - r0, c1 - c0)
        self.last_cycles = sum(self.job_cycles)
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y

    # ------------------------------------------------------------------ attention
    def _need_attention(self):
        if self.info.attention is None:
            raise DeviceError("the device has no attention unit (attention.enabled = false in "
                              "its configuration)")

    def write_head_params(self, out_mult, out_shift, score_mult=None, score_shift=None):
        """Write the per-head parameters (:data:`~amaformer.hdl.protocol.HEAD_PARAM_FIELDS`) of
        heads ``0..H-1``; ``score_*`` only for ``softmax``."""
        self._need_attention()
        om, osh = _as_int_array(out_mult, "out_mult", 1), _as_int_array(out_shift, "out_shift", 1)
        h = len(om)
        sm = np.zeros(h, np.int64) if score_mult is None else _as_int_array(score_mult,
                                                                             "score_mult", 1)
        ss = np.zeros(h, np.int64) if score_shift is None else _as_int_array(score_shift,
                                                                              "score_shift", 1)
        if not (len(osh) == len(sm) == len(ss) == h) or not 1 <= h <= self.info.att_heads:
            raise ValueError(f"head parameters must have one entry per head, 1 to "
                             f"{self.info.att_heads} heads, not {len(om)}, {len(osh)}, "
                             f"{len(sm)}, {len(ss)}")
        wb = self.info.att_head_word_bytes
        words = [P.head_param_word(int(a), int(b), int(c), int(e))
                 for a, b, c, e in zip(sm, ss, om, osh)]
        self.write_memory(P.Space.HEADS, 0, b"".join(w.to_bytes(wb, "little") for w in words))

    def write_conv_weights(self, w):
        """Load the ``taps×d`` int8 depthwise-convolution weights of a ``linear_causal`` unit
        (:attr:`~amaformer.hdl.protocol.Space.CONV`)."""
        from ..hdl.attention_angular import conv_weight_writes
        self._need_attention()
        info = self.info
        w = _as_int_array(w, "conv_w", 2)
        if not info.att_conv_taps:
            raise ValueError("conv_w needs a linear_causal unit with a convolution "
                             "(attention.conv_taps > 0)")
        if w.shape[0] != info.att_conv_taps or not 1 <= w.shape[1] <= info.att_head_dim:
            raise ValueError(f"conv_w must be {info.att_conv_taps}×d with d in [1, "
                             f"{info.att_head_dim}], not {'×'.join(map(str, w.shape))}")
        if w.size and (w.min() < -128 or w.max() > 127):
            raise ValueError(f"conv_w must hold int8 values, not [{w.min()}, {w.max()}]")
        writes = conv_weight_writes(w.tolist(), info.att_lanes, info.att_head_dim)
        image = bytearray((max(a for a, _ in writes) + 1) if writes else 0)
        for addr, value in writes:
            image[addr] = value & 0xFF
        self.write_memory(P.Space.CONV, 0, bytes(image))

    def run_attention(self, heads, tokens, dim, *, q_addr, k_addr, v_addr, o_addr=0,
                      mask="dense", mask_addr=0, cont=False, wait=True):
        """Start one ``RUN_ATTENTION`` job (Q, K, V already in the activation memory, head
        parameters written); with ``wait``, block until it ends and return its cycles.

        Raises
        ------
        DeviceError
            ``code`` :attr:`~amaformer.hdl.protocol.Status.DESCRIPTOR` if the job does not fit.
        """
        self._need_attention()
        if mask not in P.ATT_MASKS:
            raise ValueError(f"mask must be one of {', '.join(map(repr, P.ATT_MASKS))}, "
                             f"not {mask!r}")
        self.transact(P.Op.RUN_ATTENTION, payload=P.pack_fields(P.ATT_DESCRIPTOR_FIELDS, dict(
            heads=heads, mask=P.ATT_MASKS[mask], flags=P.ATT_FLAG_CONTINUE if cont else 0,
            tokens=tokens, dim=dim, q_addr=q_addr, k_addr=k_addr, v_addr=v_addr,
            o_addr=o_addr, mask_addr=mask_addr)))
        if not wait:
            return None
        # the activation memory's reads, a lower bound: Q (softmax), or Q, K, V (linear modes)
        return self.wait(heads * tokens * dim * (1 if self.info.attention == "softmax" else 3))

    def attention(self, q, k, v, out_mult, out_shift, *, score_mult=None, score_shift=None,
                  half_mult=None, half_shift=None, conv_w=None, conv_mult=0, conv_shift=0,
                  mask=None, cont=False, as_tensor=None):
        """Multi-head attention on the device, one ``RUN_ATTENTION`` job.

        Parameters
        ----------
        q, k, v : ``H×N×d`` (or ``N×d``, one head) int8 integers (numpy or torch)
        out_mult, out_shift : ``H`` integers (or one for every head)
            Output requantization per head (:func:`amaformer.gen.attention.softmax_scales`);
            ``linear_angular``: the scale of ``q̂(k̂ᵀV)`` (``ang_mult``, ``ang_shift``).
        score_mult, score_shift : ``H`` integers
            ``softmax``: logit scale per head.
        half_mult, half_shift : ``H`` integers
            ``linear_angular``: the scale of ``0.5·V``.
        mask : None, ``"causal"`` or an ``N×N`` bool mask (True = attend)
            ``softmax`` only (``linear_causal`` is causal by construction). A sparse mask must
            keep at least one key in every block of ``lanes`` query rows (a row that keeps no
            key outputs zeros).
        conv_w : ``taps×d`` int8 integers or None
            ``linear_causal`` on a unit with a convolution (``IDENT`` ``att_conv_taps``): the
            depthwise weights ``w[τ][j]`` (``Σ_τ w[τ][j]·v[t-τ][j]``), shared by the job's
            heads; written only when given (they stay loaded).
        conv_mult, conv_shift : ``H`` integers (or one for every head)
            The convolution's scale per head; ``conv_mult = 0`` turns it off.
        cont : bool
            ``linear_causal``, one head: continue the sequence of the previous job.
        as_tensor : bool or None
            Return a torch tensor; ``None``: when ``q`` is one.

        Returns
        -------
        ``H×N×d`` (or ``N×d``) int8; :attr:`last_cycles` holds the job's cycles.
        """
        self._need_attention()
        info = self.info
        if as_tensor is None:
            as_tensor = type(q).__module__.startswith("torch")
        q0 = _as_int_array(q, "q", None)
        squeeze = q0.ndim == 2
        q, k, v = (_as_int_array(t, name, None) for t, name in ((q, "q"), (k, "k"), (v, "v")))
        q, k, v = (t[None] if t.ndim == 2 else t for t in (q, k, v))
        if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
            raise ValueError(f"q, k, v must have the same shape H×N×d (or N×d), not "
                             f"{q0.shape}, {k.shape}, {v.shape}")
        h, n, d = q.shape
        for what, value, hi in (("heads", h, info.att_heads), ("tokens", n, info.att_max_tokens),
                                ("head dimension", d, info.att_head_dim)):
            if not 1 <= value <= hi:
                raise ValueError(f"{what} must be in [1, {hi}] for this device, not {value}")
        for t, name in ((q, "q"), (k, "k"), (v, "v")):
            if t.min() < -128 or t.max() > 127:
                raise ValueError(f"{name} must hold int8 values, not [{t.min()}, {t.max()}]")
        softmax = info.attention == "softmax"
        if softmax and (score_mult is None or score_shift is None):
            raise ValueError("softmax attention needs score_mult and score_shift per head")
        if info.attention == "linear_angular":
            if half_mult is None or half_shift is None:
                raise ValueError("linear_angular attention needs half_mult and half_shift per "
                                 "head")
            score_mult, score_shift = half_mult, half_shift      # their HEADS word fields
        if info.attention == "linear_causal" and info.att_conv_taps:
            if conv_w is not None:
                self.write_conv_weights(conv_w)
            score_mult, score_shift = conv_mult, conv_shift      # their HEADS word fields
        elif conv_w is not None:
            raise ValueError("conv_w needs a linear_causal unit with a convolution "
                             "(attention.conv_taps > 0)")
        image, kind = b"", "causal"
        if softmax:
            if mask is None:
                kind = "dense"
            elif isinstance(mask, str):
                if mask not in ("dense", "causal"):
                    raise ValueError(f"mask must be None, 'causal' or an N×N bool mask, "
                                     f"not {mask!r}")
                kind = mask
            else:
                if type(mask).__module__.startswith("torch"):
                    mask = mask.detach().cpu().numpy()
                keep = np.asarray(mask, dtype=bool)
                if keep.shape != (n, n):
                    raise ValueError(f"mask must be {n}×{n}, not {'×'.join(map(str, keep.shape))}")
                lanes = info.att_lanes
                for r0 in range(0, n, lanes):
                    if not keep[r0:r0 + lanes].any():
                        raise ValueError(f"mask must keep at least one key in every block of "
                                         f"{lanes} query rows (rows {r0}..."
                                         f"{min(r0 + lanes, n) - 1} keep none)")
                if not info.att_masks >> P.ATT_MASKS["sparse"] & 1:
                    raise ValueError("this device has no sparse-mask support "
                                     "(attention.sparse = false)")
                kind, image = "sparse", P.keep_mask_image(keep, info.att_lanes)
        elif info.attention == "linear_angular":
            kind = "dense"
            if mask is not None:
                raise ValueError(f"mask must be None for linear_angular attention, not {mask!r}")
        elif mask not in (None, "causal"):
            raise ValueError(f"mask must be None or 'causal' for {info.attention} attention, "
                             f"not {mask!r}")
        size = h * n * d
        need = 3 * size + len(image)
        if need > info.act_depth:
            raise ValueError(f"Q, K, V and the mask ({need} bytes) must fit the activation "
                             f"memory ({info.act_depth} bytes)")
        if size > info.out_depth:
            raise ValueError(f"the output ({size} bytes) must fit the output memory "
                             f"({info.out_depth} bytes)")
        def per_head(x, name):
            return None if x is None else np.broadcast_to(_as_int_array(x, name, None), (h,))
        self.write_head_params(per_head(out_mult, "out_mult"), per_head(out_shift, "out_shift"),
                               per_head(score_mult, "score_mult"),
                               per_head(score_shift, "score_shift"))
        blob = b"".join(t.astype(np.int8).tobytes() for t in (q, k, v)) + image
        self.write_memory(P.Space.ACT, 0, blob)
        self.job_cycles = [self.run_attention(h, n, d, q_addr=0, k_addr=size, v_addr=2 * size,
                                              mask=kind, mask_addr=3 * size, cont=cont)]
        self.last_cycles = self.job_cycles[0]
        y = np.frombuffer(self.read_memory(P.Space.OUT, 0, size), dtype=np.int8)
        y = y.reshape(h, n, d).copy()
        if squeeze:
            y = y[0]
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y

    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_int_array(v, name, ndim):
    if type(v).__module__.startswith("torch"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), not {a.ndim}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integers")
    return a.astype(np.int64)
