"""``onnx-nfi relevance``: how much a stored model's classifications need each neuron, by ablation.

Per layer: the model is cut at the layer tensor (``graph.cut``); the upstream part runs once over
the images and its crossing tensors are kept; the unablated downstream run gives the baseline
probabilities (and the predicted targets); then ``neurons.ablation`` runs the (image, channel)
ablations in chunks through the downstream graph. Each layer is written in its own transaction as
soon as it is done, so a stopped run keeps the layers it finished and says which. With ``ray`` the
layers are Ray tasks (``distributed.ordered_tasks``) running the same ``measure_layer``; the driver
alone writes, in layer order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_nfi.config import DEFAULT_THREADS
from onnx_nfi.data.images import ImageFile, list_images, read_class_names
from onnx_nfi.data.loader import iter_batches
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ConfigError, ImageError, Interrupted
from onnx_nfi.graph.cut import Cut, cut_at, outputs_probabilities
from onnx_nfi.graph.layers import Layer, find_conv_layers, select_layers
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.session import Runner, using_threads
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.neurons.ablation import (
    LayerRelevance,
    RunDownstream,
    ablate_layer,
    channel_fill,
    pairs_per_run,
    probabilities,
)
from onnx_nfi.pipeline.distributed import ordered_tasks
from onnx_nfi.progress import Progress, StageProgress, phase
from onnx_nfi.signals import signals_wait
from onnx_nfi.store.duckdb_store import Store, check_writable
from onnx_nfi.store.model_file import reopen_model
from onnx_nfi.store.relevance import RelevanceRun, measured_layers, write_layer_relevance
from onnx_nfi.store.vectors import read_probe

TARGETS = ("predicted", "label")
MODES = ("zero", "mean")


@dataclass(frozen=True)
class LayerDone:
    """One measured layer: its neurons, the (image, channel) pairs run, its most relevant unit and mean drop."""

    alias: str
    neurons: int
    pairs_run: int
    top_unit: int
    top_drop: float
    mean_drop: float
    mean_flip: float


@dataclass(frozen=True)
class RelevanceSummary:
    """What ``relevance`` measured, layer by layer."""

    model: str
    images: int
    target: str
    mode: str
    provider: str
    layers: tuple[LayerDone, ...]
    skipped: tuple[tuple[Path, str], ...]
    seconds: float
    resumed: tuple[str, ...] = ()  # layers left out by ``resume``: already measured the same way


def relevance(
    model: str, *, db: str | Path = DEFAULT_DB, layers: Sequence[str] = (), images: str | Path | None = None,
    target: str = "predicted", mode: str = "zero", class_names: str | Path | None = None, batch_size: int = 32,
    provider: str = "auto", progress: Progress | None = None, resume: bool = False, ray: str | None = None,
    threads: int = DEFAULT_THREADS,
) -> RelevanceSummary:
    """Ablate each neuron of ``layers`` (aliases, tensors or globs; default every stored layer) of the
    stored classifier ``model`` on ``images`` (default the database's probe set); ``mode``: the channel
    becomes 0 (``zero``) or its mean map over the images (``mean``); ``target``: the class whose
    probability drop is measured, the unablated prediction (``predicted``) or the image's sub-folder
    (``label``: a class index, or a name of ``class_names``). Each layer's rows are stored as it ends;
    ``resume`` leaves out the layers already stored from the same images, target and mode. ``ray`` (a cluster address, or ``local``)
    measures the layers as Ray tasks, one a worker, with the same values; the driver writes them. ``threads``:
    onnxruntime's threads per session here (``RunSettings.threads``; a Ray task uses its layout's)."""
    started = dt.datetime.now()
    if target not in TARGETS or mode not in MODES:
        raise ConfigError(f"--target is one of {', '.join(TARGETS)} and --mode one of {', '.join(MODES)}; got {target!r}, {mode!r}")
    names = read_class_names(Path(class_names)) if class_names else None
    check_writable(db)
    source = str(Path(images).resolve()) if images else "probe"
    with Store.open(db, read_only=True) as store:
        row = store.model_row(model)
        stored = {r["layer"] for r in store.layer_rows(model)}
        files = _image_files(store, images, target)
        done_before = measured_layers(store, model, source, target, mode) if resume else set()
    lm, pre = reopen_model(model, row)
    from_softmax = outputs_probabilities(lm)  # refuses a model without class scores
    labels = _label_targets(files, _classes(lm), names) if target == "label" else None  # checked before the work
    asked = [layer for layer in select_layers(find_conv_layers(lm), list(layers)) if layer.tensor in stored]
    if not asked:
        raise ConfigError(f"none of the layers asked for is stored for {model}; list them with 'onnx-nfi layers'")
    chosen = [layer for layer in asked if layer.tensor not in done_before]
    done: list[LayerDone] = []
    provider_used, images_used, skipped = "", 0, ()
    params = {"images": source, "target": target, "mode": mode, "batch_size": batch_size,
              "softmax_applied": not from_softmax}
    work = LayerWork(lm, pre, tuple(files), labels, mode, batch_size, provider, from_softmax)
    try:
        for layer, m in zip(chosen, _measure(work, chosen, ray, threads, progress), strict=True):
            provider_used, images_used, skipped = m.provider, m.images, m.skipped
            info = RelevanceRun(m.images, target, mode, m.provider, params, started)
            with signals_wait():  # a layer is written whole, and counted among the written ones
                write_layer_relevance(db, model, layer.tensor, m.result, info, names)
                done.append(LayerDone(
                    layer.alias, layer.channels, m.result.pairs_run, int(np.argmax(m.result.prob_drop)),
                    float(m.result.prob_drop.max()), float(m.result.prob_drop.mean()), float(m.result.flip_rate.mean()),
                ))
    except KeyboardInterrupt as exc:
        raise Interrupted.of(exc, _stopped(db, done, [layer.alias for layer in chosen])) from None
    return RelevanceSummary(model, images_used, target, mode, provider_used, tuple(done), skipped,
                            (dt.datetime.now() - started).total_seconds(),
                            tuple(layer.alias for layer in asked if layer.tensor in done_before))


@dataclass(frozen=True)
class LayerWork:
    """What measuring a layer needs besides the layer, in one picklable value (a Ray run puts it in
    the object store once; each task names its layer)."""

    lm: LoadedModel
    pre: Preprocessing
    files: tuple[ImageFile, ...]
    labels: np.ndarray | None  # per file, the target class of ``--target label``; None: the prediction
    mode: str
    batch_size: int
    provider: str
    from_softmax: bool


@dataclass(frozen=True)
class Measured:
    """One layer's relevance, the images it is over, the unreadable files and the provider that ran it."""

    result: LayerRelevance
    images: int
    skipped: tuple[tuple[Path, str], ...]
    provider: str


