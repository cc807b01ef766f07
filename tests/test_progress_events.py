"""The progress an analysis reports: NF and index bars that move per layer / pass (not 0 -> 100 %),
a write with real steps inside the total, a bar from the first moment, and a resumed scan's rate
counting only the images of this part."""

from __future__ import annotations

import time
from pathlib import Path

from cli_helpers import scalar
from conftest import TINY

from onnx_nfi.api import analyze
from onnx_nfi.cli.common import ProgressBars
from onnx_nfi.config import AnalyzeConfig


def test_nf_index_and_write_phases_advance_step_by_step(photo_dir: Path, tmp_path: Path) -> None:
    events: list[tuple[str, int, int, float]] = []
    db = tmp_path / "nfi.duckdb"
    summary = analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=4, provider="cpu"),
                      progress=lambda phase, done, total: events.append((phase, done, total, time.monotonic())))
    layers = scalar(db, "SELECT count(*) FROM layers")
    for phase in ("nf", "index", "write"):
        seen = [(done, total) for p, done, total, _ in events if p == phase]
        totals = {total for _, total in seen}
        assert len(totals) == 1, (phase, totals)
        total = totals.pop()
        assert [done for done, _ in seen] == list(range(total + 1)), phase  # every step, in order, from 0
        if phase == "nf":  # one chunk here: its decoding, then each layer
            assert total == 1 + layers
        if phase == "index":
            assert total >= 2  # decoding, then each index pass (the whole-image colour pass by default)
        if phase == "write":
            assert total == 5
    writes = [t for p, _, _, t in events if p == "write"]
    assert summary.total_seconds >= writes[-1] - events[0][3]  # the write is inside the total


def test_the_bars_show_a_moving_bar_at_once_and_a_resumed_rate_of_this_part_only() -> None:
    with ProgressBars(silent=False) as bars:
        start = bars.progress.tasks[0]
        assert start.description == "Starting" and start.total is None  # pulses until the first phase
        bars("scan", 300, 400)  # a resumed scan: 300 images were absorbed by the earlier part
        assert [t.description for t in bars.progress.tasks] == ["Scanning images"]
        time.sleep(1.0)
        bars("scan", 320, 400)
        task = bars.progress.tasks[0]
        rate = float(task.fields["rate"].split()[0])
        assert 20 / (task.elapsed + 0.5) <= rate <= 20 / task.elapsed * 1.01  # 20 images in ~1 s, not 320
