"""What makes a scan state resumable or mergeable: the run it belongs to, saving on a schedule,
shards of the image list, and merging shard states into the state of one run.

A state's header names the model (path and content hash), the preprocessing, the analysis
options, the image root with a hash of the image list, and the shard. A resume or merge whose
present run differs in any of these is refused, naming what differs: the saved top-N would not
describe the present run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.images import ImageSet
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ConfigError, Interrupted, StateError
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.scan.scanner import LayerStats, ScanResult
from onnx_nfi.scan.state import load_state, read_header, save_state
from onnx_nfi.signals import signals_wait
from onnx_nfi.store.vectors import ProbeSet

#: Options that change how often a run saves or how long it waits for a lock, not what it
#: computes: a resume or a merge may change them.
SCHEDULE_OPTIONS = ("checkpoint_every", "checkpoint_seconds", "lock_timeout")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (from 1) of ``count`` of an image list: a contiguous block of its sorted files."""

    index: int = 1
    count: int = 1

    def bounds(self, n_files: int) -> tuple[int, int]:
        """First and one-past-last file position of this shard (the same on every listing of the list)."""
        return (self.index - 1) * n_files // self.count, self.index * n_files // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_state_path(path: Path) -> None:
    """Refuse, before any work, a state file the run could not save (its first checkpoint would
    fail only after minutes of scanning)."""
    folder = path.resolve().parent
    if not folder.is_dir():
        raise ConfigError(f"the folder of the scan state {path} does not exist; create it or pass --checkpoint FILE")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write the scan state {path} (permission denied); pass --checkpoint FILE in a writable folder")


def parse_shard(text: str) -> Shard:
    """``i/n`` with 1 <= i <= n."""
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 1 <= int(index) <= int(count):
        raise ConfigError(f"--shard must be i/n with 1 <= i <= n (e.g. 2/3), got {text!r}")
    return Shard(int(index), int(count))


def image_list_hash(imageset: ImageSet) -> str:
    """Hash of the image list as scanned: relative paths, sizes and labels (not the pixels: hashing
    10^6 files up front would cost as much as a scan; each image's own hash is kept as it is read)."""
    digest = hashlib.sha256()
    for f in imageset.files:
        path = Path(f.path)
        digest.update(f"{path.relative_to(imageset.root).as_posix()}\0{path.stat().st_size}\0{f.label}\n".encode())
    return digest.hexdigest()


def run_header(
    name: str, lm: LoadedModel, pre: Preprocessing, config: AnalyzeConfig, imageset: ImageSet, shard: Shard,
    probe: ProbeSet,
) -> dict[str, Any]:
    """The header of every state of this run (``complete`` and ``next_position`` are set when saving)."""
    options = {k: v for k, v in json.loads(config.to_json()).items() if k not in SCHEDULE_OPTIONS}
    return {
        "name": name, "model_path": str(Path(lm.path).resolve()), "model_sha256": lm.sha256,
        "preprocessing": pre.to_json(), "options": options, "config": json.loads(config.to_json()),
        "image_root": str(imageset.root), "image_list": image_list_hash(imageset), "files": len(imageset.files),
        "shard": [shard.index, shard.count], "probe_sha256": list(probe.sha256),
        "probe_paths": [str(p) for p in probe.paths],
    }


#: What a difference in each header entry means to the user.
_WHAT = {
    "name": "the model name", "model_sha256": "the model file", "preprocessing": "the preprocessing",
    "options": "the analysis options", "image_list": "the image list", "image_root": "the image folder",
    "shard": "the shard",
}


def saved_probe(header: dict[str, Any]) -> ProbeSet:
    """The probe images a saved scan scored, in the order of its saved scores."""
    return ProbeSet(tuple(header["probe_sha256"]), tuple(map(Path, header["probe_paths"])), False)


