"""The neuron browser in a real browser: the static report from file:// and ``serve`` over HTTP.

A real database (the tiny model analysed twice under two names over real photos, one class folder
named like an HTML injection) is built once; what the pages show is compared with SQL run here.
Chromium is Debian's package used as it is; under CI a missing browser fails these tests.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from cli_helpers import invoke, query
from conftest import TINY

from onnx_nfi.api import analyze
from onnx_nfi.config import AnalyzeConfig

HOSTILE = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site_db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """Two analyses of the tiny model over photos in two classes, one of them with a hostile name."""
    images = tmp_path_factory.mktemp("site_images")
    photos = sorted(p for p in photo_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:24]
    for k, photo in enumerate(photos):
        folder = images / (HOSTILE if k % 2 else "cat")
        folder.mkdir(exist_ok=True)
        shutil.copy(photo, folder / f"{k}{photo.suffix}")
    db = tmp_path_factory.mktemp("site") / "nfi.duckdb"
    for name in ("tiny", "tiny_b"):
        analyze(TINY, images, db=db, name=name, config=AnalyzeConfig(top_n=8))
    return db


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: install Debian's chromium package (make test does when root)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(site_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "site"
    result = invoke("report", "--db", site_db, "-o", out, "--silent")
    assert result.exit_code == 0, result.output
    assert "2 model(s) written" in result.output
    return out


def open_page(browser, url: str):
    """A page with its console errors and dialogs recorded."""
    page = browser.new_page()
    page.errors, page.dialogs = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_load_state("load")
    return page


def layer_row(db: Path, model: str = "tiny") -> tuple[str, str, int]:
    """The deepest layer (alias, tensor, channels): several units, indexes computed."""
    return query(db, "SELECT alias, layer, channels FROM layers WHERE model = ? ORDER BY depth DESC LIMIT 1", [model])[0]


def check_site(browser, base: str, db: Path) -> None:
    """The checks shared by the static report and the server; ``base`` ends with '/'."""
    suffix = "index.html"
    alias, tensor, channels = layer_row(db)
    # layer grid: every unit's NF, in unit order, and sorting by colour index as the database says
    page = open_page(browser, f"{base}tiny/{alias}/{suffix}")
    tiles = page.locator("#grid a.tile")
    assert tiles.count() == channels
    units = [int(u) for u in page.eval_on_selector_all("#grid a.tile", "ts => ts.map(t => t.dataset.unit)")]
    assert units == list(range(channels))
    with_nf = {u for (u,) in query(db, "SELECT unit FROM neurons WHERE model='tiny' AND layer=? AND nf IS NOT NULL", [tensor])}
    loaded = page.eval_on_selector_all(
        "#grid a.tile img", "is => is.map(i => [parseInt(i.closest('a').dataset.unit), i.complete && i.naturalWidth])"
    )
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)")
    assert {u for u, _ in loaded} == with_nf
    page.select_option("#sort", "color_selectivity")
    assert page.is_checked("#desc")
    order = [int(u) for u in page.eval_on_selector_all("#grid a.tile", "ts => ts.map(t => t.dataset.unit)")]
    expected = [u for (u,) in query(
        db, "SELECT unit FROM neurons WHERE model='tiny' AND layer=? ORDER BY color_selectivity DESC NULLS LAST, unit", [tensor])]
    assert order == expected
    page.check("#hide-dead")
    dead = query(db, "SELECT count(*) FROM neurons WHERE model='tiny' AND layer=? AND dead", [tensor])[0][0]
    assert page.locator("#grid a.tile:visible").count() == channels - dead
    assert page.errors == [] and page.dialogs == []
    # a neuron page: crops, class distribution, similar neurons leading to the other model's pages
    unit = expected[0]
    page = open_page(browser, f"{base}tiny/{alias}/{unit}/{suffix}")
    tops = query(db, "SELECT t.rank, i.label, t.activation FROM top_activations t JOIN images i USING (model, image_id) "
                     "WHERE t.model='tiny' AND t.layer=? AND t.unit=? ORDER BY t.rank", [tensor, unit])
    ranks = page.eval_on_selector_all("#crops figure", "fs => fs.map(f => parseInt(f.dataset.rank))")
    assert ranks == [r for r, _, _ in tops][: len(ranks)] and len(ranks) == min(len(tops), 16)
    labels = page.eval_on_selector_all("#crops figure .label", "ls => ls.map(l => l.textContent)")
    assert labels == [lab for _, lab, _ in tops][: len(labels)]
    page.wait_for_function("Array.from(document.querySelectorAll('#crops img')).every(i => i.complete && i.naturalWidth > 0)")
    classes = query(db, "SELECT label, frequency FROM class_frequencies WHERE model='tiny' AND layer=? AND unit=? AND frequency > 0 "
                        "ORDER BY frequency DESC, label", [tensor, unit])
    shown = page.eval_on_selector_all("#classes td.label", "ts => ts.map(t => t.textContent)")
    assert shown == [lab for lab, _ in classes]
    assert HOSTILE in shown  # shown as text, not as an element
    assert page.locator("img[src=x]").count() == 0
    other = page.locator("#similar-other a.neuron-link")
    assert other.count() > 0
    first = other.first
    target = (first.get_attribute("data-model"), first.get_attribute("data-layer"), int(first.get_attribute("data-unit")))
    assert target[0] == "tiny_b"
    first.click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == f"tiny_b / {target[1]} / unit {target[2]}"
    assert page.errors == [] and page.dialogs == []


def test_static_report_in_browser(browser, report: Path, site_db: Path) -> None:
    check_site(browser, report.as_uri() + "/", site_db)
    page = open_page(browser, (report / "index.html").as_uri())
    models = page.eval_on_selector_all("#models tbody tr td:first-child", "ts => ts.map(t => t.textContent)")
    assert models == ["tiny", "tiny_b"]
    assert page.errors == []


def test_rebuild_writes_only_the_new_model(report: Path, site_db: Path, photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(site_db, db)
    site = tmp_path / "site"
    assert invoke("report", "--db", db, "-o", site, "--silent").exit_code == 0
    before = (site / "tiny" / "index.html").stat().st_mtime_ns
    analyze(TINY, photo_dir, db=db, name="tiny_c", config=AnalyzeConfig(top_n=4, indexes=()))
    result = invoke("report", "--db", db, "-o", site, "--silent")
    assert "1 model(s) written, 2 up to date" in result.output
    assert (site / "tiny" / "index.html").stat().st_mtime_ns == before
    assert (site / "tiny_c" / "index.html").exists()
    # indexes recomputed in place (same analysis run, same neurons): that model's pages are rewritten
    assert invoke("index", "tiny", "--db", db, "--indexes", "color", "--provider", "cpu", "--silent").exit_code == 0
    result = invoke("report", "--db", db, "-o", site, "--silent")
    assert "1 model(s) written, 2 up to date" in result.output
    assert (site / "tiny" / "index.html").stat().st_mtime_ns > before


def test_report_refuses_a_foreign_folder(site_db: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x")
    result = invoke("report", "--db", site_db, "-o", tmp_path)
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "not an onnx-nfi report" in result.output


@pytest.fixture(scope="module")
def server(site_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """``serve`` on a copy of the database (so this process can read the original alongside), on a free port."""
    from onnx_nfi.report.serve import create_app

    served = tmp_path_factory.mktemp("served") / site_db.name
    shutil.copy(site_db, served)
    yield from serving(create_app(served))


def serving(app):
    """Run ``app`` under uvicorn on a free local port in a thread; yields its base URL, then stops it."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(5)


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of ``..``)."""
    host, port = base.split("//")[1].strip("/").split(":")
    con = http.client.HTTPConnection(host, int(port))
    con.putrequest("GET", path, skip_accept_encoding=True)
    con.endheaders()
    response = con.getresponse()
    return response.status, response.read()


def test_serve_in_browser(browser, server: str, site_db: Path) -> None:
    check_site(browser, server, site_db)
    alias, _, _ = layer_row(site_db)
    page = open_page(browser, f"{server}tiny/{alias}/0")  # the stable link, no trailing slash
    assert page.locator("h1").inner_text() == f"tiny / {alias} / unit 0"
    # live search: by class name (the hostile one, shown as text)
    page = open_page(browser, f"{server}search")
    page.fill("#class-form input[name=class]", HOSTILE)
    page.click("#class-form button")
    page.wait_for_load_state("load")
    expected = query(site_db, "SELECT count(*) FROM neurons WHERE top_class = ?", [HOSTILE])[0][0]
    assert page.locator("#class-results a.neuron-link").count() == min(expected, 100) > 0
    assert page.dialogs == [] and page.errors == []


def test_serve_sql_is_read_only(browser, server: str, site_db: Path) -> None:
    page = open_page(browser, f"{server}sql")
    page.fill("#q", "SELECT model, count(*) AS n FROM neurons GROUP BY model ORDER BY model")
    page.click("#sql-form button")
    page.wait_for_load_state("load")
    cells = page.eval_on_selector_all("#result tbody td", "ts => ts.map(t => t.textContent)")
    assert cells == [str(v) for row in query(site_db, "SELECT model, count(*) FROM neurons GROUP BY model ORDER BY model") for v in row]
    before = query(site_db, "SELECT count(*) FROM neurons")[0][0]
    for attack in ("DELETE FROM neurons", "COPY neurons TO '/tmp/stolen.csv'", "SELECT * FROM read_csv('/etc/passwd')"):
        page.fill("#q", attack)
        page.click("#sql-form button")
        page.wait_for_load_state("load")
        assert page.locator("#error").count() == 1, attack
    assert query(site_db, "SELECT count(*) FROM neurons")[0][0] == before
    assert not Path("/tmp/stolen.csv").exists()


def test_serve_refuses_path_traversal(server: str) -> None:
    for path in ("/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/pyproject.toml", "/../../etc/passwd",
                 "/tiny/..%2f..%2fetc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        status, body = raw_get(server, path)
        assert status == 404, path
        assert b"root:" not in body
    assert raw_get(server, "/static/style.css")[0] == 200


def test_serve_error_pages_below_the_root_link_back_to_it(server: str) -> None:
    for path in ("/nope/", "/tiny/conv1/9999/", "/tiny/images/123456.jpg"):
        status, body = raw_get(server, path)
        assert status == 404, path
        hrefs = re.findall(r'href="([^"]+)"', body.decode())
        resolved = {urljoin(server.rstrip("/") + path, h) for h in hrefs if h.endswith(("style.css", "index.html"))}
        assert resolved == {server + "static/style.css", server + "index.html"}, (path, hrefs)
        assert raw_get(server, urlparse(server + "static/style.css").path)[0] == 200


def test_serve_warns_on_other_hosts() -> None:
    from onnx_nfi.report.serve import warning_for

    assert warning_for("127.0.0.1") is None
    assert "anyone who can reach" in warning_for("0.0.0.0")


def test_static_neuron_pages_share_their_layer_distributions(browser, report: Path, site_db: Path) -> None:
    alias, tensor, _ = layer_row(site_db)
    unit = query(site_db, "SELECT min(unit) FROM neurons WHERE model='tiny' AND layer=? AND color_selectivity IS NOT NULL", [tensor])[0][0]
    page = open_page(browser, (report / "tiny" / alias / str(unit) / "index.html").as_uri())
    sources = page.eval_on_selector_all(".dist img", "is => is.map(i => i.getAttribute('src'))")
    assert "../hist/color_selectivity.svg" in sources
    page.wait_for_function("Array.from(document.querySelectorAll('.dist img')).every(i => i.complete && i.naturalWidth > 0)")
    assert {f.name for f in (report / "tiny" / alias / "hist").iterdir()} == {s.rsplit("/", 1)[1] for s in sources}
    assert page.locator("#indexes svg").count() == 0  # drawn once per layer, not per page
    boxes = page.eval_on_selector_all("#crops .window", "ws => ws.map(w => [w.offsetWidth, w.offsetHeight])")
    assert boxes and all(max(w, h) == 96 for w, h in boxes)  # the crop geometry stated once still sizes every crop
    assert page.errors == []


def test_static_layer_page_shows_each_units_nf_from_the_layer_sprite(browser, report: Path, site_db: Path) -> None:
    """One sprite file per layer; a tile's pixels on screen are its unit's NF (the stored one, decoded
    here from the database), enlarged, and not a neighbour's."""
    import cv2
    import numpy as np

    alias, tensor, channels = layer_row(site_db)
    folder = report / "tiny" / alias
    assert (folder / "nf.png").is_file()
    page = open_page(browser, (folder / "index.html").as_uri())
    page.wait_for_function("Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector_all("#grid a.tile img", "is => new Set(is.map(i => i.getAttribute('src'))).size") == 1
    rows = query(site_db, "SELECT unit, nf, nf_height, nf_width FROM neurons WHERE model='tiny' AND layer=? "
                 "AND nf IS NOT NULL ORDER BY unit", [tensor])
    nfs = {u: np.asarray(nf, np.uint8).reshape(h, w, 3) for u, nf, h, w in rows}  # stored as uint8 RGB
    assert len(nfs) > 2
    units = list(nfs)[:3] + list(nfs)[-2:]
    for unit in units:
        shot = page.locator(f'#grid a.tile[data-unit="{unit}"] .sprite').screenshot()
        seen = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)[1:-1, 1:-1, ::-1].astype(float)  # no border
        def distance(other: int) -> float:
            nf = nfs[other]
            k = seen.shape[0] / max(nf.shape[:2])
            big = cv2.resize(nf, (round(nf.shape[1] * k), round(nf.shape[0] * k)), interpolation=cv2.INTER_NEAREST)
            y0, x0 = (seen.shape[0] - big.shape[0]) // 2, (seen.shape[1] - big.shape[1]) // 2
            return float(np.abs(seen[y0 : y0 + big.shape[0], x0 : x0 + big.shape[1]] - big).mean())
        own = distance(unit)
        others = [distance(o) for o in nfs if o != unit and not np.array_equal(nfs[o], nfs[unit])]
        assert own < 12 and own < 0.5 * min(others), (unit, own, min(others))
    assert not page.errors, page.errors


