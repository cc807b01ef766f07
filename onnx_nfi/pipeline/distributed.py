"""An analysis spread over a Ray cluster (the ``ray`` extra): the scan as shard tasks merged by a tree
of merge tasks, then the NF and index passes as tasks over chunks of top images, combined in chunk
order by an actor beside the driver; the driver alone writes DuckDB and FAISS.

One task per GPU where the cluster has GPUs (``num_gpus=1``), else one per CPU. A task whose
worker dies is retried by Ray (``max_retries``) and runs its shard or chunk again from the start;
both are deterministic, so the result is unchanged. Every node must see the images (and the model)
at the same path: a scan worker re-lists the image root and refuses, naming its node, when it
cannot read it or sees another list. Progress of all tasks reaches the caller as one count per
phase (images scanned, top images through each pass). ``ordered_tasks`` runs other per-item work
(``relevance``'s layers) with the same layout, retries and error handling.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError, ImageError, Interrupted, NfiError
from onnx_nfi.graph.session import using_threads
from onnx_nfi.pipeline.analysis import Plan, plan
from onnx_nfi.pipeline.run_header import Shard
from onnx_nfi.pipeline.shards import merge_results
from onnx_nfi.pipeline.features import ChunkOutput, FeatureWork, Fold, chunk_worker
from onnx_nfi.progress import Progress, StageProgress
from onnx_nfi.scan.scanner import ScanResult
from onnx_nfi.store.vectors import ProbeSet

#: A killed worker's shard or chunk is run again up to this many times.
MAX_RETRIES = 3
#: Name prefix of a run's progress actor (a test finds the workers' process ids through it).
TALLY = "onnx-nfi-progress"
#: Name prefix of a pass's fold actor (a test finds it by this name).
FOLD = "onnx-nfi-fold"


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
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); check --ray ADDRESS") from None
        except SystemExit as exc:  # a SIGTERM met ray.init's own handler while it started: stop as ours would
            if exc.code == signal.SIGTERM and callable(on_sigterm):
                raise Interrupted("", signal.SIGTERM) from None
            raise
        finally:  # ray.init makes SIGTERM exit(15) at once; ours saves the scan and says so, as on Ctrl-C
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
    return ray


@dataclass
class _Tally:
    """Per task (shard or chunk number): images done, the process running it, how often it started."""

    done: dict[int, int] = field(default_factory=dict)
    pids: dict[int, int] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)

    def report(self, task: int, done: int, pid: int) -> None:
        self.done[task] = done
        self.pids[task] = pid

    def start(self, task: int, pid: int) -> None:
        self.starts[task] = self.starts.get(task, 0) + 1
        self.pids[task] = pid

    def state(self) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        return dict(self.done), dict(self.pids), dict(self.starts)


@dataclass(frozen=True)
class _Resources:
    """How tasks are laid out on the cluster: one per GPU, else one per CPU, each with its threads."""

    workers: int
    per_task: dict[str, int]
    threads: int

    @classmethod
    def of(cls, ray: Any) -> _Resources:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        per_task = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        return cls(gpus or cpus, per_task, 1 if not gpus else max(1, cpus // gpus))


@contextmanager
def _task_errors(ray: Any) -> Iterator[None]:
    """A task's own error (an ``NfiError``: a worker that cannot read the images, say) reaches the
    caller as itself, not wrapped in Ray's."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, NfiError):
            raise exc.cause from None
        raise


def _tally(ray: Any) -> Any:
    return ray.remote(_Tally).options(name=f"{TALLY}-{uuid.uuid4().hex}", num_cpus=0).remote()


def _tally_done(ray: Any, answer: Any) -> int | None:
    """Images the shards have scanned, from the progress actor's ``answer``; None when it cannot say
    (killed, unreachable): progress is only shown, so the run goes on without it."""
    try:
        done, _, _ = ray.get(answer)
    except ray.exceptions.RayError:
        return None
    return sum(done.values())


