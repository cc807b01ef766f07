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
The modes run round-robin ``--repeats`` times, so a busy machine slows all of them alike, and the
median is reported. Each run goes in a fresh Python process, timed after its own warm-up (its
session's first run, or a two-batch scan), as a user runs a tool or a script: in one process the
modes run later paid for the sessions and arenas of those before them (the scan 5 ms of CPU an
image more); ``--one-process`` runs them all in this one, warmed up once. The goal is (c)/(a) >= 0.9.

Usage: python benchmarks/scan.py [--model M.onnx] [--images DIR] [--batch-size 32] [--repeats 3]
                                 [--modes abcdefgh] [--one-process]
Writes benchmarks/results/scan-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0, help="an ONNX file, or vgg-m-like")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the demo photos)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--modes", default="".join(MODES), help="which modes to run, e.g. acf (default: all)")
    parser.add_argument("--warm-passes", type=int, default=0,
                        help="untimed full passes over the images before each timed run (steady state)")
    parser.add_argument("--one-process", action="store_true",
                        help="run every mode in this process instead of each run in a fresh one")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one mode's timed run, as JSON on stdout
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if str(args.model) == "vgg-m-like":
        args.model = vgg_m_like_model()
    if args.child:
        print(json.dumps(child_run(args, args.child)))
        return
    started, load_start = time.perf_counter(), load_average()
    modes = [m for m in MODES if m in args.modes]
    samples: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}
    setup: list[float] = []
    in_process = InProcess(args, modes) if args.one_process else None
    for r in range(args.repeats):
        for mode in modes:
            run = in_process.run(mode) if in_process else fresh_process_run(args, mode)
            samples[mode].append((run["seconds"], run["cpu"], run["images"]))
            if "setup" in run:
                setup.append(run["setup"])
            print(f"repeat {r + 1}/{args.repeats} ({mode}) {MODES[mode]}: {run['images'] / run['seconds']:.1f} images/s",
                  file=sys.stderr)
    provider = in_process.provider if in_process else run["provider"]
    report(args, samples, setup, provider, load_start, started)


class InProcess:
    """Every mode's sessions in this process, warmed up once (``--one-process``)."""

    def __init__(self, args: argparse.Namespace, modes: list[str]) -> None:
        self.setting = Setting.load(args)
        self.runs, runners = mode_runs(args, self.setting)
        for runner in runners.values():
            runner.run(self.setting.tensors[0])
        warm_scan(args, self.setting)
        for _ in range(args.warm_passes):
            for mode in modes:
                self.runs[mode]()
        self.provider = runners["a"].provider

    def run(self, mode: str) -> dict[str, Any]:
        return timed(self.runs[mode], self.setting.scan_loop)


