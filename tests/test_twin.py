"""The twin test of issue 5: a model and a copy with one conv layer's channels permuted.

The copy computes the same function (checked with onnxruntime), so every neuron of the original
has an exact partner in the twin: the same unit in untouched layers, the permuted unit in the
permuted ones. Search by response profile must find that partner first with correlation ~1, and
the one-to-one matching must recover the permutation exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY
from onnx import numpy_helper
from typer.testing import CliRunner

from onnx_nfi import search
from onnx_nfi.cli import app
from onnx_nfi.store.duckdb_store import Store

#: The stem conv (32 channels) feeds a depthwise conv (group 32), then a 1x1 projection.
STEM, DEPTHWISE, PROJECT = "_conv_stem", "_blocks.0._depthwise_conv", "_blocks.0._project_conv"
PERMUTED_LAYERS = ("_conv_stem.act", "_blocks.0._depthwise_conv.act")


def permuted_twin(source: Path, target: Path, perm: np.ndarray) -> None:
    """Copy ``source`` with the stem conv's output channels in order ``perm`` (twin unit i = original perm[i]).

    The stem's weight rows and bias are permuted; the following depthwise conv works per channel, so
    its weights and bias are permuted the same way; the 1x1 projection after it sums over channels,
    so its input channels (weight axis 1) are permuted to match, and the output is unchanged.
    """
    model = onnx.load(str(source))
    init = {t.name: t for t in model.graph.initializer}
    nodes = {n.output[0]: n for n in model.graph.node}

    def permute(name: str, axis: int) -> None:
        array = numpy_helper.to_array(init[name])
        init[name].CopyFrom(numpy_helper.from_array(np.take(array, perm, axis=axis), name))

    for conv in (STEM, DEPTHWISE):
        weight, bias = nodes[conv].input[1], nodes[conv].input[2]
        permute(weight, 0)
        permute(bias, 0)
    permute(nodes[PROJECT].input[1], 1)
    onnx.save(model, str(target))
    shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))  # same preprocessing


@pytest.fixture(scope="module")
def twin_db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("twin")
    perm = np.random.default_rng(7).permutation(32)
    twin = folder / "twin.onnx"
    permuted_twin(TINY, twin, perm)
    db = folder / "nfi.duckdb"
    for model, name in ((TINY, "orig"), (twin, "twin")):
        result = CliRunner().invoke(
            app, ["analyze", str(model), str(photo_dir), "--db", str(db), "--name", name, "--top-n", "3",
                  "--no-nf", "--indexes", "none", "--silent"],
        )
        assert result.exit_code == 0, result.output
    return db, perm


def test_twin_computes_the_same_function(twin_db: tuple[Path, np.ndarray]) -> None:
    db, _ = twin_db
    x = np.random.default_rng(0).uniform(-2, 2, size=(4, 3, 64, 64)).astype(np.float32)
    outputs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (TINY, db.parent / "twin.onnx")
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4 * np.abs(outputs[0]).max())  # summation order only


def partner(layer: str, unit: int, perm: np.ndarray) -> int:
    """The twin's unit that computes what ``unit`` of the original computes."""
    return int(np.argsort(perm)[unit]) if layer in PERMUTED_LAYERS else unit


def profiles(db: Path, model: str) -> tuple[list[tuple[str, int]], np.ndarray]:
    """(layer, unit) and response vector of every neuron of ``model`` that has one."""
    with Store.open(db, read_only=True) as store:
        rows = store._con.execute(
            "SELECT n.layer, n.unit, r.vector FROM neurons n JOIN response_vectors r USING (neuron_id) "
            "WHERE n.model = ? ORDER BY n.neuron_id", [model]
        ).fetchall()
    return [(r[0], r[1]) for r in rows], np.array([r[2] for r in rows], np.float64)


def twins_within(db: Path) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """Neurons of the original whose profile another neuron of the original shares (correlation ~1).

    Clip (ReLU6) saturates: a neuron at 6 on every probe image but one has the same profile as any
    other such neuron with the same exception. No search can tell those apart, so for them the
    partner must be among the equally scored hits rather than first.
    """
    keys, vectors = profiles(db, "orig")
    corr = vectors @ vectors.T
    np.fill_diagonal(corr, 0)
    return {keys[i]: {keys[j] for j in np.flatnonzero(corr[i] > 0.9999)} for i in range(len(keys)) if (corr[i] > 0.9999).any()}


def test_top1_similar_neuron_in_the_twin_is_the_permuted_partner(twin_db: tuple[Path, np.ndarray]) -> None:
    db, perm = twin_db
    keys, _ = profiles(db, "orig")
    assert {layer for layer, _ in keys} >= set(PERMUTED_LAYERS)
    assert len(keys) > 400  # dead and constant neurons (no vector) are the only ones skipped
    ambiguous = twins_within(db)
    assert len(ambiguous) < len(keys) // 10
    checked_permuted = 0
    k = 1 + max(map(len, ambiguous.values()), default=0)
    results = search.similar_many(db, [f"orig:{layer}:{unit}" for layer, unit in keys], by="response", k=k, other_models=True)
    assert search.similar(db, f"orig:{keys[0][0]}:{keys[0][1]}", k=k, other_models=True) == results[0]
    for (layer, unit), result in zip(keys, results):
        twins = ambiguous.get((layer, unit), set())
        want = ("twin", layer, partner(layer, unit, perm))
        hits = [(h.model, h.layer, h.unit) for h in result.hits]
        assert result.hits[0].score > 0.999
        if twins:  # equally good: the partner is among the perfect hits
            assert want in [hit for hit, h in zip(hits, result.hits) if h.score > 0.999], (layer, unit)
        else:
            assert hits[0] == want, (layer, unit)
            checked_permuted += layer in PERMUTED_LAYERS
    assert checked_permuted > 20


def test_match_recovers_the_permutation(twin_db: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    db, perm = twin_db
    ambiguous = twins_within(db)
    result = CliRunner().invoke(app, ["match", "orig", "twin", "--db", str(db), "-o", str(tmp_path / "heat.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Store.open(db, read_only=True) as store:
        for layer in PERMUTED_LAYERS:
            pairs = store._con.execute(
                "SELECT unit_a, unit_b, score FROM neuron_matches WHERE model_a = 'orig' AND model_b = 'twin' "
                "AND one_to_one AND layer_a = ? AND layer_b = ? ORDER BY unit_a", [layer, layer]
            ).fetchall()
            with_vectors = {
                r[0] for r in store._con.execute(
                    "SELECT unit FROM neurons JOIN response_vectors USING (neuron_id) WHERE model = 'orig' AND layer = ?",
                    [layer],
                ).fetchall()
            }
            assert len(pairs) == len(with_vectors) > 10
            exact = 0
            for unit_a, unit_b, score in pairs:
                twins = {u for l, u in ambiguous.get((layer, unit_a), set()) if l == layer}
                assert unit_b in {partner(layer, u, perm) for u in {unit_a} | twins}
                exact += unit_b == partner(layer, unit_a, perm)
                assert score > 0.999
            assert exact >= len(pairs) - sum(1 for (l, _) in ambiguous if l == layer)
        best = store._con.execute(
            "SELECT min(score) FROM neuron_matches WHERE model_a = 'orig' AND NOT one_to_one"
        ).fetchone()[0]
    assert best > 0.999  # every neuron's best match anywhere in the twin is perfect
    np.testing.assert_allclose(np.diag(search.match(db, "orig", "twin").heat), 1.0, atol=1e-3)
