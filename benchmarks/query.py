"""Latency of ``onnx-nfi query`` and of a where-map on EfficientNet-Lite0, against one plain
onnxruntime inference of the same image measured in the same run.

Usage: python benchmarks/query.py [--db LITE0.duckdb] [--repeats 20]

Without ``--db`` Lite0 is first analysed over the 324 demo photos (a minute or two). Per image, in
one process: *plain* is ``session.run`` of the unmodified model (warm: median of repeats; cold:
session creation + first run); *query warm* is one question to a kept ``QueryModel`` (forward pass
with every layer's full map as an output, responses over 49 layers, ranking); *query cold* adds
making the ``QueryModel`` (hash check of the ONNX file, stored scores, the session); *where warm* a
where-map (forward pass + picture + PNG encoding) on a kept engine, as ``serve`` draws one. CPU time
(process) is given beside wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, demo_photos, load_average, machine, machine_line, markdown_table, scratch_dir, write_results  # noqa: E402

from onnx_nfi import api  # noqa: E402
from onnx_nfi.config import AnalyzeConfig  # noqa: E402
from onnx_nfi.data.one_image import read_image  # noqa: E402
from onnx_nfi.graph.session import session_options  # noqa: E402
from onnx_nfi.report.query_pictures import draw_where, png_bytes  # noqa: E402
from onnx_nfi.search.query import QueryModel  # noqa: E402
from onnx_nfi.store.duckdb_store import Store  # noqa: E402

MODEL = "efficientnet_lite0"


def timed(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(wall s, CPU s, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def medians(samples: list[tuple[float, float, object]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    photos = demo_photos()
    db = args.db
    if db is None:
        db = scratch_dir("nfi-query-bench-") / "nfi.duckdb"
        api.analyze(LITE0, photos, db=db, config=AnalyzeConfig(indexes=("class",)))
    every = sorted(photos.rglob("*.jpg"))
    images = every[:: max(1, len(every) // args.repeats)][: args.repeats]  # spread over the classes
    load_start = load_average()
    bgr = [read_image(p, 10**8) for p in images]

    with Store.open(db, read_only=True) as store:
        cold = timed(lambda: QueryModel(store, MODEL, provider="cpu"))
    engine: QueryModel = cold[2]  # type: ignore[assignment]
    first = timed(lambda: engine.ask(engine.see(bgr[0]), None, 20))
    warm = medians([timed(lambda b=b: engine.ask(engine.see(b), None, 20)) for b in bgr])
    boxed = medians([timed(lambda b=b: engine.ask(engine.see(b), (20, 20, 120, 120), 20)) for b in bgr])
    where = medians([timed(lambda b=b: png_bytes(draw_where(engine, engine.see(b), "conv40", 7, "x").image)) for b in bgr])

    tensors = [engine.pre.to_tensor(engine.pre.to_display(b)[None]) for b in bgr]
    plain_cold = timed(lambda: ort.InferenceSession(str(LITE0), session_options(engine.loaded.proto), providers=["CPUExecutionProvider"]))
    session: ort.InferenceSession = plain_cold[2]  # type: ignore[assignment]
    name = session.get_inputs()[0].name
    plain_first = timed(lambda: session.run(None, {name: tensors[0]}))
    plain = medians([timed(lambda t=t: session.run(None, {name: t})) for t in tensors])

    rows = [
        ["plain inference, warm (median)", plain[0], plain[1], 1.0],
        ["plain inference, cold (session + first run)", plain_cold[0] + plain_first[0], plain_cold[1] + plain_first[1],
         (plain_cold[0] + plain_first[0]) / plain[0]],
        ["query, warm (median, whole image)", warm[0], warm[1], warm[0] / plain[0]],
        ["query, warm (median, 100 px box)", boxed[0], boxed[1], boxed[0] / plain[0]],
        ["query, cold (QueryModel + first query)", cold[0] + first[0], cold[1] + first[1], (cold[0] + first[0]) / plain[0]],
        ["where-map, warm (median, pass + picture + PNG)", where[0], where[1], where[0] / plain[0]],
    ]
    table = markdown_table(["what", "wall ms", "CPU ms", "× plain warm (wall)", "× plain warm (CPU)"],
                           [[r[0], f"{r[1] * 1e3:.1f}", f"{r[2] * 1e3:.1f}", f"{r[3]:.2f}", f"{r[2] / plain[1]:.2f}"] for r in rows])
    info = machine()
    layers = len(engine.layers)
    neurons = sum(item.layer.channels for item in engine.layers.values())
    markdown = (
        f"# query.py\n\n{machine_line(info)}\n\nEfficientNet-Lite0, {layers} layers, {neurons} neurons; "
        f"{len(bgr)} demo photos; load average {load_start} at the start, {load_average()} at the end.\n\n{table}\n"
    )
    path = write_results("query", markdown, {"machine": info, "rows": rows, "layers": layers, "neurons": neurons}, args.out)
    print(markdown)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
