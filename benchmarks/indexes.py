"""Benchmark of the index passes against the scan, for one model on one image folder.

In one run: the analyse scan (every conv layer, top-N 100), then each named index pass alone as
``analyze`` runs it after the scan (the union of all neurons' top images, a chunk at a time:
decoded, forward passes, formulas), each timed against that same scan (paired). Wall and CPU
time (this process and its threads) are reported, per image too, since the machine may be shared.

Usage: python benchmarks/indexes.py [--model M.onnx] [--images DIR] [--repeats 1] [--indexes color color_names]
Writes benchmarks/results/indexes-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, write_results  # noqa: E402

from onnx_nfi.config import AnalyzeConfig  # noqa: E402
from onnx_nfi.data.images import list_images  # noqa: E402
from onnx_nfi.graph.model_layers import model_layers  # noqa: E402
from onnx_nfi.pipeline.features import FeatureWork, compute_features  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402
from onnx_nfi.scan.scanner import scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the demo photos)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--indexes", nargs="+", default=["color", "color_names"],
                        help="index passes to time, each alone against the same scan")
    args = parser.parse_args()

    config = AnalyzeConfig(provider=args.provider, nf=False)
    started, load_start = time.perf_counter(), load_average()
    lm, pre = open_model(args.model)
    infos = model_layers(lm)
    files = list_images(args.images or demo_photos()).files
    rows = []
    for r in range(args.repeats):
        c0 = time.process_time()
        result = scan(lm, [i.layer for i in infos], pre, files, top_n=config.top_n, batch_size=config.batch_size,
                      provider=config.provider)
        scan_cpu = time.process_time() - c0
        topns = {tensor: st.topn for tensor, st in result.stats.items()}
        paths = {img.image_id: Path(img.path) for img in result.images}
        for index in args.indexes:
            work = FeatureWork.of(lm, pre, infos, topns, paths, {}, replace(config, indexes=(index,)))
            t0, c0 = time.perf_counter(), time.process_time()
            compute_features(work, None)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"index": index, "scan_s": result.seconds, "scan_cpu_s": scan_cpu, "pass_s": wall, "pass_cpu_s": cpu,
                         "images": len(result.images), "top_images": len(work.paths)})
            print(f"repeat {r + 1}/{args.repeats}, {index}: scan {result.seconds:.2f} s, pass {wall:.2f} s, "
                  f"fraction {wall / result.seconds:.3f}", file=sys.stderr)
    fractions = {i: statistics.median(r["pass_s"] / r["scan_s"] for r in rows if r["index"] == i) for i in args.indexes}
    data = {
        "machine": machine(), "model": args.model.name, "images": len(result.images), "layers": len(infos),
        "neurons": sum(i.layer.channels for i in infos), "top_n": config.top_n, "repeats": rows,
        "fraction_median": fractions, "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
    }
    table = markdown_table(
        ["repeat", "index pass", "scan s (CPU ms/img)", "pass s (CPU ms/img)", "pass / scan (wall)", "pass / scan (CPU)"],
        [[k // len(args.indexes) + 1, r["index"], f"{r['scan_s']:.2f} ({1e3 * r['scan_cpu_s'] / r['images']:.1f})",
          f"{r['pass_s']:.2f} ({1e3 * r['pass_cpu_s'] / r['top_images']:.1f})", f"{r['pass_s'] / r['scan_s']:.3f}",
          f"{r['pass_cpu_s'] / r['scan_cpu_s']:.3f}"] for k, r in enumerate(rows)],
    )
    md = (
        f"# indexes.py: index passes vs scan\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, {data['images']} images ({rows[-1]['top_images']} distinct top images), {data['layers']} layers, "
        f"{data['neurons']} neurons, top-N {config.top_n}; 1-minute load average {load_start} at start, "
        f"{data['load_average'][1]} at end.\n\n{table}\n\n"
        + "".join(f"- **{i} / scan = {v:.3f}** (wall, median)\n" for i, v in fractions.items())
    )
    print(md)
    print(f"written to {write_results('indexes', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
