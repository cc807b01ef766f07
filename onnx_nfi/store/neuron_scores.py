"""Each neuron's stored top-N scores and dead flag, read as arrays: what a new image's responses are
measured against (``onnx-nfi query``: relative to the top-1, percentile among the top-N)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_nfi.store.duckdb_store import Store


@dataclass(frozen=True)
class StoredScores:
    """One layer's neurons: ``top`` ``[C, N]`` float32, each row's stored scores in rank order (NaN
    past the neuron's last stored entry), and ``dead`` ``[C]``."""

    top: np.ndarray
    dead: np.ndarray

    @property
    def top1(self) -> np.ndarray:
        """Each neuron's largest stored score (NaN when it has none)."""
        return self.top[:, 0]


def stored_scores(store: Store, model: str, layer: str, channels: int) -> StoredScores:
    """The top-N scores (``top_activations``) and dead flags (``neurons``) of a stored layer."""
    cols = store.columns(
        "SELECT unit, rank, activation FROM top_activations WHERE model = ? AND layer = ?", [model, layer]
    )
    n = int(cols["rank"].max()) if cols["rank"].size else 1
    top = np.full((channels, n), np.nan, np.float32)
    top[cols["unit"].astype(np.int64), cols["rank"].astype(np.int64) - 1] = cols["activation"]
    flags = store.columns("SELECT unit, dead FROM neurons WHERE model = ? AND layer = ?", [model, layer])
    dead = np.ones(channels, bool)  # a unit without a row has nothing to compare with
    dead[flags["unit"].astype(np.int64)] = flags["dead"].astype(bool)
    return StoredScores(top, dead)


def top_image_paths(store: Store, model: str, layer: str, unit: int) -> dict[int, str]:
    """A neuron's top images: stored path by image id."""
    rows = store.rows(
        "SELECT i.image_id, i.path FROM top_activations t JOIN images i ON i.model = t.model AND i.image_id = t.image_id "
        "WHERE t.model = ? AND t.layer = ? AND t.unit = ? ORDER BY t.rank",
        [model, layer, unit],
    )
    return {int(r["image_id"]): str(r["path"]) for r in rows}