#: The mean neuron page of the matched fixture report, bytes: 11,252 measured when pages were made compact
#: (15,184 before: longer URLs and per-crop and per-link markup); the budget leaves room for a line of text,
#: not for that markup grown back (about 6 KB on these 30 links).
NEURON_PAGE_BUDGET = 12_400


def test_compact_neuron_page_keeps_every_fact_without_javascript(browser, site_db: Path, tmp_path: Path) -> None:
    """A neuron page from file:// with JavaScript off: every crop (rank, label, activation, file, both
    views of its image), the NF, the facts, the class table and the similar and matched neurons' links,
    leading to pages and NFs that exist; and the pages stay small."""
    db, report = tmp_path / "matched.duckdb", tmp_path / "site"
    shutil.copy(site_db, db)
    assert invoke("match", "tiny", "tiny_b", "--db", db).exit_code == 0
    assert invoke("report", "--db", db, "-o", report, "--silent").exit_code == 0
    alias, tensor, _ = layer_row(site_db)
    unit, top_class = query(site_db, "SELECT unit, top_class FROM neurons WHERE model='tiny' AND layer=? AND nf IS NOT NULL "
                                     "ORDER BY class_selectivity DESC NULLS LAST, unit LIMIT 1", [tensor])[0]
    folder = report / "tiny" / alias / str(unit)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto((folder / "index.html").as_uri())
    page.wait_for_load_state("load")
    tops = query(site_db, "SELECT t.rank, i.label, t.activation, t.image_id, i.path FROM top_activations t "
                          "JOIN images i USING (model, image_id) WHERE t.model='tiny' AND t.layer=? AND t.unit=? ORDER BY t.rank "
                          "LIMIT 16", [tensor, unit])
    crops = page.eval_on_selector_all("#crops figure", """fs => fs.map(f => [
        parseInt(f.dataset.rank), f.querySelector('.label').textContent, f.querySelector('figcaption').textContent,
        Array.from(f.querySelectorAll('img')).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])])""")
    assert len(crops) == len(tops) > 0
    for (rank, label, caption, images), (r, lab, activation, image_id, path) in zip(crops, tops):
        assert (rank, label) == (r, lab or "(no label)")
        assert f"#{r}" in caption and f"{activation:.3f}" in caption and Path(path).name in caption
        assert [src for src, _ in images] == [f"../../images/{image_id}.jpg"] * 2 and all(ok for _, ok in images)
    assert page.eval_on_selector("#nf", "i => i.complete && i.naturalWidth > 0")
    assert page.inner_text("#top-class") == top_class
    classes = query(site_db, "SELECT label, frequency FROM class_frequencies WHERE model='tiny' AND layer=? AND unit=? "
                             "AND frequency > 0 ORDER BY frequency DESC, label LIMIT 12", [tensor, unit])
    rows = page.eval_on_selector_all("#classes tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.textContent))")
    assert rows == [[lab, "", f"{round(f * 100, 1)} %"] for lab, f in classes]
    for scope in ("#similar-same", "#similar-other", "#matches"):
        links = page.eval_on_selector_all(f"{scope} a.neuron-link", """as => as.map(a => [a.getAttribute('href'),
            a.dataset.model, a.dataset.layer, a.dataset.unit, a.textContent, a.querySelector('img')?.getAttribute('src')])""")
        assert links, scope
        for href, model, layer, target, text, nf in links:
            assert (folder / href).resolve() == (report / model / layer / target / "index.html").resolve()
            assert text.startswith(f"{model} / {layer} / {target}")
            assert nf is not None and (folder / nf).resolve() == (report / model / layer / "nf" / f"{target}.png").resolve()
    context.close()
    sizes = [p.stat().st_size for p in report.glob("*/*/[0-9]*/index.html")]
    assert len(sizes) == query(site_db, "SELECT count(*) FROM neurons")[0][0]
    assert sum(sizes) / len(sizes) < NEURON_PAGE_BUDGET, sum(sizes) / len(sizes)
