"""Load and validate an ONNX model, and find out what image it wants.

Everything downstream works on a ``LoadedModel`` whose single image input has a known layout and
spatial size and a symbolic batch dimension, and whose tensors all have inferred shapes, so layer
discovery and receptive fields can read shapes without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

from onnx_nfi.errors import ModelError
from onnx_nfi.files import file_sha256
from onnx_nfi.graph.proto import BATCH_DIM, with_input_size  # noqa: F401  (BATCH_DIM: importable from here)

#: Metadata key, set on protos of external-data models, naming the folder onnxruntime reads the
#: weights from: every session made from a derived proto (instrumented, pruned, probed) finds them.
EXTERNAL_DATA_DIR = "onnx_nfi.external_data_dir"


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: name, layout and fixed spatial size."""

    name: str
    layout: str  # "NCHW" | "NHWC"
    height: int  # 0 when the model leaves it dynamic
    width: int
    channels: int
    dtype: str  # numpy dtype name
    batch: int = 0  # batch size fixed by the exporter (0 = dynamic); a head reshaping to it cannot run batched


@dataclass(frozen=True)
class LoadedModel:
    """A validated model: the proto (with shapes inferred), its input, and where it came from."""

    proto: onnx.ModelProto
    path: Path
    sha256: str
    input: InputSpec

    @property
    def opset(self) -> int:
        """The default-domain opset, which decides the form of nodes we append."""
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 13)


def load_model(path: str | Path, input_size: tuple[int, int] | None = None) -> LoadedModel:
    """Read, check and shape-infer an ONNX file.

    ``input_size`` fixes a dynamic spatial size (needed for shapes and receptive fields); models
    with a fixed size ignore it. Weights stored as external data are never loaded into the proto
    (protobuf caps a message at 2 GB): the model is checked from its path and sessions read the
    weights from its folder (``EXTERNAL_DATA_DIR``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; pass the path of an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage input
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}); export your model to ONNX first") from None
    if not proto.graph.node:
        raise ModelError(f"{path} is not an ONNX model (it has no graph nodes); export your model to ONNX first")
    external = _has_external_data(proto)
    try:
        if external:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a valid ONNX model: {first}") from None
    spec = _find_input(proto, path)
    if (spec.height == 0 or spec.width == 0) and input_size:
        spec = replace(spec, height=int(input_size[0]), width=int(input_size[1]))
    proto = with_input_size(proto, spec.name, spec.layout, (spec.height, spec.width))
    if external:
        onnx.helper.set_model_props(
            proto, {**{p.key: p.value for p in proto.metadata_props}, EXTERNAL_DATA_DIR: str(path.parent.resolve())}
        )
    try:
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on {path}: {str(exc).splitlines()[0]}") from None
    return LoadedModel(proto=proto, path=path.resolve(), sha256=file_sha256(path), input=spec)


def _has_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def _find_input(proto: onnx.ModelProto, path: Path) -> InputSpec:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    images = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 4]
    if not images:
        raise ModelError(f"{path} has no 4-D image input; onnx-nfi needs a CNN taking [N,C,H,W] or [N,H,W,C] images")
    if len(images) > 1 or len(inputs) > 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(
            f"{path} has several inputs ({names}); onnx-nfi needs a model with one image input — "
            "export it with the other inputs fixed as constants"
        )
    inp = images[0]
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    if dims[1] in (1, 3, 4) and dims[3] not in (1, 3, 4):
        layout, channels, h, w = "NCHW", dims[1], dims[2], dims[3]
    elif dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4):
        layout, channels, h, w = "NHWC", dims[3], dims[1], dims[2]
    elif dims[1] == 3 or (dims[1] == 0 and dims[3] == 0):
        layout, channels, h, w = "NCHW", dims[1] or 3, dims[2], dims[3]
    else:
        layout, channels, h, w = "NHWC", dims[3], dims[1], dims[2]
    if channels != 3:
        raise ModelError(f"{path} takes {channels}-channel images; onnx-nfi analyses RGB (3-channel) models")
    elem = inp.type.tensor_type.elem_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    return InputSpec(inp.name, layout, h, w, channels, dtype, batch=dims[0])
