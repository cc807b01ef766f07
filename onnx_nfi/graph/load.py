"""Load and validate an ONNX model, and find out what image it wants.

Everything downstream works on a ``LoadedModel`` whose single image input has a known layout and
spatial size and a symbolic batch dimension, and whose tensors all have inferred shapes, so layer
discovery and receptive fields can read shapes without running the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, shape_inference

from onnx_nfi.errors import ModelError
from onnx_nfi.files import file_sha256
from onnx_nfi.graph.channel_slices import add_branch_slices
from onnx_nfi.graph.fold import fold_constants
from onnx_nfi.graph.node_values import constants
from onnx_nfi.graph.proto import BATCH_DIM, copy_model, with_input_size  # noqa: F401  (BATCH_DIM: importable from here)

#: Metadata key, set on protos of external-data models, naming the folder onnxruntime reads the
#: weights from: every session made from a derived proto (instrumented, pruned, probed) finds them.
EXTERNAL_DATA_DIR = "onnx_nfi.external_data_dir"

#: Oldest default-domain opset onnxruntime runs.
MIN_OPSET = 7
#: Op domains onnxruntime implements itself; a node of any other domain needs a custom-op library.
RUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"})


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
    #: Facts about the model the user should hear (a dynamic size filled in, convs left out, batch 1).
    notices: tuple[str, ...] = ()

    @functools.cached_property  # a walk over the graph and its constants: once per loaded model
    def batch_one_inside(self) -> bool:
        """True when the export fixed batch 1 and a ``Reshape`` feeding a conv hard-codes it (Caffe2's
        ShuffleNet reshapes to ``{1, g, c/g, h, w}``): such a model runs one image at a time."""
        return self.input.batch == 1 and _reshape_to_batch_one_before_conv(self.proto.graph)

    def batch(self, requested: int) -> int:
        """How many images a pass may feed at once: ``requested``, or 1 for a ``batch_one_inside``
        model (every pass over it, the scan, the probe and the index passes, asks here)."""
        return 1 if self.batch_one_inside else requested

    @property
    def has_class_head(self) -> bool:
        """Whether the first output is class scores: ``[N, K]`` (or ``[N, K, 1, 1]``) with K > 1, which
        ``--labels predicted`` needs; a feature-map output would give meaningless "classes"."""
        out = self.proto.graph.output[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in out.shape.dim] if out.HasField("shape") else []
        if len(dims) == 4 and self.input.layout == "NHWC":
            dims = [dims[0], dims[3], dims[1], dims[2]]
        return len(dims) in (2, 4) and dims[1] > 1 and all(d == 1 for d in dims[2:])

    @property
    def opset(self) -> int:
        """The default-domain opset, which decides the form of nodes we append."""
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 13)


def load_model(
    path: str | Path, input_size: tuple[int, int] | None = None, input_name: str | None = None
) -> LoadedModel:
    """Read, check and shape-infer an ONNX file.

    ``input_size`` fixes a dynamic spatial size (needed for shapes and receptive fields); models
    with a fixed size ignore it. ``input_name`` picks the image input of a model with several
    (``--input``); the other inputs are fed zeros. Weights stored as external data are never loaded
    into the proto (protobuf caps a message at 2 GB): the model is checked from its path and sessions read the
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
    _check_opset(proto, path)
    external = _has_external_data(proto)
    try:
        if external:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a valid ONNX model: {first}") from None
    spec = _find_input(proto, path, input_name)
    proto, fed = _feed_zeros(proto, path, spec)
    notices = (*fed, *_custom_ops(proto, path))
    if (spec.height == 0 or spec.width == 0) and input_size:
        spec = replace(spec, height=int(input_size[0]), width=int(input_size[1]))
    proto = with_input_size(proto, spec.name, spec.layout, (spec.height, spec.width))
    if external:
        onnx.helper.set_model_props(
            proto, {**{p.key: p.value for p in proto.metadata_props}, EXTERNAL_DATA_DIR: str(path.parent.resolve())}
        )
    proto = fold_constants(proto)
    proto = _infer(proto, path)
    if add_branch_slices(proto):
        proto = _infer(proto, path)
    return LoadedModel(proto=proto, path=path.resolve(), sha256=file_sha256(path), input=spec, notices=notices)