def measure_layer(work: LayerWork, tensor: str, progress: StageProgress | None = None) -> Measured:
    """The relevance of every channel of the layer ``tensor``: cut there, the upstream part once over
    the images, then the ablations through the downstream part."""
    cut = cut_at(work.lm, tensor)
    cache, skipped = _upstream(work.lm, work.pre, cut, work.files, work.batch_size, work.provider)
    runner = Runner(cut.downstream, work.provider)
    result, images = _ablate(work.lm, runner, cut, cache, work.mode, work.labels, work.files, skipped,
                             work.from_softmax, progress)
    return Measured(result, images, tuple(skipped), runner.provider)


def _measure(
    work: LayerWork, chosen: Sequence[Layer], ray: str | None, threads: int, progress: Progress | None,
) -> Iterator[Measured]:
    """Each chosen layer's measurement in order, as it ends: here, one after the other with a bar per
    layer and ``threads`` onnxruntime threads, or (``ray``: a cluster address, or ``local``) as one Ray
    task per layer, counted by layer."""
    if ray is None:
        return (_measure_here(work, layer, threads, progress) for layer in chosen)
    return ordered_tasks(ray, measure_layer, work, [layer.tensor for layer in chosen],
                         phase(progress, "Ablating layers on Ray"))


def _measure_here(work: LayerWork, layer: Layer, threads: int, progress: Progress | None) -> Measured:
    with using_threads(threads):
        return measure_layer(work, layer.tensor, phase(progress, f"Ablating {layer.alias}"))


