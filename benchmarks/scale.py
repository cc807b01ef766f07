"""Scale: how time, memory and storage grow from 1k to 16k images, plain and on a local Ray instance.

A deterministic synthetic image set is made at run time from the demo photos (flips, crops, small
rotations, brightness and colour changes seeded by the image's number; never committed): image k
is the same whatever the sizes asked for, and each size's folder links the first n images. Each
(mode, size) is one ``api.analyze`` in a fresh process, started by this script one after the
other; each reports per phase (scan, NF, indexes, database write) the time and the peak RSS of
that phase (``VmHWM``, reset between phases through ``/proc/self/clear_refs``; for Ray the
driver's, plus the largest peak among the Ray processes under it), the database and FAISS sizes
and the number of distinct top images. Each finished run is appended at once to a JSON-lines file
and the report is rewritten from all rows there, so an interrupted benchmark keeps the runs that
finished, and runs can be added later (``--runs``) or the report redrawn alone (``--report``).

Growth exponents are fitted (least squares on log-log) over the sizes that finished. Targets: peak
RSS flat (within 10 %) from the smallest to the largest size, scan time linear, NF and index time
growing no faster than the number of distinct top images, local Ray within 15 % of the plain run.

    .venv/bin/python benchmarks/scale.py --work /tmp/scale                 # Lite0, all layers: plain 1k, ray 1k, ...
    .venv/bin/python benchmarks/scale.py --work /tmp/scale --runs ray:16000  # one more run, appended
    .venv/bin/python benchmarks/scale.py --report                          # the report from the rows so far
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from common import LITE0, RESULTS, ROOT, demo_photos, load_average, machine, machine_line, write_results

#: One analysis in a fresh process: prints a JSON line with its phases, sizes and peak RSS.
RUN = r"""
import json, os, sys, time
from pathlib import Path
import duckdb
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

model, images, db, layers, ray = sys.argv[1:6]


