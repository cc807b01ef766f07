"""``onnx-nfi analyze``, ``index``, ``layers`` and ``demo``: the commands that run models."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from onnx_nfi.cli.common import (
    BatchSize,
    ColorMode,
    DEFAULT_DB,
    DEFAULT_INDEXES,
    Db,
    ImageInput,
    ImageRoot,
    Indexes,
    InputSize,
    LayerPatterns,
    LockTimeout,
    MaxPixels,
    Preprocess,
    ProgressBars,
    Provider,
    Rho,
    Seed,
    Silent,
    StoredImageRoot,
    Threads,
    app,
    layer_patterns,
    print_table,
    say,
    sigterm_as_ctrl_c,
    user_errors,
    warn,
    wrote,
)
from onnx_nfi.config import HELP, AnalyzeConfig, IndexConfig, parse_size
from onnx_nfi.errors import Interrupted

if TYPE_CHECKING:
    from onnx_nfi.api import AnalysisSummary

#: The model argument of the commands that read an ONNX file.
OnnxFile = Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX model file.")]
IndexLayers = layer_patterns("Layers whose indexes are recomputed")
RecomputedIndexes = Annotated[str, typer.Option("--indexes", metavar="INDEXES", help=(
    "Indexes to recompute, comma-separated: the names analyze --indexes takes, or all."))]
# analyze's own options
ImageFolder = Annotated[Path, typer.Argument(metavar="IMAGES", help="Image folder (recursive; sub-folders name classes).")]
NewModelName = Annotated[str | None, typer.Option("--name", metavar="NAME",
                                                  help="Model name in the database (default: file stem).")]
TopN = Annotated[int, typer.Option("--top-n", metavar="N", help=HELP["top_n"])]
Labels = Annotated[str, typer.Option("--labels", metavar="SOURCE", help=HELP["labels"])]
Nf = Annotated[bool, typer.Option("--nf/--no-nf", help=HELP["nf"])]
NfMaxSize = Annotated[int, typer.Option("--nf-max-size", metavar="PIXELS", help=HELP["nf_max_size"])]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", metavar="IMAGES", help=HELP["checkpoint_every"])]
CheckpointSeconds = Annotated[float, typer.Option("--checkpoint-seconds", metavar="SECONDS",
                                                  help=HELP["checkpoint_seconds"])]
StateFileOption = Annotated[Path | None, typer.Option("--checkpoint", metavar="FILE",
                                                      help="Scan state file (default: beside the database, DB.NAME.state).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its scan state file.")]
ShardOption = Annotated[str | None, typer.Option("--shard", metavar="I/N",
                                                 help="Scan only part i of n (i/n) into a state file for 'onnx-nfi merge'.")]
RayAddress = Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help=(
    "Run the scan, NFs and indexes on a Ray cluster: its address (ray://host:10001, auto) or local (a local instance)."))]


@app.command()
@user_errors
def analyze(
    model: OnnxFile,
    images: ImageFolder,
    db: Db = Path(DEFAULT_DB),
    name: NewModelName = None,
    layers: LayerPatterns = None,
    top_n: TopN = AnalyzeConfig.top_n,
    batch_size: BatchSize = AnalyzeConfig.batch_size,
    preprocess: Preprocess = None,
    labels: Labels = AnalyzeConfig.labels,
    provider: Provider = AnalyzeConfig.provider,
    nf: Nf = AnalyzeConfig.nf,
    nf_max_size: NfMaxSize = AnalyzeConfig.nf_max_size,
    indexes: Indexes = DEFAULT_INDEXES,
    color_mode: ColorMode = AnalyzeConfig.color_mode,
    rho: Rho = AnalyzeConfig.rho,
    seed: Seed = AnalyzeConfig.seed,
    input_size: InputSize = None,
    input_name: ImageInput = None,
    max_pixels: MaxPixels = AnalyzeConfig.max_pixels,
    lock_timeout: LockTimeout = AnalyzeConfig.lock_timeout,
    checkpoint_every: CheckpointEvery = AnalyzeConfig.checkpoint_every,
    checkpoint_seconds: CheckpointSeconds = AnalyzeConfig.checkpoint_seconds,
    threads: Threads = AnalyzeConfig.threads,
    checkpoint: StateFileOption = None,
    resume: Resume = False,
    shard: ShardOption = None,
    ray: RayAddress = None,
    image_root: StoredImageRoot = None,
    silent: Silent = False,
) -> None:
    """Scan IMAGES with MODEL and index every neuron of every conv layer into the database."""
    from onnx_nfi import api

    config = AnalyzeConfig(
        top_n=top_n, batch_size=batch_size, provider=provider, preprocess=preprocess, labels=labels,
        layers=tuple(layers or ()), nf=nf, nf_max_size=nf_max_size, indexes=(indexes,), color_mode=color_mode,
        rho=rho, seed=seed, input_size=input_size, input=input_name, max_pixels=max_pixels, lock_timeout=lock_timeout,
        checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds, threads=threads,
    )
    common = {"db": db, "name": name, "config": config, "resume": resume, "checkpoint": checkpoint,
              "ray": ray, "image_root": image_root}
    if shard is None:
        summarised(lambda bars: api.analyze(model, images, progress=bars, **common), silent)
        return
    with sigterm_as_ctrl_c(), ProgressBars(silent) as bars:
        s = api.analyze(model, images, progress=bars, shard=shard, **common)  # a ShardSummary
    say(
        f"Scanned shard {s.shard} of {s.model}: {s.images_seen} images ({s.images_skipped} skipped) in "
        f"{s.seconds:.1f} s.\nState: {s.state} (combine all shards with: onnx-nfi merge STATE... --db {db})",
    )
    warn(s.warnings)


@app.command()
@user_errors
def merge(
    states: Annotated[list[Path], typer.Argument(metavar="STATE...",
        help="State files of shards 1..n (analyze --shard i/n), or one finished run's.")],
    db: Db = Path(DEFAULT_DB),
    image_root: StoredImageRoot = None,
    silent: Silent = False,
) -> None:
    """Combine shard states into the result of one run, compute NFs and indexes and write the database."""
    from onnx_nfi import api

    summarised(lambda bars: api.merge(states, db=db, progress=bars, image_root=image_root), silent)


def summarised(analyse: Callable[[ProgressBars], AnalysisSummary], silent: bool) -> None:
    """Run ``analyse`` with progress bars, SIGTERM handled as Ctrl-C, and print its summary; a Ctrl-C
    or SIGTERM after it returned (while the summary prints) says that the results were written."""
    summary = None
    with sigterm_as_ctrl_c():
        try:
            with ProgressBars(silent) as bars:
                summary = analyse(bars)
            print_summary(summary)
        except KeyboardInterrupt as exc:
            if summary is None:  # the analysis said what it had written or saved
                raise
            raise Interrupted.written(exc, summary.model, summary.db, summary.run_id) from None


def print_summary(s: AnalysisSummary) -> None:
    """The closing summary of an analysis."""
    say(
        f"Analysed [bold]{escape(s.model)}[/bold]: {s.layers} layers, {s.neurons} neurons ({s.dead} dead) "
        f"over {s.images_seen} images ({s.images_skipped} skipped) on {s.provider}.", markup=True,
    )
    rate = s.images_seen / s.scan_seconds if s.scan_seconds else 0
    say(
        f"Preprocessing: {s.preprocessing}; labels: {s.label_source}. Scan {s.scan_seconds:.1f} s ({rate:.1f} img/s), "
        f"NF {s.nf_seconds:.1f} s, indexes {s.index_seconds:.1f} s, total {s.total_seconds:.1f} s.",
    )
    say(f"Results: {s.db} (run {s.run_id})")
    warn(s.warnings)
    shown = s.skipped[:SKIPPED_SHOWN]
    if shown:
        say(f"Skipped {len(s.skipped)} file(s):")
    for path, reason in shown:
        say(f"  {path}: {reason}")
    if len(s.skipped) > len(shown):
        from onnx_nfi.store import example_queries  # here: --help need not import it

        say(
            f"  … and {len(s.skipped) - len(shown)} more ({example_queries.skipped_files_query(s.run_id)})",
        )


#: Skipped files listed in the summary; the rest are in the ``skipped_images`` table.
SKIPPED_SHOWN = 20


@app.command("index")
@user_errors
def index_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name in the database.")],
    db: Db = Path(DEFAULT_DB),
    indexes: RecomputedIndexes = DEFAULT_INDEXES,
    layers: IndexLayers = None,
    color_mode: ColorMode = IndexConfig.color_mode,
    rho: Rho = IndexConfig.rho,
    seed: Seed = IndexConfig.seed,
    batch_size: BatchSize = IndexConfig.batch_size,
    provider: Provider = IndexConfig.provider,
    image_root: ImageRoot = None,
    lock_timeout: LockTimeout = IndexConfig.lock_timeout,
    threads: Threads = IndexConfig.threads,
    saved: Annotated[
        Path | None, typer.Option("--saved", metavar="FILE",
            help="Write the indexes a failed write kept in FILE (nothing is computed).")
    ] = None,
    silent: Silent = False,
) -> None:
    """(Re)compute selectivity indexes of a model already in the database, without a new scan."""
    from onnx_nfi import api

    config = IndexConfig(
        indexes=(indexes,), layers=tuple(layers or ()), color_mode=color_mode, rho=rho, seed=seed,
        batch_size=batch_size, provider=provider, lock_timeout=lock_timeout, threads=threads,
    )
    with ProgressBars(silent) as bars:
        s = api.index(model, db=db, config=config, progress=bars, image_root=image_root, saved=saved)
    say(
        f"Indexed {s.model}: {', '.join(s.indexes)} for {s.neurons} neurons in {s.layers} layers "
        f"({s.seconds:.1f} s).",
    )
    warn(s.warnings)


@app.command("layers")
@user_errors
def layers_cmd(
    model: OnnxFile,
    preprocess: Preprocess = None,
    input_size: InputSize = None,
    input_name: ImageInput = None,
    verify_rf: Annotated[
        bool, typer.Option("--verify-rf", help="Also measure each RF empirically and report differences.")
    ] = False,
) -> None:
    """List the conv layers: alias, tensor, op chain, channels, output size, receptive field."""
    from onnx_nfi import api

    size = parse_size(input_size) if input_size else None
    infos = api.layers(model, preprocess=preprocess, input_size=size, input_name=input_name)
    verified = (
        api.verify_receptive_fields(model, preprocess=preprocess, input_size=size, input_name=input_name)
        if verify_rf else None
    )
    rows = []
    for info in infos:
        rf, layer = info.rf, info.layer
        rows.append((
            layer.alias, layer.tensor, layer.op_type, str(layer.channels), f"{layer.height}x{layer.width}",
            "global" if rf.is_global else f"{rf.size[0]}x{rf.size[1]}",
            f"{rf.stride[0]}x{rf.stride[1]}", f"{rf.offset[0]},{rf.offset[1]}",
        ))
    print_table(["alias", "tensor", "ops", "channels", "output", "rf size", "rf stride", "rf offset"], rows)
    warn(infos.notices)
    if verified is None:
        return
    for layer_name, problems in verified.mismatches.items():
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        say(f"RF mismatch in {layer_name}: {problems[0]}{more}")
    if verified.mismatches:
        raise typer.Exit(1)
    say(f"Receptive fields verified empirically for all {len(infos)} layers.")
    if verified.effective_smaller:
        say(
            f"Effective fields smaller than the theoretical ones (the weights, or float32 rounding of small contributions, "
            f"leave border pixels without a measurable influence) in "
            f"{len(verified.effective_smaller)} layers: {', '.join(verified.effective_smaller)}.",
        )


@app.command()
@user_errors
def demo(
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="FOLDER", help="Folder for the images, database and pictures.")
    ] = Path("demo-output"),
    silent: Silent = False,
) -> None:
    """Analyse the bundled EfficientNet-Lite0 and MobileNetV2 on the bundled demo photos and draw the results."""
    from onnx_nfi import api

    with ExitStack() as stack:

        def on_step(title: str) -> ProgressBars:
            stack.close()
            say(f"[bold]{escape(title)}[/bold]", markup=True)
            return stack.enter_context(ProgressBars(silent))  # a fresh set of bars per step

        def on_analysis(summary: AnalysisSummary) -> None:
            stack.close()
            print_summary(summary)

        result = api.demo(output, on_step=on_step, on_analysis=on_analysis)
    for path in result.pictures:
        wrote(path)
    m = result.match
    say(f"Wrote {m.picture}: mean best correlation of a Lite0 neuron with a MobileNetV2 neuron {m.mean_best:.3f}")
    say(f"\nResults: {result.db.resolve()}\nPictures: {result.db.parent.resolve() / 'pictures'}")
    say(
        f"Neuron browser: file://{(result.report / 'index.html').resolve()} (or: onnx-nfi serve --db {result.db})\nTry:",
    )
    from onnx_nfi.api.demo import DEMO_QUERIES

    for title, query in DEMO_QUERIES:
        say(f"  # {title}\n  onnx-nfi sql --db {result.db} \"{query}\"")
    say(f"\n{DEMO_QUERIES[0][0]}:")
    print_table(*result.example)