def _ablate(
    lm: LoadedModel, runner: Runner, cut: Cut, cache: dict[str, np.ndarray], mode: str, labels: np.ndarray | None,
    files: Sequence[ImageFile], skipped: Sequence[tuple[Path, str]], from_softmax: bool, progress: StageProgress | None,
) -> tuple[LayerRelevance, int]:
    """One layer's relevance from its cached crossing tensors, and the number of images it is over:
    the baseline run gives the probabilities (and predicted targets), then every ablation runs."""
    run = _downstream_run(runner, cut)
    chunk = pairs_per_run(cache) if not lm.batch_one_inside else 1
    base = probabilities(_chunked(run, cache, chunk), from_softmax)
    if labels is None:
        targets = base.argmax(axis=1)
    else:
        lost = {p for p, _ in skipped}
        targets = labels[[k for k, f in enumerate(files) if f.path not in lost]]
    fill = channel_fill(cache[cut.layer], mode)
    return ablate_layer(run, cache, cut.layer, fill, targets, base, from_softmax, chunk=chunk, progress=progress), len(base)


def _classes(lm: LoadedModel) -> int:
    """K of the model's class-score output: its values per image (``[N, K]``, ``[N, K, 1, 1]``, ``[N, 1, 1, K]``)."""
    return int(np.prod([d.dim_value for d in lm.proto.graph.output[0].type.tensor_type.shape.dim[1:]]))


def _stopped(db: str | Path, done: list[LayerDone], chosen: list[str]) -> str:
    """What a stopped run truly wrote, and the command option that finishes it."""
    written = [d.alias for d in done]
    rest = [a for a in chosen if a not in written]
    kept = f"the relevance of {', '.join(written)} was written to {db}" if written else f"nothing was written to {db}"
    return f"Interrupted; {kept}; measure the rest with --layers {','.join(rest)}, or run the same command with --resume."


def _image_files(store: Store, images: str | Path | None, target: str) -> list[ImageFile]:
    """The images to measure on: a folder (labelled by sub-folder for ``--target label``) or the probe set."""
    if images is not None:
        return list(list_images(images, "folder" if target == "label" else "none").files)
    if target == "label":
        raise ConfigError("--target label needs labelled images: give --images DIR (sub-folders name the classes)")
    probe = read_probe(store)
    if probe is None:
        raise ImageError(f"{store.path} has no probe set; give --images DIR or set one with 'onnx-nfi probe DIR'")
    return [ImageFile(p, None) for p in probe.paths]


def _label_targets(files: Sequence[ImageFile], classes: int, names: Sequence[str] | None) -> np.ndarray:
    """Each image's label as a class index: a class name of ``names``, or an index 0..K-1."""
    lookup = {name: k for k, name in enumerate(names or ())}
    targets = []
    for f in files:
        label = f.label or ""
        k = lookup.get(label, int(label) if label.isascii() and label.isdigit() else None)
        if k is None or k >= classes:
            raise ConfigError(
                f"label {label!r} of {f.path} is not one of the model's {classes} classes; name folders by class index "
                "or give --class-names FILE (one name per line), or use --target predicted"
            )
        targets.append(k)
    return np.array(targets, np.int64)


def _upstream(
    lm: LoadedModel, pre: Preprocessing, cut: Cut, files: Sequence[ImageFile], batch_size: int, provider: str,
) -> tuple[dict[str, np.ndarray], list[tuple[Path, str]]]:
    """The crossing tensors of every readable image ``[N, ...]`` (one upstream run per batch) and the unreadable files."""
    runner = Runner(cut.upstream, provider)
    skipped: list[tuple[Path, str]] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in cut.crossing}
    for batch in iter_batches(files, pre, lm.batch(batch_size), on_skip=lambda p, why: skipped.append((p, why))):
        outputs = runner.run(batch.tensor)
        for name in cut.crossing:
            parts[name].append(outputs[_exposed(name, outputs)])
    if not parts[cut.layer]:
        raise ImageError("no readable image to measure relevance on; check the files")
    return {name: np.concatenate(p) for name, p in parts.items()}, skipped


def _exposed(name: str, outputs: dict[str, np.ndarray]) -> str:
    """The output name of a crossing tensor (a graph input comes out through an Identity)."""
    return name if name in outputs else f"{name}__exposed"


def _downstream_run(runner: Runner, cut: Cut) -> RunDownstream:
    """The downstream graph as ``run(feeds) -> class scores``."""
    return lambda feeds: runner.session.run([cut.output], feeds)[0]


def _chunked(run: RunDownstream, cache: dict[str, np.ndarray], chunk: int) -> np.ndarray:
    """The unablated class scores of every image, ``chunk`` images a run."""
    n = next(iter(cache.values())).shape[0]
    return np.concatenate([run({k: v[lo : lo + chunk] for k, v in cache.items()}) for lo in range(0, n, chunk)])
