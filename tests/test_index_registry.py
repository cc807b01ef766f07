"""The index registry is one place: a declaration alone (columns, measure, help, docs section) gives an
index its column, its value and its ``--by`` option; and every declared index is complete."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import PLANTED, ROOT
from planted_data import write_image_folder

from onnx_nfi import api
from onnx_nfi.config import HELP, AnalyzeConfig
from onnx_nfi.errors import ConfigError
from onnx_nfi.names import INDEXES, Column, IndexSpec, register_index
from onnx_nfi.neurons.indexes import IndexResult, Measure, measure, transformed
from onnx_nfi.neurons.measures import per_layer
from onnx_nfi.pipeline.caveats import caveats

MODEL = "planted_selectivity"


def _dummy_columns(a: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    """``dummy_selectivity``: mean over the positive top scores / the largest; ``dummy_echo``: mean of
    a'/a over those entries, a' read after an identity whole-image pass (so 1 where the pass is right)."""
    live = a > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(live, a, 0).sum(axis=1) / live.sum(axis=1) / a[:, 0]
        echo = np.where(live, responses[0] / a, 0).sum(axis=1) / live.sum(axis=1)
    return {"dummy_selectivity": mean, "dummy_echo": echo}


#: The dummy's measure: one whole-image pass (the images unchanged) and the formula above.
DUMMY = Measure(per_layer(1, _dummy_columns), whole=lambda config: transformed(lambda images: images))


def _window_echo(a: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of a'/a over the positive entries and both variants (the RF window left as it is: 1)."""
    live = a > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(live, responses / a, 0).sum(axis=(0, 2)) / (len(responses) * live.sum(axis=1))
    return {"dummy_window_echo": ratio}


#: A second dummy with two region variants (the RF window copied unchanged, and its copy again).
WINDOW = Measure(per_layer(2, _window_echo), region=lambda config: [lambda img, win, key: img.copy()] * 2)


@pytest.fixture()
def dummy() -> Iterator[IndexSpec]:
    """The dummy index, declared for the test only."""
    spec = register_index(IndexSpec(
        "dummy", "mean top score over the largest",
        (Column("dummy_selectivity", "DOUBLE"), Column("dummy_echo", "DOUBLE")), f"{__name__}:DUMMY", "§2",
        selectivity=True,
    ))
    window = register_index(IndexSpec(
        "dummy_window", "the RF window unchanged", (Column("dummy_window_echo", "DOUBLE"),), f"{__name__}:WINDOW", "§7",
    ))
    yield spec
    INDEXES.pop(spec.name)
    INDEXES.pop(window.name)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry") / "images"
    write_image_folder(root, n_per_class=6, seed=5)
    return root


def expected_dummy(db: Path) -> dict[tuple[str, int], float]:
    """The dummy's value per (layer, unit), from the stored top activations, independently of the product."""
    found: dict[tuple[str, int], list[float]] = {}
    rows = query(db, "SELECT layer, unit, activation FROM top_activations WHERE model = ?", [MODEL])
    for layer, unit, activation in rows:
        found.setdefault((layer, unit), []).append(activation)
    out = {}
    for key, values in found.items():
        v = np.asarray(values, np.float64)
        out[key] = float(v[v > 0].mean() / v.max()) if (v > 0).any() else float("nan")
    return out


def check_dummy_values(db: Path) -> None:
    want = expected_dummy(db)
    rows = query(db, "SELECT layer, unit, dead, dummy_selectivity, dummy_echo, dummy_window_echo FROM neurons "
                     "WHERE model = ?", [MODEL])
    assert len(rows) == len(want) > 0
    live = [r for r in rows if not r[2]]
    assert len(live) > 10
    for layer, unit, _, value, echo, window in live:
        assert value == pytest.approx(want[layer, unit], rel=1e-5), (layer, unit)
        assert echo == pytest.approx(1.0, abs=1e-4) and window == pytest.approx(1.0, abs=1e-4), (layer, unit)
    assert all(r[3] is None or np.isnan(r[3]) for r in rows if r[2])  # dead units have no value


def test_a_declared_index_is_computed_stored_and_ranked_by(dummy: IndexSpec, images: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(PLANTED, images, db=db, config=AnalyzeConfig(top_n=10, nf=False, indexes=("class", "dummy", "dummy_window")))
    check_dummy_values(db)
    r = invoke("top", MODEL, "conv1", "--by", "dummy", "-k", 4, "-o", tmp_path / "top.png", "--db", db)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "top.png").stat().st_size > 0
    r = invoke("top", MODEL, "conv1", "--by", "dummy_nothing", "-o", tmp_path / "no.png", "--db", db)
    assert r.exit_code != 0 and "dummy_selectivity" in r.output  # the choices offered include the new column
    summary = query(db, "SELECT dummy_selectivity_mean FROM layer_summary WHERE model = ?", [MODEL])
    assert summary and all(0 < m <= 1 for (m,) in summary)