def hwm_mib(pid="self"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants():
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        out += kids
        todo += kids
    return out


peaks = {}


def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def progress(phase, done, total):
    # a phase's last report ends it: its peak is read and the high-water mark starts again
    if done == total and phase not in peaks and phase in ("scan", "nf", "index"):
        peaks[phase] = hwm_mib()
        reset_peak()


config = AnalyzeConfig(layers=tuple(layers.split(",")) if layers else (), provider="cpu")
if ray:
    import ray as ray_module
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
load_start = os.getloadavg()[0]
reset_peak()
started = time.perf_counter()
s = api.analyze(model, images, db=db, config=config, ray="local" if ray else None, progress=progress)
wall = time.perf_counter() - started
peaks["write"] = hwm_mib()
workers = max((hwm_mib(p) for p in descendants() if Path(f"/proc/{p}").exists()), default=0.0) if ray else 0.0
con = duckdb.connect(db, read_only=True)
distinct = con.execute("SELECT count(DISTINCT image_id) FROM top_activations").fetchone()[0]
con.close()
faiss_dir = Path(db + ".faiss")
print(json.dumps({
    "images": s.images_seen, "scan": s.scan_seconds, "nf": s.nf_seconds, "index": s.index_seconds,
    "write": wall - s.total_seconds, "wall": wall, "neurons": s.neurons, "layers": s.layers,
    "peak_rss_mib": max(peaks.values()), "phase_peak_rss_mib": peaks, "ray_worker_peak_rss_mib": workers,
    "db_mib": Path(db).stat().st_size / 2**20,
    "faiss_mib": sum(f.stat().st_size for f in faiss_dir.rglob("*") if f.is_file()) / 2**20 if faiss_dir.exists() else 0,
    "distinct_top_images": distinct, "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
}))
"""

#: The default runs, smallest size first and each size in both modes, so a cut-short benchmark
#: still has pairs to compare.
DEFAULT_RUNS = ("plain:1000", "ray:1000", "plain:4000", "ray:4000", "plain:16000", "ray:16000")


def synthetic_set(folder: Path, n: int, source: Path) -> Path:
    """Images 0..n-1: augmented copies of the demo photos under their class folders (image k is
    determined by k alone; ones already written are kept)."""
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


def run_one(model: Path, layers: str, work: Path, mode: str, n: int) -> dict:
    """One analysis of the size-``n`` set in a fresh process; its report with what was run."""
    images = subset(work / "images", work / f"images-{n}", n)
    db = work / f"{mode}-{n}.duckdb"
    db.unlink(missing_ok=True)  # a fresh database each time: its size and top images are this run's
    shutil.rmtree(f"{db}.faiss", ignore_errors=True)
    env = {**os.environ, "ONNX_NFI_THREADS": os.environ.get("ONNX_NFI_THREADS", "2"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(model), str(images), str(db), layers, "1" if mode == "ray" else ""],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{mode} at {n} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False)
    return {**row, "mode": mode, "size": n, "model": model.name, "layers_option": layers or "all",
            "commit": commit.stdout.strip(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def report(rows: list[dict]) -> tuple[str, dict]:
    """The markdown report and its data from the finished runs (the latest row of each mode and size)."""
    latest = {(r["mode"], r["size"]): r for r in rows}
    by_mode = {m: {n: r for (mm, n), r in sorted(latest.items()) if mm == m} for m in ("plain", "ray")}
    first = next(iter(latest.values()))
    table = [
        ("| mode | images | scan s | NF s | indexes s | write s | total s | peak RSS MiB (scan / NF / indexes / write) "
         "| largest Ray process peak MiB | DB MiB | FAISS MiB | distinct top images | load avg |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, by_size in by_mode.items():
        for n, r in by_size.items():
            ph = r["phase_peak_rss_mib"]
            phases = " / ".join(f"{ph[k]:.0f}" if k in ph else "-" for k in ("scan", "nf", "index", "write"))
            ray_peak = f"{r['ray_worker_peak_rss_mib']:.0f}" if mode == "ray" else "-"
            table.append(
                f"| {mode} | {n:,} | {r['scan']:.1f} | {r['nf']:.1f} | {r['index']:.1f} | {r['write']:.1f} | {r['wall']:.1f} "
                f"| **{r['peak_rss_mib']:.0f}** ({phases}) | {ray_peak} | {r['db_mib']:.1f} | {r['faiss_mib']:.1f} "
                f"| {r['distinct_top_images']:,} | {r['load_average'][0]:.1f} → {r['load_average'][1]:.1f} |"
            )
    lines = [f"# scale.py: {first['model']}, {first['layers']} layers ({first['neurons']:,} neurons)", "",
             machine_line(machine()), "", *table, ""]
    data: dict = {"rows": rows, "growth_exponents": {}, "rss_growth": {}, "ray_over_plain_wall": {}}
    for mode, by_size in by_mode.items():
        sizes = sorted(by_size)
        if len(sizes) < 2:
            continue
        growth = {key: exponent(sizes, [by_size[n][key] for n in sizes])
                  for key in ("scan", "nf", "index", "write", "peak_rss_mib", "db_mib", "distinct_top_images")}
        rss = by_size[sizes[-1]]["peak_rss_mib"] / by_size[sizes[0]]["peak_rss_mib"] - 1
        data["growth_exponents"][mode], data["rss_growth"][mode] = growth, rss
        lines += [
            f"- {mode}, sizes {', '.join(f'{n:,}' for n in sizes)}: growth exponents (value ~ images^k) "
            + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()),
            f"- {mode}: peak RSS {sizes[0]:,} -> {sizes[-1]:,}: {100 * rss:+.1f} % (target within 10 %)",
        ]
    pairs = sorted(set(by_mode["plain"]) & set(by_mode["ray"]))
    data["ray_over_plain_wall"] = {n: by_mode["ray"][n]["wall"] / by_mode["plain"][n]["wall"] for n in pairs}
    if pairs:
        lines.append("- Ray (local, 2 CPUs) total / plain total: "
                     + ", ".join(f"{n:,}: {v:.2f}" for n, v in data["ray_over_plain_wall"].items()) + " (target <= 1.15)")
    missing = [f"{m}:{n}" for m in ("plain", "ray") for n in sorted({n for _, n in latest}) if (m, n) not in latest]
    if missing:
        lines.append(f"- Not run or not finished: {', '.join(missing)}")
    return "\n".join(lines) + "\n", data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="MODE:SIZE in order (plain or ray)")
    parser.add_argument("--layers", default="", help="layer aliases, comma-separated (default: all conv layers)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nfi-scale"), help="folder for the images and databases")
    parser.add_argument("--rows", type=Path, default=None, help="JSON-lines file of finished runs (appended to)")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the rows so far")
    args = parser.parse_args()
    stem = f"scale-{args.model.stem}"
    rows_file = args.rows or RESULTS / f"{stem}-{socket.gethostname()}.jsonl"
    runs = [(mode, int(n)) for mode, n in (r.split(":") for r in args.runs)]
    if not args.report:
        started = time.perf_counter()
        synthetic_set(args.work / "images", max(n for _, n in runs), demo_photos())
        print(f"image set ready in {time.perf_counter() - started:.0f} s (load {load_average()})", file=sys.stderr)
        for mode, n in runs:
            row = run_one(args.model, args.layers, args.work, mode, n)
            rows_file.parent.mkdir(parents=True, exist_ok=True)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{mode} {n}: scan {row['scan']:.1f} s, nf {row['nf']:.1f} s, index {row['index']:.1f} s, "
                  f"write {row['write']:.1f} s, rss {row['peak_rss_mib']:.0f} MiB, load {row['load_average']}", file=sys.stderr)
            md, data = report([json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()])
            write_results(stem, md, data)
    md, data = report([json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()])
    print(md)
    print(f"written to {write_results(stem, md, data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
