"""Silence replaced by warnings in the summary (and refusals where a value would be ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import invoke, query
from conftest import TINY
from hostile_models import saturating_and_linear_net
from test_errors import ANALYZE_FAST, assert_clean_error

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import from_dict

SIDECAR = json.loads(TINY.with_suffix(".json").read_text())


def analyse(images: Path, db: Path, **options: object) -> api.AnalysisSummary:
    return api.analyze(TINY, images, db=db, config=AnalyzeConfig(top_n=3, nf=False, indexes=(), **options))


def test_csv_labels_matching_no_image_are_reported(photo_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nelsewhere/a.jpg,cat\nelsewhere/b.jpg,dog\n")
    summary = analyse(photo_dir, tmp_path / "nfi.duckdb", labels=f"csv:{labels}")
    n = summary.images_seen
    assert f"label file {labels} labels 0 of {n} images; the others are unlabelled" in " ".join(summary.warnings)


def test_images_at_the_root_of_a_labelled_tree_are_reported(photos_copy: Path, tmp_path: Path) -> None:
    first = next(p for p in sorted(photos_copy.rglob("*.jpg")))
    shutil.copy(first, photos_copy / "loose1.jpg")
    shutil.copy(first, photos_copy / "loose2.jpg")
    summary = analyse(photos_copy, tmp_path / "nfi.duckdb")
    assert f"2 image(s) directly in {photos_copy} have no class" in " ".join(summary.warnings)


def test_small_probe_set_is_reported_with_the_reset_command(photo_dir: Path, tmp_path: Path) -> None:
    summary = analyse(photo_dir, tmp_path / "nfi.duckdb")
    assert any(w.startswith(f"the similarity probe set has only {summary.images_seen} images (fewer than 100)")
               and "onnx-nfi probe DIR --force" in w for w in summary.warnings)


def test_later_larger_set_than_the_probe_set_is_reported(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    rng = np.random.default_rng(0)
    for folder, n in ((small, 100), (large, 401)):
        folder.mkdir()
        for i in range(n):
            cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    db = tmp_path / "nfi.duckdb"
    first = analyse(small, db, probe_size=1024)
    assert not any("probe" in w for w in first.warnings)
    second = analyse(large, db, probe_size=1024)
    assert any("this analysis has 401 images but the database's similarity probe set only 100" in w
               for w in second.warnings), second.warnings


def test_implausible_normalisation_is_reported_with_the_numbers(photo_dir: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({**SIDECAR, "pixel_scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    summary = analyse(photo_dir, tmp_path / "nfi.duckdb", preprocess=str(pre))
    warning = next(w for w in summary.warnings if "maps pixels 0..255" in w)
    low = min(-m / d for m, d in zip([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    high = max((255 - m) / d for m, d in zip([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    assert f"to {low:.4g}..{high:.4g} (pixel_scale 1," in warning
    plausible = from_dict({**SIDECAR}, "sidecar")
    assert plausible.warnings() == ()


def test_class_names_in_the_preprocessing_file_are_reported(photo_dir: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({**SIDECAR, "class_names": ["a", "b"]}))
    summary = analyse(photo_dir, tmp_path / "nfi.duckdb", preprocess=str(pre))
    assert any("preprocessing key 'class_names' is not used" in w for w in summary.warnings)


def test_summary_warnings_are_printed(photo_dir: Path, tmp_path: Path) -> None:
    result = invoke("analyze", TINY, photo_dir, "--db", tmp_path / "nfi.duckdb", "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0
    assert "Warning: the similarity probe set has only" in result.stdout


def test_unknown_resize_key_is_refused(photo_dir: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({**SIDECAR, "resize": {**SIDECAR["resize"], "antialias": True}}))
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--preprocess", pre, *ANALYZE_FAST), "unknown key(s) antialias")
    pre.write_text(json.dumps({**SIDECAR, "resize": {**SIDECAR["resize"], "library": "skimage"}}))
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--preprocess", pre, *ANALYZE_FAST),
                       "resize.library must be one of opencv, pillow")


def test_pillow_resize_is_honoured() -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    data = {**SIDECAR, "input_size": [30, 40], "resize": {"mode": "exact", "height": 30, "width": 40,
                                                           "interpolation": "bicubic", "library": "pillow"},
            "crop": {"mode": "none"}}
    got = from_dict(data, "pillow").to_display(bgr)
    expected = np.asarray(Image.fromarray(bgr[:, :, ::-1].copy()).resize((40, 30), Image.BICUBIC))  # independent: RGB first
    assert np.abs(got.astype(int) - expected).max() <= 1
    opencv = from_dict({**data, "resize": {**data["resize"], "library": "opencv"}}, "cv").to_display(bgr)
    assert not np.array_equal(opencv, got)  # the library makes a difference, so it is not ignored
    for typed, same in (("PIL", got), ("Pillow", got), ("cv2", opencv)):  # the import names people type
        named = from_dict({**data, "resize": {**data["resize"], "library": typed}}, typed).to_display(bgr)
        assert np.array_equal(named, same), typed


def test_predicted_labels_need_a_class_head(photo_dir: Path) -> None:
    # tiny_lite0 ends in a feature map [N, 24, 16, 16]; Lite0's 1000 logits are tested in test_cli
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--labels", "predicted", *ANALYZE_FAST),
                       "--labels predicted needs a model whose output is class scores")


def test_index_command_records_its_run(photo_dir: Path, tmp_path: Path) -> None:
    from cli_helpers import query

    db = tmp_path / "nfi.duckdb"
    analyse(photo_dir, db)
    result = invoke("index", "tiny_lite0", "--db", db, "--indexes", "class", "--rho", "0.9", "--silent")
    assert result.exit_code == 0, result.output
    rows = query(db, "SELECT kind, params::JSON ->> 'rho', params::JSON -> 'indexes', params::JSON ->> 'color_mode' "
                     "FROM runs WHERE model = 'tiny_lite0' ORDER BY run_id")
    assert rows[0][0] == "analyze"
    assert rows[1] == ("index", "0.9", '["class"]', "image")


def test_index_layers_restricts_the_passes_to_those_layers(photo_dir: Path, tmp_path: Path) -> None:
    from cli_helpers import query

    db = tmp_path / "nfi.duckdb"
    analyse(photo_dir, db)  # no indexes at all
    result = invoke("index", "tiny_lite0", "--db", db, "--indexes", "color", "--layers", "conv2,conv4", "--silent")
    assert result.exit_code == 0, result.output
    rows = query(db, "SELECT alias, count(color_selectivity), count(*) FILTER (WHERE NOT dead) FROM neurons "
                     "JOIN layers USING (model, layer) GROUP BY alias ORDER BY alias")
    assert all((alias in ("conv2", "conv4")) == (valued == live > 0) for alias, valued, live in rows), rows
    assert all(valued == 0 for alias, valued, _ in rows if alias not in ("conv2", "conv4")), rows
    assert query(db, "SELECT params::JSON -> 'layers' FROM runs WHERE kind = 'index'") == [('["conv2","conv4"]',)]
    unknown = invoke("index", "tiny_lite0", "--db", db, "--indexes", "color", "--layers", "conv99")
    assert unknown.exit_code == 2 and unknown.output.startswith("Error: no layer matches 'conv99'")



def test_tied_units_and_indexes_outside_the_unit_range_are_counted(photo_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "planted.onnx"
    onnx.save(saturating_and_linear_net(), model)
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", model, photo_dir, "--db", db, "--preprocess", "raw", "--top-n", "10",
                    "--indexes", "color", "--no-nf", "--silent")
    assert result.exit_code == 0, result.output
    units = {op: row for op, *row in query(
        db, "SELECT l.op_type, n.saturated_top, n.color_selectivity, n.dead FROM neurons n JOIN layers l USING (model, layer)"
    )}
    top = {op: [a for (a,) in query(db, "SELECT activation FROM top_activations JOIN layers l USING (model, layer) "
                                        "WHERE l.op_type = ?", [op])] for op in units}
    # planted: the Clip(0, 6) unit is at 6 on every photo; the linear unit is -1 wherever the image is grey,
    # so its colour index is 1 - sum(-1) / sum(a_j) = 1 + N' / sum(a_j) over its positive top activations
    assert top["Conv>Clip"] == [6.0] * 10 and units["Conv>Clip"][0] == 10
    positive = [a for a in top["Conv"] if a > 0]
    assert units["Conv"][1] == pytest.approx(1 + len(positive) / sum(positive), rel=1e-5)
    assert units["Conv"][1] > 1 and 0 <= units["Conv>Clip"][1] <= 1
    tied = sum(1 for shared, _, dead in units.values() if shared > 1 and not dead)
    whole = sum(1 for shared, _, dead in units.values() if shared == 10 and not dead)
    assert (f"Warning: {tied} of 2 live units have tied top activations, {whole} of them with every top image tied "
            "(neurons.saturated_top > 1; per layer: layer_summary.saturated): their ranking and crops come from the "
            "pre-activation where it differs, else from image order (docs/method.md §2, Saturating activations)"
            ) in result.stdout
    assert ("Warning: color_selectivity of 1 unit(s) is outside [0, 1] (0 below 0, 1 above 1); it is not clipped: "
            "see docs/method.md §5, Range") in result.stdout
