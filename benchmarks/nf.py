"""Benchmark of the Neuron Feature phase against the scan, for one model on one image folder.

In one run: the analyse scan (every conv layer, top-N 100) and then the NF phase as ``analyze``
runs it: the union of all neurons' top images, a chunk at a time (decoded, then every layer's crop
sums), at the default ``nf_max_size`` of ``onnx_nfi.config.AnalyzeConfig``. The scan + NF pair is repeated
``--repeats`` times and the median of NF time / scan time is reported; the goal is <= 0.25.

Usage: python benchmarks/nf.py [--model M.onnx] [--images DIR] [--repeats 3]
Writes benchmarks/results/nf-<hostname>.md and .json.
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

from onnx_nfi.graph.model_layers import model_layers  # noqa: E402
from onnx_nfi.pipeline.features import FeatureWork, compute_features  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402
from onnx_nfi.config import AnalyzeConfig  # noqa: E402
from onnx_nfi.data.images import list_images  # noqa: E402
from onnx_nfi.neurons import nf as nf_module  # noqa: E402
from onnx_nfi.scan.scanner import scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the demo photos)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--nf-max-size", type=int, nargs="+", default=[AnalyzeConfig.nf_max_size, 32, 16],
                        help="NF sizes to time against the same scan (the first is the default)")
    args = parser.parse_args()

    config = AnalyzeConfig(provider=args.provider)
    started, load_start = time.perf_counter(), load_average()
    lm, pre = open_model(args.model)
    infos = model_layers(lm)
    files = list_images(args.images or demo_photos()).files
    rows = []
    for r in range(args.repeats):
        result = scan(lm, [i.layer for i in infos], pre, files, top_n=config.top_n, batch_size=config.batch_size, provider=config.provider)
        for size in args.nf_max_size:
            t0 = time.perf_counter()  # as analyze runs it: the top images are decoded a chunk at a time
            topns = {tensor: st.topn for tensor, st in result.stats.items()}
            work = FeatureWork.of(lm, pre, infos, topns, {img.image_id: Path(img.path) for img in result.images}, {},
                                  replace(config, nf_max_size=size, indexes=()))
            compute_features(work, None)
            phase = time.perf_counter() - t0
            rows.append(
                {"nf_max_size": size, "scan_s": result.seconds, "phase_s": phase, "top_images": len(work.paths)}
            )
            print(
                f"repeat {r + 1}/{args.repeats}, nf_max_size {size}: scan {result.seconds:.2f} s, NF phase {phase:.2f} s "
                f"(decoding included), fraction {phase / result.seconds:.3f}",
                file=sys.stderr,
            )
    fraction = statistics.median(r["phase_s"] / r["scan_s"] for r in rows if r["nf_max_size"] == args.nf_max_size[0])
    fraction_by_size = {
        size: statistics.median(r["phase_s"] / r["scan_s"] for r in rows if r["nf_max_size"] == size)
        for size in args.nf_max_size
    }
    data = {
        "machine": machine(),
        "model": args.model.name,
        "images": len(result.images),
        "layers": len(infos),
        "neurons": sum(i.layer.channels for i in infos),
        "top_n": config.top_n,
        "nf_max_size": args.nf_max_size,
        "fraction_by_nf_max_size": fraction_by_size,
        "nf_threads": getattr(nf_module, "compute_threads", lambda: 1)(),
        "repeats": rows,
        "fraction_median": fraction,
        "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
    }
    table = markdown_table(
        ["repeat", "nf_max_size", "scan s", "NF phase s (decoding included)", "NF / scan"],
        [[k // len(args.nf_max_size) + 1, r["nf_max_size"], f"{r['scan_s']:.2f}", f"{r['phase_s']:.2f}",
          f"{r['phase_s'] / r['scan_s']:.3f}"] for k, r in enumerate(rows)],
    )
    md = (
        f"# nf.py: NF phase vs scan\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, {data['images']} images, {data['layers']} layers, {data['neurons']} neurons, "
        f"top-N {config.top_n}, default nf_max_size {config.nf_max_size}, "
        f"{rows[-1]['top_images']} distinct top images decoded, {data['nf_threads']} NF threads; "
        f"1-minute load average {load_start} at start, {data['load_average'][1]} at end.\n\n{table}\n\n"
        f"- **NF phase / scan = {fraction:.3f}** at the default nf_max_size {args.nf_max_size[0]} (median; goal <= 0.25)\n"
        + "".join(f"- at nf_max_size {k}: {v:.3f}\n" for k, v in fraction_by_size.items() if k != args.nf_max_size[0])
    )
    print(md)
    print(f"written to {write_results('nf', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
