"""The compiled inner loop of the Neuron Features: weighted sums of crops cut from a uint8 stack.

NumPy needs three passes over every crop (cut, convert to float32, multiply-add) and its small
per-unit products cannot run on two threads at once; this kernel does all three in one pass over
a cache-resident accumulator, on all cores (numba ``prange``), ~10x faster for Lite0. Indices
are unsigned on purpose: with signed ones numba adds a negative-index check to every access and
LLVM no longer vectorises the inner loop (that version was no faster than NumPy).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from onnx_nfi.jit import compiled

# numba's default threading layer must not be entered from two Python threads at once
_LOCK = threading.Lock()


@compiled(parallel=True, boundscheck=False, fastmath={"contract"})
def _add_weighted_crops(
    stack: np.ndarray,
    height: int,
    width: int,
    slot: np.ndarray,
    ty: np.ndarray,
    tx: np.ndarray,
    weights: np.ndarray,
    cy: int,
    cx: int,
    rows: np.ndarray,
    out: np.ndarray,
) -> None:
    units, n = weights.shape
    row = cx * 3
    for u in numba.prange(units):
        target = out[rows[u]]
        acc = target.copy()  # a cache-resident accumulator, written back once per unit
        for k in range(n):
            wk = weights[u, k]
            if wk == 0:
                continue
            # the part of the crop inside the image: canvas rows [y0, y1), columns [x0, x1)
            top, left = ty[u, k], tx[u, k]
            y0, y1 = max(0, -top), min(cy, height - top)
            x0, x1 = max(0, -left), min(cx, width - left)
            if y0 >= y1 or x0 >= x1:
                continue
            length = np.uint64((x1 - x0) * 3)
            for a in range(y0, y1):
                src = np.uint64(((slot[u, k] * height + top + a) * width + left + x0) * 3)
                dst = np.uint64(a * row + x0 * 3)
                for b in range(length):
                    acc[dst + b] += wk * np.float32(stack[src + b])
        target[:] = acc


def add_weighted_crops(
    stack: np.ndarray,
    slot: np.ndarray,
    ty: np.ndarray,
    tx: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray,
    rows: np.ndarray,
    threads: int,
) -> None:
    """``out[rows[u]] += Σ_k weights[u, k] · crop_k``, summing only the part of each crop inside its image.

    ``stack`` is ``uint8 [S, H, W, 3]``; crop ``k`` of unit ``u`` has its top-left corner at
    ``(ty, tx)`` (possibly outside) of image ``stack[slot]``; zero-weight entries are skipped and
    may point anywhere. ``out`` is ``float32 [C, cy, cx, 3]``, C-contiguous, updated in place.
    """
    _, h, w, _ = stack.shape
    cy, cx = out.shape[1:3]
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape[3] != 3 or not stack.flags.c_contiguous:
        raise ValueError("stack and out must be C-contiguous, out float32 [C, cy, cx, 3]")
    if ((slot < 0) | (slot >= stack.shape[0]))[weights > 0].any():
        raise ValueError("a weighted crop's image is not in the stack")
    with _LOCK:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        _add_weighted_crops(
            stack.reshape(-1), h, w, slot.astype(np.int64, copy=False), ty.astype(np.int64, copy=False),
            tx.astype(np.int64, copy=False), weights.astype(np.float32, copy=False), cy, cx,
            rows.astype(np.int64, copy=False), out.reshape(out.shape[0], -1),
        )
