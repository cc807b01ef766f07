"""Search queries over a database: similar neurons (``similar``) and neuron matching between two
models (``match``), with their result records.

The vectors they compare and the FAISS indexes kept in step with DuckDB are storage
(``onnx_nfi.store.vectors``); the probe set the response vectors are measured on is chosen and scored
by the pipeline (``onnx_nfi.pipeline.probe``); pictures of the results are in ``onnx_nfi.report``.
"""

from onnx_nfi.errors import SearchError
from onnx_nfi.names import parse_neuron
from onnx_nfi.search.match import match
from onnx_nfi.search.records import LayerBest, MatchResult, Neuron, SimilarResult
from onnx_nfi.search.similar import similar, similar_many

__all__ = [
    "LayerBest", "MatchResult", "Neuron", "SearchError", "SimilarResult", "match", "parse_neuron", "similar",
    "similar_many",
]
