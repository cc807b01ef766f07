"""``onnx-nfi demo``: the bundled models analysed on the demo photos, the README's pictures and the
neuron browser, in one folder. It only strings other verbs together, so it lives beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnx_nfi.api.pictures import card, grid, summary
from onnx_nfi.api.site import build_report
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.progress import Progress
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.example_queries import DEMO_QUERIES  # noqa: F401  (the CLI prints them)

if TYPE_CHECKING:
    from onnx_nfi import search
    from onnx_nfi.api import AnalysisSummary

#: The bundled models (the queries the demo prints are ``store.example_queries.DEMO_QUERIES``).
BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "models"
DEMO_MODELS = ("efficientnet_lite0", "mobilenetv2_deepsort")
#: The demo's analyses: the default indexes and each neuron's colour names.
DEMO_CONFIG = AnalyzeConfig(indexes=(*AnalyzeConfig.indexes, "color_names"))


@dataclass(frozen=True)
class DemoResult:
    """What ``demo`` made: the database, the analyses, the pictures, the model match, the browser, and
    the columns and rows of the first of ``DEMO_QUERIES`` (read with the pictures: no open of its own)."""

    db: Path
    images: Path
    pictures: tuple[Path, ...]
    analyses: tuple[AnalysisSummary, ...]
    match: search.MatchResult
    report: Path
    example: tuple[list[str], list[tuple]]


def demo(
    output: str | Path = "demo-output",
    *,
    on_step: Callable[[str], Progress | None] | None = None,
    on_analysis: Callable[[AnalysisSummary], None] | None = None,
) -> DemoResult:
    """``onnx-nfi demo``: analyse the bundled models on the demo photos (built from installed packages)
    (default indexes and colour names) into ``output/nfi.duckdb``, draw the README's pictures into ``output/pictures`` and build the
    neuron browser into ``output/report``. Before each long step ``on_step(title)`` may return the
    progress callback for it; ``on_analysis(summary)`` is called after each analysis."""
    from onnx_nfi.api import analyze, match  # the verbs it strings together (imported when run: no cycle)
    from onnx_nfi.data.demo_images import build_demo_images

    def step(title: str) -> Progress | None:
        return on_step(title) if on_step else None

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    images = build_demo_images(output / "images")
    db, folder = output / "nfi.duckdb", output / "pictures"
    folder.mkdir(exist_ok=True)
    analyses = []
    for model in DEMO_MODELS:  # each analysis writes its model in its own transaction: it opens the file itself
        progress = step(f"Analysing {model} on {images}")
        analyses.append(analyze(BUNDLED_MODELS / f"{model}.onnx", images, db=db, config=DEMO_CONFIG, progress=progress))
        if on_analysis:
            on_analysis(analyses[-1])
    with Store.open(db, read_only=True) as store:  # one read for every picture and the example query
        drawn = _pictures(store, folder)
        example = store.query(DEMO_QUERIES[0][1])
    matched = match(*DEMO_MODELS, picture=folder / "match.png", db=db)  # writes neuron_matches: its own (writable) open
    # the browser opens the file itself, read-only, after the match it shows
    site = build_report(output / "report", db=db, progress=step(f"Building the neuron browser in {output / 'report'}"))
    return DemoResult(db, images, tuple(drawn), tuple(analyses), matched, site.output, example)


def _pictures(store: Store, folder: Path) -> list[Path]:
    """The README's pictures of the demo, all drawn from the one open ``store``."""
    lite0 = DEMO_MODELS[0]
    drawn = [grid(lite0, layer, folder / f"lite0_{layer}_nfs.png", db=store, per_page=64).path for layer in ("conv1", "conv40")]
    unit = _most_class_selective(store, lite0, "conv40")
    drawn.append(card(f"{lite0}:conv40:{unit}", folder / "lite0_conv40_card.png", db=store).path)
    drawn.append(summary(folder / "selectivity.png", DEMO_MODELS, ["color_selectivity", "class_selectivity"], db=store).path)
    drawn.append(summary(folder / "names.png", DEMO_MODELS, db=store, names=True).path)
    return drawn


def _most_class_selective(store: Store, model: str, layer: str) -> int:
    """The unit whose top images are most dominated by one class: a good neuron card."""
    return store.most_class_dominated_unit(model, layer)
