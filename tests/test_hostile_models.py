"""Any ONNX CNN: dynamic sizes and batch 1 inside are analysed; hostile files get one line each."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from cli_helpers import invoke, query, scalar
from conftest import TINY
from hostile_models import shufflenet_like_net, two_conv_net, two_input_conv_net
from test_errors import ANALYZE_FAST, assert_clean_error

from onnx_nfi.pipeline.models import open_model

ONNX_LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"


def saved(model: onnx.ModelProto, tmp: Path, name: str = "m.onnx") -> Path:
    onnx.save(model, tmp / name)
    return tmp / name


def test_dynamic_input_size_is_analysed_at_224_with_a_notice(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_conv_net(["N", 3, "H", "W"]), tmp_path)
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", model, photo_dir, "--db", db, "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "Warning: the model's input size is dynamic; analysed at 224x224" in result.stdout
    assert query(db, "SELECT input_height, input_width FROM models") == [(224, 224)]
    # conv 3x3 valid twice: 224 - 2 - 2
    assert query(db, "SELECT alias, height, width FROM layers ORDER BY depth") == [("conv1", 222, 222), ("conv2", 220, 220)]


def test_dynamic_input_size_takes_input_size_option(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_conv_net(["N", 3, "H", "W"]), tmp_path)
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", model, photo_dir, "--db", db, "--silent", "--input-size", "40,48", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "input size is dynamic" not in result.stdout
    assert query(db, "SELECT height, width FROM layers ORDER BY depth") == [(38, 46), (36, 44)]
    layers = invoke("layers", model, "--input-size", "40,48")
    assert layers.exit_code == 0 and "36x44" in layers.stdout
    assert "input size is dynamic" not in layers.stdout


def test_layers_of_a_dynamic_size_model_says_which_size_it_listed(tmp_path: Path) -> None:
    """``layers`` lists a dynamic-size model at 224x224 and says so, as ``analyze`` does."""
    model = saved(two_conv_net(["N", 3, "H", "W"]), tmp_path)
    layers = invoke("layers", model)
    assert layers.exit_code == 0 and "222x222" in layers.stdout
    assert ("Warning: the model's input size is dynamic; analysed at 224x224 (choose another with --input-size H,W "
            "or a preprocessing file's input_size)") in " ".join(layers.stdout.split())


def test_input_size_on_a_fixed_model_is_refused(tmp_path: Path, photo_dir: Path) -> None:
    assert_clean_error(
        invoke("analyze", TINY, photo_dir, "--db", tmp_path / "x.duckdb", "--input-size", "32,32", *ANALYZE_FAST),
        "drop --input-size",
    )
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--input-size", "64", *ANALYZE_FAST), "H,W")


def test_batch_one_inside_runs_one_image_at_a_time(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(shufflenet_like_net(), tmp_path)
    lm, _ = open_model(model)
    assert lm.batch_one_inside
    assert not open_model(TINY)[0].batch_one_inside
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", model, photo_dir, "--db", db, "--silent", "--batch-size", "8", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "hard-codes batch size 1 inside" in result.stdout
    n_images = scalar(db, "SELECT count(*) FROM images")
    assert n_images > 8
    assert scalar(db, "SELECT (params::JSON ->> 'batch_size')::INT FROM runs") == 1
    assert scalar(db, "SELECT count(*) FROM layers") == 2
    # the passes over a stored model (indexes, probe set) run it one image at a time too
    index = invoke("index", Path(model).stem, "--db", db, "--batch-size", "8", "--provider", "cpu", "--silent")
    assert index.exit_code == 0, index.output
    probe = invoke("probe", photo_dir, "--db", db, "--size", "12", "--force", "--batch-size", "8", "--silent")
    assert probe.exit_code == 0, probe.output


@pytest.mark.skipif(not (ONNX_LIGHT / "light_shufflenet.onnx").exists(), reason="onnx test data not installed")
def test_onnx_test_shufflenet_topology_is_analysed(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", ONNX_LIGHT / "light_shufflenet.onnx", photo_dir, "--db", db, "--silent",
                    "--layers", "conv1,conv2,conv3", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "hard-codes batch size 1 inside" in result.stdout
    assert scalar(db, "SELECT count(*) FROM layers") == 3


def truncated(tmp: Path) -> Path:
    data = TINY.read_bytes()
    (tmp / "m.onnx").write_bytes(data[: len(data) // 2])
    return tmp / "m.onnx"


HOSTILE = {
    "truncated_file": (truncated, "export your model to ONNX"),
    "opset_too_old": (lambda t: saved(two_conv_net(["N", 3, 16, 16], opset=5), t), "older than the oldest onnxruntime runs"),
    "opset_too_new": (lambda t: saved(two_conv_net(["N", 3, 16, 16], opset=99), t), "newer than the installed onnx"),
    "custom_op_before_first_conv": (
        lambda t: saved(two_conv_net(["N", 3, 16, 16], custom="first"), t),
        "(com.example::Scramble) uses an op onnxruntime cannot run, and every conv layer depends on it",
    ),
    "external_data_missing": (None, "external data"),
}


def external_missing(tmp: Path) -> Path:
    model = onnx.load(str(TINY))
    onnx.save(model, str(tmp / "m.onnx"), save_as_external_data=True, location="m.weights", size_threshold=1024)
    (tmp / "m.weights").unlink()
    return tmp / "m.onnx"


HOSTILE["external_data_missing"] = (external_missing, "m.weights")


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_model_gets_one_line(case: tuple, tmp_path: Path, photo_dir: Path) -> None:
    make, hint = case
    model = make(tmp_path)
    db = tmp_path / "nfi.duckdb"
    assert_clean_error(invoke("analyze", model, photo_dir, "--db", db, *ANALYZE_FAST), hint)
    assert not db.exists()
    assert_clean_error(invoke("layers", model), hint)


def test_custom_op_between_convs_names_the_convs_left_out(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_conv_net(["N", 3, 16, 16], custom="between"), tmp_path)
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", model, photo_dir, "--db", db, "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "(com.example::Scramble), an op onnxruntime cannot run, and are not analysed" in result.stdout
    assert scalar(db, "SELECT count(*) FROM layers") == 1


def test_non_finite_activations_name_the_layer(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_conv_net(["N", 3, 16, 16], log=True), tmp_path)
    db = tmp_path / "nfi.duckdb"
    line = assert_clean_error(invoke("analyze", model, photo_dir, "--db", db, *ANALYZE_FAST), "non-finite activations")
    assert "layer conv2" in line and "--layers" in line
    assert not db.exists()


IMAGE = ["N", 3, 16, 16]
SAME_COLUMNS = (
    "SELECT l.alias, n.unit, n.max_activation, n.mean_activation, n.dead, n.saturated_top, n.nf, n.color_selectivity "
    "FROM neurons n JOIN layers l USING (model, layer) ORDER BY ALL"
)
SAME_TOP = (
    "SELECT l.alias, t.unit, t.rank, t.image_id, t.y, t.x, t.activation FROM top_activations t "
    "JOIN layers l USING (model, layer) ORDER BY ALL"
)
OPTIONS = ("--silent", "--top-n", "5", "--indexes", "color", "--provider", "cpu")


def analysed(model: onnx.ModelProto, tmp: Path, photo_dir: Path, name: str, *args: str) -> tuple[Path, str]:
    """The database of one analysis of ``model`` (saved as NAME.onnx, analysed as model ``m``) and its summary."""
    db = tmp / f"{name}.duckdb"
    result = invoke("analyze", saved(model, tmp, f"{name}.onnx"), photo_dir, "--db", db, "--name", "m", *OPTIONS, *args)
    assert result.exit_code == 0, result.output
    return db, result.stdout


def assert_same_neurons(db: Path, expected: Path) -> None:
    for sql in (SAME_COLUMNS, SAME_TOP):
        got, want = query(db, sql), query(expected, sql)
        assert want and got == want


@pytest.mark.parametrize(("picked", "alone"), [("image", None), ("mask", "Neg")])
def test_input_option_picks_the_image_input(picked: str, alone: str | None, tmp_path: Path, photo_dir: Path) -> None:
    two = two_input_conv_net({"image": IMAGE, "mask": IMAGE})
    db, summary = analysed(two, tmp_path, photo_dir, "two", "--input", picked)
    other = "mask" if picked == "image" else "image"
    assert f"Warning: the model's other input(s) {other} are fed zeros; only {picked} gets the images" in summary
    assert query(db, "SELECT params::JSON ->> 'input' FROM runs") == [(picked,)]
    one, _ = analysed(two_input_conv_net({picked: IMAGE}, alone), tmp_path, photo_dir, "one")
    assert_same_neurons(db, one)
    # `index` finds the image input again from the stored run
    assert invoke("index", "m", "--db", db, "--indexes", "color", "--silent").exit_code == 0
    assert_same_neurons(db, one)
    layers = invoke("layers", tmp_path / "two.onnx", "--input", picked)
    assert layers.exit_code == 0 and "conv2" in layers.stdout


def test_several_image_inputs_are_named_with_the_option(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_input_conv_net({"image": IMAGE, "mask": IMAGE}), tmp_path)
    db = tmp_path / "nfi.duckdb"
    hint = "has several image inputs (image, mask); pick the one to analyse with --input NAME"
    assert_clean_error(invoke("analyze", model, photo_dir, "--db", db, *ANALYZE_FAST), hint)
    assert_clean_error(invoke("layers", model), hint)
    assert_clean_error(invoke("analyze", model, photo_dir, "--db", db, "--input", "depth", *ANALYZE_FAST),
                       "has no input 'depth'; its inputs are image, mask: pass one of them to --input")
    assert not db.exists()


def test_a_non_image_input_is_fed_zeros_with_a_warning(tmp_path: Path, photo_dir: Path) -> None:
    # a per-channel offset [3, 1, 1] added to the image: the image input is the only 4-D one
    db, summary = analysed(two_input_conv_net({"image": IMAGE, "offset": [3, 1, 1]}, "Add"), tmp_path, photo_dir, "offset")
    assert "Warning: the model's other input(s) offset are fed zeros; only image gets the images (--input)" in summary
    one, _ = analysed(two_input_conv_net({"image": IMAGE}, None), tmp_path, photo_dir, "one")
    assert_same_neurons(db, one)
    assert query(db, "SELECT params::JSON ->> 'input' FROM runs") == [(None,)]


def test_an_input_that_cannot_be_fed_zeros_is_named(tmp_path: Path, photo_dir: Path) -> None:
    model = saved(two_input_conv_net({"image": IMAGE, "offset": [3, "H", 1]}, "Add"), tmp_path)
    assert_clean_error(invoke("analyze", model, photo_dir, "--db", tmp_path / "x.duckdb", *ANALYZE_FAST),
                       "input 'offset' (shape 3x?x1) cannot be fed zeros")
