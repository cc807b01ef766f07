"""What a run stopped by Ctrl-C or SIGTERM before its results were written tells the user: told
from what its state file holds, not from where the signal landed, so the message is true at any
point."""

from __future__ import annotations

from pathlib import Path

from onnx_nfi.errors import Interrupted, StateError
from onnx_nfi.pipeline.run_header import RunHeader
from onnx_nfi.pipeline.state_file import Saved, StateFile


def interruption(
    exc: KeyboardInterrupt, run: RunHeader, state: Path, db: str | Path | None, *, merge_hint: str | None = None,
) -> Interrupted:
    """The Interrupted to raise for ``exc``: what the state file at ``state`` holds (a state
    ``--resume`` accepts: this run's); one that already says what happened is kept. ``db`` None: a
    shard, which writes no database; ``merge_hint``: a run that cannot be resumed (on Ray) but
    whose finished scan that command writes."""
    if isinstance(exc, Interrupted) and str(exc):
        return exc
    nothing = f"Interrupted; nothing was written to {db}" if db is not None else "Interrupted"
    saved = _saved(state)
    if saved is None or saved.run.differences(run) or (merge_hint and not saved.complete):
        return Interrupted.of(exc, "Interrupted; nothing was written." if db is None else f"{nothing}.")
    if merge_hint:
        return Interrupted.of(exc, f"{nothing}; the finished scan is saved in {state}: write it with '{merge_hint}'.")
    what = "the finished scan" if saved.complete else "the scan so far"
    return Interrupted.of(
        exc, f"{nothing}; {what} is saved in {state}: run the same command with --resume to continue."
    )


def _saved(state: Path) -> Saved | None:
    """What the state file says of itself; None when there is none or it is not readable."""
    try:
        return StateFile(state).saved() if state.is_file() else None
    except StateError:
        return None
