"""The DuckDB schema: one file holds any number of models.

Every per-model table carries ``model`` so re-analysing one model replaces exactly its rows.
``neuron_id`` is a database-wide integer that is never reused, so a vector index can never
return a neuron that was replaced. Columns that later passes fill (NF, indexes) are created up
front and stay NULL until computed. ``neurons.saturated_top`` is how many of a neuron's top-N
entries share its largest score; ``top_activations.pre_activation`` is the pre-activation maximum
that ordered them (NULL for a layer without such an activation), so a stored top-N is the whole
state the scan kept. ``color_names`` holds each neuron's colour terms with share >= 0.01
(docs/method.md §9), ``neurons.top_color`` / ``top_color_share`` its largest; ``concept_labels`` its
concepts (§10). Both are keyed by ``neuron_id`` (rows of a neuron go with it: ``Store.delete_model``, ``import``).
``neurons.weak`` / ``weak_reason`` flag a live unit with too little evidence (§14, store/evidence.py).
"""

from __future__ import annotations

from onnx_nfi.names import INDEX_COLUMNS, INDEXES, VECTOR_TABLES, selectivity_columns  # noqa: F401  (the schema's columns and tables)

#: 2: ``neurons.nf`` holds bytes (``UTINYINT[]``, store/nf_storage.py); 1 held ``FLOAT[]``.
SCHEMA_VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS models (
    model VARCHAR PRIMARY KEY, path VARCHAR, sha256 VARCHAR, input_height INTEGER, input_width INTEGER,
    layout VARCHAR, preprocessing JSON, opset INTEGER, n_layers INTEGER, run_id INTEGER, analyzed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS images (
    model VARCHAR, image_id BIGINT, path VARCHAR, sha256 VARCHAR, label VARCHAR, label_source VARCHAR,
    PRIMARY KEY (model, image_id)
);
CREATE TABLE IF NOT EXISTS layers (
    model VARCHAR, layer VARCHAR, alias VARCHAR, op_type VARCHAR, depth INTEGER, relative_depth DOUBLE,
    channels INTEGER, height INTEGER, width INTEGER,
    rf_size_y INTEGER, rf_size_x INTEGER, rf_stride_y INTEGER, rf_stride_x INTEGER,
    rf_offset_y INTEGER, rf_offset_x INTEGER, rf_global BOOLEAN,
    PRIMARY KEY (model, layer)
);
CREATE TABLE IF NOT EXISTS neurons (
    model VARCHAR, layer VARCHAR, unit INTEGER, neuron_id BIGINT UNIQUE,
    max_activation FLOAT, mean_activation DOUBLE, std_activation DOUBLE, active_fraction DOUBLE, dead BOOLEAN,
    saturated_top INTEGER,
    nf UTINYINT[], nf_height INTEGER, nf_width INTEGER,
    {index_columns},
    weak BOOLEAN, weak_reason VARCHAR,
    PRIMARY KEY (model, layer, unit)
);
CREATE TABLE IF NOT EXISTS top_activations (
    model VARCHAR, layer VARCHAR, unit INTEGER, rank INTEGER, image_id BIGINT, y INTEGER, x INTEGER,
    activation FLOAT, pre_activation FLOAT
);
CREATE TABLE IF NOT EXISTS class_frequencies (
    model VARCHAR, layer VARCHAR, unit INTEGER, label VARCHAR, frequency DOUBLE
);
CREATE TABLE IF NOT EXISTS concept_labels (
    neuron_id BIGINT, concept VARCHAR, wnid VARCHAR, depth INTEGER, share DOUBLE, top_count INTEGER,
    labelled_top INTEGER, base_rate DOUBLE, enrichment DOUBLE, p_value DOUBLE, p_holm DOUBLE
);
CREATE TABLE IF NOT EXISTS color_names (neuron_id BIGINT, color VARCHAR, share DOUBLE);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, model VARCHAR, kind VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    images_seen BIGINT, images_skipped BIGINT, top_n INTEGER, provider VARCHAR, params JSON
);
CREATE TABLE IF NOT EXISTS skipped_images (run_id INTEGER, path VARCHAR, reason VARCHAR);
CREATE TABLE IF NOT EXISTS probe_images (probe_index INTEGER PRIMARY KEY, sha256 VARCHAR UNIQUE, path VARCHAR);
CREATE TABLE IF NOT EXISTS nf_vectors (neuron_id BIGINT PRIMARY KEY, vector FLOAT[768]);
CREATE TABLE IF NOT EXISTS index_vectors (neuron_id BIGINT PRIMARY KEY, vector FLOAT[{index_dim}]);
CREATE TABLE IF NOT EXISTS neuron_matches (
    model_a VARCHAR, layer_a VARCHAR, unit_a INTEGER, model_b VARCHAR, layer_b VARCHAR, unit_b INTEGER,
    score FLOAT, one_to_one BOOLEAN
);
CREATE TABLE IF NOT EXISTS relevance (
    neuron_id BIGINT PRIMARY KEY, images INTEGER, target VARCHAR, mode VARCHAR, prob_drop DOUBLE, flip_rate DOUBLE,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS relevance_classes (
    neuron_id BIGINT, rank INTEGER, class_index INTEGER, class_name VARCHAR, prob_drop DOUBLE
);
"""

#: Columns added after the first databases were written: a database opened for writing gains them
#: (NULL in the rows already there), so ``analyze`` can add models to it. Index columns are added
#: from the registry (:func:`added_columns_sql`).
ADDED_COLUMNS = """
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS saturated_top INTEGER;
ALTER TABLE top_activations ADD COLUMN IF NOT EXISTS pre_activation FLOAT;
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS weak BOOLEAN;
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS weak_reason VARCHAR;
"""


def index_columns() -> list[str]:
    """``name TYPE`` of every declared index's ``neurons`` columns (``names.INDEXES``), in its order."""
    return [f"{c.name} {c.sql}" for spec in INDEXES.values() for c in spec.columns]


def tables_sql() -> str:
    """The tables, with the ``neurons`` columns of every index declared now."""
    return TABLES.format(index_columns=", ".join(index_columns()), index_dim=len(INDEX_COLUMNS))


def added_columns_sql() -> str:
    """:data:`ADDED_COLUMNS`, and every declared index column a database written before it lacks."""
    return ADDED_COLUMNS + "".join(f"ALTER TABLE neurons ADD COLUMN IF NOT EXISTS {c};\n" for c in index_columns())

VIEWS = """
CREATE OR REPLACE VIEW layer_summary AS
SELECT
    l.model, l.layer, l.alias, l.depth, l.relative_depth, l.channels,
    count(n.unit) AS neurons,
    count(*) FILTER (WHERE n.dead) AS dead,
    count(*) FILTER (WHERE n.saturated_top > 1 AND NOT n.dead) AS saturated,
    {aggregates}
FROM layers l JOIN neurons n USING (model, layer)
GROUP BY ALL
ORDER BY l.model, l.depth;
"""


def layer_summary_sql() -> str:
    """``layer_summary``: per model and layer, counts and mean/median/p90 of every selectivity index column.

    ``saturated`` counts the live neurons whose largest score is shared by several top images
    (``neurons.saturated_top > 1``): their order and crops come from the pre-activation (docs/method.md §2).
    """
    aggregates = ",\n    ".join(
        f"avg({c}) AS {c}_mean, median({c}) AS {c}_median, quantile_cont({c}, 0.9) AS {c}_p90"
        for c in selectivity_columns()
    )
    return VIEWS.format(aggregates=aggregates)


# Search vector tables (``names.VECTOR_TABLES``): dead or constant neurons have no row.
# ``response_vectors`` is created by :func:`response_vectors_sql` once the probe set, and so the
# array length, is known.


def response_vectors_sql(probe_size: int) -> str:
    """``response_vectors``: one ``FLOAT[P]`` profile per neuron over the database's P probe images.

    A fixed-size array (not ``FLOAT[]``) so that SQL users can call ``array_cosine_similarity``.
    """
    return f"CREATE TABLE IF NOT EXISTS response_vectors (neuron_id BIGINT PRIMARY KEY, vector FLOAT[{int(probe_size)}]);"
