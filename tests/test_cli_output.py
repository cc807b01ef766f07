"""Exact command output, one way of naming a neuron everywhere, and options checked before any work."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from cli_helpers import invoke, query, scalar
from conftest import TINY
from test_errors import ANALYZE_FAST, assert_clean_error, row_counts

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError
from onnx_nfi.store.duckdb_store import Store

#: ``onnx-nfi layers models/tiny_lite0.onnx`` at its 64x64 input: the stem is one 3x3 stride-2 conv
#: with pad 1 (offset 0 after the pad's -1 and the window's centre), each 3x3 depthwise conv adds
#: 2 input strides per side, the 5x5 one of block 2 adds 4 (rf 11 -> 19 at jump 4).
LAYERS_TINY = """\
 alias  tensor                         ops        channels  output  rf size  rf stride  rf offset
 conv1  _conv_stem.act                 Conv>Clip  32        32x32   3x3      2x2        0,0
 conv2  _blocks.0._depthwise_conv.act  Conv>Clip  32        32x32   7x7      2x2        -2,-2
 conv3  _blocks.0._project_conv        Conv       16        32x32   7x7      2x2        -2,-2
 conv4  _blocks.1._expand_conv.act     Conv>Clip  96        32x32   7x7      2x2        -2,-2
 conv5  _blocks.1._depthwise_conv.act  Conv>Clip  96        16x16   11x11    4x4        -2,-2
 conv6  _blocks.1._project_conv        Conv       24        16x16   11x11    4x4        -2,-2
 conv7  _blocks.2._expand_conv.act     Conv>Clip  144       16x16   11x11    4x4        -2,-2
 conv8  _blocks.2._depthwise_conv.act  Conv>Clip  144       16x16   19x19    4x4        -6,-6
 conv9  _blocks.2._project_conv        Conv       24        16x16   19x19    4x4        -6,-6
