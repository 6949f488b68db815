"""Host half of the sparse-dense coordinator (:mod:`amaformer.hdl.sparse_dense_spec`): masks in,
write-space images out, jobs through :class:`~amaformer.host.Device`.

The mask work (loading a mask file, polarizing each head for the unit's lane split, packing the
engines' lists) is the compiler's, :mod:`amaformer.gen.sparse_dense`; it needs torch and is
imported only when a call needs it, so that this module, like the rest of ``host``, imports
neither gateware nor torch.
"""

import numpy as np

from ..hdl import protocol as P
from ..hdl import sparse_dense_spec as S
from .device import qkv_arrays
from .units import UnitDriver

__all__ = ["SparseDenseDriver"]


class SparseDenseDriver(UnitDriver):
    """Softmax attention under a fixed sparse mask on a sparse-dense unit:
    ``dev.unit("sparse_dense")``.

    Members
    -------
    info : UnitInfo
        The unit's ``IDENT`` row: ``dense_lanes``, ``sparse_lanes`` (the lane split the design
        was generated with), ``heads``, ``head_dim``, ``max_tokens``, ``dense_depth``,
        ``sparse_depth``, ``qkv_buffers`` and the words of its spaces.
    last_job : Job or None
        The last job written (:class:`amaformer.gen.sparse_dense.Job`: plans and images in
        job order, ``order``).
    last_plans : list of HeadPlan or None
        The last :meth:`attention` call's plans, in the caller's head order.
    """

    kind = S.SPARSE_DENSE

    def __init__(self, device, info):
        super().__init__(device, info)
        self.last_job = None
        self.last_plans = None

    section = "sparse_dense"

    @classmethod
    def record_fields(cls, sd):
        return {name: getattr(sd, name) for name in (
            "dense_lanes", "sparse_lanes", "heads", "head_dim", "max_tokens", "dense_depth",
            "sparse_depth", "qkv_buffers")}

    # ------------------------------------------------------------------ compiler side
    def masks(self, masks, *, layer=0, heads=None):
        """The ``H×N×N`` bool mask of ``layer``: ``masks`` is a mask file
        (:func:`amaformer.gen.masks.save_masks`) or a bool tensor (``L×H×N×N``, ``H×N×N`` or
        ``N×N``); ``heads``: the indices of the heads to keep (default: all). Raises
        :class:`~amaformer.gen.masks.MaskError` (one line)."""
        import torch

        from ..gen.masks import MaskError, load_masks
        if isinstance(masks, (str, bytes)) or hasattr(masks, "__fspath__"):
            keep, _ = load_masks(masks)
        else:
            if type(masks).__module__.startswith("numpy"):
                masks = torch.from_numpy(np.asarray(masks))
            keep = torch.as_tensor(masks)
            if keep.dtype != torch.bool:
                raise MaskError(f"mask must be a bool tensor, not {keep.dtype}")
            keep = keep.reshape((1,) * (4 - keep.dim()) + tuple(keep.shape)) \
                if keep.dim() in (2, 3) else keep
        if keep.dim() != 4:
            raise MaskError(f"mask must have 2 to 4 dimensions, not {keep.dim()}")
        if not 0 <= layer < keep.shape[0]:
            raise MaskError(f"layer must be in [0, {keep.shape[0] - 1}], not {layer!r}")
        keep = keep[layer]
        if heads is not None:
            heads = [int(i) for i in heads]
            if not heads or any(not 0 <= i < keep.shape[0] for i in heads):
                raise MaskError(f"heads must be indices of the mask's {keep.shape[0]} heads, "
                                f"not {heads}")
            keep = keep[heads]
        return keep

    def compile(self, keep, params, tokens, dim, *, allow_empty_rows=False, q_addr=0,
                o_addr=0, reorder=True):
        """Plan and pack a job (:func:`amaformer.gen.sparse_dense.plan_job`,
        :func:`~amaformer.gen.sparse_dense.pack_job`) for this unit, Q, K, V at ``q_addr``,
        ``q_addr + size``, ``q_addr + 2·size`` and the output at ``o_addr``; every check (mask
        shape, empty rows, the lists against the unit's memories, Q/K/V and the output against
        the device's memories) happens here, before anything is written.

        With ``reorder``, the heads run in the order of
        :func:`~amaformer.gen.sparse_dense.head_order` (heavy and light heads interleaved when
        that saves cycles): the returned job's ``order[i]`` is the caller's head that runs as
        head ``i`` (Q, K, V, and the output, in that order in the memories); ``plans`` and
        ``params`` follow it.

        Raises
        ------
        MaskError
            One line naming what does not fit.
        """
        from ..gen.masks import MaskError, check_mask
        from ..gen.sparse_dense import head_order, pack_job, plan_job
        info, dev = self.info, self.device
        if keep.dim() != 3:
            raise MaskError(f"mask must be H×N×N, not {tuple(keep.shape)}")
        heads = keep.shape[0]
        if len(params) != heads:
            raise MaskError(f"mask must have {len(params)} heads (one per head of Q, K, V), "
                            f"not {heads}")
        check_mask(keep, tokens, allow_empty_rows)
        if not 1 <= heads <= info.heads:
            raise MaskError(f"heads must be in [1, {info.heads}] for this device, not {heads}")
        if not 1 <= tokens <= info.max_tokens:
            raise MaskError(f"tokens must be in [1, {info.max_tokens}] for this device, "
                            f"not {tokens}")
        size = heads * tokens * dim
        if q_addr + 3 * size > dev.info.act_depth:
            raise MaskError(f"Q, K and V ({3 * size} bytes from {q_addr}) must fit the "
                            f"activation memory ({dev.info.act_depth} bytes)")
        if o_addr + size > dev.info.out_depth:
            raise MaskError(f"the output ({size} bytes from {o_addr}) must fit the output "
                            f"memory ({dev.info.out_depth} bytes)")
        plans = plan_job(keep, info.dense_lanes, info.sparse_lanes)
        order = (head_order(plans, tokens, dim, info.dense_lanes, info.qkv_buffers)
                 if reorder else list(range(heads)))
        job = pack_job([plans[i] for i in order], [params[i] for i in order], unit=info,
                       tokens=tokens, dim=dim, q_addr=q_addr, k_addr=q_addr + size,
                       v_addr=q_addr + 2 * size, o_addr=o_addr,
                       allow_empty_rows=allow_empty_rows)
        job.order = order
        return job

    # ------------------------------------------------------------------ wire side
    def load_job(self, job):
        """Write a packed job's head parameters and entry lists to the unit's spaces."""
        info = self.info
        desc = job.descriptor
        self.write_space("heads", job.hp_words, info.head_word_bytes)
        self.write_space("dense", job.dense_words, info.dense_word_bytes,
                         addr=desc["dense_addr"])
        for s, words in enumerate(job.sparse_words):
            self.write_space("sparse", words, info.sparse_word_bytes,
                             addr=s * info.sparse_depth + desc["sparse_addr"])
        self.last_job = job

    def run_job(self, job, *, wait=True):
        """``RUN`` a loaded job; with ``wait``, return its cycles."""
        d = job.descriptor
        est = 3 * d["heads"] * d["tokens"] * d["dim"]      # the loader's reads, a lower bound
        return self.run_descriptor(d, wait=wait, expected_cycles=est)

    def attention(self, q, k, v, params, masks, *, layer=0, heads=None, allow_empty_rows=False,
                  reorder=True, as_tensor=None):
        """Softmax attention of ``H×N×d`` int8 Q, K, V under a fixed mask, one ``RUN`` job.

        Parameters
        ----------
        q, k, v : ``H×N×d`` (or ``N×d``) int8 integers (numpy or torch)
        params : ``H`` tuples ``(score_mult, score_shift, out_mult, out_shift)``
            Per head (:func:`amaformer.gen.attention.softmax_scales`).
        masks : path or bool tensor
            A mask file (:func:`amaformer.gen.masks.save_masks`: ``layer`` picks the layer) or
            the mask itself (``H×N×N``, ``N×N`` for one head, or ``L×H×N×N``).
        heads : iterable of int or None
            The mask's heads that Q, K, V hold, in their order (default: all of them).
        allow_empty_rows : bool
            Accept rows that keep no key (their outputs are zeros).
        reorder : bool
            Run the heads in the order that saves cycles (:meth:`compile`); the result is in
            the caller's order either way.

        Returns
        -------
        ``H×N×d`` (or ``N×d``) int8; the device's ``last_cycles`` holds the job's cycles,
        :attr:`last_plans` the heads' plans in the caller's order (for the golden model) and
        :attr:`last_job` the job as it ran.

        Raises
        ------
        MaskError
            A mask the unit cannot run (wrong shape, a row keeping nothing, lists that overflow
            the unit's memories), in one line, before anything is written.
        ValueError
            Q, K, V of the wrong shape or range, or parameters per head missing.
        """
        dev = self.device
        if as_tensor is None:
            as_tensor = type(q).__module__.startswith("torch")
        q, k, v, squeeze = qkv_arrays(q, k, v)
        h, n, d = q.shape
        if not 1 <= d <= self.info.head_dim:
            raise ValueError(f"head dimension must be in [1, {self.info.head_dim}] for this "
                             f"device, not {d}")
        for t, name in ((q, "q"), (k, "k"), (v, "v")):
            if t.min() < -128 or t.max() > 127:
                raise ValueError(f"{name} must hold int8 values, not [{t.min()}, {t.max()}]")
        params = [tuple(int(x) for x in p) for p in params]
        if len(params) != h or any(len(p) != 4 for p in params):
            raise ValueError(f"params must be {h} tuples (score_mult, score_shift, out_mult, "
                             f"out_shift), not {len(params)}")
        keep = self.masks(masks, layer=layer, heads=heads)
        job = self.compile(keep, params, n, d, allow_empty_rows=allow_empty_rows,
                           reorder=reorder)
        self.load_job(job)
        order = job.order
        dev.write_memory(P.Space.ACT, 0, b"".join(t[order].astype(np.int8).tobytes()
                                                  for t in (q, k, v)))
        dev.job_cycles = [self.run_job(job)]
        dev.last_cycles = dev.job_cycles[0]
        y_job = np.frombuffer(dev.read_memory(P.Space.OUT, 0, h * n * d), dtype=np.int8)
        y = np.empty((h, n, d), dtype=np.int8)
        y[order] = y_job.reshape(h, n, d)
        self.last_plans = [None] * h
        for i, p in zip(order, job.plans):
            self.last_plans[i] = p
        if squeeze:
            y = y[0]
        if as_tensor:
            import torch
            return torch.from_numpy(y)
        return y
