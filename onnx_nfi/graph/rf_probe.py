"""Empirical receptive fields: perturb input rows/columns, see which output rows/columns change.

This is the check on the analytic walk (rf_walk.py) demanded by docs/method.md §3 (nefesi's analytic windows
drift by a pixel per strided layer in ResNet/MobileNet-style nets; a probe catches that). The
requested tensors become the outputs of a copy of the graph cut down to what they need, run with
onnxruntime on CPU on copies of a random base image with one input row (column) moved, all rows of a
chunk in one batch. Output row ``i`` belongs to the window of input row ``r`` if any value in row
``i`` (any channel, any column) is not bit for bit the one of the unmoved image in a batch of the
same size. ReLUs and max pools can hide a change, so the influence is the union over passes (base
images, each moved up and down). Float32 rounding hides one too: a border pixel of a deep window that
reaches a large value along few paths may move it by less than one step (constant-weight models).

Only bookkeeping comes from the analytic walk: which tensor axes hold image y and x, and which
tensors are global-pooling summaries. Those summaries (the squeeze of a squeeze-excitation block)
are held at their base-image values, so the probe measures the window that matters for a neuron's
location; the decision and its reasons are in rf_walk.py. A tensor that then depends on no
pixel at all (a classifier head after global pooling) is measured again with the summaries free.

The measurement is of windows clipped to the image; ``outside_windows`` lists the measured pixels an
analytic window leaves out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors

from onnx_nfi.graph.receptive_field import GraphTrace
from onnx_nfi.graph.proto import BATCH_DIM, exposing, shape_table, with_input_size
from onnx_nfi.graph.rf_walk import trace_graph
from onnx_nfi.graph.session import session_options

CHUNK = 32  # perturbed images per onnxruntime call (outputs of all probed tensors are held per chunk)
#: Bytes the probed outputs of one chunk may take: deep, wide models (VGG19: ~60 MB of maps per image)
#: get smaller chunks instead of gigabytes of held outputs.
CHUNK_BYTES = 256 * 2**20

# per tensor: (y windows, x windows), each an (n, 2) int array of clipped half-open input intervals
Windows = tuple[np.ndarray, np.ndarray]


def measure_windows(
    model: onnx.ModelProto,
    input_name: str,
    input_hw: tuple[int, int],
    layout: str,
    tensors: Sequence[str],
    seed: int = 0,
    freeze_summaries: bool = True,
    passes: int = 4,
) -> dict[str, Windows]:
    """Per tensor and image axis, the clipped input interval that influences each output index.

    A tensor with no image axes (after global pooling, Gemm…) has one index per axis. With
    ``freeze_summaries=False`` global-pooling summaries respond to the perturbation too.
    Each of ``passes`` perturbs every row and column once: pass ``2k`` adds a random delta to base
    image ``k``, pass ``2k + 1`` subtracts it (cost: ``passes·(H + W)`` images).
    """
    trace = trace_graph(model, input_name, input_hw, layout)
    prober = _Prober(model, trace, input_name, input_hw, layout, seed, passes)
    frozen = bool(trace.summaries) and freeze_summaries
    result = prober.measure(list(tensors), frozen)
    blind = [name for name, (wy, wx) in result.items() if not (wy[:, 1] > wy[:, 0]).any()]
    if frozen and blind:
        result.update(prober.measure(blind, frozen=False))
    return result


def outside_windows(analytic: Windows, measured: Windows) -> tuple[list[str], bool]:
    """Measured pixels outside the analytic (theoretical) windows, and whether any measured window is
    strictly smaller than its analytic one.

    The analytic field is every pixel a neuron *can* see; the probe measures the pixels it *does*
    respond to with these weights (the effective field): zero or constant weights, saturated units
    and max pools shrink it. Only an influencing pixel outside the analytic window proves the
    analytic field wrong; a smaller measured window is a property of the weights.
    """
    problems, smaller = [], False
    for axis, a, m in zip("yx", analytic, measured):
        hit = m[:, 1] > m[:, 0]
        out = hit & ((m[:, 0] < a[:, 0]) | (m[:, 1] > a[:, 1]))
        for i in np.flatnonzero(out):
            problems.append(
                f"{axis}[{i}]: measured [{m[i, 0]}, {m[i, 1]}) reaches outside the analytic [{a[i, 0]}, {a[i, 1]})"
            )
        smaller = smaller or bool((~out & ((m != a).any(axis=1))).any())
    return problems, smaller


# ----------------------------------------------------------------------------------- measurement
class _Prober:
    """Runs the perturbed batches; one onnxruntime session per (tensor set, frozen) request."""

    def __init__(
        self,
        model: onnx.ModelProto,
        trace: GraphTrace,
        input_name: str,
        input_hw: tuple[int, int],
        layout: str,
        seed: int,
        passes: int,
    ):
        self.model, self.trace, self.input_name = model, trace, input_name
        self.input_hw, self.layout = tuple(input_hw), layout
        self.y_axis, self.x_axis = (2, 3) if layout == "NCHW" else (1, 2)
        value = next(v for v in model.graph.input if v.name == input_name)
        c_axis = 1 if layout == "NCHW" else 3
        channels = value.type.tensor_type.shape.dim[c_axis].dim_value or 3
        shape = [1, 0, 0, 0]
        shape[c_axis], shape[self.y_axis], shape[self.x_axis] = channels, *self.input_hw
        self.dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        rng = np.random.default_rng(seed)
        # passes: base images, each perturbed up then down; a ReLU or max pool rarely hides a change from all
        bases = [rng.uniform(0.0, 1.0, shape).astype(self.dtype) for _ in range((passes + 1) // 2)]
        deltas = [rng.uniform(0.5, 1.0, shape).astype(self.dtype) for _ in bases]
        self.passes = [(bases[k // 2], deltas[k // 2], 1 if k % 2 == 0 else -1) for k in range(passes)]
        self.batched = True
        self.chunk = CHUNK  # set per measured tensor set (see _chunk)

    def measure(self, tensors: list[str], frozen: bool) -> dict[str, Windows]:
        session, summaries = self._session(tensors, frozen)
        self.chunk = self._chunk(tensors)
        influence = {name: [None, None] for name in tensors}
        for base, delta, sign in self.passes:
            fixed = self._summaries(base, summaries) if frozen else {}
            # each batch is compared with unperturbed copies of the same batch size, bit for bit: a kernel
            # whose rounding depends on the batch size then cannot pass for an influence (or hide one)
            references: dict[int, list[np.ndarray]] = {}
            for axis_index, image_axis in enumerate((self.y_axis, self.x_axis)):
                for rows, batch in self._perturbed(base, sign * delta, image_axis):
                    if len(rows) not in references:
                        references[len(rows)] = self._run(session, np.repeat(base, len(rows), axis=0), fixed)
                    outs = self._run(session, batch, fixed)
                    for name, out, ref in zip(tensors, outs, references[len(rows)]):
                        changed = self._changed_rows(name, _differs(out, ref), axis_index)
                        if influence[name][axis_index] is None:
                            shape = (self.input_hw[axis_index], changed.shape[1])
                            influence[name][axis_index] = np.zeros(shape, bool)
                        influence[name][axis_index][rows] |= changed
        return {name: (_windows(inf[0]), _windows(inf[1])) for name, inf in influence.items()}

    def _chunk(self, tensors: list[str]) -> int:
        """Images per call such that the outputs, their references and differences fit ``CHUNK_BYTES``."""
        shapes = shape_table(onnx.shape_inference.infer_shapes(self._sized()).graph)
        per_image = sum(4 * math.prod(d or 1 for d in shapes.get(name, [1])[1:]) for name in tensors)
        return max(1, min(CHUNK, CHUNK_BYTES // max(1, 3 * per_image)))

    def _changed_rows(self, name: str, diff: np.ndarray, axis_index: int) -> np.ndarray:
        """``(batch, n)``: which output indices along image axis ``axis_index`` have a changed value."""
        axes = self.trace.spatial_axes(name)
        if axes is None:
            return diff.reshape(len(diff), -1).any(axis=1)[:, None]
        keep = axes[axis_index]
        return diff.any(axis=tuple(a for a in range(1, diff.ndim) if a != keep))  # no copy of the moved axes

    def _perturbed(
        self, base: np.ndarray, delta: np.ndarray, image_axis: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of copies of ``base``, copy ``k`` with input row ``rows[k]`` moved by ``delta``."""
        extent = base.shape[image_axis]
        for start in range(0, extent, self.chunk):
            rows = np.arange(start, min(start + self.chunk, extent))
            batch = np.repeat(base, len(rows), axis=0)
            moved = np.moveaxis(batch, image_axis, 1)  # view: (batch, rows, …)
            moved[np.arange(len(rows)), rows] += np.moveaxis(delta, image_axis, 1)[0, rows]
            yield rows, batch

    def _run(self, session: ort.InferenceSession, batch: np.ndarray, fixed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for a batch; image by image if the graph fixes its batch (e.g. ``Reshape`` to ``[1, -1]``)."""
        if self.batched and len(batch) > 1:
            try:
                return session.run(None, self._feeds(batch, fixed))
            except (_ort_errors.RuntimeException, _ort_errors.Fail, _ort_errors.InvalidArgument):
                self.batched = False
        runs = [session.run(None, self._feeds(batch[k : k + 1], fixed)) for k in range(len(batch))]
        return [np.concatenate(outs) for outs in zip(*runs)]

    def _feeds(self, batch: np.ndarray, fixed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {self.input_name: batch}
        feeds.update({name: np.repeat(value, len(batch), axis=0) for name, value in fixed.items()})
        return feeds

    def _summaries(self, base: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        session = _session(exposing(self._sized(), names))
        return dict(zip(names, session.run(None, {self.input_name: base})))

    def _session(self, tensors: list[str], frozen: bool) -> tuple[ort.InferenceSession, list[str]]:
        model = self._sized()
        summaries: list[str] = []
        if frozen:
            summaries = list(self.trace.summaries)
            model = _frozen(model, summaries)
        return _session(exposing(model, tensors)), summaries

    def _sized(self) -> onnx.ModelProto:
        """The model with a symbolic batch and the probe's H, W on the image input."""
        return with_input_size(self.model, self.input_name, self.layout, self.input_hw)


def _frozen(model: onnx.ModelProto, summaries: Sequence[str]) -> onnx.ModelProto:
    """The model with each summary-producing node removed and its output fed as a graph input."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}  # a summary may be an output
    keep = [node for node in model.graph.node if not set(node.output) & set(summaries)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for name in summaries:
        value = onnx.ValueInfoProto()
        value.CopyFrom(values[name])
        dims = value.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
        model.graph.input.append(value)
    return model


def _needed_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model (edited in place) without the nodes its outputs do not depend on.

    onnxruntime runs every node of a graph, whether its result is asked for or not: a classifier
    head after the probed layers costs time on every perturbed image (most of VGG19's, whose
    constant-of-shape weights are rebuilt on each run), and a ``Reshape`` to ``[1, -1]`` there
    would refuse the batch of perturbed images that the probed layers take.
    """
    needed = {value.name for value in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if needed & set(node.output):
            keep.append(node)
            needed.update(node.input)
            for graph in (g for a in node.attribute for g in [a.g, *a.graphs]):  # If/Loop bodies read outer names
                needed.update(name for inner in graph.node for name in inner.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    model = _needed_only(model)
    options = session_options(model)
    # a batch the graph refuses (Reshape to [1, -1]) is retried image by image: the runtime's own red
    # error line about the refused batch would be noise, the exception alone says it
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _differs(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Where two outputs are not bit for bit the same (a NaN equals the same NaN; ±0 differ, as only a
    changed input can flip the sign of a zero)."""
    unsigned = np.dtype(f"u{out.dtype.itemsize}")
    return out.view(unsigned) != ref.view(unsigned)


def _windows(influence: np.ndarray) -> np.ndarray:
    """``(n_out, 2)`` half-open span of influencing input rows per output index; ``(0, 0)`` if none."""
    hit = influence.any(axis=0)
    first = np.argmax(influence, axis=0)
    last = influence.shape[0] - np.argmax(influence[::-1], axis=0)
    return np.stack([np.where(hit, first, 0), np.where(hit, last, 0)], axis=1)
