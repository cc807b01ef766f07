"""From top-N states to Neuron Features and selectivity indexes (analysis and ``index`` share this)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.display import DisplayImages
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.model_layers import LayerInfo
from onnx_nfi.neurons.indexes import IndexLayer, IndexResult, compute_indexes
from onnx_nfi.neurons.nf import crop_geometry, layers_features
from onnx_nfi.progress import Progress, phase
from onnx_nfi.scan.topn import TopN


def top_image_paths(topns: Iterable[TopN], paths: Mapping[int, Path]) -> dict[int, Path]:
    """The union of all neurons' top-N images (id -> path): decoded once for NFs and indexes alike."""
    needed = np.unique(np.concatenate([t.ids[t.ids >= 0] for t in topns]))
    return {int(i): paths[int(i)] for i in needed}


def compute_nfs(
    topns: Mapping[str, TopN],
    infos: Sequence[LayerInfo],
    images: DisplayImages,
    pre: Preprocessing,
    config: AnalyzeConfig,
    progress: Progress | None,
    max_images: int | None = None,
) -> dict[str, np.ndarray]:
    """NFs of every layer from its top-N (by layer tensor), ``max_images`` display images at a time
    (default: the display images' own chunk, so memory stays within their budget)."""
    jobs = [(topns[info.layer.tensor], crop_geometry(info.rf, pre.input_size, config.nf_max_size)) for info in infos]
    features = layers_features(jobs, images, phase(progress, "nf"), max_images or images.chunk)
    return {info.layer.tensor: nfs for info, (nfs, _) in zip(infos, features)}


def selectivity_indexes(
    lm: LoadedModel,
    pre: Preprocessing,
    items: list[IndexLayer],
    images: Mapping[int, np.ndarray],
    labels: dict[int, str | None],
    config: AnalyzeConfig,
    progress: Progress | None,
) -> IndexResult:
    """The configured selectivity indexes of ``items``' neurons."""
    return compute_indexes(
        lm, pre, items, images, labels, config.indexes,
        color_mode=config.color_mode, rho=config.rho, population_threshold=config.population_threshold,
        batch_size=max(1, config.batch_size // 2), provider=config.provider, seed=config.seed,
        progress=phase(progress, "index"),
    )
