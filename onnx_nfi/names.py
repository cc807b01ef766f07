"""The registries of names users pick things by: selectivity indexes and search vector kinds.

One table each, imported by the config (validation), the schema (columns), the search (tables) and
the CLI (choices and help), so a new index or vector kind is added in exactly one place. This module
imports nothing heavy: the CLI reads it to build ``--help``.
"""

from __future__ import annotations

from onnx_nfi.errors import ConfigError, SearchError

#: The selectivity indexes: one number per neuron each (``neurons.<name>_selectivity``), in canonical order.
SELECTIVITY_INDEXES = ("color", "class", "orientation", "symmetry", "shape")
#: Index names understood by ``--indexes`` (``all`` means every one), in canonical order: the
#: selectivity indexes, then the neuron descriptions (``color_names``: table ``color_names`` and
#: ``neurons.top_color``; ``concepts``: table ``concept_labels`` and ``neurons.concept``).
INDEX_NAMES = (*SELECTIVITY_INDEXES, "color_names", "concepts")
#: The indexes an analysis computes unless told otherwise.
DEFAULT_INDEXES = ("color", "class", "concepts")
#: The ``neurons`` column holding each selectivity index's value, in ``SELECTIVITY_INDEXES`` order.
INDEX_COLUMNS = tuple(f"{name}_selectivity" for name in SELECTIVITY_INDEXES)

#: The 11 basic colour terms of colour names (``color_names.color``), in the naming model's order.
COLOR_TERMS = ("red", "orange", "brown", "yellow", "green", "blue", "purple", "pink", "black", "grey", "white")

#: Search vectors by kind (docs/method.md, "Similar neurons"): the ``--by`` choices and their tables,
#: keyed by ``neurons.neuron_id``.
VECTOR_TABLES = {"response": "response_vectors", "nf": "nf_vectors", "indexes": "index_vectors"}
VECTOR_KINDS = tuple(VECTOR_TABLES)


def parse_neuron(text: str) -> tuple[str, str, int]:
    """``MODEL:LAYER:UNIT`` -> (model, layer, unit), the one way a neuron is named in commands,
    pages and the API. LAYER is an alias (``conv3``) or a tensor name, which may itself contain ':'."""
    parts = text.split(":")
    unit = parts[-1].strip()
    if len(parts) < 3 or not parts[0] or not ":".join(parts[1:-1]) or not (unit.isascii() and unit.isdigit()):
        raise SearchError(f"bad neuron {text!r}; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)")
    return parts[0], ":".join(parts[1:-1]), int(unit)

#: Names at the root of the neuron browser (static site and ``serve``) that a model's folder would hide.
SITE_NAMES = (
    "static", "search", "sql", "query", "where", "index.html", "manifest.json", "selectivity.png", "find", "find.html",
    "find-index.js",
)


def check_model_name(name: str) -> None:
    """Refuse a model name that neurons or the browser could not address: ``MODEL:LAYER:UNIT``
    splits at ':', and a model's pages live in a folder named after it at the browser's root."""
    if not name.strip() or ":" in name:
        raise ConfigError(f"model name {name!r} cannot be empty or contain ':' (neurons are named MODEL:LAYER:UNIT); "
                          "choose another with --name")
    if name in SITE_NAMES:
        raise ConfigError(f"model name {name!r} is taken by the neuron browser's own pages; choose another with --name")


#: The database file commands use unless given ``--db``.
DEFAULT_DB = "nfi.duckdb"

#: Every name ``onnx_nfi.api`` exports: one verb per command (``import`` is ``import_db``, ``probe``
#: is ``set_probe``, ``report`` is ``build_report``: ``onnx_nfi.report`` is a package; ``nf --grid`` is
#: ``grid``), the helpers beside them and the results they return.
#: Kept here, where importing costs nothing, so that ``onnx_nfi`` can list them without loading the API.
API_NAMES = (
    "AnalysisSummary", "CompactSummary", "DemoResult", "Drawn", "IndexConfig", "IndexSummary", "LayerInfo",
    "LayerListing", "ProbeSummary", "QueryResult", "QueryTable", "RFVerification", "RelevanceSummary",
    "ReportSummary", "Serving", "ShardSummary", "SummaryPicture", "WhereResult", "analyze", "build_report", "card",
    "color_memberships", "compact", "demo", "describe", "export_parquet", "find", "grid", "import_db", "index",
    "layers", "match", "merge", "nf", "parse_shard", "query", "query_folder", "relevance", "remove", "serve",
    "set_probe", "similar", "sql", "state_path", "summary", "top", "verify_receptive_fields", "where",
)
#: The API verb of each command whose name is not its verb's.
COMMAND_VERBS = {"import": "import_db", "probe": "set_probe", "report": "build_report"}