"""


def test_layers_output_is_exact() -> None:
    result = invoke("layers", TINY)
    assert result.exit_code == 0, result.output
    assert "".join(line.rstrip() + "\n" for line in result.stdout.splitlines()) == LAYERS_TINY


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("output_db") / "nfi.duckdb"
    result = invoke("analyze", TINY, photo_dir, "--db", db, "--top-n", 4, "--silent")
    assert result.exit_code == 0, result.output
    return db, result.stdout


def test_analyze_output_is_exact(analysed: tuple[Path, str], photo_dir: Path) -> None:
    db, stdout = analysed
    images = len(list(photo_dir.rglob("*.jpg")))
    dead = scalar(db, "SELECT count(*) FROM neurons WHERE max_activation <= 0")
    number = r"\d+\.\d"
    neurons = sum(int(line.split()[3]) for line in LAYERS_TINY.splitlines()[1:])
    expected = [
        rf"Analysed tiny_lite0: 9 layers, {neurons} neurons \({dead} dead\) over {images} images \(0 skipped\) on CPUExecutionProvider\.",
        rf"Preprocessing: tiny_lite0; labels: folder\. Scan {number} s \({number} img/s\), NF {number} s, "
        rf"indexes {number} s, total {number} s\.",
        rf"Results: {re.escape(str(db.resolve()))} \(run 0\)",
        rf"Warning: the similarity probe set has only {images} images \(fewer than 100\); similar/match scores are "
        r"noisy; set a larger one with 'onnx-nfi probe DIR --force'",
    ]
    live, tied, whole = query(db, "SELECT count(*) FILTER (NOT dead), count(*) FILTER (NOT dead AND saturated_top > 1), "
                                  "count(*) FILTER (NOT dead AND saturated_top = 4) FROM neurons")[0]
    if tied:  # ReLU6 layers: units reach 6 on several of their top 4 images
        expected.append(rf"Warning: {tied} of {live} live units have tied top activations, {whole} of them with every "
                        r"top image tied \(neurons.saturated_top > 1; .*\(docs/method.md §2, Saturating activations\)")
    below, above = query(db, "SELECT count(*) FILTER (color_selectivity < 0), count(*) FILTER (color_selectivity > 1) "
                             "FROM neurons")[0]
    if below or above:
        expected.append(rf"Warning: color_selectivity of {below + above} unit\(s\) is outside \[0, 1\] \({below} below 0, "
                        rf"{above} above 1\); it is not clipped: see docs/method.md §5, Range")
    lines = stdout.splitlines()
    assert len(lines) == len(expected), stdout
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)


@pytest.mark.parametrize("command", [["card"], ["nf"]])
def test_a_neuron_is_named_model_layer_unit(command: list[str], analysed: tuple[Path, str], tmp_path: Path) -> None:
    db, _ = analysed
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    assert invoke(*command, "tiny_lite0:conv8:5", "-o", one, "--db", db).exit_code == 0
    assert invoke(*command, "tiny_lite0", "conv8", "5", "-o", three, "--db", db).exit_code == 0
    assert one.read_bytes() == three.read_bytes()
    tensor = tmp_path / "tensor.png"  # a tensor name as LAYER
    assert invoke(*command, "tiny_lite0:_blocks.2._depthwise_conv.act:5", "-o", tensor, "--db", db).exit_code == 0
    assert tensor.read_bytes() == one.read_bytes()


def test_layers_option_takes_a_comma_separated_list(photo_dir: Path, tmp_path: Path) -> None:
    for name, args in (("comma", ["--layers", "conv1,conv8"]), ("repeated", ["--layers", "conv1", "--layers", "conv8"])):
        result = invoke("analyze", TINY, photo_dir, "--db", tmp_path / "nfi.duckdb", "--name", name, *ANALYZE_FAST, *args)
        assert result.exit_code == 0, result.output
    rows = [
        sorted(r[0] for r in duckdb.connect(str(tmp_path / "nfi.duckdb"), read_only=True).execute(
            "SELECT alias FROM layers WHERE model = ?", [name]).fetchall())
        for name in ("comma", "repeated")
    ]
    assert rows == [["conv1", "conv8"], ["conv1", "conv8"]]


BAD_OPTIONS = {
    "top_n_zero": (["--top-n", "0"], "--top-n must be an integer >= 1"),
    "batch_size_zero": (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    "nf_max_size_negative": (["--nf-max-size", "-1"], "--nf-max-size must be an integer >= 0"),
    "rho_zero": (["--rho", "0"], "rho must be in (0, 1]"),
    "rho_above_one": (["--rho", "1.5"], "rho must be in (0, 1]"),
    "color_mode": (["--color-mode", "hue"], "--color-mode must be one of image, region"),
    "provider": (["--provider", "tpu"], "--provider must be one of auto, cpu, cuda"),
    "indexes": (["--indexes", "color,texture"], "unknown index texture"),
}


@pytest.mark.parametrize("args, hint", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_fail_before_any_work(args: list[str], hint: str, photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", db, *args), hint)
    assert not db.exists()


def test_index_checks_its_options_before_any_work(analysed: tuple[Path, str]) -> None:
    db, _ = analysed
    before = row_counts(db)
    assert_clean_error(invoke("index", "tiny_lite0", "--db", db, "--rho", "0"), "rho must be in (0, 1]")
    assert row_counts(db) == before


@pytest.mark.parametrize("field, value", [("top_n", 0), ("batch_size", -3), ("rho", 0.0), ("color_mode", "x"), ("top_n", True)])
def test_the_api_validates_its_configuration(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        AnalyzeConfig(**{field: value})


def test_a_failure_inside_a_transaction_rolls_everything_back(analysed: tuple[Path, str], tmp_path: Path) -> None:
    db = tmp_path / "copy.duckdb"
    db.write_bytes(analysed[0].read_bytes())
    before = row_counts(db)
    with pytest.raises(RuntimeError, match="planted"):
        with Store.open(db) as store, store.transaction():
            store.delete_model("tiny_lite0")
            store._con.execute("INSERT INTO runs (run_id, model) VALUES (99, 'x')")
            assert store._con.execute("SELECT count(*) FROM neurons").fetchone()[0] == 0  # the deletes took effect inside
            raise RuntimeError("planted failure")
    assert row_counts(db) == before


def test_sql_prints_values_literally(analysed: tuple[Path, str]) -> None:
    db, _ = analysed
    result = invoke("sql", "SELECT '[red]x[/red]' AS v, '[c]' AS w", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["v", "w", "[red]x[/red]", "[c]"]


def test_parquet_path_with_a_quote(analysed: tuple[Path, str], tmp_path: Path) -> None:
    db, _ = analysed
    target = tmp_path / "it's here.parquet"
    assert api.export_parquet("SELECT 42 AS answer", target, db=db) == target
    assert duckdb.connect().execute("SELECT answer FROM read_parquet(?)", [str(target)]).fetchall() == [(42,)]
