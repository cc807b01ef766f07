"""Saturated units of a database: are their top images and top classes made by file order?

A unit is *all-saturated* when every one of its top-N entries is exactly at the activation's
bound (``--bound``, 6.0 for ReLU6). Were ties broken by file order, its top image would be among
the first files and its top class the first class folder: the mean top image id of those units
would fall below the other units', and one class would be the top class of far more of them than
its share of the images. Both are printed against the same numbers for the other live units.
Units whose top-N all tie *below* the bound are listed apart: their input is silent (clipped at 0)
where they peak, so the pre-activation ties too (it is the bias) and image order decides, as the
rule says.

```
.venv/bin/python benchmarks/saturation.py                       # Lite0 on the demo photos, analysed now
.venv/bin/python benchmarks/saturation.py --db demo-output/nfi.duckdb --model efficientnet_lite0
```

Counts ties from ``top_activations``, so it reads databases written before ``saturated_top`` existed.

``--reverse`` settles what the numbers above cannot: whether a group's choices follow file order or
image content. It analyses the photos a second time with the file order reversed (the same files,
flat, named so they list backwards, labelled through ``--labels csv:``) and reports, per group,
how many units keep the same rank-1 image (by content) and the mean top image id in both orders
(in the forward numbering). Choices made by content do not move; a file-order bias would follow
the order and keep picking the first files.

```
.venv/bin/python benchmarks/saturation.py --reverse --label reversal
```
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, RESULTS, demo_photos, machine  # noqa: E402

from onnx_nfi.store.duckdb_store import Store  # noqa: E402

UNITS_SQL = """
SELECT t.layer, t.unit, count(*) AS kept,
       count(*) FILTER (WHERE t.activation = n.max_activation) AS tied,
       min(t.image_id) FILTER (WHERE t.rank = 1) AS top_image, avg(t.image_id) AS mean_image,
       any_value(n.dead) AS dead, any_value(n.top_class) AS top_class, any_value(n.max_activation) AS best
FROM top_activations t JOIN neurons n USING (model, layer, unit)
WHERE t.model = ?
GROUP BY t.layer, t.unit
"""


def measure(db: Path, model: str, many: int, bound: float) -> dict[str, Any]:
    """Mean top image id and the most over-represented top class, per group of live units."""
    with Store.open(db, read_only=True) as store:
        units = store.columns(UNITS_SQL, [model])
        labels = store.columns("SELECT label FROM images WHERE model = ? AND label IS NOT NULL", [model])["label"]
        n_images = int(store.rows("SELECT count(*) AS n FROM images WHERE model = ?", [model])[0]["n"])
    live = ~units["dead"].astype(bool)
    all_tied = live & (units["tied"] == units["kept"])
    at_bound = units["best"] == np.float32(bound)
    groups = {
        f"all-saturated (all top-N at {bound:g})": all_tied & at_bound,
        f"at least {many} tied at {bound:g}": live & at_bound & (units["tied"] >= many),
        "all top-N tied below the bound": all_tied & ~at_bound,
        "other live units": live & ~(all_tied & at_bound),
    }
    classes, counts = np.unique(labels.astype(str), return_counts=True)
    image_share = dict(zip(classes, counts / counts.sum()))
    out: dict[str, Any] = {
        "model": model, "images": n_images, "units": int(units["unit"].size), "dead": int((~live).sum()),
        "uniform_mean_id": (n_images - 1) / 2, "groups": {},
    }
    for name, mask in groups.items():
        ids = units["top_image"][mask].astype(float)
        all_ids = units["mean_image"][mask].astype(float)
        tops = np.asarray(units["top_class"][mask])
        tops = tops[[t is not None and t == t for t in tops]].astype(str)  # NULL: dead or no labelled image
        top_classes, top_counts = np.unique(tops, return_counts=True)
        ratios = {c: (k / tops.size) / image_share[c] for c, k in zip(top_classes, top_counts) if c in image_share}
        worst = max(ratios, key=ratios.get) if ratios else None
        out["groups"][name] = {
            "units": int(mask.sum()),
            "mean_top_image_id": float(ids.mean()) if ids.size else math.nan,
            "standard_error": float(ids.std() / math.sqrt(ids.size)) if ids.size > 1 else math.nan,
            "mean_image_id_all_ranks": float(all_ids.mean()) if all_ids.size else math.nan,
            "max_class_ratio": float(ratios[worst]) if worst else math.nan,
            "max_class": worst,
            "max_class_units": int(top_counts[list(top_classes).index(worst)]) if worst else 0,
        }
    return out


TOPS_SQL = """
SELECT t.layer, t.unit, i.sha256
FROM top_activations t JOIN images i ON i.model = t.model AND i.image_id = t.image_id
WHERE t.model = ? AND t.rank = 1
"""


def groups_of(db: Path, model: str, many: int, bound: float) -> dict[str, set[tuple[str, int]]]:
    """The (layer, unit) pairs of each group of ``measure``."""
    with Store.open(db, read_only=True) as store:
        units = store.columns(UNITS_SQL, [model])
    live = ~units["dead"].astype(bool)
    all_tied = live & (units["tied"] == units["kept"])
    at_bound = units["best"] == np.float32(bound)
    masks = {
        "all-saturated": all_tied & at_bound,
        f"at least {many} tied at the bound": live & at_bound & (units["tied"] >= many),
        "all tied below the bound": all_tied & ~at_bound,
        "other live units": live & ~(all_tied & at_bound) & ~(all_tied & ~at_bound),
    }
    return {name: set(zip(units["layer"][m], units["unit"][m].tolist())) for name, m in masks.items()}


def reversed_copy(photos: Path, folder: Path) -> Path:
    """The photos, flat, named so that they list in reverse order, and a labels CSV; returns the CSV."""
    files = sorted(p for p in photos.rglob("*.jpg"))
    rows = []
    for k, path in enumerate(files):
        name = f"{len(files) - 1 - k:05d}.jpg"
        shutil.copyfile(path, folder / name)
        rows.append((name, path.parent.name))
    table = folder.parent / "labels.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return table


def order_check(forward: Path, backward: Path, model: str, many: int, bound: float) -> dict[str, Any]:
    """Per group of the forward run: units whose rank-1 image (by content) is the same in both orders,
    and the mean rank-1 image id of each run, both in the forward run's numbering."""
    tops: list[dict[tuple[str, int], str]] = []
    forward_ids: dict[str, int] = {}
    for db in (forward, backward):
        with Store.open(db, read_only=True) as store:
            rows = store.columns(TOPS_SQL, [model])
            if db == forward:
                ids = store.columns("SELECT image_id, sha256 FROM images WHERE model = ?", [model])
                forward_ids = dict(zip(ids["sha256"], ids["image_id"].tolist()))
        tops.append(dict(zip(zip(rows["layer"], rows["unit"].tolist()), rows["sha256"])))
    out: dict[str, Any] = {}
    for name, units in groups_of(forward, model, many, bound).items():
        both = [u for u in units if u in tops[0] and u in tops[1]]
        same = sum(tops[0][u] == tops[1][u] for u in both)
        out[name] = {
            "units": len(both),
            "same_top_image": same / max(len(both), 1),
            "mean_top_id_forward": float(np.mean([forward_ids[tops[0][u]] for u in both])) if both else math.nan,
            "mean_top_id_reversed": float(np.mean([forward_ids[tops[1][u]] for u in both])) if both else math.nan,
        }
    return out


