"""How NFs are stored: ``neurons.nf UTINYINT[]``, one byte per value, rounded half up.

An NF is a weighted mean of image pixels (0-255) with non-negative weights, so it never leaves
0-255; a person sees it as 8-bit pixels anyway (every picture rounds it half up). Storing those
bytes instead of float32 makes the NF column a quarter of its float size, and the NF read back is
within 0.5 grey level of the float computed; a scale or offset per NF is not needed. The search
vectors of kind ``nf`` are computed from the rounded NF, so they are the embedding of what is
stored.

Databases written before (``nf FLOAT[]``) are read as they are; the first time one is opened for
writing, its column is converted in place (:func:`convert_float_nfs`), and ``onnx-nfi compact``
then gives the space back.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from onnx_nfi.neurons.nf import to_uint8

#: The stored type of ``neurons.nf``.
NF_TYPE = "UTINYINT[]"
#: SQL that turns a float NF list into the stored bytes, exactly as :func:`to_uint8` does.
FLOAT_TO_STORED = "list_transform({column}, lambda v: CAST(least(greatest(floor(CAST(v AS DOUBLE) + 0.5), 0), 255) AS UTINYINT))"


def rounded(nfs: np.ndarray) -> np.ndarray:
    """One layer's NFs ``[C, H, W, 3]`` as they will be stored (float32; a NaN NF, dead, stays NaN)."""
    nfs = np.asarray(nfs, np.float32)
    dead = np.isnan(nfs).any(axis=(1, 2, 3)) if nfs.size else np.zeros(len(nfs), bool)
    out = np.full(nfs.shape, np.nan, np.float32)
    out[~dead] = to_uint8(nfs[~dead])
    return out


def encode(nfs: np.ndarray) -> np.ndarray:
    """The ``nf`` column of one layer from its ``rounded`` NFs: per unit the flat ``uint8`` NF, or None
    where it is NaN (dead)."""
    column = np.empty(len(nfs), dtype=object)
    for u in np.flatnonzero(~np.isnan(nfs).any(axis=(1, 2, 3))):
        column[u] = nfs[u].astype(np.uint8).reshape(-1)  # whole numbers 0-255 already: exact
    return column


def decode(values: Any, height: Any, width: Any) -> np.ndarray | None:
    """A stored NF as ``uint8 [h, w, 3]``, or None when NULL; float NFs of older databases are rounded."""
    if any(v is None or v is np.ma.masked for v in (values, height, width)):
        return None
    return to_uint8(np.asarray(values, np.float32)).reshape(int(height), int(width), 3)


def convert_float_nfs(con: duckdb.DuckDBPyConnection) -> None:
    """Turn a ``FLOAT[]`` NF column (databases written before) into the stored bytes, in place."""
    row = con.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'neurons' AND column_name = 'nf'"
    ).fetchone()
    if row is not None and row[0] != NF_TYPE:
        con.execute(f"ALTER TABLE neurons ALTER nf SET DATA TYPE {NF_TYPE} USING {FLOAT_TO_STORED.format(column='nf')}")
