"""Host half of the attention unit (:mod:`amaformer.hdl.attention_spec`): head parameters,
convolution taps, masks, Q/K/V placement."""

import numpy as np

from ..hdl import attention_spec as S
from ..hdl import protocol as P
from .device import as_int_array, qkv_arrays
from .units import UnitDriver

__all__ = ["AttentionDriver"]


class AttentionDriver(UnitDriver):
    """Multi-head attention on an attention unit (``dev.unit("attention")``), whose
    :attr:`mode` is ``"softmax"``, ``"linear_causal"`` or ``"linear_angular"``."""

    kind, modes, section = S.ATTENTION, S.MODE_CODES, "attention"

    @classmethod
    def record_fields(cls, att):
        return dict(heads=att.heads, head_dim=att.head_dim, max_tokens=att.max_tokens)

    def write_head_params(self, out_mult, out_shift, score_mult=None, score_shift=None):
        """Write the per-head parameters (:data:`~amaformer.hdl.attention_spec.HEAD_PARAM_FIELDS`) of
        heads ``0..H-1``; ``score_*`` only for ``softmax``."""
        om, osh = as_int_array(out_mult, "out_mult", 1), as_int_array(out_shift, "out_shift", 1)
        h = len(om)
        sm = np.zeros(h, np.int64) if score_mult is None else as_int_array(score_mult,
                                                                             "score_mult", 1)
        ss = np.zeros(h, np.int64) if score_shift is None else as_int_array(score_shift,
                                                                              "score_shift", 1)
        if not (len(osh) == len(sm) == len(ss) == h) or not 1 <= h <= self.info.heads:
            raise ValueError(f"head parameters must have one entry per head, 1 to "
                             f"{self.info.heads} heads, not {len(om)}, {len(osh)}, "
                             f"{len(sm)}, {len(ss)}")
        words = [S.head_param_word(int(a), int(b), int(c), int(e))
                 for a, b, c, e in zip(sm, ss, om, osh)]
        self.write_space("heads", words, self.info.head_word_bytes)

    def write_conv_weights(self, w):
        """Load the ``taps×d`` int8 depthwise-convolution weights of a ``linear_causal`` unit
        (its ``conv`` space)."""
        info = self.info
        w = as_int_array(w, "conv_w", 2)
        if not info.conv_taps:
            raise ValueError("conv_w needs a linear_causal unit with a convolution "
                             "(attention.conv_taps > 0)")
        if w.shape[0] != info.conv_taps or not 1 <= w.shape[1] <= info.head_dim:
            raise ValueError(f"conv_w must be {info.conv_taps}×d with d in [1, "
                             f"{info.head_dim}], not {'×'.join(map(str, w.shape))}")
        if w.size and (w.min() < -128 or w.max() > 127):
            raise ValueError(f"conv_w must hold int8 values, not [{w.min()}, {w.max()}]")
        writes = S.conv_weight_writes(w.tolist(), info.lanes, info.head_dim)
        image = bytearray((max(a for a, _ in writes) + 1) if writes else 0)
        for addr, value in writes:
            image[addr] = value & 0xFF
        self.device.write_memory(self.space("conv"), 0, bytes(image))

    def run_attention(self, heads, tokens, dim, *, q_addr, k_addr, v_addr, o_addr=0,
                      mask="dense", mask_addr=0, cont=False, wait=True):
        """Start one ``RUN`` job (Q, K, V already in the activation memory, head
        parameters written); with ``wait``, block until it ends and return its cycles.

        Raises
        ------
        DeviceError
            ``code`` :attr:`~amaformer.hdl.protocol.Status.DESCRIPTOR` if the job does not fit.
        """
        if mask not in S.MASKS:
            raise ValueError(f"mask must be one of {', '.join(map(repr, S.MASKS))}, "
                             f"not {mask!r}")
        # the activation memory's reads, a lower bound: Q (softmax), or Q, K, V (linear modes)
        est = heads * tokens * dim * (1 if self.mode == "softmax" else 3)
        return self.run_descriptor(dict(
            heads=heads, mask=S.MASKS[mask], flags=S.FLAG_CONTINUE if cont else 0,
            tokens=tokens, dim=dim, q_addr=q_addr, k_addr=k_addr, v_addr=v_addr,
            o_addr=o_addr, mask_addr=mask_addr), wait=wait, expected_cycles=est)

    def attention(self, q, k, v, out_mult, out_shift, *, score_mult=None, score_shift=None,
                  half_mult=None, half_shift=None, conv_w=None, conv_mult=0, conv_shift=0,
                  mask=None, cont=False, layout=None, as_tensor=None):
        """Multi-head attention on the device, one ``RUN`` job.

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
            ``linear_causal`` on a unit with a convolution (its record's ``conv_taps``): the
            depthwise weights ``w[τ][j]`` (``Σ_τ w[τ][j]·v[t-τ][j]``), shared by the job's
            heads; written only when given (they stay loaded).
        conv_mult, conv_shift : ``H`` integers (or one for every head)
            The convolution's scale per head; ``conv_mult = 0`` turns it off.
        cont : bool
            ``linear_causal``, one head: continue the sequence of the previous job.
        layout : dict or None
            Byte addresses ``q_addr``, ``k_addr``, ``v_addr``, ``mask_addr`` (activation
            memory) and ``o_addr`` (output memory), as a compiled program allocates them
            (:meth:`amaformer.gen.program.Program.attention_layout`); ``None``: Q, K, V and the
            mask back to back from 0, the output at 0.
        as_tensor : bool or None
            Return a torch tensor; ``None``: when ``q`` is one.

        Returns
        -------
        ``H×N×d`` (or ``N×d``) int8; the device's ``last_cycles`` holds the
        job's cycles.
        """
        info, dev = self.info, self.device
        if as_tensor is None:
            as_tensor = type(q).__module__.startswith("torch")
        q, k, v, squeeze = qkv_arrays(q, k, v)
        h, n, d = q.shape
        for what, value, hi in (("heads", h, info.heads), ("tokens", n, info.max_tokens),
                                ("head dimension", d, info.head_dim)):
            if not 1 <= value <= hi:
                raise ValueError(f"{what} must be in [1, {hi}] for this device, not {value}")
        for t, name in ((q, "q"), (k, "k"), (v, "v")):
            if t.min() < -128 or t.max() > 127:
                raise ValueError(f"{name} must hold int8 values, not [{t.min()}, {t.max()}]")
        softmax = self.mode == "softmax"
        if softmax and (score_mult is None or score_shift is None):
            raise ValueError("softmax attention needs score_mult and score_shift per head")
        if self.mode == "linear_angular":
            if half_mult is None or half_shift is None:
                raise ValueError("linear_angular attention needs half_mult and half_shift per "
                                 "head")
            score_mult, score_shift = half_mult, half_shift      # their HEADS word fields
        if self.mode == "linear_causal" and info.conv_taps:
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
                lanes = info.lanes
                for r0 in range(0, n, lanes):
                    if not keep[r0:r0 + lanes].any():
                        raise ValueError(f"mask must keep at least one key in every block of "
                                         f"{lanes} query rows (rows {r0}..."
                                         f"{min(r0 + lanes, n) - 1} keep none)")
                if not info.masks >> S.MASKS["sparse"] & 1:
                    raise ValueError("this device has no sparse-mask support "
                                     "(attention.sparse = false)")
                kind, image = "sparse", S.keep_mask_image(keep, info.lanes)
        elif self.mode == "linear_angular":
            kind = "dense"
            if mask is not None:
                raise ValueError(f"mask must be None for linear_angular attention, not {mask!r}")
        elif mask not in (None, "causal"):
            raise ValueError(f"mask must be None or 'causal' for {self.mode} attention, "
                             f"not {mask!r}")
        size = h * n * d
        packed = dict(q_addr=0, k_addr=size, v_addr=2 * size, mask_addr=3 * size, o_addr=0)
        lay = packed | dict(layout or {})
        need = max(lay["q_addr"] + size, lay["k_addr"] + size, lay["v_addr"] + size,
                   lay["mask_addr"] + len(image))
        if need > dev.info.act_depth:
            raise ValueError(f"Q, K, V and the mask ({need} bytes) must fit the activation "
                             f"memory ({dev.info.act_depth} bytes)")
        if lay["o_addr"] + size > dev.info.out_depth:
            raise ValueError(f"the output ({size} bytes at {lay['o_addr']}) must fit the "
                             f"output memory ({dev.info.out_depth} bytes)")
        def per_head(x, name):
            return None if x is None else np.broadcast_to(as_int_array(x, name, None), (h,))
        self.write_head_params(per_head(out_mult, "out_mult"), per_head(out_shift, "out_shift"),
                               per_head(score_mult, "score_mult"),
                               per_head(score_shift, "score_shift"))
        parts = [(lay[a], t.astype(np.int8).tobytes())
                 for a, t in (("q_addr", q), ("k_addr", k), ("v_addr", v))]
        parts.append((lay["mask_addr"], image))
        if lay == packed:                      # one write when the parts are back to back
            parts = [(0, b"".join(data for _, data in parts))]
        for addr, data in parts:
            if data:
                dev.write_memory(P.Space.ACT, addr, data)
        dev.job_cycles = [self.run_attention(h, n, d, q_addr=lay["q_addr"],
                                              k_addr=lay["k_addr"], v_addr=lay["v_addr"],
                                              o_addr=lay["o_addr"], mask=kind,
                                              mask_addr=lay["mask_addr"], cont=cont)]
        dev.last_cycles = dev.job_cycles[0]
        y = np.frombuffer(dev.read_memory(P.Space.OUT, lay["o_addr"], size), dtype=np.int8)
        y = y.reshape(h, n, d).copy()
        if squeeze:
            y = y[0]
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y

