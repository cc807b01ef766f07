"""When a scan saves its state: every ``every`` images or ``seconds`` seconds, whichever comes
first, so a crash or Ctrl-C loses at most one interval."""

from __future__ import annotations

import time

from onnx_nfi.config import RunSettings
from onnx_nfi.pipeline.run_header import RunHeader
from onnx_nfi.pipeline.state_file import StateFile
from onnx_nfi.scan.scanner import ScanResult


class Checkpointer:
    """Saves the scan state to ``state`` on the run's schedule (``RunSettings.checkpoint_every`` and
    ``checkpoint_seconds``; the scanner asks ``due``, then ``save``s)."""

    def __init__(self, state: StateFile, run: RunHeader, settings: RunSettings) -> None:
        self.state, self.run = state, run
        self.every, self.seconds = settings.checkpoint_every, settings.checkpoint_seconds
        self._images = self._saved_at_images = 0
        self._saved_at = time.monotonic()

    def due(self, images: int) -> bool:
        self._images = images
        return images - self._saved_at_images >= self.every or time.monotonic() - self._saved_at >= self.seconds

    def save(self, partial: ScanResult, next_position: int) -> None:
        self.state.save(self.run, partial, next_position)
        self._saved_at_images = self._images
        self._saved_at = time.monotonic()
