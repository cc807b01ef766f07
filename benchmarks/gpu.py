"""GPU run, ready: check the provider, compare a GPU analysis with a CPU one, time the scan modes and a FAISS search.

1. The provider is available in onnxruntime (CUDAExecutionProvider for ``--provider cuda``).
2. tiny_lite0 (and, without ``--quick``, EfficientNet-Lite0) analysed on the demo photos with the
   provider and with the CPU: per neuron the top-N must be identical up to ties (every image whose
   activation is above the N-th one's, by more than the tolerance, is in both lists) and every
   activation and moment within 1e-4 relative.
3. The scan modes of ``benchmarks/scan.py`` at batch 64 and 256 on the provider (one repeat each).
4. A FAISS exact inner-product search of 1,000 queries over 1M vectors of dimension 128 (on the
   GPU with ``faiss-gpu`` and ``--provider cuda``, else on the CPU; 100k with ``--quick``).

Exits 1 when a comparison fails. CI runs ``--provider cpu --quick`` so the script cannot rot; on a
machine with CUDA run it with ``--provider cuda`` (about 8 minutes at most).

    .venv/bin/python benchmarks/gpu.py --provider cuda
    .venv/bin/python benchmarks/gpu.py --provider cpu --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import onnxruntime as ort
from common import LITE0, ROOT, demo_photos, machine, machine_line, write_results

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

TINY = ROOT / "models" / "tiny_lite0.onnx"
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
RTOL = 1e-4


def compare(db_a: Path, db_b: Path, model: str) -> dict[str, int | float]:
    """Neurons whose top-N differ beyond ties, and the largest relative activation / moment difference."""
    def read(db: Path) -> tuple[dict, dict]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            tops: dict[tuple[str, int], list[tuple[int, float]]] = {}
            for layer, unit, image, act in con.execute(
                "SELECT layer, unit, image_id, activation FROM top_activations WHERE model = ? ORDER BY layer, unit, rank",
                [model],
            ).fetchall():
                tops.setdefault((layer, unit), []).append((image, act))
            moments = {
                (layer, unit): (mx, mean, std)
                for layer, unit, mx, mean, std in con.execute(
                    "SELECT layer, unit, max_activation, mean_activation, std_activation FROM neurons WHERE model = ?", [model]
                ).fetchall()
            }
        finally:
            con.close()
        return tops, moments

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-6)
        return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0

    tops_a, mom_a = read(db_a)
    tops_b, mom_b = read(db_b)
    differing, worst = 0, 0.0
    for key, rows_a in tops_a.items():
        rows_b = tops_b.get(key, [])
        acts_a = np.array([a for _, a in rows_a])
        acts_b = np.array([a for _, a in rows_b])
        if acts_a.shape != acts_b.shape:
            differing += 1
            continue
        worst = max(worst, rel(acts_a, acts_b))
        cutoff = acts_a[-1] + RTOL * max(abs(acts_a[-1]), 1e-6)
        clear = {i for i, a in rows_a if a > cutoff}  # above the tie at the N-th place
        if not clear <= {i for i, _ in rows_b}:
            differing += 1
    keys = sorted(mom_a)
    ma = np.array([mom_a[k] for k in keys], float)
    mb = np.array([mom_b.get(k, (np.nan,) * 3) for k in keys], float)
    return {"neurons": len(keys), "topn_differing": differing, "max_rel_activation": worst,
            "max_rel_moments": rel(np.nan_to_num(ma), np.nan_to_num(mb))}


def scan_modes(provider: str, batch: int, model: Path, images: Path) -> dict[str, float] | str:
    """``benchmarks/scan.py`` once at ``batch`` (its results go to a scratch folder, not benchmarks/results);
    why it failed instead, e.g. killed for memory (Lite0 instrumented at batch 256 needs ~17 GB on the CPU)."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--provider", provider, "--batch-size", str(batch),
             "--repeats", "1", "--model", str(model), "--images", str(images), "--out", out],
            check=False, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            return f"failed (exit {proc.returncode}{', killed: out of memory?' if proc.returncode == -9 else ''})"
        data = json.loads(next(Path(out).glob("scan-*.json")).read_text())
    return data["images_per_s"]


