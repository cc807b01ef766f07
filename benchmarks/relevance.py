"""Benchmark of relevance by ablation: time per neuron against naive ablation and one plain inference.

In one run, on the same preprocessed image tensors, model and provider (one thread unless
ONNX_NFI_THREADS says otherwise), for each layer:
  (a) plain inference of the unmodified model on the N images (once): the unit of cost;
  (b) onnx-nfi: the model cut at the layer (``graph.cut``), the upstream part run once, the
      baseline and every (image, channel) ablation run through the downstream graph
      (``neurons.ablation.ablate_layer``), from the cut to the last ablation;
  (c) naive: one edited graph per channel (the channel multiplied by a constant 0 mask), a session
      made for it and the N images run through the whole model; measured on ``--naive-channels``
      channels (every channel would take hours on a deep layer) and reported per channel;
  (d) a mask-input loop: one edited graph with the mask as an input, the whole model run once per
      channel (no session per channel), on the same channels as (c).
Reported: wall and CPU seconds per neuron, and per neuron in units of (a), wall and CPU (on a loaded
machine the CPU ratio is the steadier one).

Usage: python benchmarks/relevance.py [--layers conv49,conv6,conv2] [--images 16] [--naive-channels 8]
Writes benchmarks/results/relevance-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, write_results  # noqa: E402

from onnx_nfi.data.images import list_images  # noqa: E402
from onnx_nfi.data.loader import iter_batches  # noqa: E402
from onnx_nfi.graph.cut import cut_at, outputs_probabilities  # noqa: E402
from onnx_nfi.graph.layers import find_conv_layers  # noqa: E402
from onnx_nfi.graph.session import Runner, session_options  # noqa: E402
from onnx_nfi.neurons.ablation import ablate_layer, channel_fill, pairs_per_run, probabilities  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def masked(proto: onnx.ModelProto, tensor: str, mask: np.ndarray | None) -> onnx.ModelProto:
    """The model with ``tensor`` multiplied by a mask before its readers: a constant (``mask``) or an input."""
    edited = onnx.ModelProto.FromString(proto.SerializeToString())
    g = edited.graph
    for node in g.node:
        node.input[:] = [f"{tensor}__m" if i == tensor else i for i in node.input]
    at = next(k for k, n in enumerate(g.node) if tensor in n.output) + 1
    g.node.insert(at, helper.make_node("Mul", [tensor, "mask"], [f"{tensor}__m"]))
    if mask is None:
        g.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, None, 1, 1]))
    else:
        g.initializer.append(numpy_helper.from_array(mask.reshape(1, -1, 1, 1), "mask"))
    return edited


def product(lm, tensor: str, x: np.ndarray) -> int:  # noqa: ANN001
    """onnx-nfi's pass over one layer (b); returns the pairs run."""
    cut = cut_at(lm, tensor)
    up = Runner(cut.upstream, "cpu")
    outs = up.run(x)
    cache = {name: outs[name] for name in cut.crossing}
    down = Runner(cut.downstream, "cpu")

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return down.session.run([cut.output], feeds)[0]

    soft = outputs_probabilities(lm)
    chunk = pairs_per_run(cache)
    base = probabilities(np.concatenate([run({k: v[lo:lo + chunk] for k, v in cache.items()}) for lo in range(0, len(x), chunk)]), soft)
    result = ablate_layer(run, cache, tensor, channel_fill(cache[tensor], "zero"), base.argmax(axis=1), base, soft, chunk=chunk)
    return result.pairs_run


def naive(proto: onnx.ModelProto, tensor: str, channels: int, x: np.ndarray, units: list[int]) -> None:
    """(c): a graph and a session per channel, the whole model run on the images."""
    name = proto.graph.input[0].name
    for c in units:
        mask = np.ones(channels, np.float32)
        mask[c] = 0
        s = ort.InferenceSession(masked(proto, tensor, mask).SerializeToString(), session_options(proto), providers=["CPUExecutionProvider"])
        s.run(None, {name: x})


def mask_loop(proto: onnx.ModelProto, tensor: str, channels: int, x: np.ndarray, units: list[int]) -> None:
    """(d): one session with the mask as an input, the whole model run once per channel."""
    name = proto.graph.input[0].name
    s = ort.InferenceSession(masked(proto, tensor, None).SerializeToString(), session_options(proto), providers=["CPUExecutionProvider"])
    for c in units:
        mask = np.ones(channels, np.float32)
        mask[c] = 0
        s.run(None, {name: x, "mask": mask.reshape(1, -1, 1, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--layers", default="conv49,conv6,conv2")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--naive-channels", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lm, pre = open_model(args.model)
    files = list_images(demo_photos(), "none").files[:: max(1, 324 // args.images)][: args.images]
    x = np.concatenate([b.tensor for b in iter_batches(files, pre, 32)])
    plain = ort.InferenceSession(lm.proto.SerializeToString(), session_options(lm.proto), providers=["CPUExecutionProvider"])
    plain.run(None, {lm.input.name: x})  # warm-up
    plain_wall, plain_cpu = timed(lambda: plain.run(None, {lm.input.name: x}))
    layers = {layer.alias: layer for layer in find_conv_layers(lm)}
    rows, data = [], {"machine": machine(), "load_start": load_average(), "images": len(x), "plain_wall": plain_wall, "plain_cpu": plain_cpu, "layers": {}}
    for alias in args.layers.split(","):
        layer = layers[alias]
        units = list(range(min(args.naive_channels, layer.channels)))
        pairs: list[int] = []
        b = timed(lambda: pairs.append(product(lm, layer.tensor, x)))
        c = timed(lambda: naive(lm.proto, layer.tensor, layer.channels, x, units))
        d = timed(lambda: mask_loop(lm.proto, layer.tensor, layer.channels, x, units))
        per = {"onnx-nfi": [v / layer.channels for v in b], "naive graph per channel": [v / len(units) for v in c],
               "mask-input loop": [v / len(units) for v in d]}
        data["layers"][alias] = {"channels": layer.channels, "pairs_run": pairs[0], "per_neuron": per, "naive_channels": len(units)}
        for mode, (wall, cpu) in per.items():
            rows.append([alias, layer.channels, mode, f"{wall * 1e3:.1f}", f"{cpu * 1e3:.1f}", f"{wall / plain_wall:.3f}",
                         f"{cpu / plain_cpu:.3f}"])
    data["load_end"] = load_average()
    table = markdown_table(["layer", "channels", "method", "wall ms / neuron", "CPU ms / neuron", "× plain (wall)", "× plain (CPU)"], rows)
    md = (f"# Relevance by ablation, {args.model.name}, {len(x)} images\n\n{machine_line(data['machine'])} "
          f"Load average {data['load_start']} -> {data['load_end']}.\n\nPlain inference of the {len(x)} images: "
          f"{plain_wall * 1e3:.1f} ms wall, {plain_cpu * 1e3:.1f} ms CPU.\n\n{table}\n")
    print(md)
    print("wrote", write_results("relevance", md, data, args.out))


if __name__ == "__main__":
    main()
