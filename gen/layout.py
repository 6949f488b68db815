"""Memory images for the engines: how weights and per-column parameters are laid out on chip.

Shared by the compiler, the host driver and the testbenches, so that every writer of the
weight buffer uses one layout.
"""

import numpy as np
import torch

__all__ = ["pack_linear_weights", "pack_requant_params", "REQUANT_PARAM_BITS"]

REQUANT_PARAM_BITS = 32 + 16 + 6   #: width of one parameter word (bias, mult, shift; LSB first)


def pack_linear_weights(w, lanes, bits=8):
    """Weight-buffer words for a ``K×N`` integer matrix.

    Word ``g·K + k`` holds ``W[k, g·lanes + j]`` in bits ``[j·bits, (j+1)·bits)`` (two's
    complement); columns past N in the last group are zero.

    Returns
    -------
    list of int
        ``K · ceil(N / lanes)`` words, each ``lanes · bits`` bits wide.
    """
    w = torch.as_tensor(w).to(torch.int64)
    k, n = w.shape
    groups = -(-n // lanes)
    padded = torch.zeros(k, groups * lanes, dtype=torch.int64)
    padded[:, :n] = w
    lanes_u = (padded & ((1 << bits) - 1)).reshape(k, groups, lanes).permute(1, 0, 2)
    words = []
    for row in lanes_u.reshape(groups * k, lanes).tolist():
        word = 0
        for j, v in enumerate(row):
            word |= v << (j * bits)
        words.append(word)
    return words


def pack_requant_params(bias, mult, shift):
    """Parameter words, one per column: ``bias`` (int32) | ``mult`` << 32 | ``shift`` << 48."""
    bias = np.asarray(torch.as_tensor(bias).to(torch.int64)).tolist()
    mult = np.asarray(torch.as_tensor(mult).to(torch.int64)).tolist()
    shift = np.asarray(torch.as_tensor(shift).to(torch.int64)).tolist()
    if not (len(bias) == len(mult) == len(shift)):
        raise ValueError(f"bias, mult and shift must have one entry per column, not "
                         f"{len(bias)}, {len(mult)}, {len(shift)}")
    return [(b & 0xFFFF_FFFF) | (m << 32) | (s << 48) for b, m, s in zip(bias, mult, shift)]
