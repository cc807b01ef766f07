"""The ONNX file a stored model was analysed from, reopened with its stored preprocessing.

Results describe one exact file: whoever runs the model again for a stored model (the index pass,
the probe, queries) reopens it here, where a file that moved or changed is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx_nfi.data.preprocess import Preprocessing, from_dict
from onnx_nfi.errors import ModelError
from onnx_nfi.files import file_sha256
from onnx_nfi.graph.load import LoadedModel, load_model


def reopen_model(model: str, row: dict[str, Any], path: str | Path | None = None) -> tuple[LoadedModel, Preprocessing]:
    """The ONNX file, image input and preprocessing of a stored model (its ``models`` row), refusing a
    file that moved or changed since the analysis: its results would no longer describe it.
    ``path`` (``--model-file``) is where the same file is now, when it moved."""
    moved = path is not None
    path = Path(path) if moved else Path(row["path"])
    if not path.is_file():
        if moved:
            raise ModelError(f"model file {path} does not exist; give --model-file the model's .onnx file")
        raise ModelError(f"model file {path} of {model!r} is gone; give its new place with --model-file, "
                         "analyse it again, or remove it")
    if file_sha256(path) != row["sha256"]:
        if moved:
            raise ModelError(f"{path} is not the file {model!r} was analysed from (its content differs); "
                             "give --model-file the same .onnx file")
        raise ModelError(f"model file {path} changed since {model!r} was analysed; analyse it again, or remove it")
    pre = from_dict(row["preprocessing"], f"stored preprocessing of {model}")
    return load_model(path, pre.input_size, row.get("image_input")), pre