def _call(fn: Callable[[Any, Any], Any], shared: Any, item: Any, threads: int) -> Any:
    """``fn(shared, item)`` on a worker, with the layout's threads per task."""
    with using_threads(threads):
        return fn(shared, item)


def ordered_tasks(
    address: str, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], progress: StageProgress | None = None,
) -> Iterator[Any]:
    """``fn(shared, item)`` for every item as Ray tasks laid out as the scan's shards (one per GPU, else
    one per CPU; a task whose worker dies is retried), ``shared`` (the model, say) put in the object
    store once. Yields the results in item order, each once it and those before it are done, so the
    caller stores them one by one; tasks not yet yielded when the caller stops are cancelled."""
    ray = connect(address)
    layout = _Resources.of(ray)
    task = ray.remote(max_retries=MAX_RETRIES)(_call).options(**layout.per_task)
    shared_ref = ray.put(shared)
    refs = [task.remote(fn, shared_ref, item, layout.threads) for item in items]
    yielded = 0
    try:
        with _task_errors(ray):
            for ref in refs:
                result = ray.get(ref)
                yielded += 1
                if progress is not None:
                    progress(yielded, len(refs))
                yield result
    finally:
        for ref in refs[yielded:]:
            ray.cancel(ref)


def _scan_shard(
    model_path: str, image_root: str, name: str, config: AnalyzeConfig, shard: Shard, image_list: str,
    probe: ProbeSet, tally: Any, threads: int,
) -> ScanResult:
    """One shard on a worker: re-plan from the paths (every node sees them) with the driver's probe
    set, check the list, scan."""
    import socket

    node = socket.gethostname()
    try:
        p = plan(model_path, image_root, None, name, config, shard, probe)
    except NfiError as exc:
        raise ImageError(f"worker on {node} cannot use the model or images at the driver's paths ({exc}); "
                         "images must be on a filesystem every Ray node sees at the same path") from None
    if p.header.image_list != image_list:
        raise ImageError(f"worker on {node} sees another image list under {image_root} than the driver; "
                         "images must be on a filesystem every Ray node sees at the same path")
    start, end = shard.bounds(len(p.imageset.files))
    pid = os.getpid()

    def progress(done: int, total: int) -> None:
        tally.report.remote(shard.index, done, pid)

    with using_threads(threads):
        return p.scan(start, end, progress)


def _merge(*parts: ScanResult) -> ScanResult:
    return merge_results(parts)


def distributed_scan(p: Plan, address: str, progress: Progress | None = None) -> ScanResult:
    """The plan's whole scan (ids: list positions) as shard tasks on the cluster, merged by a tree."""
    ray = connect(address)
    layout = _Resources.of(ray)
    count = max(1, min(layout.workers, len(p.imageset.files)))
    tally = _tally(ray)
    scan_task = ray.remote(max_retries=MAX_RETRIES)(_scan_shard).options(**layout.per_task)
    merge_task = ray.remote(max_retries=MAX_RETRIES)(_merge).options(num_cpus=1)
    refs = [
        scan_task.remote(
            str(Path(p.lm.path).resolve()), str(p.imageset.root), p.name, p.config, Shard(i, count),
            p.header.image_list, p.probe, tally, layout.threads,
        )
        for i in range(1, count + 1)
    ]
    total = len(p.imageset.files)
    started = time.perf_counter()
    pending = list(refs)
    try:
        with _task_errors(ray):
            asked, reporting = None, progress is not None  # the actor's answer is awaited without blocking
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
                if not reporting or progress is None:
                    continue
                asked = tally.state.remote() if asked is None else asked
                if ray.wait([asked], timeout=0)[0]:
                    done, asked = _tally_done(ray, asked), None
                    reporting = done is not None  # the actor is gone: the run goes on without a moving bar
                    if done is not None:
                        progress("scan", min(done, total), total)
            while len(refs) > 1:  # a tree of merges: pairs, then pairs of pairs
                refs = [merge_task.remote(*refs[k:k + 2]) if k + 1 < len(refs) else refs[k]
                        for k in range(0, len(refs), 2)]
            result = ray.get(refs[0])
    finally:
        ray.kill(tally)
    if progress is not None:
        progress("scan", total, total)
    return replace(result, seconds=time.perf_counter() - started)  # wall time, not the shards' sum


