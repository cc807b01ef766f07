"""Distributed analysis (and relevance) on a real local Ray instance (2 CPUs): equal to one plain run, also when a
worker is killed mid-shard or mid-chunk of the NF and index passes (Ray retries its task)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import PLANTED, TINY
from tables import assert_same_analysis

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.images import list_images
from onnx_nfi.errors import ImageError, Interrupted
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.pipeline import analysis
from onnx_nfi.pipeline.distributed import FOLD, TALLY, RayChunks, distributed_scan
from onnx_nfi.pipeline.features import FeatureWork, compute_features
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.scan.scanner import scan

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
        per_shard, pids, _ = ray.get(ray.get_actor(names[0]).state.remote())
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
    other_list = replace(p, header=replace(p.header, image_list="0" * 64))
    with pytest.raises(ImageError, match="sees another image list under .* than the driver; images must be on a filesystem"):
        distributed_scan(other_list, "local")


def _chunk_tally() -> tuple[dict[int, int], dict[int, int]] | None:
    """(process id, starts) per chunk of the pass in flight, from its progress actor; None before it
    is registered (or between passes)."""
    for name in ray.util.list_named_actors():
        if name.startswith(TALLY):
            try:
                _, pids, starts = ray.get(ray.get_actor(name).state.remote())
            except (ValueError, ray.exceptions.RayActorError):  # the scan's, killed when it ended
                continue
            if starts:
                return pids, starts
    return None


@pytest.mark.slow
def test_ray_run_with_a_worker_killed_in_the_index_pass_equals_one_run(images: Path, tmp_path: Path) -> None:
    """The NF and index passes run as chunk tasks; a worker killed in the middle of one is replaced
    and the chunk computed again: every table, NFs and indexes included, equals the plain run's.
    (The orientation and symmetry indexes, 27 region transforms, on two layers make the index pass
    last seconds, long enough to be caught midway.)"""
    config = AnalyzeConfig(batch_size=4, provider="cpu", layers=("conv1", "conv2"), top_n=40,
                           indexes=("color", "class", "orientation", "symmetry"))
    reference = tmp_path / "plain.duckdb"
    api.analyze(TINY, images, db=reference, config=config)
    killed: list[int] = []
    retried: set[int] = set()
    reports: dict[str, list[tuple[int, int]]] = {"nf": [], "index": []}

    def kill_one_worker(phase: str, done: int, total: int) -> None:
        if phase not in reports:
            return
        reports[phase].append((done, total))
        tally = _chunk_tally() if phase == "index" else None
        if tally is None:
            return
        pids, starts = tally
        retried.update(chunk for chunk, n in starts.items() if n > 1)
        if not killed:
            chunk = min(pids)
            os.kill(pids[chunk], signal.SIGKILL)
            killed.append(chunk)

    db = tmp_path / "ray.duckdb"
    api.analyze(TINY, images, db=db, config=config, ray="local", progress=kill_one_worker)
    assert killed and retried, f"no chunk of the index pass was killed and run again (progress {reports})"
    for phase, seen in reports.items():  # one bar per pass over the cluster, to the end
        assert seen and seen[-1][0] == seen[-1][1] > 0, (phase, seen)
    assert_same_analysis(db, reference, MODEL)


def test_a_ray_run_stopped_after_its_scan_keeps_the_scan_for_merge(images: Path, reference: Path, tmp_path: Path) -> None:
    """The cluster's scan is saved as soon as it is merged: a stop in the NF pass loses only that pass,
    and the command the message names writes the same analysis (then removes the state)."""
    db = tmp_path / "ray.duckdb"

    def stop_in_the_nf_pass(phase: str, done: int, total: int) -> None:
        if phase == "nf":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        api.analyze(TINY, images, db=db, config=CONFIG, ray="local", progress=stop_in_the_nf_pass)
    state = api.state_path(MODEL, db=db)
    assert str(caught.value) == (
        f"Interrupted; nothing was written to {db}; the finished scan is saved in {state}: "
        f"write it with 'onnx-nfi merge {state} --db {db}'."
    )
    assert not db.exists()
    written = invoke("merge", state, "--db", db, "--silent")
    assert written.exit_code == 0, written.output
    assert not state.exists(), "the written state was left behind"
    assert_same_analysis(db, reference, MODEL)


def test_nf_and_index_chunks_on_ray_equal_the_same_chunks_here(images: Path) -> None:
    """Many small chunks (more than the tasks kept in flight), every region index: the cluster's
    outputs, combined in chunk order by the fold actor, equal the local pass bit for bit, also when
    the fold is killed midway through the NF pass (the pass runs again)."""
    lm, pre = open_model(TINY)
    infos = model_layers(lm)[:4]
    config = AnalyzeConfig(top_n=12, provider="cpu", indexes=("color", "class", "symmetry", "shape"))
    result = scan(lm, [i.layer for i in infos], pre, list_images(images).files, top_n=12, provider="cpu")
    topns = {tensor: st.topn for tensor, st in result.stats.items()}
    paths = {img.image_id: Path(img.path) for img in result.images}
    labels = {img.image_id: img.label for img in result.images}
    work = FeatureWork.of(lm, pre, infos, topns, paths, labels, config, chunk_images=25)
    assert len(work.chunks()) > 8
    here = compute_features(work, None)
    nf_reports: list[int] = []
    killed: list[int] = []

    def kill_the_fold(phase: str, done: int, total: int) -> None:
        if phase != "nf":
            return
        nf_reports.append(done)
        if not killed and done >= 50:  # two chunks into the pass
            (fold,) = [n for n in ray.util.list_named_actors() if n.startswith(FOLD)]
            os.kill(ray.get(ray.get_actor(fold).pid.remote()), signal.SIGKILL)
            killed.append(done)

    there = compute_features(work, kill_the_fold, RayChunks("local"))
    restarts = sum(b < a for a, b in itertools.pairwise(nf_reports))
    assert restarts == 1, f"the NF pass did not run again after its fold was killed (progress {nf_reports})"
    for tensor, nf in here.nfs.items():
        np.testing.assert_array_equal(there.nfs[tensor], nf, err_msg=tensor)
    for tensor, columns in here.indexes.columns.items():
        for column, values in columns.items():
            got = there.indexes.columns[tensor][column]
            if values.dtype == object:
                assert [None if v is None else list(v) for v in got] == [None if v is None else list(v) for v in values]
            else:
                np.testing.assert_array_equal(got, values, err_msg=f"{tensor} {column}")


def test_relevance_on_ray_stores_the_rows_of_a_plain_run(photo_dir: Path, tmp_path: Path) -> None:
    """Two layers of the planted model measured as Ray tasks (``--ray local``, joining the module's
    instance) and plainly, from one analysed database copied twice: the stored rows are equal bit
    for bit, the classes hurt most too."""
    images = tmp_path / "images"
    images.mkdir()
    for k, path in enumerate(sorted(photo_dir.rglob("*.jpg"))[::5][:8]):
        (images / f"{k}.jpg").symlink_to(path)
    analysed = tmp_path / "analysed.duckdb"
    api.analyze(PLANTED, images, db=analysed, config=AnalyzeConfig(layers=("conv2", "conv4"), indexes=(), nf=False))
    plain, on_ray = tmp_path / "plain.duckdb", tmp_path / "ray.duckdb"
    shutil.copy(analysed, plain)
    shutil.copy(analysed, on_ray)
    api.relevance(PLANTED.stem, db=plain, images=images, provider="cpu")
    result = invoke("relevance", PLANTED.stem, "--images", images, "--provider", "cpu", "--ray", "local",
                    "--silent", "--db", on_ray)
    assert result.exit_code == 0, result.output
    assert "conv2" in result.output and "conv4" in result.output
    rows = ("SELECT n.layer, n.unit, r.images, r.target, r.mode, r.prob_drop, r.flip_rate FROM relevance r "
            "JOIN neurons n USING (neuron_id) ORDER BY n.layer, n.unit")
    classes = ("SELECT n.layer, n.unit, c.rank, c.class_index, c.prob_drop FROM relevance_classes c "
               "JOIN neurons n USING (neuron_id) ORDER BY n.layer, n.unit, c.rank")
    expected = query(plain, rows)
    assert len(expected) > 0 and {r[0] for r in expected} == {r[0] for r in query(plain, "SELECT layer FROM layers")}
    assert any(r[5] != 0.0 for r in expected)  # the layers matter: equal values say something
    assert query(on_ray, rows) == expected
    assert query(on_ray, classes) == query(plain, classes)
