"""``onnx-nfi report``: the neuron browser as a static site that opens from ``file://``.

Layout under the output folder (every link between pages is relative, so the folder can be
moved, zipped or served by any web server)::

    index.html                 models, their runs, selectivity by depth (selectivity.png)
    static/                    style.css, layer.js (ours; nothing from the network)
    MODEL/index.html           the layers table
    MODEL/images/ID.jpg        each top image once, as the network saw it; crops are windows onto it
    MODEL/LAYER/index.html     the unit grid, sortable and filterable
    MODEL/LAYER/nf/UNIT.png    NF thumbnails at their stored size (shown enlarged, pixelated)
    MODEL/LAYER/nf.png         all the layer's NFs in one picture: the layer page's tiles (one request)
    MODEL/LAYER/UNIT/index.html  one page per neuron: the stable link ``…/MODEL/LAYER/UNIT/``

``manifest.json`` records which analysis of each model its pages show; a rebuild rewrites only
the models whose analysis changed (and the index), so adding a model to a large database writes
that model's pages alone. Pages of models left untouched keep the similar neurons they were
built with; ``force`` rebuilds every model.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from onnx_nfi.data.images import stored_image_path
from onnx_nfi.data.preprocess import from_dict
from onnx_nfi.errors import NotFoundError, ReportError
from onnx_nfi.report.queries import display_image
from onnx_nfi.report.site import data as q
from onnx_nfi.report.site import find, pages
from onnx_nfi.report.site.sprites import layer_sprite
from onnx_nfi.store import site_reads
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store
from onnx_nfi.store.nf_storage import decode
from onnx_nfi.names import INDEX_COLUMNS

Progress = Callable[[str, int, int], None]
MANIFEST = "manifest.json"
#: Bumped when the page layout changes, so an old report is rebuilt rather than mixed with new pages.
LAYOUT_VERSION = 2  # 2: compact neuron pages (their markup needs the style.css written with them)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ReportSummary:
    """What a build wrote."""

    output: Path
    written: tuple[str, ...]  # models whose pages were (re)written
    kept: tuple[str, ...]  # models whose pages were already up to date
    files: int
    bytes: int
    seconds: float


class _Writer:
    """Writes files under the report folder and counts them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self.bytes = 0

    def write(self, relative: str, content: bytes | str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        self.files += 1
        self.bytes += len(data)


def build_report(
    output: str | Path,
    models: Sequence[str] | None = None,
    *,
    db: str | Path = DEFAULT_DB,
    force: bool = False,
    progress: Progress | None = None,
    image_root: str | Path | None = None,
) -> ReportSummary:
    """``onnx-nfi report``: write (or bring up to date) the static site for ``models`` (default: all) of
    ``db`` under ``output``; ``force`` rewrites pages already up to date (``image_root``: where images
    stored relative to their root are now)."""
    started = time.perf_counter()
    output, db = Path(output), Path(db)
    progress = progress or (lambda phase, done, total: None)
    manifest = _read_manifest(output)
    _write_manifest(output, manifest.get("models", {}))  # the folder is a report from here on: a failed build can be rerun
    writer = _Writer(output)
    for asset in sorted(pages.STATIC.iterdir()):  # first, so pages already written look right while the rest is built
        writer.write(f"static/{asset.name}", asset.read_bytes())
    with Store.open(db, read_only=True) as store:
        in_db = store.models()
        wanted = list(dict.fromkeys(models)) if models else in_db
        for m in wanted:
            store.model_row(m)
        built = manifest.get("models", {})
        gone = [m for m in built if m not in in_db or (not models and m not in wanted)]
        site = sorted(set(wanted) | {m for m in built if m in in_db and m not in gone})
        prints = {m: q.fingerprint(store, m) for m in site}
        stale = [
            m for m in wanted
            if force or built.get(m, {}).get("fingerprint") != prints[m] or not (output / q.slug(m)).is_dir()
        ]
        for m in gone + stale:
            _remove_model_folder(output, built.get(m, {}).get("slug"))
        common = {"live": False, "db_name": db.name, "built_at": dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
        names = q.NeuronNames(store) if stale else None
        for m in stale:
            _write_model(store, writer, m, [o for o in site if o != m], names, common, progress,  # type: ignore[arg-type]
                         image_root)
            built[m] = {"slug": q.slug(m), "fingerprint": prints[m]}
            _write_manifest(output, built)  # a build stopped half-way keeps the models it finished
        for m in gone:
            built.pop(m, None)
        overviews = q.model_overviews(store, site)
        find.write_static(store, writer, site, common)
        picture = _summary_picture(store, site, output, writer)
    writer.write("index.html", pages.index_page(overviews, picture, **common))
    _write_manifest(output, built)
    return ReportSummary(
        output=output, written=tuple(stale), kept=tuple(m for m in site if m not in stale),
        files=writer.files, bytes=writer.bytes, seconds=time.perf_counter() - started,
    )


def _write_model(
    store: Store, writer: _Writer, model: str, others: Sequence[str], names: q.NeuronNames,
    common: dict[str, object], progress: Progress, image_root: str | Path | None,
) -> None:
    """Every page and picture of one model."""
    overview = q.model_overviews(store, [model])[0]
    rows = q.layer_rows(store, model)
    base = overview.slug
    writer.write(f"{base}/index.html", pages.model_page(overview, rows, **common))
    _write_images(store, writer, model, base, progress, image_root)
    progress("similar", 0, 1)
    similar = q.similar_links(store, names, model, others, pages.SIMILAR)
    progress("similar", 1, 1)
    total, done = overview.neurons, 0
    progress("pages", 0, total)
    for row in rows:
        layer = q.layer_data(store, row)
        folder = f"{base}/{row.slug}"
        pngs = dict(nf_pngs(store, model, row.layer))
        sheet = layer_sprite(pngs)  # the layer page's NFs in one file; neuron pages and links use nf/UNIT.png
        if sheet is not None:
            writer.write(f"{folder}/nf.png", sheet[1])
        writer.write(f"{folder}/index.html", pages.layer_page(layer, sprite=sheet and sheet[0], **common))
        for index, h in layer.histograms.items():
            writer.write(f"{folder}/hist/{index}.svg", pages.hist_svg(h))
        for unit, png in pngs.items():
            writer.write(f"{folder}/nf/{unit}.png", png)
        crops = q.layer_crops(store, layer, pages.CROPS)
        classes = q.layer_classes(store, model, row.layer)
        matches = q.layer_matches(store, model, row.layer, names, others, pages.SIMILAR)
        for u in layer.units:
            same_links, other_links = similar.get(u.neuron_id, ([], []))
            writer.write(f"{folder}/{u.unit}/index.html", pages.neuron_page(
                layer, u, crops.get(u.unit, []), classes.get(u.unit, []), same_links, other_links,
                matches.get(u.unit, []), **common,
            ))
        done += len(layer.units)
        progress("pages", done, total)


def _write_images(
    store: Store, writer: _Writer, model: str, base: str, progress: Progress, image_root: str | Path | None
) -> None:
    """Each image shown among the top crops, once, as the network saw it (JPEG)."""
    for image_id, jpeg, done, total in display_jpegs(store, model, pages.CROPS, image_root=image_root):
        writer.write(f"{base}/images/{image_id}.jpg", jpeg)
        progress("images", done, total)


def display_jpegs(
    store: Store, model: str, top: int, image_ids: Sequence[int] | None = None, image_root: str | Path | None = None
):
    """(image id, JPEG bytes, done, total) of the display images the neuron pages show (paths stored
    relative to their root are found under ``image_root``)."""
    pre = from_dict(store.model_row(model)["preprocessing"], f"stored preprocessing of {model}")
    rows = site_reads.top_image_paths(store, model, top, image_ids)
    for k, r in enumerate(rows):
        rgb = display_image(stored_image_path(r["path"], image_root), pre)
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ReportError(f"cannot encode {r['path']} as JPEG")
        yield int(r["image_id"]), buf.tobytes(), k + 1, len(rows)


def nf_pngs(store: Store, model: str, layer: str, units: Sequence[int] | None = None):
    """(unit, PNG bytes) of a layer's stored NFs (or of ``units``), at their stored size."""
    cols = site_reads.layer_nfs(store, model, layer, units)
    for unit, nf, h, w in zip(cols["unit"], cols["nf"], cols["nf_height"], cols["nf_width"]):
        rgb = decode(nf, h, w)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
        if ok:
            yield int(unit), buf.tobytes()


def summary_png_bytes(store: Store, models: Sequence[str]) -> bytes | None:
    """The selectivity-by-depth picture of ``models`` (PNG bytes), None when no index has a value."""
    from onnx_nfi.report import render

    if not models:
        return None
    try:
        image, _ = render.summary_picture(store, models, INDEX_COLUMNS)
    except NotFoundError:
        return None
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise ReportError("cannot encode the selectivity picture as PNG")
    return buf.tobytes()


def _summary_picture(store: Store, models: Sequence[str], output: Path, writer: _Writer) -> str | None:
    png = summary_png_bytes(store, models)
    if png is None:
        (output / "selectivity.png").unlink(missing_ok=True)
        return None
    writer.write("selectivity.png", png)
    return "selectivity.png"


def _read_manifest(output: Path) -> dict:
    """The manifest of an existing report; a non-empty folder without one is not ours to write into."""
    path = output / MANIFEST
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ReportError(f"{path} is unreadable; delete the folder {output} or choose another -o") from None
        return manifest if manifest.get("version") == LAYOUT_VERSION else {}
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ReportError(f"{output} exists and is not an onnx-nfi report; choose an empty or new folder with -o")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {output}: {exc.strerror}; choose another -o") from None
    return {}


def _write_manifest(output: Path, models: dict) -> None:
    (output / MANIFEST).write_text(json.dumps({"version": LAYOUT_VERSION, "models": models}, indent=1))


def _remove_model_folder(output: Path, slug: str | None) -> None:
    """Delete one model's folder, only if it is a direct child of the report (the slug came from our manifest)."""
    if not slug:
        return
    folder = output / slug
    if folder.parent == output and folder.name == slug and folder.is_dir():
        shutil.rmtree(folder)
