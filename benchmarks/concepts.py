"""Cost of the concept labels (``--indexes concepts``) against the scan, on EfficientNet-Lite0.

One run, paired: Lite0 is analysed on the 324 demo photos (27 classes) with the class index only
and no NFs, which gives the scan's wall time; then, in the same process, the concept statistics of
all 49 layers are computed from that analysis's stored top-N lists and labels, as ``analyze`` and
``index`` compute them (``neurons.indexes.indexes_from`` with ``indexes=("concepts",)``): once cold
(WordNet's table read on first use) and ``--repeats`` times warm (median). The class index is timed
the same way for comparison, and so is writing the concept rows into the database. Wall and CPU
(process) time are reported: the machine may be shared.

Usage: python benchmarks/concepts.py [--images DIR] [--repeats 3]
Writes benchmarks/results/concepts-<hostname>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, scratch_dir, write_results  # noqa: E402

from onnx_nfi import api  # noqa: E402
from onnx_nfi.config import AnalyzeConfig  # noqa: E402
from onnx_nfi.graph.layers import find_conv_layers  # noqa: E402
from onnx_nfi.neurons.indexes import IndexLayer, Responses, indexes_from  # noqa: E402
from onnx_nfi.pipeline.models import open_model  # noqa: E402
from onnx_nfi.store.duckdb_store import Store  # noqa: E402
from onnx_nfi.store.results import stored_rf, stored_topn, write_index_run  # noqa: E402


def timed(fn):
    """(wall s, CPU s, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = demo_photos(args.images)
    db = scratch_dir("onnx-nfi-concepts-") / "nfi.duckdb"
    load = load_average()
    scan_wall, scan_cpu, summary = timed(
        lambda: api.analyze(LITE0, images, db=db, config=AnalyzeConfig(nf=False, indexes=("class",))))
    with Store.open(db, read_only=True) as store:
        rows = store.layer_rows("efficientnet_lite0")
        labels = {int(r["image_id"]): r["label"] for r in store.rows("SELECT image_id, label FROM images")}
        topns = {r["layer"]: stored_topn(store, "efficientnet_lite0", r["layer"], r["channels"]) for r in rows}
    by_tensor = {layer.tensor: layer for layer in find_conv_layers(open_model(LITE0)[0])}
    layers = [IndexLayer(by_tensor[r["layer"]], stored_rf(r), topns[r["layer"]]) for r in rows]
    counts = dict(Counter(v for v in labels.values() if v is not None))

    def run(kind: str):
        return lambda: indexes_from(layers, Responses(), labels, AnalyzeConfig(indexes=(kind,)), counts)

    cold = timed(run("concepts"))
    warm = [timed(run("concepts"))[:2] for _ in range(args.repeats)]
    klass = [timed(run("class"))[:2] for _ in range(args.repeats)]
    rows_stored = sum(len(v["unit"]) for v in cold[2].concepts.values())
    write = timed(lambda: write_index_run(db, "efficientnet_lite0", cold[2], AnalyzeConfig(indexes=("concepts",)), dt.datetime.now()))
    med = {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
           for name, t in (("warm", warm), ("class", klass))}
    n_img = summary.images_seen
    table = [
        ["scan (analyze, class index only, no NF)", f"{summary.scan_seconds:.2f}", "", "1"],
        ["whole analyze call", f"{scan_wall:.2f}", f"{scan_cpu:.2f}", f"{scan_wall / summary.scan_seconds:.2f}"],
        ["concepts, cold (WordNet read)", f"{cold[0]:.2f}", f"{cold[1]:.2f}", f"{cold[0] / summary.scan_seconds:.3f}"],
        ["concepts, warm (median)", f"{med['warm'][0]:.2f}", f"{med['warm'][1]:.2f}", f"{med['warm'][0] / summary.scan_seconds:.3f}"],
        ["writing them (concept_labels, neurons.concept)", f"{write[0]:.2f}", f"{write[1]:.2f}", f"{write[0] / summary.scan_seconds:.3f}"],
        ["class index (median)", f"{med['class'][0]:.2f}", f"{med['class'][1]:.2f}", f"{med['class'][0] / summary.scan_seconds:.3f}"],
    ]
    markdown = "\n".join([
        "# Concept labels: cost against the scan (EfficientNet-Lite0)", "",
        machine_line(machine()), f"Load average at start: {load}. {n_img} images, "
        f"{sum(r['channels'] for r in rows)} neurons in {len(rows)} layers, top-N {AnalyzeConfig.top_n}; "
        f"{rows_stored} concept_labels rows.", "",
        markdown_table(["step", "wall s", "CPU s", "/ scan wall"], table), "",
        f"CPU per image: scan call {1000 * scan_cpu / n_img:.1f} ms, concepts (warm) {1000 * med['warm'][1] / n_img:.2f} ms.", "",
    ])
    data = {"machine": machine(), "load": load, "images": n_img, "scan_seconds": summary.scan_seconds,
            "analyze": [scan_wall, scan_cpu], "concepts_cold": cold[:2], "concepts_warm": warm, "class": klass,
            "concept_rows": rows_stored, "write": write[:2]}
    print(markdown)
    print(f"Wrote {write_results('concepts', markdown, data)}")


if __name__ == "__main__":
    main()
