"""The scan of one analysis spread over a Ray cluster (the ``ray`` extra): shards as Ray tasks, merged
by a tree of merge tasks; the driver alone computes NFs and indexes and writes DuckDB and FAISS.

One task per GPU where the cluster has GPUs (``num_gpus=1``), else one per CPU. A task whose
worker dies is retried by Ray (``max_retries``) and scans its shard again from the start; shards
are deterministic, so the result is unchanged. Every node must see the images (and the model) at
the same path: a worker re-lists the image root and refuses, naming its node, when it cannot read
it or sees another list. Progress of all tasks reaches the caller as one ``scan`` count through a
small actor.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError, ImageError, NfiError
from onnx_nfi.pipeline.analysis import Plan, plan
from onnx_nfi.pipeline.checkpoint import Shard, merge_results
from onnx_nfi.progress import Progress
from onnx_nfi.scan.scanner import ScanResult, scan

#: A killed worker's shard is scanned again up to this many times.
MAX_RETRIES = 3
#: Name prefix of a run's progress actor (a test finds the workers' process ids through it).
TALLY = "onnx-nfi-scan-progress"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'onnx-nfi[ray]'") from None
    return ray


def connect(address: str) -> Any:
    """Join the cluster at ``address`` (``local``: start a local instance), unless already joined."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); check --ray ADDRESS") from None
    return ray


@dataclass
class _Tally:
    """Per-shard images done and worker process ids, as reported by the scan tasks."""

    done: dict[int, int] = field(default_factory=dict)
    pids: dict[int, int] = field(default_factory=dict)

    def report(self, shard: int, done: int, pid: int) -> None:
        self.done[shard] = done
        self.pids[shard] = pid

    def state(self) -> tuple[dict[int, int], dict[int, int]]:
        return dict(self.done), dict(self.pids)


def _scan_shard(
    model_path: str, image_root: str, name: str, config: AnalyzeConfig, shard: Shard, image_list: str,
    probe_sha256: tuple[str, ...], tally: Any, threads: int,
) -> ScanResult:
    """One shard on a worker: re-plan from the paths (every node sees them), check the list, scan."""
    import socket

    os.environ["ONNX_NFI_THREADS"] = str(threads)
    node = socket.gethostname()
    try:
        p = plan(model_path, image_root, None, name, config, shard)
    except NfiError as exc:
        raise ImageError(f"worker on {node} cannot use the model or images at the driver's paths ({exc}); "
                         "images must be on a filesystem every Ray node sees at the same path") from None
    if p.header["image_list"] != image_list:
        raise ImageError(f"worker on {node} sees another image list under {image_root} than the driver; "
                         "images must be on a filesystem every Ray node sees at the same path")
    start, end = shard.bounds(len(p.imageset.files))
    pid = os.getpid()

    def progress(done: int, total: int) -> None:
        tally.report.remote(shard.index, done, pid)

    return scan(
        p.lm, list(p.layers.values()), p.pre, p.imageset.files[start:end], top_n=config.top_n,
        batch_size=config.batch_size, provider=config.provider,
        predict_labels=p.imageset.label_source == "predicted", class_names=p.class_names,
        probe_sha256=probe_sha256, progress=progress, first_position=start, renumber=False,
    )


def _merge(*parts: ScanResult) -> ScanResult:
    return merge_results(parts)


def distributed_scan(p: Plan, address: str, progress: Progress | None = None) -> ScanResult:
    """The plan's whole scan (ids: list positions) as shard tasks on the cluster, merged by a tree."""
    ray = connect(address)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    workers = gpus or cpus
    count = max(1, min(workers, len(p.imageset.files)))
    per_task = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    threads = 1 if not gpus else max(1, cpus // gpus)
    tally = ray.remote(_Tally).options(name=f"{TALLY}-{uuid.uuid4().hex}", num_cpus=0).remote()
    scan_task = ray.remote(max_retries=MAX_RETRIES)(_scan_shard).options(**per_task)
    merge_task = ray.remote(max_retries=MAX_RETRIES)(_merge).options(num_cpus=1)
    refs = [
        scan_task.remote(
            str(Path(p.lm.path).resolve()), str(p.imageset.root), p.name, p.config, Shard(i, count),
            p.header["image_list"], p.probe.sha256, tally, threads,
        )
        for i in range(1, count + 1)
    ]
    total = len(p.imageset.files)
    started = time.perf_counter()
    pending = list(refs)
    try:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
            if progress is not None:
                done, _ = ray.get(tally.state.remote())
                progress("scan", min(sum(done.values()), total), total)
        while len(refs) > 1:  # a tree of merges: pairs, then pairs of pairs
            refs = [merge_task.remote(*refs[k:k + 2]) if k + 1 < len(refs) else refs[k] for k in range(0, len(refs), 2)]
        result = ray.get(refs[0])
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, NfiError):
            raise exc.cause from None
        raise
    finally:
        ray.kill(tally)
    if progress is not None:
        progress("scan", total, total)
    return replace(result, seconds=time.perf_counter() - started)  # wall time, not the shards' sum
