"""User-facing errors.

Every error a user can cause (bad model, bad images, bad options, bad database) is an
``NfiError``: the CLI prints its message as one line and exits with code 2, so the message must
say what is wrong *and* what to do about it. Anything else escaping the library is a bug.
"""

from __future__ import annotations

import signal


class NfiError(Exception):
    """Base class of every error a user can fix; the message is shown as is."""

    exit_code: int = 2


class ModelError(NfiError):
    """The ONNX file cannot be used (not ONNX, no conv layer, unsupported inputs)."""


class LayerError(NfiError):
    """A requested layer does not exist in the model."""


class ImageError(NfiError):
    """The image source is empty, unreadable or its labels cannot be read."""


class ImageTooLargeError(ImageError):
    """An image (or an upload's body) is above the size or pixel limit."""


class PreprocessError(NfiError):
    """A preprocessing preset or file is unknown or malformed."""


class StoreError(NfiError):
    """The database cannot be opened or does not hold what was asked for."""


class DiskFullError(StoreError):
    """The disk (or the process's file-size limit) refused a write; the database is unchanged."""


class NotFoundError(NfiError):
    """A model, layer or neuron asked for is not in the database."""


class ConfigError(NfiError):
    """An analysis option is out of range or unknown (checked before any work starts)."""


class SelectivityOptionError(ConfigError):
    """A selectivity-index option is out of range (e.g. rho outside (0, 1])."""


class SearchError(NfiError):
    """A search, match or probe request cannot be carried out as asked."""


class OutputError(NfiError):
    """A picture or page cannot be written where the user asked."""


class ReportError(NfiError):
    """The report folder cannot be written, or a page asked of ``serve`` does not exist."""


class StateError(NfiError):
    """A scan state file (checkpoint, shard) is missing, unreadable or belongs to another run."""


class ResultsNotWritten(NfiError):
    """The analysis finished but the database write failed; its state is saved for a later write."""

    def __init__(self, message: str, state: str, command: str) -> None:
        super().__init__(message)
        self.state = state
        self.command = command


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a command; the message says what had been written or saved
    by then, so it is true wherever the signal landed. A KeyboardInterrupt, so everything that saves
    its work on Ctrl-C does the same on SIGTERM; the CLI exits with 128 + the signal number (130,
    143), as a shell reports a command stopped by that signal."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a command this signal stopped."""
        return 128 + self.signum

    @classmethod
    def of(cls, exc: BaseException, message: str) -> Interrupted:
        """The interrupt ``exc`` (a plain Ctrl-C or an Interrupted) told with ``message``, keeping its signal."""
        return cls(message, getattr(exc, "signum", signal.SIGINT))

    @classmethod
    def written(
        cls, exc: BaseException, model: str, db: object, run_id: int, in_step: bool | None = None
    ) -> Interrupted:
        """The interrupt ``exc`` once the analysis of ``model`` is committed; ``in_step``: whether the
        search indexes beside the database were brought in step too (None: not said)."""
        step = {True: "; its search indexes are in step", False: "; the next search brings its search indexes in step"}
        return cls.of(
            exc, f"Interrupted after the analysis of {model} was written to {db} (run {run_id}){step.get(in_step, '')}."
        )
