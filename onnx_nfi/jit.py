"""numba compilation for the few loops NumPy cannot do fast (NF crop sums, top-N insertion).

Compiled code is cached on disk (beside the module, else in the user's cache folder) so that only
the first run after an install pays the ~1 s compile. Where neither can be written (a read-only
install and home), numba refuses to decorate a cached function at import time; then the loops are
compiled in memory once per process instead of failing the import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])


def compiled(**options: Any) -> Callable[[F], F]:
    """``numba.njit(**options)`` with an on-disk cache where one can be written."""

    def wrap(fn: F) -> F:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    return wrap
