"""Selectivity indexes computed by ``onnx-nfi index`` whose database write could not happen (a lock
held past ``--lock-timeout``, a full disk, Ctrl-C while waiting), kept in a file so that hours of
region passes are not lost: ``onnx-nfi index MODEL --saved FILE`` writes them later.

The file is an uncompressed ``.npz``: each layer's index columns, class frequencies, colour names and
concept labels, with a JSON
header naming the model (and its content hash, so indexes of a model since replaced are refused)
and the options that made them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.config import IndexConfig
from onnx_nfi.errors import StateError
from onnx_nfi.files import atomic_write
from onnx_nfi.neurons.indexes import IndexResult


def index_state_path(db: str | Path, model: str) -> Path:
    """Where ``index`` keeps indexes it could not write: beside the database, named by model."""
    return Path(f"{db}.{model}.indexes.npz")


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
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for k, layer in enumerate(layers):
        for name, values in result.columns.get(layer, {}).items():
            _put(arrays, f"{k}.column.{name}", values)
        for name, values in result.concepts.get(layer, {}).items():
            _put(arrays, f"{k}.concept.{name}", values)
        if layer in result.class_frequencies:
            units, labels, freqs = result.class_frequencies[layer]
            arrays |= {f"{k}.units": units, f"{k}.labels": np.asarray(labels, str), f"{k}.freqs": freqs}
        if layer in result.color_names:
            arrays[f"{k}.names"] = result.color_names[layer]
    try:
        with atomic_write(path) as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        raise StateError(f"cannot save the indexes to {path} ({exc.strerror or exc})") from None


def _put(arrays: dict[str, np.ndarray], key: str, values: Any) -> None:
    """One column under ``key``: numbers as they are, text (names or None) as JSON, since NumPy would need pickle."""
    values = np.asarray(values)
    if values.dtype == object:
        arrays[f"{key}.json"] = np.frombuffer(json.dumps(values.tolist()).encode(), np.uint8)
    else:
        arrays[key] = values


def _get(data: Any, key: str) -> np.ndarray:
    """The column ``_put`` wrote under ``key``."""
    if key in data:
        return data[key]
    return np.array(json.loads(data[f"{key}.json"].tobytes()), dtype=object)


def load_indexes(path: Path, model: str, model_sha256: str) -> tuple[IndexResult, dict[str, Any]]:
    """The indexes saved in ``path`` for ``model`` (as stored now) and the options that made them."""
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            result = IndexResult()
            for k, layer in enumerate(meta["layers"]):
                result.columns[layer] = {name: _get(data, f"{k}.column.{name}") for name in meta["columns"][layer]}
                if layer in meta["concepts"]:
                    result.concepts[layer] = {name: _get(data, f"{k}.concept.{name}") for name in meta["concepts"][layer]}
                if layer in meta["names"]:
                    result.color_names[layer] = data[f"{k}.names"]
                if layer in meta["frequencies"]:
                    result.class_frequencies[layer] = (
                        data[f"{k}.units"], data[f"{k}.labels"].astype(object), data[f"{k}.freqs"]
                    )
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError):
        raise StateError(f"{path} is not indexes saved by 'onnx-nfi index' (or it is damaged); run the index "
                         "command again without --saved") from None
    if meta["model"] != model or meta["model_sha256"] != model_sha256:
        raise StateError(f"{path} holds indexes of another model than {model} as stored now; run the index command "
                         "again without --saved")
    return result, meta["config"]
