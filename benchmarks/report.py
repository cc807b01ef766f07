"""Neuron-browser build and page load at ≥ 50,000 neurons: Lite0 under two names plus MobileNetV2 in one database.

    PYTHONPATH=. python benchmarks/report.py [--work DIR]

Records the build time, files written, total size, the time of a rebuild after one more model is
added (only that model's pages), and the load time of the largest layer page and of a neuron page
in headless Chromium (Debian's package), in results/report-<host>.md and .json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import LITE0, ROOT, demo_photos, load_average, machine, write_results

from onnx_nfi.api import analyze
from onnx_nfi.report.site.build import build_report
from onnx_nfi.store.duckdb_store import Store

MOBILENET = ROOT / "models" / "mobilenetv2_deepsort.onnx"


def page_load_ms(url: str, repeats: int = 3) -> float:
    """Median time to the load event of ``url`` in headless Chromium (each repeat a fresh page)."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(url, wait_until="load")
            times.append((time.perf_counter() - started) * 1000)
            page.close()
        browser.close()
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnx-nfi-report-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    db, site = args.work / "nfi.duckdb", args.work / "report"
    photos = demo_photos()
    with Store.open(db) as store:
        present = set(store.models())
    for name, model in (("lite0_a", LITE0), ("lite0_b", LITE0)):
        if name not in present:
            analyze(model, photos, db=db, name=name)
    with Store.open(db, read_only=True) as store:
        neurons = store.rows("SELECT count(*) AS n FROM neurons")[0]["n"]
    shutil.rmtree(site, ignore_errors=True)
    first = build_report(site, db=db)
    analyze(MOBILENET, photos, db=db, name="mobilenetv2")
    added = build_report(site, db=db)
    with Store.open(db, read_only=True) as store:
        total = store.rows("SELECT count(*) AS n FROM neurons")[0]["n"]
        largest = store.rows(
            "SELECT l.alias FROM layers l WHERE model = 'lite0_a' ORDER BY channels DESC, depth LIMIT 1"
        )[0]["alias"]
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    files = sum(1 for p in site.rglob("*") if p.is_file())
    result = {
        "machine": machine(), "load_average": load_average(),
        "neurons_first_build": neurons, "neurons_total": total,
        "first_build_s": round(first.seconds, 1), "first_build_files": first.files, "first_build_bytes": first.bytes,
        "rebuild_after_adding_a_model_s": round(added.seconds, 1), "rebuild_written": list(added.written),
        "rebuild_files": added.files, "site_files": files, "site_bytes": size,
        "largest_layer": largest,
        "largest_layer_page_load_ms": round(page_load_ms((site / "lite0_a" / largest / "index.html").as_uri()), 1),
        "neuron_page_load_ms": round(page_load_ms((site / "lite0_a" / largest / "7" / "index.html").as_uri()), 1),
    }
    lines = "\n".join(f"| {k} | {v} |" for k, v in result.items() if k != "machine")
    print(write_results("report", f"| measure | value |\n|---|---|\n{lines}\n", result).read_text())


if __name__ == "__main__":
    main()
