"""Where the analyse scan's time goes, stage by stage, as ``onnx-nfi analyze MODEL IMAGES --no-nf --indexes none`` runs it.

The scan runs as the CLI runs it (live progress bars drawn to a terminal that discards them, a
checkpointer on the default schedule, its final complete save) while each stage is timed in the
thread that runs it, wall and CPU (``time.thread_time``):
  decode     the decode threads (read, hash, OpenCV decode and resize, normalise), summed over threads;
  batches    the main thread waiting for / stacking the next batch;
  session    the instrumented model's run (its calling thread; the runtime's pool threads are
             the process CPU the stages below do not explain: "runtime threads + other");
  result     the main thread waiting for the running batch;
  absorb     the main thread's per-batch work, split into: statistics (concatenation, top-N
             upkeep with the second key, moments, signal hold), probe scores, progress, checkpoint due;
  final save the complete state written after the scan.
In the same run, paired (alternating, ``--repeats`` times), variants of the whole scan:
  product   as above;  bare   no progress bars, no checkpointer;
  spin      as product, but the runtime's threads spinning while they wait for work (as before).

Usage: python benchmarks/scan_profile.py [--model M.onnx] [--images DIR] [--batch-size 32] [--repeats 3]
Writes benchmarks/results/scan_profile-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, write_results  # noqa: E402

import onnx_nfi.cli.common as cli_common  # noqa: E402
import onnx_nfi.data.loader as loader  # noqa: E402
import onnx_nfi.graph.session as session  # noqa: E402
import onnx_nfi.scan.rule as rule  # noqa: E402
import onnx_nfi.scan.scanner as scanner  # noqa: E402
from onnx_nfi.data.images import list_images  # noqa: E402
from onnx_nfi.graph.model_layers import model_layers  # noqa: E402
from onnx_nfi.config import AnalyzeConfig, RunSettings  # noqa: E402
from onnx_nfi.pipeline.checkpoint import Checkpointer  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402
from onnx_nfi.pipeline.run_header import RunHeader, Shard  # noqa: E402
from onnx_nfi.pipeline.state_file import StateFile  # noqa: E402
from onnx_nfi.scan.topn import Moments, TopN  # noqa: E402
from onnx_nfi.store.vectors import ProbeSet  # noqa: E402

#: (wall s, CPU s, calls) per stage, filled while a profiled scan runs
TIMES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
_LOCK = threading.Lock()


def _add(stage: str, wall: float, cpu: float) -> None:
    with _LOCK:
        t = TIMES[stage]
        t[0] += wall
        t[1] += cpu
        t[2] += 1


def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` that adds its wall and calling-thread CPU time to ``stage``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(stage, time.perf_counter() - w, time.thread_time() - c)

    return wrapper


def timed_iter(stage: str, make: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """A generator function whose every ``next`` (the consumer's wait included) is timed as ``stage``."""

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = make(*args, **kwargs)
        while True:
            w, c = time.perf_counter(), time.thread_time()
            item = next(it, None)
            _add(stage, time.perf_counter() - w, time.thread_time() - c)
            if item is None:
                return
            yield item

    return wrapper


@contextlib.contextmanager
def spinning() -> Iterator[None]:
    """Sessions made inside have their intra-op threads spin while waiting for work (onnxruntime's default)."""
    original = session.session_options

    def options(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "spinning": True})

    session.session_options = options
    try:
        yield
    finally:
        session.session_options = original