def test_a_database_written_before_the_declaration_gains_its_columns(images: Path, tmp_path: Path, request) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(PLANTED, images, db=db, config=AnalyzeConfig(top_n=10, nf=False, indexes=("class",)))
    assert "dummy_selectivity" not in {c for (c,) in query(db, "SELECT column_name FROM (DESCRIBE neurons)")}
    request.getfixturevalue("dummy")
    r = invoke("index", MODEL, "--indexes", "dummy,dummy_window", "--db", db)
    assert r.exit_code == 0, r.output
    check_dummy_values(db)


def test_the_declaration_gives_validation_and_range_warnings(dummy: IndexSpec) -> None:
    assert AnalyzeConfig(indexes="dummy,color").indexes == ("color", "dummy")
    assert "dummy" in AnalyzeConfig(indexes="all").indexes
    values = {"dummy_selectivity": np.array([1.5, 0.5, -0.25, np.nan])}
    warnings = caveats([], IndexResult({"conv1": values}))
    assert warnings == (
        "dummy_selectivity of 2 unit(s) is outside [0, 1] (1 below 0, 1 above 1); it is not clipped: "
        "see docs/method.md §2, Range",
    )


def test_an_undeclared_or_clashing_index_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown index dummy"):
        AnalyzeConfig(indexes="dummy")
    with pytest.raises(ConfigError, match="already declared"):
        register_index(IndexSpec("again", "x", (Column("color_selectivity", "DOUBLE"),), "m:X", "§5"))
    with pytest.raises(ConfigError, match="already declared"):
        register_index(IndexSpec("color", "x", (Column("other", "DOUBLE"),), "m:X", "§5"))
    assert "again" not in INDEXES


def test_every_declared_index_is_complete(tmp_path: Path) -> None:
    """Each index: its columns in a new database with their types, a measure, help text (in ``--indexes``'
    help), a section of docs/method.md, and its name in the README; selectivity ones in ``layer_summary``."""
    db = tmp_path / "nfi.duckdb"
    from onnx_nfi.store.duckdb_store import Store

    with Store.open(db):
        pass
    with duckdb.connect(str(db), read_only=True) as con:
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE neurons)").fetchall())
        summary = {c for (c,) in con.execute("SELECT column_name FROM (DESCRIBE layer_summary)").fetchall()}
    method = (ROOT / "docs" / "method.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert len(INDEXES) >= 7
    for name, spec in INDEXES.items():
        assert spec.name == name and spec.columns
        for column in spec.columns:
            assert types.get(column.name) == column.sql, (name, column)
        m = measure(name)
        assert isinstance(m, Measure) and callable(m.formula), name
        assert spec.help.strip() and f"{name} ({spec.help})" in HELP["indexes"], name
        assert re.search(rf"^## {spec.section} \S", method, re.M), (name, spec.section)
        assert re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", readme), name
        if spec.selectivity:
            assert f"{spec.columns[0].name}_mean" in summary, name
    invoke_help = invoke("analyze", "--help").output
    assert "color_names" in invoke_help and "concepts" in invoke_help


def test_every_vector_kind_is_complete() -> None:
    """Each search vector kind: its table in the schema, its help in ``similar --by``, why a neuron may lack one."""
    from onnx_nfi.names import VECTORS
    from onnx_nfi.search.records import MISSING_REASON
    from onnx_nfi.store.schema import response_vectors_sql, tables_sql

    schema = tables_sql() + response_vectors_sql(8)
    by_help = re.sub(r"[│\s]+", " ", invoke("similar", "--help").output)  # the help box's borders and wraps out
    assert tuple(VECTORS) == ("response", "nf", "indexes")
    for name, kind in VECTORS.items():
        assert f"CREATE TABLE IF NOT EXISTS {kind.table} (neuron_id BIGINT PRIMARY KEY" in schema, name
        assert f"{name} ({kind.help})" in by_help, name
        assert MISSING_REASON[name] == kind.missing and kind.missing.strip(), name


def test_label_sources_and_presets_are_declared_once() -> None:
    """``--labels`` and ``--preprocess``: the help, the parser's error and the README name every declared one."""
    from onnx_nfi.data.images import parse_label_option
    from onnx_nfi.data.preprocess import PRESETS as USED_PRESETS
    from onnx_nfi.errors import ImageError
    from onnx_nfi.names import LABEL_SOURCES, PRESETS

    readme = (ROOT / "README.md").read_text()
    analyze_help = re.sub(r"[│\s]+", " ", invoke("analyze", "--help").output)
    with pytest.raises(ImageError) as refused:
        parse_label_option("filenames")
    for name, source in LABEL_SOURCES.items():
        assert source.form in analyze_help and f"`{source.form}`" in readme, name
        assert parse_label_option(source.form.split("[")[0].replace("FILE", "x.csv"))[0] == name
        assert name == "auto" or source.form in str(refused.value), name
    assert USED_PRESETS is PRESETS
    for name in PRESETS:
        assert name in HELP["preprocess"] and f"`{name}`" in readme, name
