"""Merging the finished scans of shards 1..n of one run into the scan of the whole run, and the
command that writes such a scan to a database."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnx_nfi.errors import StateError
from onnx_nfi.graph.layers import Layer
from onnx_nfi.pipeline.run_header import RunHeader
from onnx_nfi.pipeline.state_file import StateFile
from onnx_nfi.scan.scanner import LayerStats, ScanResult


def merge_command(state: Path, db: str | Path, image_root: str | Path | None) -> str:
    """The command that writes a finished scan saved in ``state`` to ``db``."""
    return f"onnx-nfi merge {state} --db {db}" + (f" --image-root {image_root}" if image_root else "")


def merge_states(paths: Sequence[Path], layers: dict[str, Layer], files: list[Path]) -> ScanResult:
    """Shard state files -> the state of one run over the whole list (ids still file positions)."""
    return merge_results([StateFile(p).load(layers, files) for p in paths])


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


def check_shards(paths: Sequence[Path]) -> RunHeader:
    """The run of a complete, consistent set of finished shard states; refuses anything else."""
    if not paths:
        raise StateError("give the state files to merge: onnx-nfi merge STATE... (written by analyze --shard i/n)")
    saved = [StateFile(p).saved() for p in paths]
    base = saved[0].run
    for path, s in zip(paths[1:], saved[1:]):
        diff = [d for d in base.differences(s.run) if not d.startswith("the shard")]
        if diff:
            raise StateError(f"{path} belongs to another run than {paths[0]}: {'; '.join(diff)}; merge shards of one run")
    for path, s in zip(paths, saved):
        if not s.complete and s.run.shard.count == 1:
            raise StateError(
                f"{path} is the checkpoint of an unfinished analysis, not a finished scan; continue it with the same "
                "'onnx-nfi analyze' command plus --resume, which writes the database when done"
            )
        if not s.complete:
            raise StateError(
                f"{path} is an unfinished shard ({s.run.shard}); finish it with the same "
                "'onnx-nfi analyze … --shard' command plus --resume, then merge"
            )
    count = base.shard.count
    indexes = sorted(s.run.shard.index for s in saved)
    if any(s.run.shard.count != count for s in saved) or indexes != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(indexes))
        extra = sorted({i for i in indexes if indexes.count(i) > 1})
        raise StateError(
            f"the states are not shards 1..{count} of {count} exactly once"
            + (f" (missing {', '.join(f'{i}/{count}' for i in missing)})" if missing else "")
            + (f" (given twice: {', '.join(f'{i}/{count}' for i in extra)})" if extra else "")
            + "; pass every shard's state once"
        )
    return base