def differences(saved: dict[str, Any], present: dict[str, Any]) -> list[str]:
    """What differs between a saved run and the present one, in words (empty: the same run)."""
    out = []
    for key, what in _WHAT.items():
        before, now = saved.get(key), present.get(key)
        if before == now:
            continue
        if key == "options":
            changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
            detail = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            out.append(f"{what} differ ({detail})")
        elif key == "shard":
            out.append(f"{what} differs ({before[0]}/{before[1]} -> {now[0]}/{now[1]})")
        elif key == "name":
            out.append(f"{what} differs ({before} -> {now})")
        else:
            out.append(f"{what} differs")
    return out


def check_same_run(path: Path, saved: dict[str, Any], present: dict[str, Any]) -> None:
    """Refuse to continue ``path``'s state in a run that differs from the one that saved it."""
    diff = differences(saved, present)
    if diff:
        raise StateError(
            f"cannot resume from {path}, made by another run: {'; '.join(diff)}; "
            "rerun with the same model, options and images, or without --resume to start over"
        )


class Checkpointer:
    """Saves the scan state every ``every`` images or ``seconds`` seconds, whichever comes first."""

    def __init__(self, path: Path, header: dict[str, Any], every: int, seconds: float) -> None:
        self.path, self.header, self.every, self.seconds = path, header, every, seconds
        self._images = self._saved_at_images = 0
        self._saved_at = time.monotonic()

    def due(self, images: int) -> bool:
        self._images = images
        return images - self._saved_at_images >= self.every or time.monotonic() - self._saved_at >= self.seconds

    def save(self, partial: ScanResult, next_position: int, *, complete: bool = False) -> None:
        with signals_wait():  # a Ctrl-C mid-save would tear the zip being written: it waits (under a second)
            save_state(self.path, {**self.header, "next_position": next_position, "complete": complete}, partial)
        self._saved_at_images = self._images
        self._saved_at = time.monotonic()


def merge_command(state: Path, db: str | Path, image_root: str | Path | None) -> str:
    """The command that writes a finished scan saved in ``state`` to ``db``."""
    return f"onnx-nfi merge {state} --db {db}" + (f" --image-root {image_root}" if image_root else "")


def interruption(
    exc: KeyboardInterrupt, header: dict[str, Any], state: Path, db: str | Path | None, *,
    merge_hint: str | None = None,
) -> Interrupted:
    """A Ctrl-C or SIGTERM that stopped a run before its results were written, told from what the
    state file at ``state`` holds (a state ``--resume`` accepts: this run's), not from where the
    signal landed, so the message is true at any point; one that already says what happened is
    kept. ``db`` None: a shard, which writes no database; ``merge_hint``: a run that cannot be
    resumed (on Ray) but whose finished scan that command writes."""
    if isinstance(exc, Interrupted) and str(exc):
        return exc
    nothing = f"Interrupted; nothing was written to {db}" if db is not None else "Interrupted"
    try:
        saved = read_header(state) if state.is_file() else None
    except StateError:
        saved = None
    if saved is None or differences(saved, header) or (merge_hint and not saved.get("complete")):
        return Interrupted.of(exc, "Interrupted; nothing was written." if db is None else f"{nothing}.")
    if merge_hint:
        return Interrupted.of(exc, f"{nothing}; the finished scan is saved in {state}: write it with '{merge_hint}'.")
    what = "the finished scan" if saved.get("complete") else "the scan so far"
    return Interrupted.of(
        exc, f"{nothing}; {what} is saved in {state}: run the same command with --resume to continue."
    )


def resume_or_start(state: Path, resume: bool) -> tuple[bool, tuple[str, ...]]:
    """Whether to resume from ``state``, and what to tell the user: ``--resume`` with no state there
    (a scheduler rerunning the same command after a stop that came before the first save) starts
    the run from the beginning instead of failing."""
    if resume and not state.exists():
        return False, (f"no scan state at {state} to resume from: the analysis started from the beginning",)
    return resume, ()


