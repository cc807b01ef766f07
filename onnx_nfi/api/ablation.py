"""``onnx-nfi relevance``: a stored classifier's neurons ablated one at a time, and their picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from onnx_nfi.config import DEFAULT_THREADS
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.pipeline.relevance import RelevanceSummary
from onnx_nfi.pipeline.relevance import relevance as measure_relevance
from onnx_nfi.progress import Progress
from onnx_nfi.report import pictures


def relevance(
    model: str, *, db: str | Path = DEFAULT_DB, layers: Sequence[str] = (), images: str | Path | None = None,
    target: str = "predicted", mode: str = "zero", class_names: str | Path | None = None, batch_size: int = 32,
    provider: str = "auto", progress: Progress | None = None, resume: bool = False, ray: str | None = None,
    plot: str | Path | None = None, threads: int = DEFAULT_THREADS,
) -> RelevanceSummary:
    """``onnx-nfi relevance``: each neuron of ``layers`` of the stored classifier ``model`` ablated, its
    class-probability drop and top-1 flip rate stored per neuron (``relevance``, ``relevance_classes``;
    the options: ``onnx_nfi.pipeline.relevance.relevance``); ``plot`` gets prob_drop against class
    selectivity, a panel per layer (checked before the work); ``threads``: onnxruntime threads per
    session (0: one per core)."""
    if plot is not None:
        pictures.check_png(plot)
    summary = measure_relevance(
        model, db=db, layers=layers, images=images, target=target, mode=mode, class_names=class_names,
        batch_size=batch_size, provider=provider, progress=progress, resume=resume, ray=ray,
        threads=threads,
    )
    if plot is not None:
        from onnx_nfi.report.relevance_plot import relevance_png  # scipy: only for the plot

        relevance_png(summary.model, plot, db=db)
    return summary