def install_timers() -> None:
    """Wrap each stage of the scan (module attributes, looked up at call time) with a timer."""
    loader.decode = timed("decode (decode threads)", loader.decode)
    scanner.iter_batches = timed_iter("batches: wait + stack (main)", scanner.iter_batches)
    session.Runner.run = timed("session run (calling thread)", session.Runner.run)
    scanner.Scanning.absorb = timed("absorb, all (main)", scanner.Scanning.absorb)
    scanner.Scanning.result = timed("finish: last statistics (main)", scanner.Scanning.result)
    scanner.Scanning.update_stats = timed("  statistics (also in finish): concatenate + below", scanner.Scanning.update_stats)
    rule.RuleRunner.consider = timed("  rule: which layers need no pre-activation", rule.RuleRunner.consider)
    rule.RuleRunner.exact = timed("  rule: check a batch", rule.RuleRunner.exact)
    rule.instrument = timed("instrument the graph (main)", rule.instrument)
    session.Runner.__init__ = timed("create the session (main)", session.Runner.__init__)
    scanner.ScanRequest.run = timed("scan call, wall (main)", scanner.ScanRequest.run)
    TopN.update = timed("  top-N upkeep with the key", TopN.update)
    Moments.update = timed("  moments", Moments.update)
    scanner.Scanning.take_probe_scores = timed("  probe scores", scanner.Scanning.take_probe_scores)
    scanner.Scanning.report = timed("  progress", scanner.Scanning.report)
    Checkpointer.due = timed("  checkpoint due?", Checkpointer.due)
    StateFile.mark_complete = timed("final complete save (main)", StateFile.mark_complete)
    signals_wait = scanner.signals_wait

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        w, c = time.perf_counter(), time.thread_time()
        with signals_wait():
            _add("  signal hold: enter", time.perf_counter() - w, time.thread_time() - c)
            yield
            w, c = time.perf_counter(), time.thread_time()
        _add("  signal hold: exit", time.perf_counter() - w, time.thread_time() - c)

    scanner.signals_wait = held


def run_scan(args: argparse.Namespace, lm: Any, layers: list[Any], pre: Any, files: list[Any], product: bool) -> int:
    """One scan as ``scan_part`` runs it (``product``), or a bare one; returns the images scanned."""
    if not product:
        return len(scanner.scan(lm, layers, pre, files, top_n=args.top_n, batch_size=args.batch_size,
                                provider=args.provider).images)
    with tempfile.TemporaryDirectory() as tmp, cli_common.ProgressBars() as bars:
        state = StateFile(Path(tmp) / "scan.state")
        run = RunHeader("profile", str(LITE0), "", "", AnalyzeConfig(), tmp, "", len(files), Shard(), ProbeSet((), (), False))
        checkpoint = Checkpointer(state, run, RunSettings())
        request = scanner.ScanRequest(lm, layers, pre, files, top_n=args.top_n, batch_size=args.batch_size,
                                      provider=args.provider)
        result = request.run(lambda done, total: bars("scan", done, total), checkpoint=checkpoint, renumber=False)
        state.mark_complete(run, result)
        return len(result.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=LITE0)
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the benchmark photos)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from rich.console import Console

    # live bars as on a terminal, drawn where nobody reads them
    cli_common.console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)  # noqa: SIM115
    started, load_start = time.perf_counter(), load_average()
    lm, pre = open_model(args.model)
    layers = [info.layer for info in model_layers(lm)]
    files = list_images(args.images or demo_photos()).files
    run_scan(args, lm, layers, pre, files[: 2 * args.batch_size], product=True)  # warm-up: compiled kernels
    variants = {"product": True, "bare": False, "spin": True}
    samples: dict[str, list[tuple[float, float, int]]] = {v: [] for v in variants}
    stage_runs: list[dict[str, list[float]]] = []
    for r in range(args.repeats):
        for variant, product in variants.items():
            profiled = variant == "product"
            if profiled:
                install_timers() if r == 0 else None
                TIMES.clear()
            spin = spinning() if variant == "spin" else contextlib.nullcontext()
            w, c = time.perf_counter(), time.process_time()
            with spin:
                n = run_scan(args, lm, layers, pre, files, product)
            samples[variant].append((time.perf_counter() - w, time.process_time() - c, n))
            if profiled:
                stage_runs.append({k: list(v) for k, v in TIMES.items()})
            wall, cpu, n = samples[variant][-1]
            print(f"repeat {r + 1}/{args.repeats} {variant}: {n / wall:.1f} images/s, {1000 * cpu / n:.1f} CPU ms/image",
                  file=sys.stderr)
        if r == 0:
            samples = {v: [] for v in variants}  # the first round installs the timers: not counted
            stage_runs.clear()
    report(args, samples, stage_runs, len(layers), started, load_start)


