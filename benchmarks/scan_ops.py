"""What each kind of node the scan adds to the model costs, from onnxruntime's own profiler.

Graphs of the same model, each in its own session (CPU provider, the scan's session options, one
intra-op thread so a kernel's time is its CPU time), run over the same preprocessed batches,
round-robin ``--repeats`` times:
  plain      the unmodified model;
  exact      the scan's instrumented graph with the saturation rule (pre-activation argmax, the tie
             key, an identity conv in front of each Clip);
  plain-rule the graph the rule switches to where no tie at a bound can enter a top-N (every layer
             reduced on its own map);
  flat       the exact graph with the argmax over each flattened map (``Reshape`` to ``[N, C, H*W]``,
             ``ReduceMax`` + ``ArgMax`` over the last axis) instead of the row-first form;
  gmp        a GlobalMaxPool of every layer only (no argmax, no key): the cheapest full read of every map;
  peer       every layer's full map as a graph output (what the naive peer runs; its NumPy work not counted);
  exact+pattern  the exact graph with onnxruntime's memory pattern on (its default; the scan turns it off).
The profiler's kernel times are summed per op kind and per owner (the model's own nodes, the
scan's added nodes, the layout conversions onnxruntime inserts) and scaled to the process's user
CPU time of the same runs, so on a loaded machine the shares stay those of the CPU spent. Process
user and system CPU per image and minor page faults are reported beside them.

Usage: python benchmarks/scan_ops.py [--model M.onnx] [--images N] [--batch-size 32] [--repeats 2]
Writes benchmarks/results/scan_ops-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, write_results  # noqa: E402
from scan import global_max_model  # noqa: E402

import onnx_nfi.graph.instrument as instrument_module  # noqa: E402
from onnx_nfi.data.images import list_images  # noqa: E402
from onnx_nfi.data.loader import iter_batches  # noqa: E402
from onnx_nfi.graph.instrument import instrument, with_outputs  # noqa: E402
from onnx_nfi.graph.layers import Layer  # noqa: E402
from onnx_nfi.graph.load import LoadedModel  # noqa: E402
from onnx_nfi.graph.model_layers import model_layers  # noqa: E402
from onnx_nfi.graph.session import session_options  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402


def graphs(lm: LoadedModel, layers: list[Layer]) -> dict[str, tuple[onnx.ModelProto, bool]]:
    """Each variant's graph and whether its session keeps onnxruntime's memory pattern."""
    exact = instrument(lm, layers)[0]
    plain_rule = instrument(lm, [replace(layer, pre_activation=None, score_from_pre=False) for layer in layers])[0]
    row_first = instrument_module._row_first_reduction
    instrument_module._row_first_reduction = instrument_module._flat_reduction
    try:
        flat = instrument(lm, layers)[0]
    finally:
        instrument_module._row_first_reduction = row_first
    return {
        "plain": (lm.proto, False), "exact": (exact, False), "plain-rule": (plain_rule, False), "flat": (flat, False),
        "gmp": (global_max_model(lm, layers), False), "peer": (with_outputs(lm, [layer.tensor for layer in layers]), False),
        "exact+pattern": (exact, True),
    }


def profiled(proto: onnx.ModelProto, pattern: bool, tensors: list[np.ndarray], folder: str) -> dict[str, float]:
    """One pass over the batches: kernel ms per ``owner op`` and process CPU, per image."""
    options = session_options(proto, 1, spinning=False)
    options.enable_mem_pattern = pattern
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, "profile")
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
    session.run(names, {feed: tensors[0]})  # warm-up: the arena's first allocations
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for tensor in tensors:
        session.run(names, {feed: tensor})
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    path = session.end_profiling()
    events = [e for e in json.loads(Path(path).read_text()) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    os.remove(path)
    events = events[len(events) // (len(tensors) + 1):]  # the warm-up run's
    kinds: Counter[str] = Counter()
    for event in events:
        op = event["args"]["op_name"]
        owner = "added" if "nfi__" in event["name"] or "gmp" in event["name"] else "layout" if op.startswith("Reorder") else "model"
        kinds[f"{owner} {op}"] += event["dur"] / 1000
    n = sum(len(t) for t in tensors)
    user = 1000 * (after.ru_utime - before.ru_utime) / n
    scale = user / (sum(kinds.values()) / n)
    return {
        **{k: v / n * scale for k, v in kinds.items()}, "user CPU": user, "system CPU": 1000 * (after.ru_stime - before.ru_stime) / n,
        "page faults": (after.ru_minflt - before.ru_minflt) / n, "wall": 1000 * wall / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--images", type=int, default=128, help="how many of the benchmark photos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_start = load_average()
    lm, pre = open_model(args.model)
    layers = [info.layer for info in model_layers(lm)]
    files = list_images(demo_photos()).files[: args.images]
    tensors = [b.tensor for b in iter_batches(files, pre, args.batch_size)]
    variants = graphs(lm, layers)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.repeats):
            for name, (proto, pattern) in variants.items():
                runs[name].append(profiled(proto, pattern, tensors, folder))
                print(f"repeat {r + 1}/{args.repeats} {name}: {runs[name][-1]['user CPU']:.2f} user CPU ms/img", file=sys.stderr)
    median = {name: {k: statistics.median(run.get(k, 0.0) for run in rs) for k in set().union(*rs)} for name, rs in runs.items()}
    report(args, median, len(files), len(layers), load_start)


def report(args: argparse.Namespace, median: dict[str, dict[str, float]], n_images: int, n_layers: int, load_start: float) -> None:
    """The table (rows: cost kinds; columns: variants), printed and written to the results folder."""
    totals = ["user CPU", "system CPU", "page faults", "wall"]
    kinds = sorted({k for m in median.values() for k in m if k not in totals}, key=lambda k: -max(m.get(k, 0) for m in median.values()))
    kinds = [k for k in kinds if max(m.get(k, 0) for m in median.values()) >= 0.05]
    rows = [[k, *(f"{m.get(k, 0):.2f}" if k != "page faults" else f"{m.get(k, 0):.0f}" for m in median.values())] for k in kinds + totals]
    table = markdown_table(["CPU ms / image", *median], rows)
    data = {"machine": machine(), "model": args.model.name, "images": n_images, "layers": n_layers, "batch_size": args.batch_size,
            "repeats": args.repeats, "load_average": [load_start, load_average()], "median": median}
    md = (
        f"# scan_ops.py: cost per op kind\n\n{machine_line(data['machine'])}\n\n`{data['model']}`, {n_images} images, "
        f"{n_layers} layers, batch {args.batch_size}, one intra-op thread, median of {args.repeats} round-robin repeats; "
        f"1-minute load average {load_start} at start, {data['load_average'][1]} at end. Kernel times scaled to each "
        f"run's user CPU; wall is ms per image.\n\n{table}\n"
    )
    print(md)
    print(f"written to {write_results('scan_ops', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
