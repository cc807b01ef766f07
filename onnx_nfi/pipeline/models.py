"""Opening a model together with the preprocessing it is analysed with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from onnx_nfi.data.preprocess import Preprocessing, resolve
from onnx_nfi.errors import ModelError
from onnx_nfi.graph.load import LoadedModel, load_model

#: Spatial size given to a model whose input leaves it dynamic, when nothing else says which.
DEFAULT_INPUT_SIZE = (224, 224)


def open_model(
    model_path: str | Path, preprocess: str | None = None, input_size: tuple[int, int] | None = None,
    input_name: str | None = None,
) -> tuple[LoadedModel, Preprocessing]:
    """Load a model (``input_name``: its image input, ``--input``) and decide its preprocessing.

    A dynamic input size is filled from ``input_size`` (``--input-size``), else from a preprocessing
    file (sidecar or ``--preprocess FILE``), else 224×224 with a notice: receptive fields and layer
    shapes need one fixed size. A model with a fixed size refuses a different ``input_size``.
    """
    model_path = Path(model_path)
    lm = load_model(model_path, input_name=input_name)
    spec = lm.input
    fixed = (spec.height, spec.width)
    if input_size is not None and 0 not in fixed and tuple(input_size) != fixed:
        raise ModelError(
            f"{model_path} has a fixed input size {fixed[0]}x{fixed[1]}; drop --input-size {input_size[0]},{input_size[1]}"
        )
    notices = list(lm.notices)
    if 0 in fixed:
        # a preprocessing file knows the size it was written for; a preset does not (its size stays 0)
        size = input_size or resolve(preprocess, model_path, fixed, spec.layout, spec.dtype).input_size
        if 0 in tuple(size):
            size = DEFAULT_INPUT_SIZE
            notices.append(
                f"the model's input size is dynamic; analysed at {size[0]}x{size[1]} "
                "(choose another with --input-size H,W or a preprocessing file's input_size)"
            )
        lm = load_model(model_path, (int(size[0]), int(size[1])), input_name)
    pre = resolve(preprocess, model_path, (lm.input.height, lm.input.width), spec.layout, spec.dtype)
    if lm.batch_one_inside:
        notices.append(
            "the model hard-codes batch size 1 inside (a Reshape to a shape starting with 1); images run one at a time"
        )
    return replace(lm, notices=tuple(notices)), pre
