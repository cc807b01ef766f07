"""Opening a model together with the preprocessing it is analysed with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx_nfi.data.preprocess import Preprocessing, from_dict, resolve
from onnx_nfi.errors import ModelError
from onnx_nfi.files import file_sha256
from onnx_nfi.graph.load import LoadedModel, load_model


def open_model(model_path: str | Path, preprocess: str | None = None) -> tuple[LoadedModel, Preprocessing]:
    """Load a model and decide its preprocessing (dynamic input sizes take the preprocessing's size)."""
    model_path = Path(model_path)
    lm = load_model(model_path)
    spec = lm.input
    pre = resolve(preprocess, model_path, (spec.height, spec.width), spec.layout, spec.dtype)
    if spec.height == 0 or spec.width == 0:
        lm = load_model(model_path, pre.input_size)
    return lm, pre


def reopen_model(model: str, row: dict[str, Any]) -> tuple[LoadedModel, Preprocessing]:
    """The ONNX file and preprocessing of a stored model (its ``models`` row), refusing a file that
    moved or changed since the analysis: its results would no longer describe it."""
    path = Path(row["path"])
    if not path.is_file():
        raise ModelError(f"model file {path} of {model!r} is gone; analyse it again from its new place, or remove it")
    if file_sha256(path) != row["sha256"]:
        raise ModelError(f"model file {path} changed since {model!r} was analysed; analyse it again, or remove it")
    pre = from_dict(row["preprocessing"], f"stored preprocessing of {model}")
    return load_model(path, pre.input_size), pre
