"""Models whose weights are external data (how exporters store models over 2 GB) work end to end.

The weights are never loaded into the proto: sessions read them from the model's folder. Here the
tiny model is re-saved with its weights in a side file and must give exactly the results of the
single-file model, through the scan, NFs, the index passes and the receptive-field probe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from cli_helpers import invoke, query
from conftest import TINY

from onnx_nfi.graph.load import load_model


def external_copy(folder: Path) -> Path:
    model = onnx.load(str(TINY))
    target = folder / "tiny_ext.onnx"
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location="tiny_ext.weights", size_threshold=1024)
    shutil.copy(TINY.with_suffix(".json"), folder / "tiny_ext.json")
    return target


def test_external_data_model_matches_the_single_file_model(photo_dir: Path, tmp_path: Path) -> None:
    model = external_copy(tmp_path)
    light = load_model(model).proto
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in light.graph.initializer)
    assert light.ByteSize() < 20_000  # the weights (67 kB) stayed on disk
    db = tmp_path / "nfi.duckdb"
    for path in (TINY, model):
        result = invoke("analyze", path, photo_dir, "--db", db, "--top-n", 5, "--silent")
        assert result.exit_code == 0, result.output
    compare = (
        "SELECT layer, unit, rank, image_id, y, x, activation FROM top_activations WHERE model = ? ORDER BY ALL"
    )
    assert query(db, compare, ["tiny_lite0"]) == query(db, compare, ["tiny_ext"])
    neurons = "SELECT layer, unit, nf, color_selectivity, class_selectivity FROM neurons WHERE model = ? ORDER BY ALL"
    assert query(db, neurons, ["tiny_lite0"]) == query(db, neurons, ["tiny_ext"])


def test_external_data_model_receptive_fields_verify(tmp_path: Path) -> None:
    result = invoke("layers", external_copy(tmp_path), "--verify-rf")
    assert result.exit_code == 0, result.output
    assert "verified empirically for all 9 layers" in result.output
