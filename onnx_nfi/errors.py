"""User-facing errors.

Every error a user can cause (bad model, bad images, bad options, bad database) is an
``NfiError``: the CLI prints its message as one line and exits with code 2, so the message must
say what is wrong *and* what to do about it. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class NfiError(Exception):
    """Base class of every error a user can fix; the message is shown as is."""

    exit_code: int = 2


class ModelError(NfiError):
    """The ONNX file cannot be used (not ONNX, no conv layer, unsupported inputs)."""


class LayerError(NfiError):
    """A requested layer does not exist in the model."""


class ImageError(NfiError):
    """The image source is empty, unreadable or its labels cannot be read."""


class PreprocessError(NfiError):
    """A preprocessing preset or file is unknown or malformed."""


class StoreError(NfiError):
    """The database cannot be opened or does not hold what was asked for."""


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
