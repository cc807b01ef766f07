"""Scale: how time, memory and storage grow from 1k to 16k images, plain and on a local Ray instance.

A deterministic synthetic image set is made at run time from the demo photos (flips, crops, small
rotations, brightness and colour changes seeded by the image's number; never committed): the
largest size is written once, the smaller sizes are its first images (symbolic links). For each
size and mode one ``onnx-nfi`` analysis runs in a fresh process, which reports per phase (scan, NF,
indexes, database write) the time, its peak RSS (``ru_maxrss``; for Ray the driver's only), the
database and FAISS sizes and the number of distinct top images. Growth exponents are fitted
(least squares on log-log) over the sizes. Targets: peak RSS flat (within 10 %) from the smallest
to the largest size, scan time linear, NF and index time growing no faster than the number of
distinct top images, local Ray within 15 % of the plain run.

    .venv/bin/python benchmarks/scale.py                                  # Lite0, all layers, 1k 4k 16k, plain + ray
    .venv/bin/python benchmarks/scale.py --layers conv1,conv10,conv25,conv40,conv49 --sizes 1000 4000 16000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from common import LITE0, demo_photos, load_average, machine, machine_line, scratch_dir, write_results

#: One analysis in a fresh process: prints a JSON line with its phases, sizes and peak RSS.
RUN = r"""
import json, resource, sys, time
from pathlib import Path
import duckdb
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

model, images, db, layers, ray = sys.argv[1:6]
config = AnalyzeConfig(layers=tuple(layers.split(",")) if layers else (), provider="cpu")
if ray:
    import ray as ray_module
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
started = time.perf_counter()
s = api.analyze(model, images, db=db, config=config, ray="local" if ray else None)
wall = time.perf_counter() - started
con = duckdb.connect(db, read_only=True)
distinct = con.execute("SELECT count(DISTINCT image_id) FROM top_activations").fetchone()[0]
con.close()
faiss_dir = Path(db + ".faiss")
print(json.dumps({
    "images": s.images_seen, "scan": s.scan_seconds, "nf": s.nf_seconds, "index": s.index_seconds,
    "write": wall - s.total_seconds, "wall": wall, "neurons": s.neurons, "layers": s.layers,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "db_mib": Path(db).stat().st_size / 2**20,
    "faiss_mib": sum(f.stat().st_size for f in faiss_dir.rglob("*") if f.is_file()) / 2**20 if faiss_dir.exists() else 0,
    "distinct_top_images": distinct,
}))
"""


def synthetic_set(folder: Path, n: int, source: Path) -> Path:
    """``n`` augmented copies of the demo photos under their class folders (deterministic by number)."""
    photos = sorted(p for p in source.rglob("*.jpg"))
    for k in range(n):
        src = photos[k % len(photos)]
        out = folder / src.parent.name / f"{k:06d}.jpg"
        if out.exists():
            continue
        rng = np.random.default_rng(k)
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if k // len(photos) % 2:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-12, 12)), float(rng.uniform(1.0, 1.25)))
        m[:, 2] += rng.uniform(-0.08, 0.08, 2) * (w, h)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), borderMode=cv2.BORDER_REFLECT)
        img = np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3), 0, 255).astype(np.uint8)
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def subset(full: Path, folder: Path, n: int) -> Path:
    """The first ``n`` images of ``full`` (by number) as symbolic links, same class folders."""
    for path in sorted(full.rglob("*.jpg"), key=lambda p: p.name)[:n]:
        link = folder / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path)
    return folder


def exponent(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) over log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--ray-sizes", type=int, nargs="*", default=None, help="sizes also run with --ray (default: all)")
    parser.add_argument("--layers", default="", help="layer aliases, comma-separated (default: all conv layers)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the images and databases (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    ray_sizes = sorted(args.ray_sizes if args.ray_sizes is not None else sizes)
    work = args.work or scratch_dir("nfi-scale-")
    load_start, started = load_average(), time.perf_counter()
    full = synthetic_set(work / f"images-{sizes[-1]}", sizes[-1], demo_photos())
    print(f"image set ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    env = {**os.environ, "ONNX_NFI_THREADS": os.environ.get("ONNX_NFI_THREADS", "2")}
    rows: dict[str, dict[int, dict]] = {"plain": {}, "ray": {}}
    for n in sizes:
        images = full if n == sizes[-1] else subset(full, work / f"images-{n}", n)
        for mode in ("plain", "ray"):
            if mode == "ray" and n not in ray_sizes:
                continue
            db = work / f"{mode}-{n}.duckdb"
            db.unlink(missing_ok=True)  # a fresh database each time: its size and top images are this run's
            shutil.rmtree(f"{db}.faiss", ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-c", RUN, str(args.model), str(images), str(db), args.layers, "1" if mode == "ray" else ""],
                env=env, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                sys.exit(f"{mode} at {n} failed:\n{proc.stderr[-3000:]}")
            rows[mode][n] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = rows[mode][n]
            print(f"{mode} {n}: scan {r['scan']:.1f} s, nf {r['nf']:.1f} s, index {r['index']:.1f} s, "
                  f"write {r['write']:.1f} s, rss {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    plain = rows["plain"]
    growth = {
        key: exponent(sizes, [plain[n][key] for n in sizes])
        for key in ("scan", "nf", "index", "write", "peak_rss_mib", "db_mib", "distinct_top_images")
    }
    rss_growth = plain[sizes[-1]]["peak_rss_mib"] / plain[sizes[0]]["peak_rss_mib"] - 1
    ray_ratio = {n: rows["ray"][n]["wall"] / plain[n]["wall"] for n in rows["ray"]}
    data = {"machine": machine(), "model": args.model.name, "layers": args.layers or "all", "sizes": sizes,
            "rows": rows, "growth_exponents": growth, "rss_growth": rss_growth, "ray_over_plain_wall": ray_ratio,
            "load_average": [load_start, load_average()], "seconds": time.perf_counter() - started}
    first = plain[sizes[0]]
    table = [
        "| mode | images | scan s | NF s | indexes s | write s | total s | peak RSS MiB | DB MiB | FAISS MiB | distinct top images |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, by_size in rows.items():
        for n, r in by_size.items():
            table.append(
                f"| {mode} | {n:,} | {r['scan']:.1f} | {r['nf']:.1f} | {r['index']:.1f} | {r['write']:.1f} | {r['wall']:.1f} "
                f"| {r['peak_rss_mib']:.0f} | {r['db_mib']:.1f} | {r['faiss_mib']:.1f} | {r['distinct_top_images']:,} |"
            )
    md = "\n".join([
        (f"# scale.py: {args.model.name}, {first['layers']} layers ({first['neurons']:,} neurons), sizes "
         f"{', '.join(f'{n:,}' for n in sizes)}"), "", machine_line(data["machine"]),
        f"1-minute load average {load_start} at start, {data['load_average'][1]} at end; total {data['seconds']:.0f} s.", "",
        *table, "",
        "Growth exponents of the plain run (value ~ images^k, least squares over the sizes): "
        + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()) + ".", "",
        f"- Peak RSS {sizes[0]:,} -> {sizes[-1]:,}: {100 * rss_growth:+.1f} % (target within 10 %)",
        ("- Ray (local, 2 CPUs) total / plain total: " + ", ".join(f"{n:,}: {r:.2f}" for n, r in ray_ratio.items())
         + " (target <= 1.15)"), "",
    ])
    print(md)
    print(f"written to {write_results('scale', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
