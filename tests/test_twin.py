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


def test_top1_similar_neuron_in_the_twin_is_the_permuted_partner(twin_db: tuple[Path, np.ndarray]) -> None:
    db, perm = twin_db
    with Store.open(db, read_only=True) as store:
        rows = store.rows(
            "SELECT n.layer, n.unit FROM neurons n JOIN response_vectors USING (neuron_id) WHERE n.model = 'orig' "
            "ORDER BY n.neuron_id"
        )
        layers = {r[0] for r in store.con.execute("SELECT layer FROM neurons").fetchall()}
    assert set(PERMUTED_LAYERS) <= layers
    assert len(rows) > 400  # dead and constant neurons (no vector) are the only ones skipped
    checked_permuted = 0
    for row in rows:
        result = search.similar(db, f"orig:{row['layer']}:{row['unit']}", by="response", k=1, other_models=True)
        hit = result.hits[0]
        assert (hit.model, hit.layer, hit.unit) == ("twin", row["layer"], partner(row["layer"], row["unit"], perm)), row
        assert hit.score > 0.999
        checked_permuted += row["layer"] in PERMUTED_LAYERS
    assert checked_permuted > 20


def test_match_recovers_the_permutation(twin_db: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    db, perm = twin_db
    result = CliRunner().invoke(app, ["match", "orig", "twin", "--db", str(db), "-o", str(tmp_path / "heat.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Store.open(db, read_only=True) as store:
        for layer in PERMUTED_LAYERS:
            pairs = store.con.execute(
                "SELECT unit_a, unit_b, score FROM neuron_matches WHERE model_a = 'orig' AND model_b = 'twin' "
                "AND one_to_one AND layer_a = ? AND layer_b = ? ORDER BY unit_a", [layer, layer]
            ).fetchall()
            with_vectors = {
                r[0] for r in store.con.execute(
                    "SELECT unit FROM neurons JOIN response_vectors USING (neuron_id) WHERE model = 'orig' AND layer = ?",
                    [layer],
                ).fetchall()
            }
            assert len(pairs) == len(with_vectors) > 10
            for unit_a, unit_b, score in pairs:
                assert unit_b == partner(layer, unit_a, perm)
                assert score > 0.999
        diagonal = store.con.execute(
            "SELECT min(score) FROM neuron_matches WHERE model_a = 'orig' AND NOT one_to_one"
        ).fetchone()[0]
    assert diagonal > 0.999  # every neuron's best match anywhere in the twin is perfect
    np.testing.assert_allclose(np.diag(search.match(db, "orig", "twin").heat), 1.0, atol=1e-3)