def read_resumable(path: Path, present: dict[str, Any], layers: dict[str, Layer], paths: list[Path]) -> tuple[ScanResult, dict[str, Any]]:
    """The saved state of this same run and its header; a missing file, another run's or one whose
    images are not the files before its resume point is refused."""
    if not path.is_file():
        raise StateError(f"no checkpoint at {path} to resume from; run without --resume (or pass --checkpoint FILE)")
    saved = read_header(path)
    check_same_run(path, saved, present)
    partial = load_state(path, layers, paths)
    start = Shard(*saved["shard"]).bounds(len(paths))[0]
    if any(not start <= img.image_id < saved["next_position"] for img in partial.images):
        raise StateError(f"{path} is inconsistent (an image after its resume point); delete it and run the "
                         "analysis again without --resume")
    return partial, saved


def merge_states(paths: Sequence[Path], layers: dict[str, Layer], files: list[Path]) -> ScanResult:
    """Shard state files -> the state of one run over the whole list (ids still file positions)."""
    return merge_results([load_state(p, layers, files) for p in paths])


def merge_results(results: Sequence[ScanResult]) -> ScanResult:
    """Shard scans (ids: list positions) -> the scan of their union.

    Top-N and moments combine through their own ``merge`` (disjoint positions, so ties fall as in
    one run); probe scores are taken from whichever shard saw each probe image.
    """
    first = results[0]
    stats = dict(first.stats)
    probe = {t: s.copy() for t, s in first.probe_scores.items()}
    for other in results[1:]:
        for tensor, st in stats.items():
            o = other.stats[tensor]
            stats[tensor] = LayerStats(st.layer, st.topn.merge(o.topn), st.moments.merge(o.moments))
        for tensor, scores in probe.items():
            seen = ~np.isnan(other.probe_scores[tensor])
            scores[seen] = other.probe_scores[tensor][seen]
    images = sorted((img for r in results for img in r.images), key=lambda img: img.image_id)
    skipped = sorted((s for r in results for s in r.skipped), key=lambda s: str(s[0]))
    return ScanResult(stats, images, skipped, first.provider, sum(r.seconds for r in results), probe)


def check_shards(paths: Sequence[Path]) -> dict[str, Any]:
    """The headers of a complete, consistent set of finished shard states; refuses anything else."""
    if not paths:
        raise StateError("give the state files to merge: onnx-nfi merge STATE... (written by analyze --shard i/n)")
    headers = [read_header(p) for p in paths]
    base = headers[0]
    for path, h in zip(paths[1:], headers[1:]):
        diff = [d for d in differences(base, h) if not d.startswith("the shard")]
        if diff:
            raise StateError(f"{path} belongs to another run than {paths[0]}: {'; '.join(diff)}; merge shards of one run")
    for path, h in zip(paths, headers):
        if not h.get("complete") and h["shard"][1] == 1:
            raise StateError(
                f"{path} is the checkpoint of an unfinished analysis, not a finished scan; continue it with the same "
                "'onnx-nfi analyze' command plus --resume, which writes the database when done"
            )
        if not h.get("complete"):
            raise StateError(
                f"{path} is an unfinished shard ({h['shard'][0]}/{h['shard'][1]}); finish it with the same "
                "'onnx-nfi analyze … --shard' command plus --resume, then merge"
            )
    count = base["shard"][1]
    indexes = sorted(h["shard"][0] for h in headers)
    if any(h["shard"][1] != count for h in headers) or indexes != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(indexes))
        extra = sorted({i for i in indexes if indexes.count(i) > 1})
        raise StateError(
            f"the states are not shards 1..{count} of {count} exactly once"
            + (f" (missing {', '.join(f'{i}/{count}' for i in missing)})" if missing else "")
            + (f" (given twice: {', '.join(f'{i}/{count}' for i in extra)})" if extra else "")
            + "; pass every shard's state once"
        )
    return base


def config_of(header: dict[str, Any]) -> AnalyzeConfig:
    """The analysis options a state was made with."""
    values = dict(header["config"])
    return AnalyzeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
