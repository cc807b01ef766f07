"""``onnx-nfi relevance``: how much a stored classifier needs each neuron, measured by ablation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onnx_nfi.cli.common import (
    DEFAULT_DB,
    BatchSize,
    Db,
    ModelName,
    ProgressBars,
    Provider,
    Silent,
    Threads,
    app,
    layer_patterns,
    print_table,
    say,
    sigterm_as_ctrl_c,
    user_errors,
    wrote,
)
from onnx_nfi.config import AnalyzeConfig

if TYPE_CHECKING:
    from onnx_nfi.api import RelevanceSummary

#: The layers ``relevance`` ablates.
AblatedLayers = layer_patterns("Layers whose neurons are ablated")


@app.command("relevance")
@user_errors
def relevance_cmd(
    model: ModelName,
    layers: AblatedLayers = None,
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="FOLDER", help="Image folder to measure on (default: the database's probe set).")] = None,
    target: Annotated[str, typer.Option(
        "--target", metavar="TARGET",
            help="Class whose probability drop is measured: predicted (unablated top-1) or label (sub-folder "
        "name: a class index, or a name of --class-names).")] = "predicted",
    mode: Annotated[str, typer.Option(
        "--mode", metavar="MODE",
            help="What an ablated channel becomes: zero, or mean (its mean map over the images).")] = "zero",
    class_names: Annotated[Path | None, typer.Option(
        "--class-names", metavar="FILE",
            help="The model's class names, one a line (names the classes hurt most; maps labels).")] = None,
    batch_size: BatchSize = AnalyzeConfig.batch_size,
    provider: Provider = AnalyzeConfig.provider,
    threads: Threads = AnalyzeConfig.threads,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE",
            help="Also draw prob_drop against class selectivity, a panel per layer with relevance (PNG).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Leave out the layers already measured on the same images with the same target and mode.")] = False,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS",
            help="Measure the layers as tasks on a Ray cluster: its address (ray://host:10001, auto) or local "
        "(a local instance).")] = None,
    silent: Silent = False,
    db: Db = Path(DEFAULT_DB),
) -> None:
    """Ablate each neuron of a stored classifier: mean drop of the target class probability, top-1 flips."""
    from onnx_nfi import api
    from onnx_nfi.config import parse_list

    with sigterm_as_ctrl_c(), ProgressBars(silent) as bars:
        s = api.relevance(
            model, db=db, layers=parse_list(layers), images=images, target=target, mode=mode, class_names=class_names,
            batch_size=batch_size, provider=provider, progress=bars, resume=resume, ray=ray, plot=plot,
            threads=threads,
        )
    if s.resumed:
        say(f"Already measured the same way, left out: {', '.join(s.resumed)}.")
    if s.layers:
        _print_layers(s, db)
    if plot is not None:
        wrote(plot)


def _print_layers(s: RelevanceSummary, db: Path) -> None:
    """The closing summary: the run, then a row per measured layer."""
    say(
        f"Relevance of {s.model} ({s.mode} ablation, target {s.target}) on {s.images} images "
        f"({len(s.skipped)} skipped) on {s.provider} in {s.seconds:.1f} s; stored in {db} (tables relevance, "
        "relevance_classes):"
    )
    print_table(
        ["layer", "neurons", "pairs run", "mean prob_drop", "mean flip_rate", "most relevant unit", "its prob_drop"],
        [(d.alias, str(d.neurons), str(d.pairs_run), f"{d.mean_drop:.4f}", f"{d.mean_flip:.3f}", str(d.top_unit),
          f"{d.top_drop:.4f}") for d in s.layers],
    )
