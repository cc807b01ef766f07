"""``RunSettings``: the thread count, lock wait and checkpoint schedule of a run, handed to each stage
(``--threads``), and not part of what a run computes (a resume may change them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from cli_helpers import invoke, query
from conftest import TINY
from test_errors import assert_clean_error

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig, RunSettings
from onnx_nfi.errors import ConfigError
from onnx_nfi.graph.session import session_options, using_threads
from onnx_nfi.neurons.nf import compute_threads
from onnx_nfi.pipeline import analysis

FAST = AnalyzeConfig(top_n=8, batch_size=4, provider="cpu", nf=False, indexes=("class",))


def test_the_settings_of_a_config_are_its_schedule_and_threads() -> None:
    config = AnalyzeConfig(threads=3, lock_timeout=5, checkpoint_every=7, checkpoint_seconds=9.5)
    assert config.settings == RunSettings(threads=3, lock_timeout=5, checkpoint_every=7, checkpoint_seconds=9.5)
    with pytest.raises(ConfigError, match=r"^--threads must be an integer >= 0, got -1$"):
        AnalyzeConfig(threads=-1)


def test_sessions_and_nf_workers_made_inside_use_the_runs_threads() -> None:
    proto = onnx.load(str(TINY), load_external_data=False)
    with using_threads(3):
        assert session_options(proto).intra_op_num_threads == 3
        assert compute_threads() == 3
        with using_threads(1):
            assert session_options(proto).intra_op_num_threads == 1
        assert session_options(proto, 2).intra_op_num_threads == 2  # a session's own count wins
        assert session_options(proto).intra_op_num_threads == 3


def test_a_resume_may_change_the_settings_but_not_the_options(photo_dir: Path, tmp_path: Path) -> None:
    p = analysis.plan(TINY, photo_dir, tmp_path / "nfi.duckdb", None, FAST)
    other = replace(p.header, config=replace(FAST, threads=2, lock_timeout=1, checkpoint_every=3))
    assert p.header.differences(other) == []
    changed = replace(p.header, config=replace(FAST, top_n=5, threads=2))
    assert p.header.differences(changed) == ["the analysis options differ (--top-n 8 -> 5)"]


def test_threads_option_gives_the_same_tables_and_is_stored(photo_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.duckdb"
    api.analyze(TINY, photo_dir, db=reference, config=FAST)
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", TINY, photo_dir, "--db", db, "--top-n", "8", "--batch-size", "4", "--provider", "cpu",
                    "--no-nf", "--indexes", "class", "--threads", "1", "--silent")
    assert result.exit_code == 0, result.output
    sql = "SELECT layer, unit, rank, image_id, activation FROM top_activations ORDER BY ALL"
    assert query(db, sql) == query(reference, sql)
    [(params,)] = query(db, "SELECT params FROM runs WHERE kind = 'analyze'")
    assert json.loads(params)["threads"] == 1
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", db, "--threads", "-2"), "--threads must be an integer >= 0")
