"""The scan state file: a partial or finished scan, saved atomically and read back exactly.

Checkpoints, shard results and analyses whose database write failed are all this one file: an
uncompressed ``.npz`` holding every array and integer field of each layer's ``TopN`` and
``Moments`` (found through ``dataclasses.fields``, so a field added to them is saved without a
change here), the probe scores, the images seen (file position, content hash, label) and
skipped, and a JSON header the caller fills (what run the state belongs to). Paths are not
stored: an image is its position in the run's image list, whose content hash the header holds.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from onnx_nfi.errors import StateError
from onnx_nfi.files import atomic_write, sweep_orphans
from onnx_nfi.graph.layers import Layer
from onnx_nfi.scan.scanner import LayerStats, ScannedImage, ScanResult
from onnx_nfi.scan.topn import Moments, TopN

#: Version of the file layout; a state of another version is refused, not misread.
STATE_VERSION = 2  # 2: TopN keeps the pre-activation keys

T = TypeVar("T", TopN, Moments)


def _fields_to_arrays(prefix: str, obj: TopN | Moments) -> dict[str, np.ndarray]:
    return {f"{prefix}.{f.name}": np.asarray(getattr(obj, f.name)) for f in fields(obj)}


def _fields_from_arrays(cls: type[T], prefix: str, data: Mapping[str, np.ndarray]) -> T:
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = data[f"{prefix}.{f.name}"]
        values[f.name] = value.item() if value.ndim == 0 else value
    return cls(**values)


def save_state(path: str | Path, header: dict[str, Any], result: ScanResult) -> None:
    """Write ``result`` (ids are file positions) with ``header`` to ``path`` atomically: a crash or
    signal at any moment leaves either the previous state or the new one, never a torn file."""
    path = Path(path)
    tensors = list(result.stats)
    files = {
        "positions": np.array([img.image_id for img in result.images], np.int64),
        "sha256": np.frombuffer(b"".join(bytes.fromhex(img.sha256) for img in result.images), np.uint8).reshape(-1, 32),
    }
    meta = {
        "version": STATE_VERSION, "header": header, "tensors": tensors, "provider": result.provider,
        "seconds": result.seconds, "labels": [img.label for img in result.images],
        "skipped": [[str(p), r] for p, r in result.skipped],
    }
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), **files}
    for k, tensor in enumerate(tensors):
        st = result.stats[tensor]
        arrays |= _fields_to_arrays(f"L{k}.topn", st.topn) | _fields_to_arrays(f"L{k}.moments", st.moments)
        if tensor in result.probe_scores:
            arrays[f"L{k}.probe"] = result.probe_scores[tensor]
    try:
        with atomic_write(path) as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        raise StateError(f"cannot save the scan state to {path} ({exc.strerror or exc}); free disk space or "
                         "pass --checkpoint FILE in a writable folder") from None
    sweep_orphans(path.parent, path.name)  # the temporaries of a save that was killed


def read_header(path: str | Path) -> dict[str, Any]:
    """The caller's header of a state file (checked before the arrays are used)."""
    return _meta(path)["header"]


#: What a damaged file raises while NumPy reads it: a cut or bit-flipped zip (bad CRC, bad
#: directory), an empty file (EOFError), a damaged array header or meta (ValueError, KeyError...).
_DAMAGE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, MemoryError, zipfile.BadZipFile)


def _not_a_state(path: str | Path) -> StateError:
    return StateError(f"{path} is not an onnx-nfi scan state file; pass a file written by 'onnx-nfi analyze'")


def _meta(path: str | Path) -> dict[str, Any]:
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
    except (*_DAMAGE, json.JSONDecodeError, UnicodeDecodeError):
        raise _not_a_state(path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("header"), dict):
        raise _not_a_state(path)
    if meta.get("version") != STATE_VERSION:
        raise StateError(f"{path} was written by another version of onnx-nfi; run that analysis again")
    return meta


def load_state(path: str | Path, layers: Mapping[str, Layer], paths: list[Path]) -> ScanResult:
    """The saved scan result in ``path``, checked whole (see ``check_counts``); ``layers`` by tensor and
    ``paths`` (the run's image list) put back what the file does not store."""
    meta = _meta(path)
    try:
        result = _read_arrays(path, meta, layers, paths)
    except _DAMAGE:
        raise StateError(f"{path} is damaged (cut short or changed on disk); delete it and run the analysis "
                         "again without --resume") from None
    check_counts(path, result)
    return result


def _read_arrays(path: str | Path, meta: dict[str, Any], layers: Mapping[str, Layer], paths: list[Path]) -> ScanResult:
    with np.load(path) as data:
        stats, probe = {}, {}
        for k, tensor in enumerate(meta["tensors"]):
            stats[tensor] = LayerStats(
                layers[tensor],
                _fields_from_arrays(TopN, f"L{k}.topn", data),
                _fields_from_arrays(Moments, f"L{k}.moments", data),
            )
            if f"L{k}.probe" in data:
                probe[tensor] = data[f"L{k}.probe"]
        positions, hashes = data["positions"], data["sha256"]
    if len(positions) != len(hashes) or len(positions) != len(meta["labels"]):
        raise ValueError("image fields of different lengths")
    for st in stats.values():
        if st.topn.ids.shape != (st.layer.channels, st.topn.ids.shape[1]) or st.moments.active.shape != (st.layer.channels,):
            raise ValueError("statistics of another shape than the layer")
    images = [
        ScannedImage(int(p), paths[int(p)], h.tobytes().hex(), label)
        for p, h, label in zip(positions, hashes, meta["labels"])
    ]
    skipped = [(Path(p), r) for p, r in meta["skipped"]]
    return ScanResult(stats, images, skipped, meta["provider"], meta["seconds"], probe)


def check_counts(path: str | Path, result: ScanResult) -> None:
    """Refuse a state whose statistics do not hold exactly its list of images: an image listed
    twice, a layer that took a different number of images than the list has, or a neuron whose top
    list names an image twice or one not in the list (a batch counted twice, or a file not ours)."""
    positions = np.array([img.image_id for img in result.images], np.int64)
    problem = "an image is listed twice" if np.unique(positions).size != positions.size else None
    for st in result.stats.values():
        if problem:
            break
        ids = np.sort(st.topn.ids, axis=1)
        if st.moments.count != positions.size:
            problem = f"layer {st.layer.alias} took {st.moments.count} images but {positions.size} are listed"
        elif np.any((ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)):
            problem = f"a neuron of layer {st.layer.alias} lists an image twice in its top images"
        elif not np.isin(ids[ids >= 0], positions).all():
            problem = f"a neuron of layer {st.layer.alias} lists an image the state has not seen"
    if problem:
        raise StateError(f"{path} is inconsistent ({problem}); delete it and run the analysis again without --resume")
