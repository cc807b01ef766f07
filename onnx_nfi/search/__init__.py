"""Search verbs: the probe set, the three vectors per neuron, FAISS in step with DuckDB, similar, match, remove.

Modules: ``probe`` (the shared probe set), ``vectors`` (vectors in DuckDB, FAISS kept in step, remove),
``similar``, ``match``, ``records`` (result records and errors).

DuckDB is the truth; the FAISS indexes beside it (``<db>.faiss/<kind>.index``) are a cache that is
brought in step after every commit (``sync_indexes``) and checked again before every search. Each
index file has a companion ``<kind>.ids.npy`` (the sorted neuron ids it holds), written after the
index, so a crash between the database commit and the index save, or between the two files, is
seen as a disagreement and repaired. Searches are also restricted to neuron ids that DuckDB holds
now, so a replaced or removed neuron (ids are never reused) is never served.

The probe set (ALGORITHMS.md §8) belongs to the database: the first analysis picks it (up to
``probe_size`` images evenly spaced over its sorted image list, identified by content hash), or
``onnx-nfi probe DIR`` sets it. Every later model is scored on exactly those images, in its own scan
where they are among its images, else in an extra pass over their stored paths.
"""

from onnx_nfi.search.match import match
from onnx_nfi.search.probe import choose_probe, complete_probe_scores, probe_for_analysis, set_probe
from onnx_nfi.search.records import (
    LayerBest,
    MatchResult,
    Neuron,
    ProbeSet,
    ProbeSummary,
    RemoveSummary,
    SearchError,
    SimilarResult,
)
from onnx_nfi.search.similar import parse_neuron, similar, similar_many
from onnx_nfi.search.vectors import index_dir, read_probe, remove, store_index_vectors, store_vectors, sync_indexes

__all__ = [
    "LayerBest", "MatchResult", "Neuron", "ProbeSet", "ProbeSummary", "RemoveSummary", "SearchError", "SimilarResult",
    "choose_probe", "complete_probe_scores", "index_dir", "match", "parse_neuron", "probe_for_analysis", "read_probe",
    "remove", "set_probe", "similar", "similar_many", "store_index_vectors", "store_vectors", "sync_indexes",
]
