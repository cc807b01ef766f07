"""``match`` results whose write could not happen, in a kept file (``store.unwritten``) that
``onnx-nfi match A B --saved FILE`` writes later: the ``neuron_matches`` rows, and the heat map and
layer summary the command prints and draws, with both models' content hashes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.search.records import LayerBest, MatchResult
from onnx_nfi.store.duckdb_store import Frame
from onnx_nfi.store.unwritten import load_kept, save_kept

#: The scalar fields of a MatchResult kept in the file's header.
_SCALARS = ("model_a", "model_b", "aliases_a", "aliases_b", "mean_best", "best_rows", "one_to_one_rows")


def keep_matches(path: Path, result: MatchResult, hashes: dict[str, str], frames: tuple[Frame, ...]) -> None:
    """Save ``result`` and its ``neuron_matches`` rows (``frames``) to ``path``."""
    meta = {"kind": "matches", "hashes": hashes, "frames": [list(f) for f in frames],
            "layers": [dataclasses.asdict(b) for b in result.layers],
            **{name: getattr(result, name) for name in _SCALARS}}
    arrays = {f"{k}.{column}": values for k, frame in enumerate(frames) for column, values in frame.items()}
    save_kept(path, meta, {**arrays, "heat": result.heat})


def _read(meta: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[MatchResult, dict[str, str], tuple[Frame, ...]]:
    if meta["kind"] != "matches":
        raise KeyError("kind")
    scalars = {name: tuple(meta[name]) if name.startswith("aliases") else meta[name] for name in _SCALARS}
    result = MatchResult(heat=data["heat"], layers=tuple(LayerBest(**b) for b in meta["layers"]), **scalars)
    frames = tuple({column: data[f"{k}.{column}"] for column in columns} for k, columns in enumerate(meta["frames"]))
    return result, meta["hashes"], frames


def load_matches(path: Path) -> tuple[MatchResult, dict[str, str], tuple[Frame, ...]]:
    """The result, model hashes and rows ``keep_matches`` saved."""
    return load_kept(path, _read, f"{path} is not matches saved by 'onnx-nfi match' (or it is damaged); run the "
                                  "match command again without --saved")
