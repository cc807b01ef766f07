"""Every parameter of an analysis, once: name, default, help, and the check of its value.

``AnalyzeConfig`` is what the API takes and what is stored (as JSON, in ``runs.params``) with the
results, so any run can be reproduced. It validates itself when made, so a bad value fails before
any long work, through the API as through the CLI. The CLI builds its options' help from ``HELP``;
a test checks that every field has help text and appears in the README.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from onnx_nfi.errors import ConfigError
from onnx_nfi.names import (  # noqa: F401  (INDEX_NAMES: re-exported)
    DEFAULT_INDEXES,
    INDEX_NAMES,
    INDEXES,
    LABEL_SOURCES,
    PRESETS,
    index_names,
)

#: Default largest image, in pixels (100 MP: a 10000×10000 photo, 300 MB decoded); see data/limits.py.
DEFAULT_MAX_PIXELS = 100_000_000

#: Where the colour index's grey pass greys: the whole image, or only the receptive-field region.
COLOR_MODES = ("image", "region")
#: onnxruntime providers by the names users give.
PROVIDERS = ("auto", "cpu", "cuda")
#: onnxruntime intra-op threads per session (and NF crop workers) when not told; 0: one per core,
#: onnxruntime's own default. The scan runs its session beside the decode threads, so on a small
#: machine fewer may be faster: this one constant is the default of ``--threads``.
THREADS_WHEN_NOT_TOLD = 0
#: The default of ``--threads``: ``ONNX_NFI_THREADS`` when set to a count (the test suite and the
#: benchmarks pin it), else ``THREADS_WHEN_NOT_TOLD``.
DEFAULT_THREADS = int(os.environ["ONNX_NFI_THREADS"]) if os.environ.get("ONNX_NFI_THREADS", "").isdigit() \
    else THREADS_WHEN_NOT_TOLD


@dataclass(frozen=True)
class RunSettings:
    """How a run uses the machine, waits for a lock and saves its state; not what it computes (a
    resume or a merge may change them). Taken from the options (``AnalyzeConfig.settings``) and
    handed to each stage that needs it, and to each Ray task."""

    threads: int = DEFAULT_THREADS
    lock_timeout: float = 60.0
    checkpoint_every: int = 5000
    checkpoint_seconds: float = 600.0


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of ``analyze``; defaults follow docs/method.md."""

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
    input_size: tuple[int, int] | None = None
    input: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    lock_timeout: float = RunSettings.lock_timeout
    checkpoint_every: int = RunSettings.checkpoint_every
    checkpoint_seconds: float = RunSettings.checkpoint_seconds
    threads: int = RunSettings.threads

    def __post_init__(self) -> None:
        _check_shared(self)
        _at_least("top_n", self.top_n, 1)
        _at_least("nf_max_size", self.nf_max_size, 0)
        _at_least("probe_size", self.probe_size, 1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        if not self.checkpoint_seconds > 0:
            raise ConfigError(f"--checkpoint-seconds must be > 0, got {self.checkpoint_seconds}")
        if not 0 < self.population_threshold <= 1:
            raise ConfigError(f"population_threshold must be in (0, 1], got {self.population_threshold}")
        if self.input_size is not None:
            object.__setattr__(self, "input_size", parse_size(self.input_size))
        if self.input is not None and (not isinstance(self.input, str) or not self.input):
            raise ConfigError(f"--input must name one of the model's inputs, got {self.input!r}")
        _at_least("max_pixels", self.max_pixels, 1)

    @property
    def settings(self) -> RunSettings:
        """The options that are run settings, not part of what the run computes."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})

    def to_json(self) -> str:
        """The stored form of the parameters."""
        return json.dumps(asdict(self), sort_keys=True, default=list)


@dataclass(frozen=True)
class IndexConfig:
    """Options of ``index`` (indexes recomputed from a stored model's top images): exactly what an
    index run stores as its parameters, so the run says what made its values and nothing else."""

    indexes: tuple[str, ...] = AnalyzeConfig.indexes
    layers: tuple[str, ...] = ()
    color_mode: str = AnalyzeConfig.color_mode
    rho: float = AnalyzeConfig.rho
    seed: int = AnalyzeConfig.seed
    batch_size: int = AnalyzeConfig.batch_size
    provider: str = AnalyzeConfig.provider
    lock_timeout: float = AnalyzeConfig.lock_timeout
    threads: int = AnalyzeConfig.threads

    def __post_init__(self) -> None:
        _check_shared(self)

    def to_json(self) -> str:
        """The stored form of the parameters."""
        return json.dumps(asdict(self), sort_keys=True, default=list)

    @classmethod
    def of(cls, values: dict[str, Any]) -> IndexConfig:
        """The index options among stored parameters (a saved index file written by an older version
        stored every analysis option: the others are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})

    def analysis(self) -> AnalyzeConfig:
        """The analysis options the index passes run with: these, no NF pass, defaults for the rest."""
        return AnalyzeConfig(**asdict(self), nf=False)


def _check_shared(config: AnalyzeConfig | IndexConfig) -> None:
    """Canonical forms and checks of the options ``analyze`` and ``index`` share (canonical first, so
    the stored parameters of equal runs are equal)."""
    object.__setattr__(config, "indexes", parse_indexes(config.indexes))
    object.__setattr__(config, "layers", parse_list(config.layers))
    _at_least("batch_size", config.batch_size, 1)
    _at_least("seed", config.seed, 0)
    _at_least("threads", config.threads, 0)
    if not 0 < config.rho <= 1:
        raise ConfigError(f"rho must be in (0, 1], got {config.rho}; 1 counts every class of a neuron's top images")
    timeout = config.lock_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError(f"--lock-timeout must be a number of seconds >= 0, got {timeout!r}")
    _one_of("color_mode", config.color_mode, COLOR_MODES)
    _one_of("provider", config.provider, PROVIDERS)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_option(name)} must be an integer >= {low}, got {value!r}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{_option(name)} must be one of {', '.join(choices)}, got {value!r}")


