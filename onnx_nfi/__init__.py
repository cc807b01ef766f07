"""onnx-nfi: index the neurons of any ONNX CNN by the images that excite them.

The verbs (``analyze``, ``layers``, ``index``, ``similar``, ``match``, …) are re-exported from
``onnx_nfi.api`` on first use, so ``import onnx_nfi`` (and ``onnx-nfi --help``) stays fast: the
runtime libraries load only when a verb needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from onnx_nfi.config import AnalyzeConfig, IndexConfig  # noqa: F401  (an API name too; light, so here)
from onnx_nfi.errors import NfiError
from onnx_nfi.names import API_NAMES

__all__ = ["AnalyzeConfig", "NfiError", "__version__", *API_NAMES]

if TYPE_CHECKING:
    from onnx_nfi.api import *


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        return getattr(import_module("onnx_nfi.api"), name)
    if name == "__version__":  # importlib.metadata costs ~50 ms: only when asked
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("onnx-nfi")
        except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'onnx_nfi' has no attribute {name!r}")
