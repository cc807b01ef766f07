"""Selectivity indexes computed by ``onnx-nfi index`` whose database write could not happen (a lock
held past ``--lock-timeout``, a full disk, Ctrl-C while waiting), kept in a file so that hours of
region passes are not lost: ``onnx-nfi index MODEL --saved FILE`` writes them later.

The file (``store.unwritten``) holds each layer's index columns, class frequencies, colour names and
concept labels, with a header naming the model (and its content hash, so indexes of a model since
replaced are refused) and the options that made them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.config import IndexConfig
from onnx_nfi.errors import StateError
from onnx_nfi.neurons.indexes import IndexResult
from onnx_nfi.store.unwritten import kept_path, load_kept, save_kept


def index_state_path(db: str | Path, model: str) -> Path:
    """Where ``index`` keeps indexes it could not write: beside the database, named by model."""
    return kept_path(db, f"{model}.indexes")


def finish_command(path: Path, model: str, db: str | Path) -> str:
    """The command that writes the indexes saved in ``path``."""
    return f"onnx-nfi index {model} --db {db} --saved {path}"


def save_indexes(path: Path, model: str, model_sha256: str, config: IndexConfig, result: IndexResult) -> None:
    """Write ``result`` to ``path`` atomically (a crash leaves the previous file or the new one)."""
    layers = sorted({*result.columns, *result.class_frequencies, *result.color_names, *result.concepts})
    meta = {"model": model, "model_sha256": model_sha256, "config": json.loads(config.to_json()), "layers": layers,
            "columns": {layer: sorted(result.columns.get(layer, {})) for layer in layers},
            "frequencies": [layer for layer in layers if layer in result.class_frequencies],
            "names": [layer for layer in layers if layer in result.color_names],
            "concepts": {layer: sorted(result.concepts[layer]) for layer in layers if layer in result.concepts}}
    arrays: dict[str, Any] = {}
    for k, layer in enumerate(layers):
        for name, values in result.columns.get(layer, {}).items():
            arrays[f"{k}.column.{name}"] = values
        for name, values in result.concepts.get(layer, {}).items():
            arrays[f"{k}.concept.{name}"] = values
        if layer in result.class_frequencies:
            units, labels, freqs = result.class_frequencies[layer]
            arrays |= {f"{k}.units": units, f"{k}.labels": np.asarray(labels, str), f"{k}.freqs": freqs}
        if layer in result.color_names:
            arrays[f"{k}.names"] = result.color_names[layer]
    save_kept(path, meta, arrays)


def _read(meta: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[dict[str, Any], IndexResult]:
    """The indexes ``save_indexes`` wrote, from the kept file's header and arrays."""
    result = IndexResult()
    for k, layer in enumerate(meta["layers"]):
        result.columns[layer] = {name: data[f"{k}.column.{name}"] for name in meta["columns"][layer]}
        if layer in meta["concepts"]:
            result.concepts[layer] = {name: data[f"{k}.concept.{name}"] for name in meta["concepts"][layer]}
        if layer in meta["names"]:
            result.color_names[layer] = data[f"{k}.names"]
        if layer in meta["frequencies"]:
            result.class_frequencies[layer] = (data[f"{k}.units"], data[f"{k}.labels"].astype(object), data[f"{k}.freqs"])
    return meta, result


def load_indexes(path: Path, model: str, model_sha256: str) -> tuple[IndexResult, dict[str, Any]]:
    """The indexes saved in ``path`` for ``model`` (as stored now) and the options that made them."""
    meta, result = load_kept(path, _read, f"{path} is not indexes saved by 'onnx-nfi index' (or it is damaged); run "
                                          "the index command again without --saved")
    if meta["model"] != model or meta["model_sha256"] != model_sha256:
        raise StateError(f"{path} holds indexes of another model than {model} as stored now; run the index command "
                         "again without --saved")
    return result, meta["config"]