def _labels_help() -> str:
    """``auto, folder (sub-folder names), …, predicted[:CLASSNAMES.txt] or none``, from ``names.LABEL_SOURCES``."""
    forms = [f"{s.form} ({s.help})" if s.help else s.form for s in LABEL_SOURCES.values()]
    return f"{', '.join(forms[:-1])} or {forms[-1]}"


HELP: dict[str, str] = {
    "top_n": "Images kept per neuron (N; docs/method.md, Top-N images).",
    "batch_size": "Images per forward pass.",
    "provider": "onnxruntime provider: auto (CUDA when available), cpu or cuda.",
    "preprocess": f"Preset ({', '.join(PRESETS)}) or a preprocessing JSON file; default: MODEL.json beside the model, else torchvision.",
    "labels": f"Image labels: {_labels_help()}.",
    "layers": "Layers to analyse: aliases (conv3), tensor names or globs (conv1*), comma-separated or repeated; default all conv layers.",
    "nf": "Compute Neuron Features (docs/method.md, Neuron Feature).",
    "nf_max_size": "Largest NF side in pixels; larger receptive fields are averaged at reduced resolution (0 = full size).",
    "indexes": f"Indexes: {', '.join(f'{s.name} ({s.help})' for s in INDEXES.values())}, all, or none (comma-separated).",
    "color_mode": "Colour index grey pass: image (whole image greyed, one pass) or region (RF region only, the paper's form).",
    "rho": "Class selectivity threshold on cumulative class frequency, in (0, 1] (docs/method.md, Class selectivity).",
    "population_threshold": "Class frequency counted in the population code.",
    "probe_size": "Images in the database's shared probe set for similarity search.",
    "seed": "Seed for randomised indexes (shape shuffling).",
    "input_size": "H,W for a model whose input size is dynamic (default: the preprocessing file's input_size, else 224,224).",
    "input": "The image input of a model with several inputs (the others are fed zeros); default: its only 4-D input.",
    "max_pixels": "Largest image in pixels, read from the file header before decoding; larger files are skipped with a reason.",
    "lock_timeout": "Seconds to wait for a database another process holds before giving up.",
    "checkpoint_every": "Save the scan state every this many images (resume with --resume).",
    "checkpoint_seconds": "Save the scan state at least this often, in seconds.",
    "threads": "onnxruntime threads per session, also the NF crop workers; 0 = one per core (onnxruntime's default).",
}


def parse_size(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224,224`` / ``(224, 224)`` -> (224, 224), both sides positive."""
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
    try:
        h, w = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--input-size must be H,W (e.g. 224,224), got {value!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--input-size must be two positive sizes H,W, got {value!r}")
    return h, w


def parse_list(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Repeated and comma-separated option values as one tuple: ``a,b`` + ``c`` -> (a, b, c)."""
    parts = [values] if isinstance(values, str) else list(values or ())
    return tuple(v.strip() for part in parts for v in part.split(",") if v.strip())


def parse_indexes(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """``color,class`` / ``all`` / ``none`` -> a tuple of index names in canonical order."""
    items, known = list(parse_list(values)), index_names()
    if "all" in items:
        return known
    if items in (["none"], []):
        return ()
    unknown = [v for v in items if v not in known]
    if unknown:
        raise ConfigError(f"unknown index {', '.join(unknown)}; use any of {', '.join(known)}, all or none")
    return tuple(n for n in known if n in items)


def config_fields() -> list[str]:
    """Field names users can set."""
    return [f.name for f in fields(AnalyzeConfig)]
