"""Host half of the linear unit (:mod:`amaformer.hdl.linear_spec`): weight packing, job tiling."""

import numpy as np

from ..hdl import linear_spec as S
from ..hdl.linear_layout import BcqMatrix, pack_engine_weights, pack_requant_params
from .device import as_int_array
from .units import UnitDriver

__all__ = ["LinearDriver"]


class LinearDriver(UnitDriver):
    """``Y = requant(X·W + b)`` on a linear unit (``dev.unit("linear")``), whose :attr:`mode`
    is ``"mul"``, ``"shift"`` or ``"bcq"``."""

    kind, modes, section, enabled_by_default = S.LINEAR, S.MODE_CODES, "linear", True

    @classmethod
    def expected(cls, config):
        """One record per linear unit of ``config``: ``[linear]``, then ``[linear2]``."""
        if not hasattr(config, "linear_units"):
            return super().expected(config)
        return [{"mode": cls.modes[u.mode]} | cls.record_fields(u) for u in config.linear_units()]

    @classmethod
    def record_fields(cls, lin):
        return dict(lanes=lin.lanes, act_bits=lin.act_bits, weight_bits=lin.weight_code_bits,
                    max_k=lin.max_k, max_n=lin.max_n, max_m=lin.max_m,
                    weight_depth=lin.weight_depth,
                    lin_inputs=lin.shift_inputs if lin.mode == "shift" else 1)

    def max_n_for_k(self, k):
        """Largest job N whose weights fit the buffer for reduction length ``k``."""
        info = self.info
        if self.mode == "bcq":         # words: ceil(K / (8·lanes)) · N · q
            return min(info.max_n, info.weight_depth // (-(-k // (8 * info.lanes))
                                                         * info.weight_bits))
        # words: ceil(K/g) · ceil(N / lanes), g = 1 except shift
        return min(info.max_n, info.weight_depth // -(-k // info.lin_inputs) * info.lanes)

    def load_weights(self, w, bias, mult, shift, *, w_addr=0, p_addr=0):
        """Write a ``K×N`` integer weight matrix and its per-column bias and (M, S).

        ``w_addr`` and ``p_addr`` are word addresses in the weight buffer and the parameter
        memory (a job reads its weights from word 0 and its parameters from column 0).
        """
        if not isinstance(w, BcqMatrix):
            w = as_int_array(w, "w", 2)
        info = self.info
        # mul: int K×N; shift: K×N in {0, ±2^s}; bcq: a gen.layout.BcqMatrix
        words = pack_engine_weights(self.mode, w, info.lanes, info.weight_bits,
                                    inputs=info.lin_inputs)
        self.write_space("weights", words, info.weight_word_bytes, w_addr)
        self.write_space("params", pack_requant_params(bias, mult, shift),
                         info.param_word_bytes, p_addr)

    def run(self, m, k, n, *, x_addr=0, y_addr=0, wait=True):
        """Start an ``M×K @ K×N`` job; with ``wait``, block until it ends and return its cycles.

        Raises
        ------
        DeviceError
            ``code`` :attr:`~amaformer.hdl.protocol.Status.DESCRIPTOR` if the job does not
            fit.
        """
        # issue cycles, a lower bound
        est = m * -(-k // self.info.lin_inputs) * -(-n // self.info.lanes)
        return self.run_descriptor(dict(m=m, k=k, n=n, x_addr=x_addr, y_addr=y_addr),
                                   wait=wait, expected_cycles=est)

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
        ``M×N`` int8 array (or tensor). The device's ``last_cycles`` holds the summed job
        cycles, ``job_cycles`` each job's.
        """
        if as_tensor is None:
            as_tensor = type(x).__module__.startswith("torch")
        x = as_int_array(x, "x", 2)
        w = w if isinstance(w, BcqMatrix) else as_int_array(w, "w", 2)
        bias, mult, shift = (as_int_array(v, name, 1) for v, name in
                             ((bias, "bias"), (mult, "mult"), (shift, "shift")))
        M, K = x.shape
        if w.shape[0] != K:
            raise ValueError(f"w must have K = {K} rows (x is {M}×{K}), not {w.shape[0]}")
        N = w.shape[1]
        for v, name in ((bias, "bias"), (mult, "mult"), (shift, "shift")):
            if v.shape != (N,):
                raise ValueError(f"{name} must have N = {N} entries, not {v.shape[0]}")
        info, dev = self.info, self.device
        if not 1 <= K <= info.max_k:
            raise ValueError(f"K must be in [1, {info.max_k}] for this device, not {K}")
        if self.max_n_for_k(K) < 1:
            raise ValueError(f"K = {K} does not fit the weight buffer "
                             f"({info.weight_depth} words)")
        _, _, runs = S.job_tiles(M, K, N, max_m=info.max_m, max_n=self.max_n_for_k(K),
                                 act_depth=dev.info.act_depth, out_depth=dev.info.out_depth)
        tiles, jobs = [], []
        for r0, r1, c0, c1 in runs:
            if not tiles or (tiles[-1].n0, tiles[-1].n1) != (c0, c1):   # column tile outer
                tiles.append(S.LinearTile(
                    0, K, c0, c1,
                    pack_engine_weights(self.mode, w[:, c0:c1], info.lanes, info.weight_bits,
                                        inputs=info.lin_inputs),
                    pack_requant_params(bias[c0:c1], mult[c0:c1], shift[c0:c1])))
            jobs.append(S.LinearJob(len(tiles) - 1, r0, r1,
                                    dict(m=r1 - r0, k=K, n=c1 - c0, x_addr=0, y_addr=0)))
        y = self.run_jobs(x, tiles, jobs)
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y

    def run_jobs(self, x, tiles, jobs):
        """Run prepared jobs (:class:`~amaformer.hdl.linear_spec.LinearJob`) on the ``M×K``
        integer input ``x``: each job's tile (``tiles[job.tile]``, a
        :class:`~amaformer.hdl.linear_spec.LinearTile`: ``weight_words`` and ``param_words``,
        the ``weights`` and ``params`` spaces' images, written at word 0 when the tile
        changes), the job's rows
        ``x[job.r0:job.r1]`` (written at the descriptor's ``x_addr`` when they change), its
        descriptor (``m, k, n, x_addr, y_addr``) and the ``m×n`` int8 result read back into
        columns ``n0:n1`` of the tile. Returns ``M×N`` int8 (``N``: the tiles' last column);
        ``last_cycles`` and ``job_cycles`` as :meth:`linear`.

        :meth:`linear` packs its tiles here at run time; the whole-model runtime passes the
        compiled program's (:meth:`amaformer.gen.program.Program.linear_tiles`,
        :meth:`~amaformer.gen.program.Program.linear_jobs`).
        """
        info, dev = self.info, self.device
        x = as_int_array(x, "x", 2)
        n_out = max(tiles[j.tile].n1 for j in jobs) if jobs else 0
        y = np.zeros((x.shape[0], n_out), dtype=np.int8)
        dev.job_cycles = []
        loaded = rows = None
        for job in jobs:
            tile, d = tiles[job.tile], job.descriptor
            if loaded != job.tile:
                self.write_space("weights", tile.weight_words, info.weight_word_bytes, 0)
                self.write_space("params", tile.param_words, info.param_word_bytes, 0)
                loaded = job.tile
            if rows != (job.r0, job.r1):
                dev.write_activations(x[job.r0:job.r1], d["x_addr"])
                rows = (job.r0, job.r1)
            dev.job_cycles.append(self.run(d["m"], d["k"], d["n"], x_addr=d["x_addr"],
                                           y_addr=d["y_addr"]))
            y[job.r0:job.r1, tile.n0:tile.n1] = dev.read_outputs(d["m"], d["n"], d["y_addr"])
        dev.last_cycles = sum(dev.job_cycles)
        return y
