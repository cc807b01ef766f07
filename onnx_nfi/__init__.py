"""onnx-nfi: index the neurons of any ONNX CNN by the images that excite them.

The verbs (``analyze``, ``layers``, ``index``, ``similar``, ``match``, …) are re-exported from
``onnx_nfi.api`` on first use, so ``import onnx_nfi`` (and ``onnx-nfi --help``) stays fast: the
runtime libraries load only when a verb needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import NfiError

#: Every name of ``onnx_nfi.api.__all__`` (a test keeps the two equal), listed here so that resolving one
#: does not import the runtime libraries up front.
_VERBS = (
    "AnalysisSummary", "CompactSummary", "DemoResult", "IndexSummary", "LayerInfo", "LayerListing", "ProbeSummary",
    "QueryResult",
    "QueryTable", "RFVerification", "RelevanceSummary", "ShardSummary", "WhereResult", "analyze",
    "color_memberships", "compact", "demo", "describe", "export_parquet", "find", "import_db", "index", "layers",
    "match", "merge", "parse_shard", "query", "query_folder", "relevance", "remove", "set_probe", "similar", "sql",
    "state_path", "verify_receptive_fields", "where",
)

__all__ = ["AnalyzeConfig", "NfiError", "__version__", *_VERBS]

if TYPE_CHECKING:
    from onnx_nfi.api import (  # noqa: F401
        AnalysisSummary, CompactSummary, DemoResult, IndexSummary, LayerInfo, LayerListing, ProbeSummary,
        QueryResult, QueryTable,
        RFVerification, RelevanceSummary, ShardSummary, WhereResult, analyze, color_memberships, compact, demo,
        describe, export_parquet, find, import_db, index, layers, match, merge, parse_shard, query, query_folder,
        relevance, remove, set_probe, similar, sql, state_path, verify_receptive_fields, where,
    )


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        return getattr(import_module("onnx_nfi.api"), name)
    if name == "__version__":  # importlib.metadata costs ~50 ms: only when asked
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("onnx-nfi")
        except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'onnx_nfi' has no attribute {name!r}")
