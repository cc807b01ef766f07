"""``onnx-nfi serve`` against the static report, in headless Chromium, paired in one run.

    PYTHONPATH=. python benchmarks/serve.py [--work DIR] [--images N] [--repeats R]

Analyses the real EfficientNet-Lite0 (models/) over a small set of the demo photos (every
``--step``-th), builds the static report, starts ``onnx-nfi serve`` as a process, and times in
Chromium (Debian's package, a fresh browser context per load so nothing comes from the browser's
cache):

- the 1,280-unit layer page (conv49): to the load event, and until all 1,280 NF pictures are
  decoded (lazy loading switched off after load, so every picture is fetched); static and served
  loads alternate, which goes first swapping each round;
- the served layer page on the server's first visit (its NFs encoded then), once;
- neuron pages of that layer on a warm server (other neurons of the layer visited before), in
  Chromium and as plain HTTP requests (server time).

Results go to results/serve-<host>.md and .json with the machine and its load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import LITE0, ROOT, demo_photos, load_average, machine, machine_line, markdown_table, write_results

from onnx_nfi.api import analyze
from onnx_nfi.report.site.build import build_report
from onnx_nfi.store.duckdb_store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ALL_NFS = (
    "() => { const imgs = Array.from(document.querySelectorAll('#grid img'));"
    " imgs.forEach(i => { i.loading = 'eager'; }); return imgs.length; }"
)
ALL_DONE = "() => Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"


def database(work: Path, step: int) -> tuple[Path, int]:
    """Lite0 analysed over every ``step``-th demo photo (made once per work folder)."""
    db, photos = work / "lite0.duckdb", work / "photos"
    if not photos.is_dir():
        for k, f in enumerate(sorted(demo_photos().rglob("*.jpg"))):
            if k % step == 0:
                (photos / f.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, photos / f.parent.name / f.name)
    if not db.exists():
        analyze(LITE0, photos, db=db, name="lite0")
    return db, sum(1 for _ in photos.rglob("*.jpg"))


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    """``onnx-nfi serve`` in its own process, once it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "onnx_nfi", "serve", "--db", str(db), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("serve did not start")


def layer_load(browser, url: str) -> tuple[float, float]:
    """Seconds to the load event and to every NF decoded, in a fresh context."""
    context = browser.new_context()
    page = context.new_page()
    started = time.perf_counter()
    page.goto(url, wait_until="load")
    loaded = time.perf_counter() - started
    assert page.evaluate(ALL_NFS) == 1280
    page.wait_for_function(ALL_DONE, timeout=600_000, polling=50)
    done = time.perf_counter() - started
    context.close()
    return loaded, done


def page_load(browser, url: str) -> float:
    """Seconds to the load event of ``url`` in a fresh context."""
    context = browser.new_context()
    page = context.new_page()
    started = time.perf_counter()
    page.goto(url, wait_until="load")
    seconds = time.perf_counter() - started
    context.close()
    return seconds


def http_seconds(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        r.read()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def measure(base: str, site: Path, alias: str, repeats: int) -> dict:
    """Every timing of one run: the served layer page's first visit, paired layer loads, neuron pages."""
    from playwright.sync_api import sync_playwright

    static_layer = (site / "lite0" / alias / "index.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        first = layer_load(browser, f"{base}lite0/{alias}/")
        pairs: dict[str, list[tuple[float, float]]] = {"static": [], "serve": []}
        for r in range(repeats):
            for kind in ("static", "serve") if r % 2 == 0 else ("serve", "static"):
                pairs[kind].append(layer_load(browser, static_layer if kind == "static" else f"{base}lite0/{alias}/"))
        page_load(browser, f"{base}lite0/{alias}/0/")  # the layer's data, kept by the server
        units = range(1, 1 + repeats)
        neuron_browser = [page_load(browser, f"{base}lite0/{alias}/{u}/") for u in units]
        neuron_static = [page_load(browser, (site / "lite0" / alias / str(u) / "index.html").as_uri()) for u in units]
        neuron_http = [http_seconds(f"{base}lite0/{alias}/{u + 100}/") for u in units]
        browser.close()
    return {"first": first, "pairs": pairs, "neuron_browser": neuron_browser, "neuron_static": neuron_static,
            "neuron_http": neuron_http}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnx-nfi-serve-bench"))
    parser.add_argument("--step", type=int, default=8, help="use every STEP-th demo photo")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    db, images = database(args.work, args.step)
    with Store.open(db, read_only=True) as store:
        alias = store.rows("SELECT alias FROM layers WHERE model = 'lite0' AND channels = 1280")[0]["alias"]
    site = args.work / "report"
    shutil.rmtree(site, ignore_errors=True)
    built = build_report(site, db=db)
    load_start = load_average()
    proc, base = start_server(db)
    try:
        timings = measure(base, site, alias, args.repeats)
    finally:
        proc.terminate()
        proc.wait(10)
    pairs = timings["pairs"]
    result = {
        "machine": machine(), "load_average_start": load_start, "load_average_end": load_average(),
        "images": images, "layer": alias, "repeats": args.repeats,
        "report_files": built.files, "report_bytes": built.bytes, "report_build_s": round(built.seconds, 1),
        "layer_static_load_s": median([a for a, _ in pairs["static"]]),
        "layer_static_all_nfs_s": median([b for _, b in pairs["static"]]),
        "layer_serve_load_s": median([a for a, _ in pairs["serve"]]),
        "layer_serve_all_nfs_s": median([b for _, b in pairs["serve"]]),
        "layer_serve_first_visit_all_nfs_s": round(timings["first"][1], 3),
        "neuron_serve_warm_browser_s": median(timings["neuron_browser"]),
        "neuron_static_browser_s": median(timings["neuron_static"]),
        "neuron_serve_warm_http_s": median(timings["neuron_http"]),
        "raw": timings,
    }
    ratio = result["layer_serve_all_nfs_s"] / result["layer_static_all_nfs_s"]
    rows = [
        ["layer page (1,280 NFs), load event", result["layer_static_load_s"], result["layer_serve_load_s"]],
        ["layer page, all 1,280 NFs decoded", result["layer_static_all_nfs_s"], result["layer_serve_all_nfs_s"]],
        ["layer page, server's first visit, all NFs", "", result["layer_serve_first_visit_all_nfs_s"]],
        ["neuron page (warm server), load event", result["neuron_static_browser_s"], result["neuron_serve_warm_browser_s"]],
        ["neuron page (warm server), HTTP only", "", result["neuron_serve_warm_http_s"]],
    ]
    markdown = (
        f"{machine_line(result['machine'])} Load average {load_start} -> {result['load_average_end']}.\n\n"
        f"Lite0 over {images} demo photos; layer {alias}; medians of {args.repeats} paired loads (seconds).\n\n"
        + markdown_table(["measure", "static report", "serve"], rows)
        + f"\n\nserve / static, all NFs: {ratio:.2f}x\n\nStatic report: {built.files} files, "
        f"{built.bytes / 2**20:.1f} MiB, built in {built.seconds:.0f} s.\n"
    )
    print(write_results("serve", markdown, result).read_text())


if __name__ == "__main__":
    main()