def _run_chunk(work: FeatureWork, kind: str, number: int, chunk: np.ndarray, tally: Any, threads: int) -> ChunkOutput:
    """One chunk of the NF or index pass on a worker; the worker keeps the passes' sessions for the
    next chunks of the same work."""
    tally.start.remote(number, os.getpid())
    with using_threads(threads):
        return chunk_worker(work).run(kind, chunk)


class _ClusterFold(Fold):
    """A pass's ``Fold`` as an actor on the driver's node (it also tells a test its process)."""

    def pid(self) -> int:
        return os.getpid()


class RayChunks:
    """The NF and index passes' chunks as Ray tasks (a ``features.RunChunks``), combined in chunk
    order by a ``Fold`` actor on the driver's node.

    A chunk's NF sums are the size of all NFs (145 MB for EfficientNet-Lite0) and travel through
    Ray's shared object store, whose pages a process keeps in its RSS once it has read them. So the
    driver does not add them itself: it hands each finished chunk, in order, to the fold and fetches
    only the combined value, and its memory is the same whether the pass has two chunks or two
    hundred. The NF pass keeps one task per worker in flight (each output is freed once folded, so
    the store holds a few of them); index responses are small, and that pass keeps two per worker,
    so a worker never waits. A killed chunk task is retried by Ray; a killed fold runs the pass again.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._work: tuple[str, Any] | None = None  # (token, object ref): the work is sent once for both passes

    def __call__(
        self, work: FeatureWork, kind: str, chunks: list[np.ndarray], progress: Progress | None
    ) -> ChunkOutput | None:
        ray = connect(self.address)
        if self._work is None or self._work[0] != work.token:
            self._work = (work.token, ray.put(work))
        failures = 0
        while True:
            try:
                return self._pass(ray, self._work[1], kind, chunks, progress)
            except ray.exceptions.RayActorError:  # the fold died with its sums; the chunks are deterministic
                failures += 1
                if failures > MAX_RETRIES:
                    raise

    @staticmethod
    def _pass(
        ray: Any, work: Any, kind: str, chunks: list[np.ndarray], progress: Progress | None
    ) -> ChunkOutput | None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        layout = _Resources.of(ray)
        task = ray.remote(max_retries=MAX_RETRIES)(_run_chunk).options(**layout.per_task)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        fold = ray.remote(_ClusterFold).options(
            name=f"{FOLD}-{uuid.uuid4().hex}", num_cpus=0, scheduling_strategy=here
        ).remote(kind)
        tally = _tally(ray)
        total, folded = sum(c.size for c in chunks), 0
        window = layout.workers * (1 if kind == "nf" else 2)
        refs: dict[int, Any] = {}
        try:
            with _task_errors(ray):
                for k, chunk in enumerate(chunks):
                    for m in range(len(refs) + k, min(len(chunks), k + window)):
                        refs[m] = task.remote(work, kind, m, chunks[m], tally, layout.threads)
                    while not ray.wait([refs[k]], timeout=0.1)[0]:
                        if progress is not None:
                            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
                            done = folded + sum(chunks[m].size for m, r in refs.items() if r in ready)
                            progress(kind, done, total)
                    ray.get(fold.add.remote(refs.pop(k)))  # in chunk order; the output is freed once folded
                    folded += chunk.size
                    if progress is not None:
                        progress(kind, folded, total)
                return ray.get(fold.result.remote())
        finally:
            ray.kill(tally)
            ray.kill(fold)
