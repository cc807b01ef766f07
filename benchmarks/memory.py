"""Peak memory of a scan against the number of images: it must not grow with them.

Each scan runs in a fresh subprocess (so one run's allocations cannot hide another's) over N
distinct image files: the demo photos (256 px) copied cyclically under new names. The child
reports its peak resident set (``ru_maxrss``, the high-water mark of RSS, as ``VmHWM`` in
/proc/self/status). The goal (issue 2): 1,000 images within 10 % of 100.

Usage: python benchmarks/memory.py [--model M.onnx] [--counts 100 1000] [--batch-size 32]
Writes benchmarks/results/memory-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    LITE0, demo_photos, load_average, machine, machine_line, markdown_table, scratch_dir, write_results,
)

#: The child: one scan, then its own peak RSS (KiB on Linux) and timings as JSON on stdout.
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.data.images import list_images
from onnx_nfi.scan.scanner import scan
lm, pre = open_model(sys.argv[1])
layers = [i.layer for i in model_layers(lm)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = scan(lm, layers, pre, list_images(sys.argv[2]).files, batch_size=int(sys.argv[3]), provider="cpu")
print(json.dumps({
    "images": len(result.images), "scan_s": result.seconds, "total_s": time.perf_counter() - t0,
    "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_scan_kib": before,
}))
"""


def image_folder(sources: list[Path], count: int, target: Path) -> Path:
    """``count`` distinct files copied cyclically from ``sources``."""
    target.mkdir(parents=True)
    for k in range(count):
        src = sources[k % len(sources)]
        shutil.copyfile(src, target / f"img_{k:05d}{src.suffix}")
    return target


def measure(model: Path, folder: Path, batch_size: int) -> dict:
    """Run one scan in a fresh interpreter and return what it reports."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(folder), str(batch_size)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    started, load_start = time.perf_counter(), load_average()
    sources = sorted(demo_photos().rglob("*.jpg"))
    scratch = scratch_dir("nfi-memory-")
    try:
        rows = []
        for count in args.counts:
            row = measure(args.model, image_folder(sources, count, scratch / str(count)), args.batch_size)
            rows.append(row)
            print(f"{count} images: peak {row['peak_kib'] / 1024:.0f} MiB, scan {row['scan_s']:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = rows[0]["peak_kib"]
    data = {
        "machine": machine(),
        "model": args.model.name,
        "batch_size": args.batch_size,
        "runs": rows,
        "growth_vs_first": [r["peak_kib"] / base - 1 for r in rows],
        "load_average": [load_start, load_average()],
        "seconds": time.perf_counter() - started,
    }
    table = markdown_table(
        ["images", "peak RSS MiB", "RSS before the scan MiB", "vs first", "scan s", "process s"],
        [[r["images"], f"{r['peak_kib'] / 1024:.0f}", f"{r['before_scan_kib'] / 1024:.0f}",
          f"{100 * (r['peak_kib'] / base - 1):+.1f} %", f"{r['scan_s']:.1f}", f"{r['total_s']:.1f}"] for r in rows],
    )
    md = (
        f"# memory.py: peak memory of a scan vs number of images\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, every conv layer, top-N 100, batch {args.batch_size}, provider cpu; each count in a "
        f"fresh subprocess; 1-minute load average {load_start} at start, {data['load_average'][1]} at end.\n\n"
        f"{table}\n\nGoal: the largest count within 10 % of the first "
        f"({'met' if max(data['growth_vs_first']) <= 0.10 else 'NOT met'}).\n"
    )
    print(md)
    print(f"written to {write_results('memory', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