def report(
    args: argparse.Namespace, samples: dict[str, list[tuple[float, float, int]]], stage_runs: list[dict[str, list[float]]],
    n_layers: int, started: float, load_start: float,
) -> None:
    """The stage table (medians over the profiled runs) and the variants' rates; written to results."""
    n = samples["product"][0][2]
    batches = -(-n // args.batch_size)
    process_cpu = statistics.median(c for _, c, _ in samples["product"])
    rows, explained = [], 0.0
    main_wall = {"scan": 0.0, "parts": 0.0}
    order = ["instrument", "create", "decode", "batches", "session", "absorb", "  statistics", "  signal hold: enter",
             "  top-N", "  rule", "  moments", "  signal hold: exit", "  probe", "  progress", "  checkpoint", "finish", "final", "scan"]
    for stage in sorted(stage_runs[0], key=lambda name: next(k for k, o in enumerate(order) if name.startswith(o))):
        wall = statistics.median(s[stage][0] for s in stage_runs)
        cpu = statistics.median(s[stage][1] for s in stage_runs)
        if stage.startswith("scan call"):
            main_wall["scan"] = wall
            continue
        if not stage.startswith(" "):
            explained += cpu
            main_wall["parts"] += wall if "(main)" in stage and "save" not in stage else 0.0
        rows.append([stage, f"{1000 * wall / batches:.2f}", f"{1000 * cpu / batches:.2f}", f"{1000 * cpu / n:.2f}"])
    idle = main_wall["scan"] - main_wall["parts"]
    rows.append(["main waits for the running batch (scan wall - main stages)", f"{1000 * idle / batches:.2f}", "", ""])
    rest = process_cpu - explained
    rows.append(["runtime threads + other (process CPU - above)", "", f"{1000 * rest / batches:.2f}", f"{1000 * rest / n:.2f}"])
    rows.append(["**process, whole scan**", "", f"{1000 * process_cpu / batches:.2f}", f"{1000 * process_cpu / n:.2f}"])
    stage_table = markdown_table(["stage (thread)", "wall ms / batch", "CPU ms / batch", "CPU ms / image"], rows)
    rate = {v: statistics.median(k / w for w, _, k in s) for v, s in samples.items()}
    cpu_ms = {v: statistics.median(1000 * c / k for _, c, k in s) for v, s in samples.items()}
    variant_table = markdown_table(
        ["variant", "images/s (median)", "runs", "CPU ms / image", "vs product (images/s)"],
        [[v, f"{rate[v]:.1f}", ", ".join(f"{k / w:.1f}" for w, _, k in s), f"{cpu_ms[v]:.1f}", f"{rate[v] / rate['product']:.2f}"]
         for v, s in samples.items()],
    )
    data = {"machine": machine(), "model": args.model.name, "images": n, "batch_size": args.batch_size,
            "layers": n_layers, "repeats": args.repeats, "stages": stage_runs, "samples": samples,
            "images_per_s": rate, "cpu_ms_per_image": cpu_ms, "load_average": [load_start, load_average()],
            "seconds": time.perf_counter() - started}
    md = (
        f"# scan_profile.py: the analyse scan stage by stage\n\n{machine_line(data['machine'])}\n\n"
        f"`{data['model']}`, {n} images in {batches} batches of {args.batch_size} ({n_layers} layers), top-N "
        f"{args.top_n}; medians of {len(stage_runs)} profiled runs (a first round, which installs the timers, "
        f"not counted); 1-minute load average {load_start} at start, {data['load_average'][1]} at end.\n\n"
        f"{stage_table}\n\nVariants, alternated in the same run (wall from the call to its return, "
        f"session creation and the final save included):\n\n{variant_table}\n"
    )
    print(md)
    print(f"written to {write_results('scan_profile', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