def _infer(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on {path}: {str(exc).splitlines()[0]}") from None


def _check_opset(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a default-domain opset onnxruntime cannot run, before anything else reads the graph
    (an opset-5 graph otherwise loses its shapes and reads as having no conv layer)."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ModelError(
            f"{path} uses ONNX opset {opset}, older than the oldest onnxruntime runs ({MIN_OPSET}); convert it with "
            f"onnx.version_converter.convert_version(model, 13) or export it again with a newer opset"
        )
    if opset > newest:
        raise ModelError(
            f"{path} uses ONNX opset {opset}, newer than the installed onnx supports ({newest}); "
            f"upgrade onnx and onnxruntime, or export the model with opset {newest} or lower"
        )


def _ancestors(graph: onnx.GraphProto) -> dict[str, set[int]]:
    """For every tensor, the indices of the nodes it depends on (nodes are in topological order)."""
    deps: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        up = {i}.union(*(deps.get(name, set()) for name in node.input if name))
        for out in node.output:
            deps[out] = up
    return deps


def _custom_ops(proto: onnx.ModelProto, path: Path) -> tuple[str, ...]:
    """Nodes of a domain onnxruntime does not implement: an error when every conv depends on one
    (nothing could be analysed), a notice naming the convs left out when only some do."""
    graph = proto.graph
    custom = [i for i, n in enumerate(graph.node) if n.domain not in RUNTIME_DOMAINS]
    if not custom:
        return ()
    first = graph.node[custom[0]]
    name = f"{first.name or first.output[0]} ({first.domain}::{first.op_type})"
    deps = _ancestors(graph)
    convs = [(i, n) for i, n in enumerate(graph.node) if n.op_type == "Conv"]
    blocked = [n for i, n in convs if deps[n.output[0]] & set(custom)]
    fix = "export the model without it, or replace it by standard ONNX ops"
    if convs and len(blocked) == len(convs):
        raise ModelError(f"{path}: node {name} uses an op onnxruntime cannot run, and every conv layer depends on it; {fix}")
    if not blocked:
        return ()
    first_blocked = blocked[0].name or blocked[0].output[0]
    return (
        f"{len(blocked)} of {len(convs)} conv nodes come after node {name}, an op onnxruntime cannot run, and are "
        f"not analysed (first: {first_blocked}); to analyse them, {fix}",
    )


def _reshape_to_batch_one_before_conv(graph: onnx.GraphProto) -> bool:
    """Whether a ``Reshape`` to a constant shape starting with 1 (rank > 2) lies upstream of a conv."""
    values = constants(graph)
    deps = _ancestors(graph)
    reshapes = {
        i for i, n in enumerate(graph.node)
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in values
        and values[n.input[1]].size > 2 and int(values[n.input[1]].ravel()[0]) == 1
    }
    return bool(reshapes) and any(deps[n.output[0]] & reshapes for n in graph.node if n.op_type == "Conv")


def _has_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (old exporters also list the weights as inputs)."""
    initializers = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _find_input(proto: onnx.ModelProto, path: Path, name: str | None = None) -> InputSpec:
    """The image input: ``name`` (``--input``), else the only 4-D input."""
    inputs = _graph_inputs(proto)
    names = ", ".join(i.name for i in inputs)
    if name is not None:
        inp = next((i for i in inputs if i.name == name), None)
        if inp is None:
            raise ModelError(f"{path} has no input {name!r}; its inputs are {names}: pass one of them to --input")
        if len(inp.type.tensor_type.shape.dim) != 4:
            raise ModelError(f"input {name!r} of {path} is not a 4-D image input; pass one of {names} to --input")
    else:
        images = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 4]
        if not images:
            raise ModelError(f"{path} has no 4-D image input; onnx-nfi needs a CNN taking [N,C,H,W] or [N,H,W,C] images")
        if len(images) > 1:
            raise ModelError(
                f"{path} has several image inputs ({', '.join(i.name for i in images)}); pick the one to analyse "
                "with --input NAME (the other inputs are fed zeros)"
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


def _feed_zeros(proto: onnx.ModelProto, path: Path, image: InputSpec) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """The model with every input but the image one replaced by zeros inside the graph, so that every
    stage sees one input, and the notice naming them. A fixed shape becomes a zero initializer; a
    leading dynamic dimension is taken as the batch and follows the image's (``ConstantOfShape``);
    any other dynamic dimension, or a string input, cannot be filled and is refused."""
    others = [i for i in _graph_inputs(proto) if i.name != image.name]
    if not others:
        return proto, ()
    proto = copy_model(proto)
    nodes: list[onnx.NodeProto] = []
    for value in others:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type != TensorProto.STRING else None
        if dtype is None or not t.HasField("shape") or 0 in dims[1:]:
            shape = "x".join(str(d) if d else "?" for d in dims) if t.HasField("shape") else "unknown"
            raise ModelError(
                f"{path}: input {value.name!r} (shape {shape}) cannot be fed zeros: only the image input (--input) "
                "gets images; export the model with it fixed as a constant"
            )
        if not dims or dims[0]:
            proto.graph.initializer.append(numpy_helper.from_array(np.zeros(dims, dtype), value.name))
        else:
            rest = numpy_helper.from_array(np.array(dims[1:], np.int64), f"{value.name}__rest")
            proto.graph.initializer.append(rest)
            prefix = f"{value.name}__zeros"
            nodes += [
                onnx.helper.make_node("Shape", [image.name], [f"{prefix}_shape"]),
                onnx.helper.make_node("Gather", [f"{prefix}_shape", f"{prefix}_first"], [f"{prefix}_batch"], axis=0),
                onnx.helper.make_node("Concat", [f"{prefix}_batch", rest.name], [f"{prefix}_dims"], axis=0),
                onnx.helper.make_node(
                    "ConstantOfShape", [f"{prefix}_dims"], [value.name],
                    value=numpy_helper.from_array(np.zeros(1, dtype)),
                ),
            ]
            proto.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), f"{prefix}_first"))
    kept = [i for i in proto.graph.input if i.name not in {o.name for o in others}]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    graph_nodes = [*nodes, *proto.graph.node]
    del proto.graph.node[:]
    proto.graph.node.extend(graph_nodes)
    names = ", ".join(o.name for o in others)
    return proto, (f"the model's other input(s) {names} are fed zeros; only {image.name} gets the images (--input)",)