def faiss_search(n: int, d: int, queries: int, gpu: bool) -> tuple[str, float]:
    """Seconds of one batch search (k = 10) over ``n`` random unit vectors; where it ran."""
    import faiss

    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, d), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(d)
    where = "CPU"
    if gpu and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        where = "GPU"
    index.add(data)
    q = data[:queries] + 0.01 * rng.standard_normal((queries, d), dtype=np.float32)
    index.search(q[:10], 10)  # warm-up
    started = time.perf_counter()
    index.search(q, 10)
    return where, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny_lite0 only, 100k vectors (what CI runs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    available = ort.get_available_providers()
    if PROVIDERS[args.provider] not in available:
        sys.exit(f"{PROVIDERS[args.provider]} is not available (onnxruntime {ort.__version__}: {', '.join(available)}); "
                 "install the gpu extra on a machine with CUDA, see README.md")
    photos = demo_photos()
    models = [TINY] if args.quick else [TINY, LITE0]
    comparisons = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in models:
            dbs = {}
            for provider in dict.fromkeys([args.provider, "cpu"]):
                dbs[provider] = Path(scratch) / f"{model.stem}-{provider}.duckdb"
                api.analyze(model, photos, db=dbs[provider], config=AnalyzeConfig(provider=provider))
            comparisons[model.stem] = compare(dbs[args.provider], dbs["cpu"], model.stem)
    scan_model = TINY if args.quick else LITE0
    modes = {batch: scan_modes(args.provider, batch, scan_model, photos) for batch in (64, 256)}
    n = 100_000 if args.quick else 1_000_000
    where, seconds = faiss_search(n, 128, 1000, args.provider == "cuda")
    ok = all(c["topn_differing"] == 0 and c["max_rel_activation"] <= RTOL and c["max_rel_moments"] <= RTOL
             for c in comparisons.values())
    data = {"machine": machine(), "provider": args.provider, "quick": args.quick, "comparisons": comparisons,
            "scan_images_per_s": modes, "scan_model": scan_model.name, "faiss": {"n": n, "d": 128, "queries": 1000,
            "where": where, "seconds": seconds}, "ok": ok, "seconds": time.perf_counter() - started}
    rows = [f"| {m} | {c['neurons']} | {c['topn_differing']} | {c['max_rel_activation']:.2e} | {c['max_rel_moments']:.2e} |"
            for m, c in comparisons.items()]
    mode_rows = [
        f"| {b} | " + (" | ".join(f"{r[k]:.1f}" for k in "abcde") if isinstance(r, dict) else f"{r} | | | |") + " |"
        for b, r in modes.items()
    ]
    md = "\n".join([
        f"# gpu.py: {PROVIDERS[args.provider]} vs CPU{' (quick)' if args.quick else ''}", "",
        machine_line(data["machine"]), "",
        f"Analyses on the {len(list(photos.rglob('*.jpg')))} demo photos, {args.provider} against cpu:", "",
        "| model | neurons | top-N differing beyond ties | max rel. activation diff | max rel. moment diff |",
        "|---|---|---|---|---|", *rows, "",
        f"Scan modes of benchmarks/scan.py on {args.provider}, {scan_model.name}, images/s (one repeat):", "",
        "| batch | (a) plain | (b) +decode | (c) scan | (d) instrumented | (e) GlobalMaxPool |",
        "|---|---|---|---|---|---|", *mode_rows, "",
        f"FAISS exact search, 1000 queries, k 10, over {n:,} vectors of dimension 128 on the {where}: {seconds:.3f} s.", "",
        f"Comparison {'passed' if ok else 'FAILED'}; total {data['seconds']:.0f} s.", "",
    ])
    print(md)
    print(f"written to {write_results(f'gpu-{args.provider}' + ('-quick' if args.quick else ''), md, data, args.out)}",
          file=sys.stderr)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
