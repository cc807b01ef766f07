"""Benchmark of the analyse scan against plain onnxruntime inference of the same model.

In one run, with the same model, batch size, provider and session options, images/s of:
  (a) plain inference of the unmodified model on already-preprocessed tensors;
  (b) plain inference including decoding and preprocessing (onnx-nfi's loader: background
      OpenCV decode, resize, crop; then normalise), i.e. "inference over an image folder";
  (c) the analyse scan (``onnx_nfi.scan.scanner.scan``: every conv layer, top-N 100), from its
      first batch to its last statistics update (instrumenting and session creation reported apart);
  (d) for diagnosis, the instrumented model's pure inference on the tensors of (a);
  (e) a GlobalMaxPool of every layer only: the bound of any in-graph reduction;
  (f) the naive peer, what a user writes in an afternoon: every layer's full map as a graph
      output, NumPy max and first argmax per channel, ``argpartition`` top-N per neuron, on the
      already-preprocessed tensors of (a) (no decoding, which the scan (c) does);
  (g) the scan before the saturation rule: every layer reduced on its own map, no pre-activation;
  (h) the scan with the exact rule's graph throughout (no layer moved to the plain reduction).
``--model vgg-m-like`` builds the ReLU-only VGG-M-like test net (tests/onnx_builders.py) at 224 px.
Warm-up is excluded; the modes run round-robin ``--repeats`` times, so a busy machine slows all
of them alike, and the median is reported. The goal is (c)/(a) >= 0.9.

Usage: python benchmarks/scan.py [--model M.onnx] [--images DIR] [--batch-size 32] [--repeats 3]
Writes benchmarks/results/scan-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, write_results  # noqa: E402

from onnx_nfi.graph.model_layers import model_layers  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402
from onnx_nfi.data.images import ImageFile, list_images  # noqa: E402
from onnx_nfi.data.loader import iter_batches  # noqa: E402
from onnx_nfi.data.preprocess import Preprocessing  # noqa: E402
from onnx_nfi.graph.instrument import instrument, with_outputs  # noqa: E402
from onnx_nfi.graph.layers import Layer  # noqa: E402
from onnx_nfi.graph.load import LoadedModel  # noqa: E402
from onnx_nfi.graph.session import Runner  # noqa: E402
from onnx_nfi.scan.rule import RuleRunner  # noqa: E402
from onnx_nfi.scan.scanner import scan  # noqa: E402

MODES = {
    "a": "plain inference, preprocessed tensors",
    "b": "plain inference + decode/preprocess",
    "c": "analyse scan (all layers, top-N)",
    "d": "instrumented model, preprocessed tensors",
    "e": "GlobalMaxPool of every layer only (no argmax), preprocessed tensors",
    "f": "naive peer: full maps out, NumPy max/argmax/argpartition, preprocessed tensors",
    "g": "analyse scan before the saturation rule (no pre-activation reductions)",
    "h": "analyse scan, the exact rule's graph throughout",
}


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds and images of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    images = fn()
    return time.perf_counter() - t0, time.process_time() - c0, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0, help="an ONNX file, or vgg-m-like")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the demo photos)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    started, load_start = time.perf_counter(), load_average()
    if str(args.model) == "vgg-m-like":
        args.model = vgg_m_like_model()
    lm, pre = open_model(args.model)
    layers = [info.layer for info in model_layers(lm)]
    files = list_images(args.images or demo_photos()).files
    tensors = [b.tensor for b in iter_batches(files, pre, args.batch_size)]
    n_images = sum(len(t) for t in tensors)
    scan_loop: list[float] = []  # ScanResult.seconds: from the first batch to the last statistics update
    runs, runners = mode_runs(args, lm, layers, pre, files, tensors, scan_loop)
    # warm-up: sessions' first runs allocate their arenas; the scan's session is new each call
    for runner in runners:
        runner.run(tensors[0])
    scan(lm, layers, pre, files[: 2 * args.batch_size], top_n=args.top_n, batch_size=args.batch_size, provider=args.provider)
    samples: dict[str, list[tuple[float, float, int]]] = {m: [] for m in runs}
    setup: list[float] = []
    for r in range(args.repeats):
        for mode, fn in runs.items():
            samples[mode].append(timed(fn))
            if mode in "cgh":  # the scan's own rate; instrumenting the graph and creating its session are reported apart
                wall, cpu, n = samples[mode][-1]
                setup.append(wall - scan_loop[-1])
                samples[mode][-1] = (scan_loop[-1], cpu, n)
            wall, cpu, n = samples[mode][-1]
            print(f"repeat {r + 1}/{args.repeats} ({mode}) {MODES[mode]}: {n / wall:.1f} images/s", file=sys.stderr)

    report(args, samples, setup, n_images, layers, runners[0].provider, load_start, started)


def report(
    args: argparse.Namespace, samples: dict[str, list[tuple[float, float, int]]], setup: list[float], n_images: int,
    layers: list[Layer], provider: str, load_start: float, started: float,
) -> None:
    """Medians, ratios and the table, printed and written to the results folder."""
    rate = {m: statistics.median(n / w for w, _, n in s) for m, s in samples.items()}
    cpu_ms = {m: statistics.median(1000 * c / n for _, c, n in s) for m, s in samples.items()}
    data = {
        "machine": machine(),
        "model": str(args.model.name),
        "images": n_images,
        "batch_size": args.batch_size,
        "top_n": args.top_n,
        "provider": provider,
        "layers": len(layers),
        "neurons": sum(layer.channels for layer in layers),
        "repeats": args.repeats,
        "intra_op_threads": os.environ.get("ONNX_NFI_THREADS", "onnxruntime default"),
        "images_per_s": rate,
        "images_per_s_all": {m: [n / w for w, _, n in s] for m, s in samples.items()},
        "cpu_ms_per_image": cpu_ms,
        "scan_setup_seconds": statistics.median(setup),  # the three scans' together
        "ratio_c_a": rate["c"] / rate["a"],
        "ratio_c_b": rate["c"] / rate["b"],
        "ratio_d_a": rate["d"] / rate["a"],
        "ratio_e_a": rate["e"] / rate["a"],
        "ratio_c_f": rate["c"] / rate["f"],
        "ratio_c_g": rate["c"] / rate["g"],
        "ratio_c_h": rate["c"] / rate["h"],
        "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
    }
    table = markdown_table(
        ["mode", "images/s (median)", "runs (images/s)", "CPU ms / image"],
        [[f"({m}) {MODES[m]}", f"{rate[m]:.1f}", ", ".join(f"{x:.1f}" for x in data["images_per_s_all"][m]),
          f"{cpu_ms[m]:.1f}"] for m in samples],
    )
    md = (
        f"# scan.py: analyse scan vs plain inference\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, {n_images} images ({data['layers']} layers, {data['neurons']} neurons), "
        f"batch {args.batch_size}, top-N {args.top_n}, provider {data['provider']}, "
        f"intra-op threads: {data['intra_op_threads']}; median of {args.repeats} round-robin repeats; "
        f"1-minute load average {load_start} at start, {data['load_average'][1]} at end.\n\n{table}\n\n"
        f"- **(c)/(a) = {data['ratio_c_a']:.2f}** (goal >= 0.9)\n"
        f"- (c)/(b) = {data['ratio_c_b']:.2f}\n"
        f"- (c) excludes instrumenting the model and creating its onnxruntime session, "
        f"{data['scan_setup_seconds']:.2f} s per analysis (median; its CPU time is in the CPU column)\n"
        f"- (d)/(a) = {data['ratio_d_a']:.2f}: the in-graph max/argmax alone\n"
        f"- (e)/(a) = {data['ratio_e_a']:.2f}: bound of any in-graph reduction that reads every layer's maps once\n"
        f"- **(c)/(f) = {data['ratio_c_f']:.2f}**: the scan from image files against the naive peer on "
        f"preprocessed tensors (goal >= 1.5)\n"
        f"- (c)/(g) = {data['ratio_c_g']:.2f}: the scan against itself before the saturation rule (both "
        f"from image files, first batch to last statistics update)\n"
        f"- (c)/(h) = {data['ratio_c_h']:.2f}: the rule's reductions kept only where they can change a result, "
        f"against keeping them everywhere\n"
    )
    print(md)
    print(f"written to {write_results('scan', md, data, args.out)}", file=sys.stderr)


def mode_runs(
    args: argparse.Namespace, lm: LoadedModel, layers: list[Layer], pre: Preprocessing, files: list[ImageFile],
    tensors: list[np.ndarray], scan_loop: list[float],
) -> tuple[dict[str, Callable[[], int]], list[Runner]]:
    """Each mode as a call returning its images (scans add their seconds to ``scan_loop``), and the sessions."""
    n_images = sum(len(t) for t in tensors)
    plain = Runner(lm.proto, args.provider)
    instrumented = Runner(instrument(lm, layers)[0], args.provider)
    max_only = Runner(global_max_model(lm, layers), args.provider)
    naive = Runner(with_outputs(lm, [layer.tensor for layer in layers]), args.provider)

    def run_a() -> int:
        for t in tensors:
            plain.run(t)
        return n_images

    def run_b() -> int:
        done = 0
        for batch in iter_batches(files, pre, args.batch_size):
            plain.run(batch.tensor)
            done += len(batch.ids)
        return done

    def run_c() -> int:
        result = scan(lm, layers, pre, files, top_n=args.top_n, batch_size=args.batch_size, provider=args.provider)
        scan_loop.append(result.seconds)
        return len(result.images)

    def run_d() -> int:
        for t in tensors:
            instrumented.run(t)
        return n_images

    def run_e() -> int:
        for t in tensors:
            max_only.run(t)
        return n_images

    def run_f() -> int:
        return naive_peer(naive, tensors, layers, args.top_n)

    before_rule = [replace(layer, pre_activation=None, score_from_pre=False) for layer in layers]

    def run_g() -> int:
        result = scan(lm, before_rule, pre, files, top_n=args.top_n, batch_size=args.batch_size, provider=args.provider)
        scan_loop.append(result.seconds)
        return len(result.images)

    def run_h() -> int:
        consider = RuleRunner.consider
        RuleRunner.consider = lambda self, topns: None  # never leaves the exact graph
        try:
            result = scan(lm, layers, pre, files, top_n=args.top_n, batch_size=args.batch_size, provider=args.provider)
        finally:
            RuleRunner.consider = consider
        scan_loop.append(result.seconds)
        return len(result.images)

    runs = {"a": run_a, "b": run_b, "c": run_c, "d": run_d, "e": run_e, "f": run_f, "g": run_g, "h": run_h}
    return runs, [plain, instrumented, max_only, naive]


def vgg_m_like_model() -> Path:
    """The ReLU-only VGG-M-like test net, saved to a temporary file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from onnx_builders import vgg_m_like_net

    path = Path(tempfile.mkdtemp(prefix="nfi-bench-")) / "vgg_m_like.onnx"
    onnx.save(vgg_m_like_net().model, str(path))
    return path


