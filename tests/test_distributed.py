"""Distributed analysis on a real local Ray instance (2 CPUs): equal to one plain run, also when a
worker is killed mid-shard (Ray retries its shard)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY
from tables import assert_same_analysis

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ImageError
from onnx_nfi.pipeline import analysis
from onnx_nfi.pipeline.distributed import TALLY, distributed_scan

ray = pytest.importorskip("ray", reason="the ray extra is part of the dev install (make test)")

CONFIG = AnalyzeConfig(batch_size=4, provider="cpu")
MODEL = "tiny_lite0"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One Ray instance for the module (~5 s to start)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The photos four times over (links under new names): shards long enough to kill a worker midway."""
    folder = tmp_path_factory.mktemp("ray") / "images"
    for path in sorted(photo_dir.rglob("*.jpg")):
        for k in range(4):
            link = folder / path.parent.name / f"{k}-{path.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """One plain analysis."""
    db = tmp_path_factory.mktemp("plain") / "ref.duckdb"
    api.analyze(TINY, images, db=db, config=CONFIG)
    return db


@pytest.mark.slow
def test_ray_run_with_a_worker_killed_mid_shard_equals_one_run(images: Path, reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shard_size = len(list(images.rglob("*.jpg"))) // 2
    killed: list[tuple[int, int]] = []
    reports: list[tuple[int, int]] = []

    def kill_one_worker(phase: str, done: int, total: int) -> None:
        if phase != "scan":
            return
        reports.append((done, total))
        if killed or done < 8:
            return
        names = [n for n in ray.util.list_named_actors() if n.startswith(TALLY)]
        if not names:  # the progress actor is registered asynchronously: look again at the next report
            return
        per_shard, pids = ray.get(ray.get_actor(names[0]).state.remote())
        shard = min(per_shard, key=per_shard.get, default=None)  # the one furthest from its end
        if shard is not None and per_shard[shard] < shard_size - 4:
            os.kill(pids[shard], signal.SIGKILL)
            killed.append((shard, per_shard[shard]))

    summary = api.analyze(TINY, images, db=db, config=CONFIG, ray="local", progress=kill_one_worker)
    assert killed, f"no worker was killed mid-shard (progress {reports})"
    assert reports[-1] == (summary.images_seen, summary.images_seen)  # one bar over the cluster, to the end
    assert_same_analysis(db, reference, MODEL)


def test_a_worker_that_cannot_see_the_images_stops_the_run_with_one_line(photo_dir: Path, tmp_path: Path) -> None:
    p = analysis.plan(TINY, photo_dir, tmp_path / "nfi.duckdb", None, CONFIG)
    elsewhere = replace(p, imageset=replace(p.imageset, root=tmp_path / "not-on-this-node"))
    with pytest.raises(ImageError, match=r"cannot use the model or images at the driver's paths .*image folder .* does not exist"):
        distributed_scan(elsewhere, "local")
    other_list = replace(p, header={**p.header, "image_list": "0" * 64})
    with pytest.raises(ImageError, match="sees another image list under .* than the driver; images must be on a filesystem"):
        distributed_scan(other_list, "local")
