"""A run's scan state file: saved on a schedule and when the scan ends, read back typed, and
accepted for a resume only by the run that saved it.

The file's layout (arrays and a JSON header) is ``scan/state.py``; here the header is the typed
``RunHeader`` plus how far the scan got (``next_position``, ``complete``). Every save waits for
a Ctrl-C or SIGTERM until the file is whole (under a second), so a signal never tears it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.errors import ConfigError, StateError
from onnx_nfi.graph.layers import Layer
from onnx_nfi.pipeline.run_header import RunHeader
from onnx_nfi.scan.scanner import ScanResult
from onnx_nfi.scan.state import load_state, read_header, save_state
from onnx_nfi.signals import signals_wait


@dataclass(frozen=True)
class Saved:
    """What a state file says of itself: its run, the first list position it has not scanned, and
    whether its scan (of its shard) is finished."""

    run: RunHeader
    next_position: int
    complete: bool


@dataclass(frozen=True)
class StateFile:
    """The scan state file at ``path``."""

    path: Path

    def check_writable(self) -> None:
        """Refuse, before any work, a state file the run could not save (its first checkpoint would
        fail only after minutes of scanning)."""
        folder = self.path.resolve().parent
        if not folder.is_dir():
            raise ConfigError(
                f"the folder of the scan state {self.path} does not exist; create it or pass --checkpoint FILE"
            )
        if not os.access(folder, os.W_OK | os.X_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise ConfigError(
                f"cannot write the scan state {self.path} (permission denied); pass --checkpoint FILE in a writable folder"
            )

    def save(self, run: RunHeader, scanned: ScanResult, next_position: int, *, complete: bool = False) -> None:
        """Replace the file with ``scanned`` (ids: list positions), made by ``run`` up to ``next_position``."""
        header = {**run.to_json(), "next_position": next_position, "complete": complete}
        with signals_wait():  # a Ctrl-C mid-save would tear the zip being written: it waits (under a second)
            save_state(self.path, header, scanned)

    def mark_complete(self, run: RunHeader, scanned: ScanResult) -> None:
        """Save the finished scan of ``run``'s shard (for ``merge``, ``--resume`` or a later write)."""
        self.save(run, scanned, run.shard.bounds(run.files)[1], complete=True)

    def saved(self) -> Saved:
        """The run that saved the file and how far it got (the arrays are not read)."""
        header = read_header(self.path)
        try:
            return Saved(RunHeader.from_json(header), int(header["next_position"]), bool(header["complete"]))
        except (KeyError, TypeError, ValueError, ConfigError):
            raise StateError(
                f"{self.path} is not an onnx-nfi scan state file; pass a file written by 'onnx-nfi analyze'"
            ) from None

    def load(self, layers: dict[str, Layer], paths: list[Path]) -> ScanResult:
        """The saved scan, checked whole; ``layers`` by tensor and ``paths`` (the run's image list)."""
        return load_state(self.path, layers, paths)

    def resumable(self, present: RunHeader, layers: dict[str, Layer], paths: list[Path]) -> tuple[ScanResult, Saved]:
        """The saved scan of this same run and what the file says; a missing file, another run's or
        one whose images are not the files before its resume point is refused."""
        if not self.path.is_file():
            raise StateError(
                f"no checkpoint at {self.path} to resume from; run without --resume (or pass --checkpoint FILE)"
            )
        saved = self.saved()
        self.check_same_run(saved.run, present)
        partial = self.load(layers, paths)
        start = saved.run.shard.bounds(len(paths))[0]
        if any(not start <= img.image_id < saved.next_position for img in partial.images):
            raise StateError(f"{self.path} is inconsistent (an image after its resume point); delete it and run the "
                             "analysis again without --resume")
        return partial, saved

    def check_same_run(self, saved: RunHeader, present: RunHeader) -> None:
        """Refuse to continue this file's state in a run that differs from the one that saved it."""
        diff = saved.differences(present)
        if diff:
            raise StateError(
                f"cannot resume from {self.path}, made by another run: {'; '.join(diff)}; "
                "rerun with the same model, options and images, or without --resume to start over"
            )


def resume_or_start(state: Path, resume: bool) -> tuple[bool, tuple[str, ...]]:
    """Whether to resume from ``state``, and what to tell the user: ``--resume`` with no state there
    (a scheduler rerunning the same command after a stop that came before the first save) starts
    the run from the beginning instead of failing."""
    if resume and not state.exists():
        return False, (f"no scan state at {state} to resume from: the analysis started from the beginning",)
    return resume, ()