def fresh_process_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One timed run of ``mode`` in a new Python process (after its own warm-up), as users run a tool:
    no other mode's sessions, arenas or caches in the same process."""
    command = [sys.executable, __file__, "--child", mode, "--model", str(args.model), "--batch-size", str(args.batch_size),
               "--top-n", str(args.top_n), "--provider", args.provider, "--warm-passes", str(args.warm_passes)]
    if args.images:
        command += ["--images", str(args.images)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"mode ({mode}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Warm up ``mode`` (its session's first run, or a two-batch scan; then ``--warm-passes`` whole
    untimed runs), then time one run of it."""
    setting = Setting.load(args)
    runs, runners = mode_runs(args, setting, only=mode)
    for runner in runners.values():
        runner.run(setting.tensors[0])
    provider = warm_scan(args, setting) if mode in SCANS else runners[mode].provider
    for _ in range(args.warm_passes):
        runs[mode]()
    return {**timed(runs[mode], setting.scan_loop), "provider": provider}


def warm_scan(args: argparse.Namespace, setting: Setting) -> str:
    """A two-batch scan (the first one of a process loads and compiles more); the provider it ran on."""
    return scan(setting.lm, setting.layers, setting.pre, setting.files[: 2 * args.batch_size], top_n=args.top_n,
                batch_size=args.batch_size, provider=args.provider).provider


def timed(fn: Callable[[], int], scan_loop: list[float]) -> dict[str, Any]:
    """Wall seconds, process CPU seconds and images of one call; a scan's wall is its own loop
    (first batch to last statistics update), instrumenting and session creation reported apart."""
    t0, c0, loops = time.perf_counter(), time.process_time(), len(scan_loop)
    images = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if len(scan_loop) > loops:
        return {"seconds": scan_loop[-1], "cpu": cpu, "images": images, "setup": wall - scan_loop[-1]}
    return {"seconds": wall, "cpu": cpu, "images": images}


#: (numerator, denominator, bold, what the ratio says)
RATIOS = (
    ("c", "a", True, "(goal >= 0.9)"),
    ("c", "b", False, ""),
    ("d", "a", False, ": the in-graph max/argmax alone"),
    ("e", "a", False, ": bound of any in-graph reduction that reads every layer's maps once"),
    ("c", "f", True, ": the scan from image files against the naive peer on preprocessed tensors (goal >= 1.5)"),
    ("c", "g", False, ": the scan against itself before the saturation rule (both from image files, first batch "
                      "to last statistics update)"),
    ("c", "h", False, ": the rule's reductions kept only where they can change a result, against keeping them everywhere"),
)


def report(
    args: argparse.Namespace, samples: dict[str, list[tuple[float, float, int]]], setup: list[float], provider: str,
    load_start: float, started: float,
) -> None:
    """Medians, ratios and the table, printed and written to the results folder."""
    lm, _ = open_model(args.model)
    layers = [info.layer for info in model_layers(lm)]
    n_images = next(iter(samples.values()))[0][2]
    rate = {m: statistics.median(n / w for w, _, n in s) for m, s in samples.items()}
    cpu_ms = {m: statistics.median(1000 * c / n for _, c, n in s) for m, s in samples.items()}
    ratios = {f"{a}_{b}": rate[a] / rate[b] for a, b, _, _ in RATIOS if a in rate and b in rate}
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
        "processes": "one for all modes" if args.one_process else "a fresh one for each run",
        "warm_passes": args.warm_passes,
        "intra_op_threads": os.environ.get("ONNX_NFI_THREADS", "onnxruntime default"),
        "images_per_s": rate,
        "images_per_s_all": {m: [n / w for w, _, n in s] for m, s in samples.items()},
        "cpu_ms_per_image": cpu_ms,
        "cpu_ms_per_image_all": {m: [1000 * c / n for _, c, n in s] for m, s in samples.items()},
        "scan_setup_seconds": statistics.median(setup) if setup else None,  # the scans' together
        **{f"ratio_{k}": v for k, v in ratios.items()},
        "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
    }
    table = markdown_table(
        ["mode", "images/s (median)", "runs (images/s)", "CPU ms / image (median)"],
        [[f"({m}) {MODES[m]}", f"{rate[m]:.1f}", ", ".join(f"{x:.1f}" for x in data["images_per_s_all"][m]),
          f"{cpu_ms[m]:.1f}"] for m in samples],
    )
    lines = [
        f"- {'**' if bold else ''}({a})/({b}) = {ratios[f'{a}_{b}']:.2f}{'**' if bold else ''}{' ' if says.startswith('(') else ''}{says}"
        for a, b, bold, says in RATIOS if f"{a}_{b}" in ratios
    ]
    if setup:
        lines.insert(2, f"- the scans' rates exclude instrumenting the model and creating its onnxruntime session, "
                        f"{data['scan_setup_seconds']:.2f} s per analysis (median; its CPU time is in the CPU column)")
    md = (
        f"# scan.py: analyse scan vs plain inference\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, {n_images} images ({data['layers']} layers, {data['neurons']} neurons), "
        f"batch {args.batch_size}, top-N {args.top_n}, provider {data['provider']}, "
        f"intra-op threads: {data['intra_op_threads']}; median of {args.repeats} round-robin repeats, "
        f"{data['processes']}, {args.warm_passes} untimed whole passes first; 1-minute load average {load_start} at start, {data['load_average'][1]} at end."
        f"\n\n{table}\n\n" + "\n".join(lines) + "\n"
    )
    print(md)
    print(f"written to {write_results('scan', md, data, args.out)}", file=sys.stderr)


@dataclass
class Setting:
    """What every mode runs on: the model, its layers, the image files and their preprocessed batches."""

    lm: LoadedModel
    pre: Preprocessing
    layers: list[Layer]
    files: list[ImageFile]
    tensors: list[np.ndarray]
    scan_loop: list[float] = field(default_factory=list)  # ScanResult.seconds of each scan run

    @classmethod
    def load(cls, args: argparse.Namespace) -> Setting:
        lm, pre = open_model(args.model)
        files = list_images(args.images or demo_photos()).files
        tensors = [b.tensor for b in iter_batches(files, pre, args.batch_size)]
        return cls(lm, pre, [info.layer for info in model_layers(lm)], files, tensors)


#: The modes that run the analyse scan (a new session each, as each analysis has).
SCANS = "cgh"


def mode_runs(
    args: argparse.Namespace, setting: Setting, only: str | None = None
) -> tuple[dict[str, Callable[[], int]], dict[str, Runner]]:
    """Each mode as a call returning its images (scans add their seconds to ``setting.scan_loop``), and
    the sessions of the modes that run one (``only``: just that mode's)."""
    lm, pre, layers, files, tensors = setting.lm, setting.pre, setting.layers, setting.files, setting.tensors
    n_images = sum(len(t) for t in tensors)
    graphs = {
        "a": lambda: lm.proto, "b": lambda: lm.proto, "d": lambda: instrument(lm, layers)[0],
        "e": lambda: global_max_model(lm, layers), "f": lambda: with_outputs(lm, [layer.tensor for layer in layers]),
    }
    runners = {m: Runner(graph(), args.provider) for m, graph in graphs.items() if only in (None, m) and m != "b"}
    if only in (None, "b"):
        runners["b"] = runners.get("a") or Runner(lm.proto, args.provider)

    def each_batch(mode: str) -> Callable[[], int]:
        def run() -> int:
            for t in tensors:
                runners[mode].run(t)
            return n_images
        return run

    def run_b() -> int:
        done = 0
        for batch in iter_batches(files, pre, args.batch_size):
            runners["b"].run(batch.tensor)
            done += len(batch.ids)
        return done

    def scan_of(scanned: list[Layer]) -> int:
        result = scan(lm, scanned, pre, files, top_n=args.top_n, batch_size=args.batch_size, provider=args.provider)
        setting.scan_loop.append(result.seconds)
        return len(result.images)

    def run_h() -> int:
        consider = RuleRunner.consider
        RuleRunner.consider = lambda self, topns: None  # never leaves the exact graph
        try:
            return scan_of(layers)
        finally:
            RuleRunner.consider = consider

    before_rule = [replace(layer, pre_activation=None, score_from_pre=False) for layer in layers]
    runs = {
        "a": each_batch("a"), "b": run_b, "c": lambda: scan_of(layers), "d": each_batch("d"), "e": each_batch("e"),
        "f": lambda: naive_peer(runners["f"], tensors, layers, args.top_n), "g": lambda: scan_of(before_rule), "h": run_h,
    }
    return runs, runners


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
