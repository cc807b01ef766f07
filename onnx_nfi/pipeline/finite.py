"""Non-finite activations (NaN, ±Inf) found in a finished scan (a merged or saved one: a scan refuses
them per batch, ``onnx_nfi.scan.finite``), with the layer named.

A ``Log`` or a division in the graph can make a layer's maxima NaN or infinite on some images; top-N
ranking, moments and every index are meaningless then, and the database write would fail late with
a bare ``ValueError``. The policy is to refuse the run, naming the first such layer and unit, before
any NF or index work.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnx_nfi.scan.finite import non_finite
from onnx_nfi.scan.scanner import LayerStats


def check_finite(stats: Mapping[str, LayerStats]) -> None:
    """Raise ModelError for the first layer whose maxima over the images are NaN or ±Inf."""
    for st in stats.values():
        kept = st.topn.ids >= 0
        bad_top = kept & ~np.isfinite(st.topn.scores)
        bad = np.flatnonzero(bad_top.any(axis=1) | ~np.isfinite(st.moments.mean))
        if bad.size:
            raise non_finite(st.layer, bad)
