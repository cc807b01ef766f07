"""``onnx-nfi index``: the selectivity indexes of a stored model computed again from its stored top
images, then written in one transaction. The computation can take hours (region passes over every
layer), so the write waits for a locked database (``--lock-timeout``) and, if it still cannot
happen, the indexes are kept in a file that ``--saved`` writes later.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

from onnx_nfi.config import IndexConfig
from onnx_nfi.data.images import stored_image_path
from onnx_nfi.graph.layers import find_conv_layers, select_layers
from onnx_nfi.graph.model_layers import LayerInfo
from onnx_nfi.graph.session import using_threads
from onnx_nfi.neurons.indexes import IndexResult
from onnx_nfi.pipeline.features import FeatureWork, compute_features
from onnx_nfi.pipeline.index_state import finish_command, index_state_path, load_indexes, save_indexes
from onnx_nfi.progress import Progress
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.model_file import reopen_model
from onnx_nfi.store.results import stored_rf, stored_topn, write_index_run
from onnx_nfi.store.unwritten import write_or_keep


@dataclass(frozen=True)
class Reindexed:
    """What ``reindex`` wrote: the options that made the indexes, and the layers and neurons they cover."""

    config: IndexConfig
    layers: int
    neurons: int
    #: lines for the summary (e.g. no concept labels for an unlabelled run)
    notes: tuple[str, ...] = ()


def reindex(
    model: str, db: str | Path, config: IndexConfig, progress: Progress | None, image_root: str | Path | None,
    saved: str | Path | None, started: dt.datetime,
) -> Reindexed:
    """Compute (or, with ``saved``, read back) the indexes of ``model`` and write them to ``db``."""
    with Store.open(db, read_only=True) as store:
        row = store.model_row(model)
        layer_rows = store.layer_rows(model)
        if saved is None:
            topns = {r["layer"]: stored_topn(store, model, r["layer"], r["channels"]) for r in layer_rows}
            image_rows = store.image_records(model)
    neurons = sum(int(r["channels"]) for r in layer_rows)
    if saved is not None:
        result, made_with = load_indexes(Path(saved), model, row["sha256"])
        config = replace(IndexConfig.of(made_with), lock_timeout=config.lock_timeout, threads=config.threads)
        _write_or_keep(db, model, row["sha256"], result, config, started, progress)
        Path(saved).unlink(missing_ok=True)
        return Reindexed(config, len(result.columns), neurons)
    lm, pre = reopen_model(model, row)
    by_tensor = {layer.tensor: layer for layer in find_conv_layers(lm)}
    infos = [LayerInfo(by_tensor[r["layer"]], stored_rf(r)) for r in layer_rows if r["layer"] in by_tensor]
    if config.layers:  # ``--layers``: the region indexes of a few layers, not hours for all of them
        chosen = {layer.tensor for layer in select_layers([i.layer for i in infos], list(config.layers))}
        infos = [i for i in infos if i.layer.tensor in chosen]
    paths = {int(r["image_id"]): stored_image_path(r["path"], image_root) for r in image_rows}
    labels = {int(r["image_id"]): r["label"] for r in image_rows}
    work = FeatureWork.of(lm, pre, infos, {i.layer.tensor: topns[i.layer.tensor] for i in infos}, paths, labels,
                          config.analysis(), sha256={int(r["image_id"]): r["sha256"] for r in image_rows})
    with using_threads(config.threads):
        result = compute_features(work, progress).indexes
    _write_or_keep(db, model, row["sha256"], result, config, started, progress)
    return Reindexed(config, len(infos), sum(i.layer.channels for i in infos), result.notes)


def _write_or_keep(
    db: str | Path, model: str, sha256: str, result: IndexResult, config: IndexConfig, started: dt.datetime,
    progress: Progress | None,
) -> None:
    """Write the indexes, or keep them in a file that ``index --saved`` writes later (``store.unwritten``)."""
    path = index_state_path(db, model)
    write_or_keep(
        lambda: write_index_run(db, model, result, config, started),
        lambda to: save_indexes(to, model, sha256, config, result),
        what=f"the indexes of {model}", db=db, path=path, command=finish_command(path, model, db),
        lock_timeout=config.lock_timeout, progress=progress,
    )