def order_report(check: dict[str, Any], images: int) -> str:
    """The markdown table of ``order_check``."""
    lines = [
        f"File order reversed ({images} images; ids in the forward numbering, uniform mean {(images - 1) / 2:.1f}; "
        "a file-order choice would pick high ids when reversed):",
        "",
        "| live units | count | same rank-1 image in both orders | mean rank-1 image id, forward | reversed |",
        "|---|---|---|---|---|",
    ]
    for name, g in check.items():
        lines.append(
            f"| {name} | {g['units']} | {100 * g['same_top_image']:.1f} % | {g['mean_top_id_forward']:.1f} | "
            f"{g['mean_top_id_reversed']:.1f} |"
        )
    return "\n".join(lines)


def report(result: dict[str, Any], label: str) -> str:
    """The markdown table of one measurement."""
    lines = [
        f"`{result['model']}` ({label}): {result['units']} units ({result['dead']} dead), {result['images']} images; "
        f"a uniformly random top image would have mean id {result['uniform_mean_id']:.1f}.",
        "",
        "| live units | count | mean top (rank 1) image id (± s.e.) | mean image id over all top-N | "
        "max over classes of top-class share / image share |",
        "|---|---|---|---|---|",
    ]
    for name, g in result["groups"].items():
        lines.append(
            f"| {name} | {g['units']} | {g['mean_top_image_id']:.1f} ± {g['standard_error']:.1f} | "
            f"{g['mean_image_id_all_ranks']:.1f} | "
            f"{g['max_class_ratio']:.2f} ({g['max_class']}, {g['max_class_units']} units) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="an existing database (default: analyse Lite0 on the demo photos now)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--many", type=int, default=20, help="the 'at least this many tied' group")
    parser.add_argument("--bound", type=float, default=6.0, help="the activation's upper bound (6 for ReLU6)")
    parser.add_argument("--label", default="this code", help="how the results file names the run, e.g. before / after")
    parser.add_argument("--out", type=Path, help="results file stem (default benchmarks/results/saturation-<label>)")
    parser.add_argument("--reverse", action="store_true", help="also analyse the photos in reversed file order and compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from onnx_nfi import api
        from onnx_nfi.config import AnalyzeConfig

        db = args.db
        if db is None:
            db = Path(tmp) / "nfi.duckdb"
            api.analyze(LITE0, demo_photos(), db=db, name=args.model)
        result = measure(db, args.model, args.many, args.bound)
        text = report(result, args.label)
        if args.reverse:
            flat = Path(tmp) / "reversed" / "photos"
            flat.mkdir(parents=True)
            labels = reversed_copy(demo_photos(), flat)
            backward = Path(tmp) / "reversed.duckdb"
            api.analyze(LITE0, flat, db=backward, name=args.model, config=AnalyzeConfig(labels=f"csv:{labels}"))
            result["order_check"] = order_check(db, backward, args.model, args.many, args.bound)
            text += "\n\n" + order_report(result["order_check"], result["images"])
    result["machine"] = machine()
    print(text)
    stem = args.out or RESULTS / f"saturation-{args.label.replace(' ', '_')}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
