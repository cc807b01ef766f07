"""``serve``'s query page in Chromium (upload, a box dragged with the mouse, result tiles that agree with
``api.query``), hostile uploads refused with 4xx and nothing left behind, and where-maps of top images."""

from __future__ import annotations

import http.client
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import query
from conftest import TINY
from test_hostile_images import png_header_only
from test_site import browser, open_page  # noqa: F401  (the Chromium fixture)

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.report.serve_query import MAX_UPLOAD_BYTES


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path):
    """The tiny model analysed over the photos, served by ``serve`` on a free port; (url, db, copy)."""
    db = tmp_path_factory.mktemp("qserve") / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, name="tiny", config=AnalyzeConfig(top_n=8))
    import uvicorn

    from onnx_nfi.report.serve import create_app

    copy = tmp_path_factory.mktemp("qserved") / "nfi.duckdb"
    shutil.copy(db, copy)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(copy, max_pixels=4_000_000)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", db, copy, app
    srv.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    source = sorted(photo_dir.rglob("*.jpg"))[0]
    path = tmp_path_factory.mktemp("qphoto") / "upload.png"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(source)), (200, 120), interpolation=cv2.INTER_AREA))
    return path


def post(base: str, params: str, body: bytes, length: int | None = None) -> tuple[int, str]:
    host, port = base.split("//")[1].strip("/").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=60)
    con.putrequest("POST", f"/query?{params}")
    con.putheader("Content-Length", str(len(body) if length is None else length))
    con.endheaders()
    try:
        con.send(body)
    except (BrokenPipeError, ConnectionResetError):  # refused before the whole body was read
        pass
    response = con.getresponse()
    return response.status, response.read().decode()


def test_query_page_upload_box_and_tiles(browser, served, photo: Path) -> None:  # noqa: F811
    base, db, *_ = served
    page = open_page(browser, f"{base}query")
    page.set_input_files("#image", str(photo))
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    rect = page.locator("#preview").bounding_box()
    scale = 200 / rect["width"]  # displayed size vs the image's own pixels
    page.mouse.move(rect["x"] + 20, rect["y"] + 10)
    page.mouse.down()
    page.mouse.move(rect["x"] + 60, rect["y"] + 40, steps=4)
    page.mouse.move(rect["x"] + 100, rect["y"] + 70, steps=4)
    page.mouse.up()
    box = [float(v) for v in page.input_value("#box").split(",")]
    assert box == pytest.approx([20 * scale, 10 * scale, 100 * scale, 70 * scale], abs=1.01)
    page.fill("#k", "10")
    page.click("#ask")
    page.wait_for_selector("#tiles")
    tiles = page.locator("a.neuron-tile")
    shown = [(tiles.nth(i).get_attribute("data-neuron"), float(tiles.nth(i).get_attribute("data-relative")))
             for i in range(tiles.count())]
    want = api.query(photo, "tiny", db=db, box=tuple(box), k=10).hits
    assert [n for n, _ in shown] == [h.neuron for h in want]
    assert [r for _, r in shown] == pytest.approx([h.relative for h in want], rel=1e-6)
    assert "in box" in page.inner_text("#summary")
    assert not page.errors
    tiles.first.click()
    page.wait_for_load_state("load")
    model, alias, unit = want[0].neuron.split(":")
    assert page.locator("h1").inner_text() == f"{model} / {alias} / unit {unit}"
    # the neuron page links each top image to its where-map, drawn by the server
    where = page.locator("a.where-map").first.get_attribute("href")
    picture = page.context.request.get(f"{base.rstrip('/')}{where}")
    assert picture.status == 200 and picture.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(picture.body(), np.uint8), cv2.IMREAD_COLOR) is not None


def snapshot(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_hostile_uploads_are_refused_and_leave_nothing(served, photo: Path, tmp_path: Path) -> None:
    base, _, copy, _ = served
    marker = b"onnx-nfi-hostile-upload-marker"
    temp = Path(tempfile.gettempdir())
    before = (snapshot(copy.parent), snapshot(Path.cwd()), time.time())
    good = photo.read_bytes()
    bomb = png_header_only(tmp_path / "bomb.png", 30_000, 30_000).read_bytes()
    cases = [
        ("model=tiny&name=notes.jpg", b"plain text, not an image " + marker, None, 415, "not a decodable image"),
        ("model=tiny&name=bomb.png", bomb + marker, None, 413, "too large"),
        ("model=tiny&name=big.jpg", marker * 16, MAX_UPLOAD_BYTES + 1, 413, "limit"),
        ("model=tiny&name=..%2F..%2Fetc%2Fpasswd", good + marker, None, 400, "not a plain file name"),
        ("model=tiny&name=a%5Cb.jpg", good, None, 400, "not a plain file name"),
        ("model=nope&name=a.jpg", good, None, 404, "no model"),
        ("model=tiny&name=a.jpg&box=1,2,3", good, None, 400, "X0,Y0,X1,Y1"),
    ]
    for params, body, length, status, message in cases:
        got, text = post(base, params, body, length)
        assert got == status, (params, text)
        assert message in text and 'class="error"' in text
    big_status, _ = post(base, "model=tiny&name=big.jpg", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert big_status == 413
    assert (snapshot(copy.parent), snapshot(Path.cwd())) == before[:2]
    for path in temp.iterdir():  # no upload was written to the temporary folder either
        if path.is_file() and path.stat().st_mtime >= before[2] and path.stat().st_size < 2**26:
            assert marker not in path.read_bytes(), path
    # the server still answers a good upload
    status, text = post(base, "model=tiny&name=ok.png&k=3", good)
    assert status == 200 and text.count('class="neuron-tile"') == 3


def test_where_map_only_for_top_images(served) -> None:
    base, db, *_ = served
    tensor = query(db, "SELECT layer FROM layers WHERE model = 'tiny' AND alias = 'conv5'")[0][0]
    top = [r[0] for r in query(db, "SELECT image_id FROM top_activations WHERE model = 'tiny' AND layer = ? AND unit = 3",
                               [tensor])]
    other = next(i for (i,) in query(db, "SELECT image_id FROM images WHERE model = 'tiny'") if i not in top)
    host, port = base.split("//")[1].strip("/").split(":")
    for image, status in ((top[0], 200), (other, 404)):
        con = http.client.HTTPConnection(host, int(port), timeout=60)
        con.request("GET", f"/where?neuron=tiny:conv5:3&image={image}")
        response = con.getresponse()
        assert response.status == status
        body = response.read()
        if status == 200:
            assert body.startswith(b"\x89PNG")


def test_the_session_is_made_once_per_model(served, photo: Path) -> None:
    base, _, _, app = served
    pages = next(r.endpoint.__self__ for r in app.routes if getattr(r, "path", "") == "/query")
    assert post(base, "model=tiny&name=a.png&k=2", photo.read_bytes())[0] == 200
    engine = pages.engine("tiny")
    runner = engine.runner
    for _ in range(2):
        assert post(base, "model=tiny&name=a.png&k=2", photo.read_bytes())[0] == 200
    assert pages.engine("tiny") is engine and engine.runner is runner and list(pages._engines) == ["tiny"]
