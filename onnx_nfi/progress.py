"""The progress callback every long verb takes: the library never prints, the CLI draws the bars.

``progress(phase, done, total)``; phases are "scan", "probe", "nf", "index" and "write" (the
database write; "lock" while it waits for another process's lock). Stages below the
pipeline report ``(done, total)`` of their own single phase; :func:`phase` binds one to a phase.
"""

from __future__ import annotations

from collections.abc import Callable

#: progress(phase, done, total)
Progress = Callable[[str, int, int], None]
#: progress(done, total) of one stage
StageProgress = Callable[[int, int], None]


def phase(progress: Progress | None, name: str) -> StageProgress | None:
    """The stage callback reporting ``name`` through ``progress`` (None stays None)."""
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def count_steps(stage: StageProgress | None, total: int) -> Callable[[], None] | None:
    """A ``step()`` that reports ``(1, total)``, ``(2, total)``, … through ``stage`` (``(0, total)`` at once)."""
    if stage is None:
        return None
    stage(0, total)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        stage(done, total)

    return step
