"""Every parameter of an analysis, once: name, default and help.

``AnalyzeConfig`` is what the API takes and what is stored (as JSON, in ``runs.params``) with the
results, so any run can be reproduced. The CLI builds its options from ``HELP``; a test checks
that every field has help text and appears in the README.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from onnx_nfi.errors import NfiError

#: Index names understood by ``--indexes`` (``all`` means every one).
INDEX_NAMES = ("color", "class", "orientation", "symmetry", "shape")
DEFAULT_INDEXES = ("color", "class")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of ``analyze``; defaults follow ALGORITHMS.md."""

    top_n: int = 100
    batch_size: int = 32
    provider: str = "auto"
    preprocess: str | None = None
    labels: str = "auto"
    layers: tuple[str, ...] = ()
    nf: bool = True
    nf_max_size: int = 24
    indexes: tuple[str, ...] = DEFAULT_INDEXES
    color_mode: str = "image"
    rho: float = 1.0
    population_threshold: float = 0.1
    probe_size: int = 1024
    seed: int = 0

    def to_json(self) -> str:
        """The stored form of the parameters."""
        return json.dumps(asdict(self), sort_keys=True, default=list)


HELP: dict[str, str] = {
    "top_n": "Images kept per neuron (N of ALGORITHMS.md §2).",
    "batch_size": "Images per forward pass.",
    "provider": "onnxruntime provider: auto (CUDA when available), cpu or cuda.",
    "preprocess": "Preset (torchvision, inception, caffe, raw) or a preprocessing JSON file; default: MODEL.json beside the model, else torchvision.",
    "labels": "Image labels: auto, folder (sub-folder names), csv:FILE, predicted[:CLASSNAMES.txt] or none.",
    "layers": "Layers to analyse: aliases (conv3), tensor names or globs (conv1*); default all conv layers.",
    "nf": "Compute Neuron Features (ALGORITHMS.md §4).",
    "nf_max_size": "Largest NF side in pixels; larger receptive fields are averaged at reduced resolution (0 = full size).",
    "indexes": "Selectivity indexes: color, class, orientation, symmetry, shape, all, or none.",
    "color_mode": "Colour index grey pass: image (whole image greyed, one pass) or region (RF region only, the paper's form).",
    "rho": "Class selectivity threshold on cumulative class frequency (ALGORITHMS.md §6).",
    "population_threshold": "Class frequency counted in the population code.",
    "probe_size": "Images in the database's shared probe set for similarity search.",
    "seed": "Seed for randomised indexes (shape shuffling).",
}


def parse_indexes(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """``color,class`` / ``all`` / ``none`` -> a tuple of index names in canonical order."""
    items = [v.strip() for part in ([values] if isinstance(values, str) else values) for v in part.split(",") if v.strip()]
    if "all" in items:
        return INDEX_NAMES
    if items in (["none"], []):
        return ()
    unknown = [v for v in items if v not in INDEX_NAMES]
    if unknown:
        raise NfiError(f"unknown index {', '.join(unknown)}; use any of {', '.join(INDEX_NAMES)}, all or none")
    return tuple(n for n in INDEX_NAMES if n in items)


def config_fields() -> list[str]:
    """Field names users can set."""
    return [f.name for f in fields(AnalyzeConfig)]
