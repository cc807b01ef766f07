"""``onnx-nfi serve`` as a service, run as a real process: a runaway SQL query is stopped at its time
limit while other pages answer, SIGTERM and Ctrl-C stop the server at once even mid-query, pictures
revalidate with ETags, bad requests answer 4xx, and a database being written answers 503 without
host paths or process ids.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from cli_helpers import query
from conftest import ROOT, TINY

from onnx_nfi.api import analyze
from onnx_nfi.config import AnalyzeConfig

#: Three copies of top_activations joined: billions of rows, minutes of work without the time limit.
RUNAWAY = "SELECT count(*) FROM top_activations a, top_activations b, top_activations c"


@pytest.fixture(scope="module")
def served_db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("serve") / "nfi.duckdb"
    analyze(TINY, photo_dir, db=db, name="tiny", config=AnalyzeConfig(top_n=8))
    return db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m onnx_nfi serve`` in its own process."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onnx_nfi", "serve", "--db", str(db), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stdout.read().decode()
                time.sleep(0.1)
        raise AssertionError("serve did not start")

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        con.request("GET", path, headers=headers or {})
        response = con.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture()
def server(served_db: Path):
    s = Server(served_db, "--sql-timeout", "2")
    yield s
    s.stop()


def sql_path(text: str) -> str:
    return "/sql?q=" + quote(text, safe="")


def layer(db: Path) -> tuple[str, str, int]:
    """The deepest layer: alias, tensor, a unit with an NF."""
    alias, tensor = query(db, "SELECT alias, layer FROM layers WHERE model='tiny' ORDER BY depth DESC LIMIT 1")[0]
    unit = query(db, "SELECT min(unit) FROM neurons WHERE model='tiny' AND layer=? AND nf IS NOT NULL", [tensor])[0][0]
    return alias, tensor, unit


@pytest.fixture()
def default_server(served_db: Path):
    s = Server(served_db)
    yield s
    s.stop()


def test_runaway_query_stops_at_the_time_limit_while_pages_answer(default_server: Server, served_db: Path) -> None:
    server = default_server  # the documented 5 s limit
    n = query(served_db, "SELECT count(*) FROM top_activations")[0][0]
    assert n**3 > 10**10  # far more work than two seconds
    result: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        result["answer"] = server.get(sql_path(RUNAWAY))
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    alias, _, unit = layer(served_db)
    answered = []
    for path in ("/", "/tiny/", f"/tiny/{alias}/", f"/tiny/{alias}/nf/{unit}.png", f"/tiny/{alias}/{unit}/",
                 sql_path("SELECT 42 AS answer")):
        status, _, body = server.get(path)
        assert status == 200, (path, body[:300])
        answered.append(path)
        assert thread.is_alive(), f"the runaway query ended before {path} was answered"
    assert b"<td>42</td>" in body
    thread.join(60)
    status, _, body = result["answer"]
    assert status == 400
    assert b"ran longer than 5 s and was stopped" in body
    assert 5 <= result["seconds"] < 30  # stopped at the limit, not after the minutes the join needs
    assert server.get("/")[0] == 200  # and the server still answers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_mid_query(served_db: Path, sig: int) -> None:
    server = Server(served_db, "--sql-timeout", "600")
    try:
        thread = threading.Thread(target=lambda: server.get(sql_path(RUNAWAY)), daemon=True)
        thread.start()
        time.sleep(1.0)
        assert server.proc.poll() is None
        started = time.monotonic()
        server.proc.send_signal(sig)
        server.proc.wait(30)
        seconds = time.monotonic() - started
        assert seconds < 2, f"the server took {seconds:.1f} s to stop"
        output = server.proc.stdout.read().decode()
        assert "Traceback" not in output
        if sig == signal.SIGINT:  # the line says what is true of serving, not of a write
            assert "Stopped serving" in output and "transaction" not in output, output
    finally:
        server.stop()


def test_pictures_revalidate_with_etags(server: Server, served_db: Path) -> None:
    alias, _, unit = layer(served_db)
    for path in (f"/tiny/{alias}/nf/{unit}.png", "/selectivity.png"):
        status, headers, body = server.get(path)
        assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
        tag = headers["etag"]
        status, headers2, body2 = server.get(path, {"If-None-Match": tag})
        assert (status, body2, headers2["etag"]) == (304, b"", tag)
        assert server.get(path, {"If-None-Match": '"something-else"'})[0] == 200
    image = query(served_db, "SELECT min(image_id) FROM top_activations WHERE model='tiny' AND rank <= 16")[0][0]
    status, headers, body = server.get(f"/tiny/images/{image}.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"
    assert server.get(f"/tiny/images/{image}.jpg", {"If-None-Match": headers["etag"]})[0] == 304


def test_bad_requests_answer_4xx(server: Server, served_db: Path) -> None:
    alias, _, _ = layer(served_db)
    huge = "9" * 30
    cases = {
        sql_path(";;;"): 400, sql_path("SELEC 1"): 400, sql_path("DELETE FROM neurons"): 400,
        f"/tiny/images/{huge}.jpg": 404, f"/tiny/{alias}/nf/{huge}.png": 404, f"/tiny/{alias}/{huge}/": 404,
        f"/tiny/{alias}/99999/": 404, "/nope/": 404, "/search?neuron=tiny:nope:0": 400, "/search?neuron=bad": 400,
        "/search?neuron=tiny:" + alias + ":0&by=colour": 400,
    }
    for path, expected in cases.items():
        status, _, body = server.get(path)
        assert status == expected, (path, status, body[-400:])
        assert b"Traceback" not in body
    status, _, body = server.get(sql_path(";;;"))
    assert b"holds no SQL statement" in body


def test_sql_page_shows_an_example_and_the_schema(server: Server, served_db: Path) -> None:
    status, _, body = server.get("/sql")
    html = body.decode()
    assert status == 200
    tables = dict(re.findall(r"<tr><td><code>([^<]+)</code></td><td>([^<]*)</td></tr>", html))
    expected = {t: ", ".join(c for (c,) in query(
        served_db, "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [t]))
        for (t,) in query(served_db, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}
    assert tables == expected
    example = re.search(r'id="example" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    status, _, body = server.get(example)
    assert status == 200 and b'id="result"' in body and b'id="error"' not in body


def test_a_list_of_100m_values_is_summarised_in_bounded_time(server: Server) -> None:
    started = time.monotonic()
    status, _, body = server.get(sql_path("SELECT range(12) AS short, range(100000000) AS long"))
    assert time.monotonic() - started < 60
    if status == 200:  # finished inside the time limit: summarised, never the values
        assert b"[100000000 values]" in body and b"[12 values]" in body
    else:  # stopped at the time limit, or refused at once by the SQL box's memory ceiling
        assert status == 400 and (b"ran longer than 2 s" in body or b"needs more than the SQL box" in body)


def test_a_database_being_written_answers_503_without_host_details(server: Server, served_db: Path) -> None:
    assert server.get("/")[0] == 200
    holder = subprocess.Popen(  # a writer: waits until serve lets go of the file, then holds it
        [sys.executable, "-c", (
            "import duckdb, sys, time\n"
            "while True:\n"
            "    try:\n"
            f"        con = duckdb.connect({str(served_db)!r})\n"
            "        break\n"
            "    except duckdb.IOException:\n"
            "        time.sleep(0.1)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for path in ("/", "/tiny/", "/selectivity.png", sql_path("SELECT 1")):
            status, headers, body = server.get(path)
            text = body.decode()
            assert status == 503, (path, text[-300:])
            assert headers["retry-after"] == "2"
            assert "the database is being written; retry shortly" in text
            for secret in (str(served_db.parent), sys.executable, str(holder.pid), "PID"):
                assert secret not in text, (path, secret)
    finally:
        holder.communicate("\n", timeout=30)
    assert server.get("/")[0] == 200  # answered again once the writer is done


def test_index_page_shows_input_and_preprocessing_but_no_host_path(server: Server, served_db: Path) -> None:
    status, _, body = server.get("/")
    html = body.decode()
    height, width, layout, path = query(served_db, "SELECT input_height, input_width, layout, path FROM models")[0]
    assert status == 200
    assert f'<td class="input">{height}×{width} {layout}</td>' in html
    pre = re.search(r'<td class="pre">([^<]+)</td>', html).group(1)
    assert pre.count("/") >= 4 and ("crop" in pre or "resize" in pre or "shorter side" in pre), pre
    assert Path(path).name in html and str(Path(path).parent) not in html
    assert str(served_db.parent) not in html


def test_neuron_page_marks_its_value_on_the_layer_distribution(server: Server, served_db: Path) -> None:
    alias, tensor, _ = layer(served_db)
    values = [v for (v,) in query(served_db, "SELECT color_selectivity FROM neurons WHERE model='tiny' AND layer=? "
                                             "AND color_selectivity IS NOT NULL AND isfinite(color_selectivity)", [tensor])]
    unit, value = query(served_db, "SELECT unit, color_selectivity FROM neurons WHERE model='tiny' AND layer=? "
                                   "AND color_selectivity IS NOT NULL ORDER BY unit LIMIT 1", [tensor])[0]
    low, high = (0.0, 1.0) if min(values) >= 0 and max(values) <= 1 else (min(values), max(values))
    expected = 50.0 if high <= low else 100 * min(max((value - low) / (high - low), 0), 1)
    status, _, body = server.get(f"/tiny/{alias}/{unit}/")
    html = body.decode()
    assert status == 200
    shown = re.search(r'<img src="../hist/color_selectivity.svg"[^>]*><i style="left:([0-9.]+)%">', html)
    assert shown and abs(float(shown.group(1)) - expected) <= 0.05
    status, headers, svg = server.get(f"/tiny/{alias}/hist/color_selectivity.svg")
    assert status == 200 and headers["content-type"].startswith("image/svg+xml")
    assert svg.count(b"<rect ") == 20
    counts = [int(c) for c in re.findall(rb"<title>(\d+)</title>", svg)]
    assert sum(counts) == len(values)


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (the SQL box's query runs in one), live or reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    live = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(c) for c in live if Path(f"/proc/{c}").exists())


def test_a_query_is_cancelled_when_the_browser_goes_away(served_db: Path) -> None:
    server = Server(served_db, "--sql-timeout", "600")
    try:
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(f"GET {sql_path(RUNAWAY)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.0)
        before = cpu_seconds(server.proc.pid)
        time.sleep(2.0)
        running = cpu_seconds(server.proc.pid) - before  # the join at work
        client.close()
        time.sleep(1.5)  # the server notices within a poll and interrupts DuckDB
        before = cpu_seconds(server.proc.pid)
        time.sleep(2.0)
        after = cpu_seconds(server.proc.pid) - before
        assert after < 0.2 < running, (running, after)
        assert server.get("/")[0] == 200
    finally:
        server.stop()


def test_pictures_follow_the_database_when_it_changes(served_db: Path, tmp_path: Path) -> None:
    import cv2
    import duckdb
    import numpy as np

    db = tmp_path / "nfi.duckdb"
    db.write_bytes(served_db.read_bytes())
    alias, tensor, unit = layer(db)
    server = Server(db)
    try:
        status, headers, before = server.get(f"/tiny/{alias}/nf/{unit}.png")
        assert status == 200
        deadline = time.monotonic() + 30
        while True:  # serve lets go of the file once idle; then another process writes it
            try:
                con = duckdb.connect(str(db))
                break
            except duckdb.IOException:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        con.execute("UPDATE neurons SET nf = list_transform(nf, lambda x: (255 - x)::UTINYINT) "
                    "WHERE model = 'tiny' AND layer = ? AND unit = ?", [tensor, unit])
        con.close()
        status, headers2, after = server.get(f"/tiny/{alias}/nf/{unit}.png", {"If-None-Match": headers["etag"]})
        assert status == 200 and headers2["etag"] != headers["etag"]
        decode = lambda png: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(int)  # noqa: E731
        assert np.array_equal(decode(after), 255 - decode(before))
    finally:
        server.stop()
