"""The Store's typed readers for the pipeline and the demo, each against its own brute force over
the raw tables (read with plain DuckDB, not through the Store)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from cli_helpers import query
from test_checkpoint import MODEL, images, reference  # noqa: F401  (fixtures)

from onnx_nfi.store.duckdb_store import Store


def test_most_class_dominated_unit_is_the_live_unit_with_the_largest_top_class_share(reference: Path) -> None:
    rows = query(reference, "SELECT l.alias, n.unit, n.dead, n.top_class_frequency FROM neurons n JOIN layers l "
                            "USING (model, layer) WHERE n.model = ?", [MODEL])
    aliases = sorted({r[0] for r in rows})
    with Store.open(reference, read_only=True) as store:
        found = {alias: store.most_class_dominated_unit(MODEL, alias) for alias in aliases}
    for alias in aliases:
        live = [(u, f) for a, u, dead, f in rows if a == alias and not dead]
        share = max((f for _, f in live if f is not None), default=None)
        want = min(u for u, f in live if f == share) if share is not None else min(u for u, _ in live)
        assert found[alias] == want, alias


def test_live_neurons_and_image_records_match_the_tables(reference: Path) -> None:
    with Store.open(reference, read_only=True) as store:
        live = store.live_neurons(MODEL)
        records = store.image_records(MODEL)
    assert live == sum(1 for (dead,) in query(reference, "SELECT dead FROM neurons WHERE model = ?", [MODEL]) if not dead)
    raw = query(reference, "SELECT image_id, path, label, sha256 FROM images WHERE model = ?", [MODEL])
    assert sorted(tuple(r.values()) for r in records) == sorted(raw) and len(raw) > 0


def test_response_profiles_are_the_stored_vectors_by_layer_in_depth_order(reference: Path) -> None:
    with Store.open(reference, read_only=True) as store:
        profiles = store.response_profiles(MODEL)
    depth = dict(query(reference, "SELECT layer, depth FROM layers WHERE model = ?", [MODEL]))
    raw = query(reference, "SELECT n.layer, n.unit, r.vector FROM neurons n JOIN response_vectors r USING (neuron_id) "
                           "WHERE n.model = ?", [MODEL])
    assert list(profiles) == sorted({r[0] for r in raw}, key=depth.__getitem__)
    for layer, (units, vectors) in profiles.items():
        mine = sorted((u, v) for lay, u, v in raw if lay == layer)
        assert units.tolist() == [u for u, _ in mine]
        np.testing.assert_array_equal(vectors, np.array([v for _, v in mine], np.float32))
        assert not math.isnan(float(vectors.sum()))
