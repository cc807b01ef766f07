"""Streaming, mergeable per-neuron statistics (docs/method.md §2).

``TopN`` keeps, per neuron, the N best (score, image, location) triples sorted by score
descending, on equal scores by a tie-break key descending (the pre-activation maximum of a
saturating layer; the score itself for a layer without one) and then by image id ascending
("the image seen first wins" among images equal on both). ``Moments`` keeps
count, mean, M2 (for the ddof=0 std) and the number of positive scores. Both have ``update`` for
a batch and ``merge`` for another shard, so memory is independent of the number of images and
shards combine exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnx_nfi.jit import compiled


def _sort_rows(scores: np.ndarray, keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-row order: score descending, then key descending, then image id ascending (NaN last)."""
    return np.lexsort((ids, -keys, -scores), axis=1)


@dataclass
class TopN:
    """The N highest-scoring images per neuron, one location each."""

    scores: np.ndarray  # float32 [C, N], -inf where empty
    ids: np.ndarray  # int64 [C, N], -1 where empty
    ys: np.ndarray  # int32 [C, N]
    xs: np.ndarray  # int32 [C, N]
    keys: np.ndarray  # float32 [C, N], the tie-break between equal scores; -inf where empty

    @classmethod
    def empty(cls, channels: int, n: int) -> TopN:
        """A state that has seen no image."""
        return cls(
            np.full((channels, n), -np.inf, np.float32),
            np.full((channels, n), -1, np.int64),
            np.zeros((channels, n), np.int32),
            np.zeros((channels, n), np.int32),
            np.full((channels, n), -np.inf, np.float32),
        )

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    def update(
        self, ids: np.ndarray, scores: np.ndarray, ys: np.ndarray, xs: np.ndarray, keys: np.ndarray | None = None
    ) -> None:
        """Add a batch: ``ids`` [B] (larger than any id seen so far), ``scores``/``ys``/``xs``/``keys`` [B, C].

        Without ``keys`` the score is its own tie-break, which leaves image order to decide ties.
        Within a stream ids only grow, so a batch entry equal to a kept one on score and key loses
        the tie and only strictly better ones enter. Each is inserted into its row in place, compiled: in
        a long stream most scores are turned away by one comparison with the row's last entry.
        (The NumPy form, a stable sort of N + B candidates per row, cost ~0.5 s of the main
        thread's CPU per Lite0 scan of 324 images, taken from the inference on two cores.)
        """
        order = np.argsort(ids, kind="stable")
        scores = scores[order].astype(np.float32)
        _insert_batch(
            self.scores, self.ids, self.ys, self.xs, self.keys,
            ids[order].astype(np.int64), scores,
            ys[order].astype(np.int32), xs[order].astype(np.int32),
            scores if keys is None else keys[order].astype(np.float32),
        )

    def merge(self, other: TopN) -> TopN:
        """Top-N of the union of the images behind ``self`` and ``other`` (disjoint image ids)."""
        parts = ("scores", "ids", "ys", "xs", "keys")
        both = {p: np.concatenate([getattr(self, p), getattr(other, p)], axis=1) for p in parts}
        # empty slots (-inf, id -1) must sort after every real entry, so give them the largest id
        ids = np.where(both["ids"] < 0, np.iinfo(np.int64).max, both["ids"])
        order = _sort_rows(both["scores"], both["keys"], ids)[:, : self.n]
        return TopN(**{p: np.take_along_axis(both[p], order, 1) for p in parts})

    def count(self) -> int:
        """How many ranks are filled (the same for every neuron)."""
        return int((self.ids[0] >= 0).sum()) if self.ids.size else 0

    def saturated_top(self) -> np.ndarray:
        """Per neuron, how many of its kept entries have exactly its largest score (1 when none ties)."""
        return ((self.scores == self.scores[:, :1]) & (self.ids >= 0)).sum(axis=1)


@dataclass
class Moments:
    """Count, mean, M2 and positive count per neuron, merged with Chan's parallel formula."""

    count: int
    mean: np.ndarray  # float64 [C]
    m2: np.ndarray  # float64 [C]
    active: np.ndarray  # int64 [C]

    @classmethod
    def empty(cls, channels: int) -> Moments:
        """Statistics of no image."""
        return cls(0, np.zeros(channels), np.zeros(channels), np.zeros(channels, np.int64))

    def update(self, scores: np.ndarray) -> None:
        """Add a batch of per-image scores ``[B, C]``."""
        s = scores.astype(np.float64)
        batch_mean = s.mean(axis=0)
        other = Moments(s.shape[0], batch_mean, ((s - batch_mean) ** 2).sum(axis=0), (s > 0).sum(axis=0))
        self._absorb(other)

    def merge(self, other: Moments) -> Moments:
        """Statistics of the union of both shards."""
        merged = Moments(self.count, self.mean.copy(), self.m2.copy(), self.active.copy())
        merged._absorb(other)
        return merged

    def _absorb(self, other: Moments) -> None:
        total = self.count + other.count
        if other.count == 0:
            return
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.active = self.active + other.active
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof = 0)."""
        return np.sqrt(self.m2 / max(self.count, 1))

    @property
    def active_fraction(self) -> np.ndarray:
        """Fraction of images with a positive score."""
        return self.active / max(self.count, 1)


@compiled(nogil=True)
def _before(s: float, t: float) -> bool:
    """``s`` ranks before ``t``: higher, and any number before NaN (NaN sorts last, as in ``merge``)."""
    return s > t or (math.isnan(t) and not math.isnan(s))


@compiled(nogil=True)
def _ahead(s: float, k: float, t: float, u: float) -> bool:
    """(score ``s``, key ``k``) ranks before (``t``, ``u``): a better score, or an equal one with a better key."""
    if _before(s, t):
        return True
    if _before(t, s):
        return False
    return _before(k, u)


@compiled(nogil=True)
def _insert_batch(
    scores: np.ndarray, ids: np.ndarray, ys: np.ndarray, xs: np.ndarray, keys: np.ndarray,
    new_ids: np.ndarray, new_scores: np.ndarray, new_ys: np.ndarray, new_xs: np.ndarray, new_keys: np.ndarray,
) -> None:
    """Insert a batch (ids ascending, all newer than the state's) into every row's sorted top-N, in place."""
    channels, n = scores.shape
    for c in range(channels):
        k = 0
        while k < n and ids[c, k] >= 0:
            k += 1
        for b in range(new_ids.shape[0]):
            s = new_scores[b, c]
            key = new_keys[b, c]
            if k == n:
                if not _ahead(s, key, scores[c, n - 1], keys[c, n - 1]):
                    continue
                p = n - 1  # the last entry drops out
            else:
                p = k
                k += 1
            # entries equal on score and key were seen first and stay ahead
            while p > 0 and _ahead(s, key, scores[c, p - 1], keys[c, p - 1]):
                scores[c, p] = scores[c, p - 1]
                ids[c, p] = ids[c, p - 1]
                ys[c, p] = ys[c, p - 1]
                xs[c, p] = xs[c, p - 1]
                keys[c, p] = keys[c, p - 1]
                p -= 1
            scores[c, p] = s
            ids[c, p] = new_ids[b]
            ys[c, p] = new_ys[b, c]
            xs[c, p] = new_xs[b, c]
            keys[c, p] = key
