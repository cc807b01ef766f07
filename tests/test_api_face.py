"""One API face: every command has a Python twin in ``onnx_nfi`` whose ``db`` is keyword-only, the
package exports exactly the API's names, an index run stores exactly its own options, and the picture
verbs can share one open database."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
from cli_helpers import invoke, query
from conftest import ROOT, TINY
from typer.main import get_command

import onnx_nfi
from onnx_nfi import api
from onnx_nfi.cli import app
from onnx_nfi.config import AnalyzeConfig, IndexConfig
from onnx_nfi.names import API_NAMES, COMMAND_VERBS
from onnx_nfi.report import relevance_plot, render
from onnx_nfi.report.site import build

#: Commands that read or write no database (a model file, or a folder of their own).
WITHOUT_DB = {"layers", "demo"}


def cli_commands() -> set[str]:
    return set(get_command(app).commands)  # type: ignore[attr-defined]


def readme_commands() -> set[str]:
    """Every command the README shows as ``onnx-nfi NAME`` (prose like "give onnx-nfi a model" aside)."""
    return set(re.findall(r"\bonnx-nfi ([a-z][a-z-]*)\b", (ROOT / "README.md").read_text())) & cli_commands()


def twin(command: str) -> object:
    """The package's verb for ``command``: its own name with '_' for '-', unless COMMAND_VERBS says."""
    return getattr(onnx_nfi, COMMAND_VERBS.get(command, command.replace("-", "_")))


def test_the_readme_shows_every_command() -> None:
    assert readme_commands() == cli_commands()


@pytest.mark.parametrize("command", sorted(readme_commands() | {"grid"}))  # grid: ``nf --grid``
def test_every_command_has_a_twin_whose_db_is_keyword_only(command: str) -> None:
    verb = twin(command)
    assert callable(verb) and verb is getattr(api, verb.__name__)
    params = inspect.signature(verb).parameters
    if command in WITHOUT_DB:
        assert "db" not in params
        return
    assert params["db"].kind is inspect.Parameter.KEYWORD_ONLY, f"{command}: db is {params['db'].kind}"


@pytest.mark.parametrize("function", [
    render.nf_png, render.grid_png, render.top_png, render.card_png, render.summary_png, render.names_png,
    relevance_plot.relevance_png, build.build_report, *(getattr(api, n) for n in API_NAMES if n[0].islower()),
], ids=lambda f: f.__name__)
def test_every_public_function_that_takes_a_db_takes_it_by_keyword(function: Callable[..., object]) -> None:
    db = inspect.signature(function).parameters.get("db")
    assert db is None or db.kind is inspect.Parameter.KEYWORD_ONLY


def test_the_package_is_the_api() -> None:
    assert api.__all__ == list(API_NAMES) and len(set(API_NAMES)) == len(API_NAMES)
    assert onnx_nfi.__all__ == ["AnalyzeConfig", "NfiError", "__version__", *api.__all__]
    for name in api.__all__:
        assert getattr(onnx_nfi, name) is getattr(api, name), name
    assert onnx_nfi.IndexConfig is IndexConfig


#: The index options as the test gives them, and as the stored parameters must read (JSON: lists).
GIVEN = {"indexes": ("class", "color"), "layers": ("conv2",), "color_mode": "region", "rho": 0.9, "seed": 3,
         "batch_size": 5, "provider": "cpu", "lock_timeout": 7.5, "threads": 2}
STORED = {"indexes": ["color", "class"], "layers": ["conv2"], "color_mode": "region", "rho": 0.9, "seed": 3,
          "batch_size": 5, "provider": "cpu", "lock_timeout": 7.5, "threads": 2}


def runs(db: Path, kind: str) -> list[dict]:
    return [json.loads(p) for (p,) in query(db, "SELECT params FROM runs WHERE kind = ? ORDER BY run_id", [kind])]


def test_an_index_run_stores_exactly_its_own_options(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=6, nf=False, indexes=("color",), batch_size=16))
    api.index("tiny_lite0", db=db, config=IndexConfig(**GIVEN))
    result = invoke("index", "tiny_lite0", "--db", db, "--indexes", "color", "--rho", "0.5", "--silent")
    assert result.exit_code == 0, result.output
    analysed, = runs(db, "analyze")
    through_api, through_cli = runs(db, "index")
    assert through_api == STORED and set(through_api) == {f.name for f in fields(IndexConfig)}
    assert through_cli == {"indexes": ["color"], "layers": [], "color_mode": "image", "rho": 0.5, "seed": 0,
                           "batch_size": 32, "provider": "auto", "lock_timeout": 60.0, "threads": 1}
    assert analysed["top_n"] == 6 and analysed["batch_size"] == 16  # the analysis's own run is untouched


def test_pictures_can_share_one_open_database(photo_dir: Path, tmp_path: Path) -> None:
    """What the demo does: every picture verb drawn from one open store, which stays open for the next."""
    from onnx_nfi.store.duckdb_store import Store

    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=4, indexes=("color", "class"), layers=("conv2",)))
    with Store.open(db, read_only=True) as store:
        drawn = [
            api.nf("tiny_lite0:conv2:1", tmp_path / "nf.png", db=store).path,
            api.grid("tiny_lite0", "conv2", tmp_path / "grid.png", db=store, per_page=8).path,
            api.top("tiny_lite0", "conv2", "color", tmp_path / "top.png", db=store, k=3).path,
            api.card("tiny_lite0:conv2:1", tmp_path / "card.png", db=store, top=3).path,
            api.summary(tmp_path / "summary.png", ["tiny_lite0"], ["color_selectivity"], db=store).path,
        ]
        assert store.query("SELECT count(*) FROM neurons")[1] == [(32,)]  # still open, and the same database
    for path in drawn:
        assert path.stat().st_size > 1000, path
    alone = api.nf("tiny_lite0:conv2:1", tmp_path / "nf_alone.png", db=db)  # and the file itself, opened here
    assert alone.path.read_bytes() == drawn[0].read_bytes()
