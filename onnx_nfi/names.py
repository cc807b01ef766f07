"""The registries of names users pick things by: indexes, search vector kinds, neurons, model names.

One declaration per index (``INDEXES``) and per vector kind (``VECTORS``), read by the config
(validation, help), the schema (columns, tables), the index passes (which measure to run), the
summary's caveats and the CLI (choices and help), so a new index or vector kind is added in exactly
one place. This module imports nothing heavy: the CLI reads it to build ``--help``, and an index's
measure is named by ``"module:attribute"`` and imported only when an analysis runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from onnx_nfi.errors import ConfigError


class Column(NamedTuple):
    """A ``neurons`` column an index fills: its name and DuckDB type."""

    name: str
    sql: str


class IndexSpec(NamedTuple):
    """One index, declared once: everything but its formula, so that the schema (columns), the
    passes an analysis runs (``compute``), the summary's range warnings, the help texts and the docs
    checks all follow from this declaration.

    ``compute`` is ``"module:attribute"`` of the index's ``neurons.indexes.Measure`` (its passes,
    variants and formula), imported only when an analysis runs, so this module stays light.
    ``selectivity``: the first column is one number per neuron, aggregated in ``layer_summary`` and
    checked against [0, 1] (``section`` of docs/method.md states its range)."""

    name: str
    help: str
    columns: tuple[Column, ...]
    compute: str
    section: str
    selectivity: bool = False
    default: bool = False


def _index(
    name: str, help: str, columns: str, section: str, *, selectivity: bool = True, default: bool = False
) -> IndexSpec:
    """A built-in index: ``columns`` as ``"name TYPE, name TYPE"``; its measure is ``neurons.measures.<NAME>``."""
    cols = tuple(Column(*c.split()) for c in columns.split(","))
    return IndexSpec(name, help, cols, f"onnx_nfi.neurons.measures:{name.upper()}", section, selectivity, default)


#: Every index ``--indexes`` understands, in canonical order (``register_index`` adds one). The
#: selectivity indexes come first; ``color_names`` also fills table ``color_names``, ``concepts``
#: table ``concept_labels``, ``class`` table ``class_frequencies``.
INDEXES: dict[str, IndexSpec] = {spec.name: spec for spec in (
    _index("color", "colour selectivity", "color_selectivity DOUBLE", "§5", default=True),
    _index("class", "class selectivity", "class_selectivity DOUBLE, top_class VARCHAR, top_class_frequency DOUBLE, "
           "population_code INTEGER", "§6", default=True),
    _index("orientation", "orientation selectivity",
           "orientation_selectivity DOUBLE, orientation_by_angle DOUBLE[]", "§7"),
    _index("symmetry", "symmetry selectivity", "symmetry_selectivity DOUBLE, symmetry_by_axis DOUBLE[]", "§7"),
    _index("shape", "shape selectivity", "shape_selectivity DOUBLE", "§7"),
    _index("color_names", "each neuron's colour terms", "top_color VARCHAR, top_color_share DOUBLE", "§9",
           selectivity=False),
    _index("concepts", "concept labels", "concept VARCHAR, concept_p DOUBLE", "§10", selectivity=False, default=True),
)}


def register_index(spec: IndexSpec) -> IndexSpec:
    """Add an index to ``INDEXES`` (after the built-in ones): ``--indexes`` accepts it, a database
    opened for writing gains its columns, and an analysis in this process runs its measure (a Ray
    run's workers know only the indexes declared when ``onnx_nfi.names`` is imported)."""
    taken = {c.name for s in INDEXES.values() for c in s.columns}
    if spec.name in (*INDEXES, "all", "none") or not spec.columns or taken & {c.name for c in spec.columns}:
        raise ConfigError(f"index {spec.name!r} is already declared, or has no columns or a column already taken")
    INDEXES[spec.name] = spec
    return spec


def index_names() -> tuple[str, ...]:
    """The names of every declared index, in canonical order."""
    return tuple(INDEXES)


def selectivity_columns() -> tuple[str, ...]:
    """The value column of every declared selectivity index, in canonical order."""
    return tuple(s.columns[0].name for s in INDEXES.values() if s.selectivity)


#: The built-in index names understood by ``--indexes`` (``all`` means every declared one).
INDEX_NAMES = index_names()
#: The indexes an analysis computes unless told otherwise.
DEFAULT_INDEXES = tuple(s.name for s in INDEXES.values() if s.default)
#: The built-in selectivity columns (one number per neuron each), in canonical order: the index vector's dimensions.
INDEX_COLUMNS = selectivity_columns()

#: The 11 basic colour terms of colour names (``color_names.color``), in the naming model's order.
COLOR_TERMS = ("red", "orange", "brown", "yellow", "green", "blue", "purple", "pink", "black", "grey", "white")


class VectorKind(NamedTuple):
    """A kind of search vector (docs/method.md §8), declared once: its ``--by`` name, its table (keyed
    by ``neurons.neuron_id``), what it is (help) and why a neuron may have none (the error that says so)."""

    name: str
    table: str
    help: str
    missing: str


#: Search vectors by kind, in the order ``--by`` lists them.
VECTORS: dict[str, VectorKind] = {v.name: v for v in (
    VectorKind("response", "response_vectors", "profile over the probe set",
               "dead or constant on the probe set, or analysed before the database had one"),
    VectorKind("nf", "nf_vectors", "the Neuron Feature at 16x16", "dead, or analysed with --no-nf"),
    VectorKind("indexes", "index_vectors", "the selectivity indexes", "dead, or analysed with --indexes none"),
)}
#: The ``--by`` choices and their tables.
VECTOR_TABLES = {v.name: v.table for v in VECTORS.values()}
VECTOR_KINDS = tuple(VECTORS)


def _preset(name: str, mean: tuple, std: tuple, pixel_scale: float, order: str) -> dict[str, Any]:
    return {"name": name, "mean": mean, "std": std, "pixel_scale": pixel_scale, "channel_order": order}


#: Named normalisations (``--preprocess NAME``). Geometry (input size, resize, crop) comes from the model.
PRESETS: dict[str, dict[str, Any]] = {
    "torchvision": _preset("torchvision", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255, "RGB"),
    "inception": _preset("inception", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), 1.0, "RGB"),
    "caffe": _preset("caffe", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), 1.0, "BGR"),
    "raw": _preset("raw", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, "RGB"),
}


class LabelSource(NamedTuple):
    """Where image labels come from (``--labels``): its name, how it is written, and what it means."""

    name: str
    form: str
    help: str = ""


#: The ``--labels`` sources, in the order the help lists them (``auto``: folder when there are sub-folders).
LABEL_SOURCES: dict[str, LabelSource] = {s.name: s for s in (
    LabelSource("auto", "auto"),
    LabelSource("folder", "folder", "sub-folder names"),
    LabelSource("csv", "csv:FILE"),
    LabelSource("predicted", "predicted[:CLASSNAMES.txt]"),
    LabelSource("none", "none"),
)}


def parse_neuron(text: str) -> tuple[str, str, int]:
    """``MODEL:LAYER:UNIT`` -> (model, layer, unit), the one way a neuron is named in commands,
    pages and the API. LAYER is an alias (``conv3``) or a tensor name, which may itself contain ':'."""
    from onnx_nfi.refs import NeuronRef  # here: --help need not build it

    ref = NeuronRef.parse(text)
    return ref.model, ref.layer, ref.unit

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