def naive_peer(runner: Runner, tensors: list[np.ndarray], layers: list[Layer], top_n: int) -> int:
    """Per neuron the top-N images by spatial max, with the first argmax's location: full maps out, NumPy after."""
    best = {layer.tensor: np.full((layer.channels, 0), -np.inf, np.float32) for layer in layers}
    ids = {layer.tensor: np.zeros((layer.channels, 0), np.int64) for layer in layers}
    where = {layer.tensor: np.zeros((layer.channels, 0), np.int64) for layer in layers}
    seen = 0
    for t in tensors:
        maps = runner.run(t)
        batch_ids = np.broadcast_to(np.arange(seen, seen + len(t)), (1, len(t)))
        for layer in layers:
            flat = maps[layer.tensor].reshape(len(t), layer.channels, -1)
            scores, locations = flat.max(axis=2).T, flat.argmax(axis=2).T  # [C, B]
            s = np.concatenate([best[layer.tensor], scores], axis=1)
            i = np.concatenate([ids[layer.tensor], np.broadcast_to(batch_ids, scores.shape)], axis=1)
            w = np.concatenate([where[layer.tensor], locations], axis=1)
            if s.shape[1] > top_n:
                keep = np.argpartition(-s, top_n - 1, axis=1)[:, :top_n]
                s, i, w = (np.take_along_axis(a, keep, axis=1) for a in (s, i, w))
            best[layer.tensor], ids[layer.tensor], where[layer.tensor] = s, i, w
        seen += len(t)
    return seen


def global_max_model(lm: LoadedModel, layers: list[Layer]) -> onnx.ModelProto:
    """The model with only a GlobalMaxPool per layer as outputs: no argmax, the cheapest full read of every map."""
    proto = onnx.ModelProto.FromString(lm.proto.SerializeToString())
    del proto.graph.output[:]
    for i, layer in enumerate(layers):
        proto.graph.node.append(helper.make_node("GlobalMaxPool", [layer.tensor], [f"gmp{i}"]))
        proto.graph.output.append(helper.make_tensor_value_info(f"gmp{i}", TensorProto.FLOAT, ["batch", layer.channels, 1, 1]))
    return with_outputs(LoadedModel(proto, lm.path, lm.sha256, lm.input), [o.name for o in proto.graph.output])


if __name__ == "__main__":
    main()
