"""Benchmark of VectorIndex: the automatic index against exact search, on random unit vectors.

Random Gaussian vectors, normalised, are the hardest case for approximate search (no clusters,
neighbours barely closer than the rest), so the recall measured here is a floor for real
profiles. Half the queries are perturbed copies of stored vectors (cosine ~0.96 to their
source, as when a neuron is looked up from a near-identical model), half are random.

Usage: python benchmarks/search.py [--n 1000000] [--d 256] [--queries 1000]
Writes benchmarks/results/search-<hostname>[-<config>].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import time
from pathlib import Path

import faiss
import numpy as np

from onnx_nfi.store.vector_backends import refine_factor
from onnx_nfi.store.vector_index import VectorIndex

K = 10
# Exact single-query latency is timed on this many queries (evenly spread over both halves):
# at 1M vectors each takes ~0.1-0.2 s, and the ranking of the two is not in doubt.
EXACT_LATENCY_QUERIES = 200
DEFAULTS = {"n": 1_000_000, "d": 256, "queries": 1000}


def unit_rows(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000) -> np.ndarray:
    """Seeded random unit vectors, generated in chunks so memory stays at one copy."""
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_queries(rng: np.random.Generator, vectors: np.ndarray, q: int) -> np.ndarray:
    """First half: stored vectors plus noise of norm 0.3; second half: random unit vectors."""
    half = q // 2
    source = vectors[rng.choice(len(vectors), half, replace=False)]
    near = source + 0.3 * unit_rows(rng, half, vectors.shape[1])
    queries = np.vstack([near, unit_rows(rng, q - half, vectors.shape[1])])
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def single_query_latency_ms(index: VectorIndex, queries: np.ndarray, warmup: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU time of search() with a batch of one, query after query.

    CPU time is reported beside wall time because a shared machine's other work inflates wall
    time only; a single query runs on one thread, so unloaded wall time ~ CPU time.
    """
    for query in queries[:warmup]:
        index.search(query[None, :], K)
    wall, cpu = np.empty(len(queries)), np.empty(len(queries))
    for i, query in enumerate(queries):
        start, start_cpu = time.perf_counter(), time.process_time()
        index.search(query[None, :], K)
        wall[i], cpu[i] = time.perf_counter() - start, time.process_time() - start_cpu
    return wall * 1e3, cpu * 1e3


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth)]))


def run(n: int, d: int, n_queries: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    vectors = unit_rows(rng, n, d)
    ids = np.arange(n, dtype=np.int64)
    queries = make_queries(rng, vectors, n_queries)
    half = n_queries // 2

    exact = VectorIndex.build(ids, vectors, exact_limit=n)
    truth = np.vstack([exact.search(queries[i : i + 200], K)[1] for i in range(0, n_queries, 200)])

    rss_before = rss_bytes()
    start = time.perf_counter()
    auto = VectorIndex.build(ids, vectors, seed=seed)
    build_s = time.perf_counter() - start
    index_mb = (rss_bytes() - rss_before) / 2**20

    auto_ms, auto_cpu_ms = single_query_latency_ms(auto, queries)
    start = time.perf_counter()
    found = auto.search(queries, K)[1]
    auto_batch_s = time.perf_counter() - start
    spread = np.linspace(0, n_queries - 1, min(n_queries, EXACT_LATENCY_QUERIES)).astype(int)
    exact_ms, exact_cpu_ms = single_query_latency_ms(exact, queries[spread])
    start = time.perf_counter()
    exact.search(queries, K)
    exact_batch_s = time.perf_counter() - start

    return {
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "n": n,
        "d": d,
        "queries": n_queries,
        "k": K,
        "seed": seed,
        "kind": auto.kind,
        "refine_factor": refine_factor(n),
        "build_s": build_s,
        "index_rss_mb": index_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "recall_at_10": recall(found, truth),
        "recall_at_10_perturbed": recall(found[:half], truth[:half]),
        "recall_at_10_random": recall(found[half:], truth[half:]),
        "auto_p50_ms": float(np.percentile(auto_ms, 50)),
        "auto_p99_ms": float(np.percentile(auto_ms, 99)),
        "auto_cpu_p50_ms": float(np.percentile(auto_cpu_ms, 50)),
        "auto_batch_qps": n_queries / auto_batch_s,
        "exact_p50_ms": float(np.percentile(exact_ms, 50)),
        "exact_p99_ms": float(np.percentile(exact_ms, 99)),
        "exact_cpu_p50_ms": float(np.percentile(exact_cpu_ms, 50)),
        "exact_latency_queries": len(spread),
        "exact_batch_qps": n_queries / exact_batch_s,
        "total_s": time.perf_counter() - started,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }


def markdown(r: dict) -> str:
    return "\n".join(
        [
            f"## search: {r['n']:,} random unit vectors, d={r['d']}, {r['queries']} queries, k={r['k']}",
            "",
            f"Host `{r['host']}`, {r['cpus']} CPUs, faiss {r['faiss']}; automatic index `{r['kind']}`, "
            f"refine factor {r['refine_factor']}; whole run {r['total_s']:.0f} s; "
            f"1-minute load average {r['load_avg_1min'][0]:.1f} at start, {r['load_avg_1min'][1]:.1f} at end.",
            "",
            f"| | automatic index | exact (IndexFlatIP; latency over {r['exact_latency_queries']} queries) |",
            "|---|---|---|",
            f"| build time | {r['build_s']:.1f} s | - |",
            f"| memory added by the index (RSS) | {r['index_rss_mb']:.0f} MiB | - |",
            f"| recall@10 vs exact (all / perturbed / random) | {r['recall_at_10']:.4f} / "
            f"{r['recall_at_10_perturbed']:.4f} / {r['recall_at_10_random']:.4f} | 1 |",
            f"| single-query latency p50 | {r['auto_p50_ms']:.2f} ms | {r['exact_p50_ms']:.2f} ms |",
            f"| single-query latency p99 | {r['auto_p99_ms']:.2f} ms | {r['exact_p99_ms']:.2f} ms |",
            f"| single-query CPU time p50 | {r['auto_cpu_p50_ms']:.2f} ms | {r['exact_cpu_p50_ms']:.2f} ms |",
            f"| batch throughput ({r['queries']} queries) | {r['auto_batch_qps']:.0f} q/s "
            f"| {r['exact_batch_qps']:.0f} q/s |",
            "",
            f"Peak RSS of the whole run (data, exact index and automatic index): {r['peak_rss_mb']:.0f} MiB.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULTS["n"], help="stored vectors")
    parser.add_argument("--d", type=int, default=DEFAULTS["d"], help="dimension")
    parser.add_argument("--queries", type=int, default=DEFAULTS["queries"], help="queries (half perturbed copies)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    result = run(args.n, args.d, args.queries, args.seed)
    table = markdown(result)
    print(table)
    config = {"n": args.n, "d": args.d, "queries": args.queries}
    suffix = "" if config == DEFAULTS else f"-n{args.n}-d{args.d}-q{args.queries}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"search-{result['host']}{suffix}"
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / stem}.md and .json")


if __name__ == "__main__":
    main()
