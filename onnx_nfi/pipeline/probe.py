"""The probe set (docs/method.md, "Similar neurons"): chosen by the first analysis or
``onnx-nfi probe DIR``, scored by every model.

The probe set belongs to the database: the first analysis picks it (up to ``probe_size`` images
evenly spaced over its sorted image list, identified by content hash), or ``onnx-nfi probe DIR``
sets it. Every later model is scored on exactly those images, in its own scan where they are among
its images, else in an extra pass over their stored paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnx_nfi.data.images import ImageFile, list_images
from onnx_nfi.data.png_chunks import imdecode
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ImageError, SearchError, StateError
from onnx_nfi.files import file_sha256
from onnx_nfi.graph.layers import Layer, find_conv_layers
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.neurons import similarity
from onnx_nfi.store.model_file import reopen_model
from onnx_nfi.progress import Progress, phase
from onnx_nfi.scan.scanner import ScanResult, scan
from onnx_nfi.store.duckdb_store import Store, lock_wait
from onnx_nfi.store.unwritten import kept_path, load_kept, save_kept, write_or_keep
from onnx_nfi.store.vectors import ProbeSet, read_probe, replace_probe_set, sync_after_commit


@dataclass(frozen=True)
class ProbeSummary:
    """What ``set_probe`` did."""

    images: int
    changed: bool
    recomputed: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _sha256(path: Path) -> str | None:
    """The file's hash, or None when it cannot be read (such a file is left out of the probe set)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def choose_probe(files: Sequence[ImageFile], size: int, *, check_decodable: bool = False) -> ProbeSet:
    """Up to ``size`` of ``files`` evenly spaced over the (sorted) list, hashed, duplicates dropped.

    Evenly spaced rather than the first ``size``: a sorted ImageFolder lists class by class, and the
    probe set should span every class. ``check_decodable`` also drops files OpenCV cannot decode
    (during an analysis the scan itself finds those).
    """
    n, m = len(files), min(max(size, 0), len(files))
    chosen: dict[str, Path] = {}
    for i in range(m):
        path = Path(files[(i * n) // m].path)
        digest = _sha256(path)
        if digest is None or digest in chosen:
            continue
        if check_decodable and imdecode(path.read_bytes(), cv2.IMREAD_COLOR) is None:
            continue
        chosen[digest] = path
    return ProbeSet(tuple(chosen), tuple(chosen.values()), stored=False)


def probe_for_analysis(db: str | Path, files: Sequence[ImageFile], size: int) -> ProbeSet:
    """The probe set an analysis into ``db`` must score: the stored one, else chosen from ``files``."""
    if Path(db).exists():
        with Store.open(db, read_only=True, any_duckdb=True) as store:  # a look: a run refused later leaves the file as it was
            stored = read_probe(store) if store.has_table("probe_images") else None
        if stored is not None:
            return stored
    return choose_probe(files, size)


#: Below this many probe images, response correlations (similar, match) are too noisy to trust.
MIN_PROBE_IMAGES = 100


def probe_warnings(probe: ProbeSet, images: int, size: int) -> tuple[str, ...]:
    """What to say about the probe set of an analysis of ``images`` images (``size`` = --probe-size)."""
    reset = "set a larger one with 'onnx-nfi probe DIR --force'"
    if len(probe) < MIN_PROBE_IMAGES:
        return (f"the similarity probe set has only {len(probe)} images (fewer than {MIN_PROBE_IMAGES}); "
                f"similar/match scores are noisy; {reset}",)
    if probe.stored and len(probe) < size and images > 4 * len(probe):
        return (f"this analysis has {images} images but the database's similarity probe set only {len(probe)}, "
                f"chosen by an earlier analysis; {reset}",)
    return ()


def complete_probe_scores(
    probe: ProbeSet,
    result: ScanResult,
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[Layer],
    *,
    batch_size: int = 32,
    provider: str = "auto",
    progress: Progress | None = None,
) -> tuple[ProbeSet, dict[str, np.ndarray]]:
    """Probe scores ``[P, C]`` per layer with no gap, and the probe set they belong to.

    A new probe set keeps only the images the scan could read. A stored one must be scored
    whole: its images missing from this image set are scanned in an extra pass from their stored
    paths, and one that vanished or changed is an error (the profiles of different models must
    cover the same images to be comparable).
    """
    if not len(probe) or not result.probe_scores:
        return probe, {}
    scores = {tensor: s.copy() for tensor, s in result.probe_scores.items()}
    missing = np.isnan(next(iter(scores.values()))).any(axis=1)
    if not probe.stored:
        keep = np.flatnonzero(~missing)
        kept = ProbeSet(tuple(probe.sha256[i] for i in keep), tuple(probe.paths[i] for i in keep), stored=False)
        return kept, {tensor: s[keep] for tensor, s in scores.items()}
    if missing.any():
        extra = _probe_pass(model, pre, layers, probe, np.flatnonzero(missing), batch_size, provider, progress)
        for tensor, s in scores.items():
            s[missing] = extra[tensor]
    return probe, scores


def _probe_pass(
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[Layer],
    probe: ProbeSet,
    rows: np.ndarray,
    batch_size: int,
    provider: str,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """Scores of probe images ``rows`` (read from their stored paths): ``[len(rows), C]`` per layer."""
    files = [ImageFile(probe.paths[i], None) for i in rows]
    result = scan(
        model, list(layers), pre, files, top_n=1, batch_size=batch_size, provider=provider,
        probe_sha256=[probe.sha256[i] for i in rows],
        progress=phase(progress, "probe"),
    )
    scores = result.probe_scores
    lost = np.isnan(next(iter(scores.values()))).any(axis=1) if scores else np.ones(len(rows), bool)
    if lost.any():
        i = int(rows[np.flatnonzero(lost)[0]])
        raise ImageError(
            f"probe image {probe.paths[i]} (sha256 {probe.sha256[i][:12]}…) and {int(lost.sum()) - 1} more vanished or "
            "changed since the database's probe set was chosen; restore them, include them in the image folder, or "
            "set a new probe set with 'onnx-nfi probe DIR --force'"
        )
    return scores


def set_probe(
    db: str | Path,
    images_dir: str | Path | None,
    *,
    size: int = 1024,
    force: bool = False,
    batch_size: int = 32,
    provider: str = "auto",
    progress: Progress | None = None,
    lock_timeout: float = 60.0,
    saved: str | Path | None = None,
) -> ProbeSummary:
    """Make up to ``size`` images of ``images_dir`` (evenly spaced, decodable) the database's probe set.

    **Decision**: with models already in the database the probe set changes only with ``force``,
    and then every model's response profiles are recomputed from its ONNX file (which must be
    unchanged, checked by hash) over the new probe images, so all profiles stay comparable (with
    ``force`` an unchanged probe set is scored again too: a model imported without profiles gets
    them). Everything is written in one transaction after all models are scored; the write waits up
    to ``lock_timeout`` s for a database another process holds (the scoring may have taken hours)
    and, if it cannot happen, the profiles are kept in a file that ``saved`` writes later.
    """
    if saved is not None:
        return _write_saved(db, Path(saved), lock_timeout, progress)
    if images_dir is None:
        raise SearchError("name the image folder to draw the probe set from (or pass --saved FILE)")
    if size < 1:
        raise SearchError(f"the probe set needs at least one image, got --size {size}")
    probe = choose_probe(list_images(images_dir, "none").files, size, check_decodable=True)
    if not len(probe):
        raise ImageError(f"no decodable image in {images_dir}; the probe set needs real images")
    with Store.open(db) as store:
        current = read_probe(store)
        if current is not None and current.sha256 == probe.sha256 and not force:
            return ProbeSummary(len(current), changed=False, recomputed=())
        models = store.models()
        if models and not force:
            raise SearchError(
                f"{db} already holds {len(models)} model(s) ({', '.join(models)}) scored on "
                f"{'its current probe set' if current else 'no probe set'}; pass --force to replace it and recompute "
                "their response profiles from their ONNX files"
            )
        work = [(m, store.model_row(m), [r["layer"] for r in store.layer_rows(m)]) for m in models]
    vectors = {
        m: {t: similarity.response_vectors(s) for t, s in _rescore(m, row, names, probe, batch_size, provider, progress).items()}
        for m, row, names in work
    }
    hashes = {m: row["sha256"] for m, row, _ in work}
    path = kept_path(db, "probe")
    write_or_keep(
        lambda: _replace(db, probe, vectors), lambda to: _keep(to, probe, hashes, vectors),
        what="the response profiles over the new probe set", db=db, path=path,
        command=f"onnx-nfi probe --db {db} --saved {path}", lock_timeout=lock_timeout, progress=progress,
    )
    return ProbeSummary(len(probe), changed=True, recomputed=tuple(vectors), warnings=sync_after_commit(db))


def _replace(db: str | Path, probe: ProbeSet, vectors: dict[str, dict[str, np.ndarray]]) -> None:
    with Store.open(db) as store:
        replace_probe_set(store, probe, vectors)


def _keep(path: Path, probe: ProbeSet, hashes: dict[str, str], vectors: dict[str, dict[str, np.ndarray]]) -> None:
    """The scored probe set in a kept file (``store.unwritten``): the images, each model's hash and layers."""
    meta = {"kind": "probe", "sha256": list(probe.sha256), "paths": [str(p) for p in probe.paths], "models": hashes,
            "layers": {m: list(per_layer) for m, per_layer in vectors.items()}}
    arrays = {f"{i}.{j}": v for i, per_layer in enumerate(vectors.values()) for j, v in enumerate(per_layer.values())}
    save_kept(path, meta, arrays)


def _read_kept(meta: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[ProbeSet, dict[str, str], dict[str, dict[str, np.ndarray]]]:
    if meta["kind"] != "probe":
        raise KeyError("kind")
    probe = ProbeSet(tuple(meta["sha256"]), tuple(Path(p) for p in meta["paths"]), stored=False)
    vectors = {m: {t: data[f"{i}.{j}"] for j, t in enumerate(meta["layers"][m])} for i, m in enumerate(meta["layers"])}
    return probe, meta["models"], vectors


def _write_saved(db: str | Path, path: Path, lock_timeout: float, progress: Progress | None) -> ProbeSummary:
    """Write a probe set and profiles kept by an earlier ``probe --force`` whose write could not happen."""
    probe, hashes, vectors = load_kept(path, _read_kept, f"{path} is not a probe set saved by 'onnx-nfi probe' (or it "
                                                         "is damaged); run 'onnx-nfi probe DIR --force' again")
    with Store.open(db, read_only=True) as store:
        stored = {m: store.model_row(m)["sha256"] for m in store.models()}
    if stored != hashes:
        raise StateError(f"{path} holds the profiles of other models (or other versions of them) than {db} holds now; "
                         "run 'onnx-nfi probe DIR --force' again")
    with lock_wait(lock_timeout, phase(progress, "lock")):
        _replace(db, probe, vectors)
    path.unlink(missing_ok=True)
    return ProbeSummary(len(probe), changed=True, recomputed=tuple(vectors), warnings=sync_after_commit(db))


def _rescore(
    model: str, row: dict[str, Any], layer_names: list[str], probe: ProbeSet, batch_size: int, provider: str,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """Probe scores of a stored model, from its ONNX file and stored preprocessing."""
    lm, pre = reopen_model(model, row)
    layers = [layer for layer in find_conv_layers(lm) if layer.tensor in set(layer_names)]
    return _probe_pass(lm, pre, layers, probe, np.arange(len(probe)), batch_size, provider, progress)
