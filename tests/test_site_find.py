"""Word search in the neuron browser, in Chromium: the static site's client-side index from file://
and ``serve``'s ``/find`` give what ``onnx_nfi.find`` gives; descriptions on pages; layer filters."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from cli_helpers import invoke
from test_find import M, words_db  # noqa: F401  (the hand-labelled database)
from test_site import browser, open_page, serving  # noqa: F401  (Chromium, as the other browser tests use it)

from onnx_nfi import api

QUERIES = ("red dog", "dog", "dogs", "animal", "orange", "toy dog", "bird", "green dog", "gizmo_xq")


@pytest.fixture(scope="module")
def site(words_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("find_site") / "site"
    result = invoke("report", "--db", words_db, "-o", out, "--silent")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def server(words_db: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    from onnx_nfi.report.serve import create_app

    served = tmp_path_factory.mktemp("find_served") / "nfi.duckdb"
    shutil.copy(words_db, served)
    yield from serving(create_app(served))


def found(page) -> list[str]:
    return page.eval_on_selector_all("#find-results li a", "as => as.map(a => a.textContent)")


def check_find(browser, find_url: str, words_db: Path, *, static: bool) -> None:  # noqa: F811
    """The checks shared by the static page and the server; ``find_url`` takes ``?q=...``."""
    for words in QUERIES:
        page = open_page(browser, f"{find_url}?q={quote_plus(words)}")
        assert found(page) == [h.neuron for h in api.find(words, db=words_db, k=50).hits], words
        assert page.errors == []
    page = open_page(browser, f"{find_url}?q=red+dog")
    assert page.eval_on_selector_all("#find-results .description", "ds => ds.map(d => d.textContent)") == [
        "red · dog (f 0.62, ×38, p 3e-40)", "red · Chihuahua (f 0.80, ×40, p 1e-12)",
    ]
    page.click("#find-results li a >> nth=0")
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == f"{M} / conv4 / unit 1"
    assert page.locator("#description").inner_text() == "red · dog (f 0.62, ×38, p 3e-40)"
    page = open_page(browser, f"{find_url}?q=dgo")
    assert page.locator("#find-error").is_visible() and "closest known: dog" in page.locator("#find-error").inner_text()
    page = open_page(browser, f"{find_url}?q=hound")
    assert found(page) == []
    if static:  # the static index knows the concepts of the report, not all of WordNet
        assert "'hound' is no colour term or concept in this report" in page.locator("#find-error").inner_text()
    else:
        assert page.locator("#find-none").is_visible() and not page.locator("#find-error").is_visible()


def test_static_find_in_browser(browser, site: Path, words_db: Path) -> None:  # noqa: F811
    check_find(browser, (site / "find.html").as_uri(), words_db, static=True)
    # the header's search box, from a page two folders down
    page = open_page(browser, (site / M / "conv4" / "index.html").as_uri())
    page.fill("form.find input", "bird")
    page.press("form.find input", "Enter")
    page.wait_for_load_state("load")
    assert found(page) == [f"{M}:conv3:5"]
    assert page.errors == []


def test_layer_page_filters_by_concept_and_colour(browser, site: Path) -> None:  # noqa: F811
    page = open_page(browser, (site / M / "conv4" / "index.html").as_uri())
    visible = "#grid a.tile:visible"
    page.select_option("#concept", "dog")
    assert page.eval_on_selector_all(visible, "ts => ts.map(t => t.dataset.unit)") == ["1"]
    assert page.locator("#grid a.tile[data-unit='1']").get_attribute("title") == "red · dog (f 0.62, ×38, p 3e-40)"
    page.select_option("#concept", "")
    page.select_option("#color", "red")
    assert page.eval_on_selector_all(visible, "ts => ts.map(t => t.dataset.unit)") == ["1", "2"]
    assert page.errors == []


def test_serve_find_in_browser(browser, server: str, words_db: Path) -> None:  # noqa: F811
    check_find(browser, f"{server}find", words_db, static=False)
    page = open_page(browser, f"{server}index.html")
    page.fill("form.find input", "red dog")
    page.press("form.find input", "Enter")
    page.wait_for_load_state("load")
    assert found(page) == [f"{M}:conv4:1", f"{M}:conv4:2"]
