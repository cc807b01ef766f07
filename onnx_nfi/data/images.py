"""Image sources and their labels.

Images are every file under a folder (recursively) in deterministic order: sorted relative POSIX
paths, so the same folder gives the same image ids on every machine. Labels come from the
first-level sub-folder (ImageFolder), a CSV, the model's own prediction, or nowhere.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.data.limits import DEFAULT_MAX_PIXELS, too_large
from onnx_nfi.errors import ImageError
from onnx_nfi.names import LABEL_SOURCES

#: Extensions OpenCV decodes (imread); other files are reported as skipped, not silently lost.
IMAGE_EXTENSIONS = frozenset(
    ".bmp .dib .jpeg .jpg .jpe .jp2 .png .webp .avif .pbm .pgm .ppm .pxm .pnm .pfm .sr .ras .tiff .tif .exr .hdr .pic".split()
)


@dataclass(frozen=True)
class ImageFile:
    """One candidate image: absolute path and label (None when unlabelled)."""

    path: Path
    label: str | None


@dataclass(frozen=True)
class ImageSet:
    """The files to scan, those rejected up front, and where the labels came from."""

    root: Path
    files: tuple[ImageFile, ...]
    rejected: tuple[tuple[Path, str], ...]
    label_source: str  # "folder" | "csv" | "predicted" | "none"
    warnings: tuple[str, ...] = ()  # label problems the summary must mention


def parse_label_option(option: str) -> tuple[str, Path | None]:
    """``folder`` | ``csv:FILE`` | ``predicted`` | ``predicted:CLASSNAMES`` | ``none`` | ``auto``."""
    kind, _, arg = option.partition(":")
    if kind not in LABEL_SOURCES:
        forms = ", ".join(s.form for s in LABEL_SOURCES.values() if s.name != "auto")
        raise ImageError(f"unknown --labels {option!r}; use {forms} or auto")
    if kind == "csv" and not arg:
        raise ImageError("--labels csv needs a file: --labels csv:labels.csv (columns path,label)")
    return kind, Path(arg) if arg else None


def list_images(root: str | Path, labels: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Walk ``root`` and attach labels; raises ImageError when there is nothing to scan.

    Everything that is not scanned is in ``rejected`` with its reason (other file types, folders
    that cannot be read, FIFOs and devices, images above ``max_pixels`` by their header), so the
    summary can list it; nothing under ``root`` is ignored silently except hidden names.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"image folder {root} does not exist or is not a folder; pass the folder that holds the images")
    kind, arg = parse_label_option(labels)
    root = root.resolve()
    paths, rejected = _walk(root)
    candidates = []
    for p in paths:
        reason = (
            f"unsupported file type '{p.suffix or '(none)'}'" if p.suffix.lower() not in IMAGE_EXTENSIONS
            else too_large(p, max_pixels)
        )
        if reason:
            rejected.append((p, reason))
        else:
            candidates.append(p)
    if not candidates:
        why = f" ({len(rejected)} skipped, e.g. {rejected[0][0].name}: {rejected[0][1]})" if rejected else ""
        raise ImageError(f"no image files under {root}{why}; put .jpg/.png/… files there (sub-folders name their class)")
    if kind == "auto":
        kind = "folder" if any(p.parent != root for p in candidates) else "none"
    warnings: list[str] = []
    if kind == "folder":
        files = tuple(ImageFile(p, p.relative_to(root).parts[0] if p.parent != root else None) for p in candidates)
        loose = sum(f.label is None for f in files)
        if loose:
            warnings.append(
                f"{loose} image(s) directly in {root} have no class (classes are sub-folder names); "
                "move them into a class folder or they count as unlabelled"
            )
    elif kind == "csv" and arg is not None:  # parse_label_option guarantees the file for csv
        table = _read_csv_labels(arg, root)
        files = tuple(ImageFile(p, table.get(p)) for p in candidates)
        matched = sum(f.label is not None for f in files)
        if matched < len(files):
            warnings.append(
                f"label file {arg} labels {matched} of {len(files)} images; the others are unlabelled "
                "(its paths are relative to the image folder or absolute)"
            )
    else:
        files = tuple(ImageFile(p, None) for p in candidates)
    rejected.sort(key=lambda r: r[0].as_posix())
    return ImageSet(root=root, files=files, rejected=tuple(rejected), label_source=kind, warnings=tuple(warnings))


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Regular files under ``root`` in sorted relative-path order, and what could not be listed or
    is not a regular file (FIFOs would block a reader; devices are endless)."""
    files: list[Path] = []
    rejected: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        rejected.append((Path(exc.filename or root), f"cannot read folder ({exc.strerror or exc})"))

    seen: set[str] = set()  # real paths of folders walked: linked folders are followed, loops are not
    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=True):
        seen.add(os.path.realpath(folder))
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in seen
        )
        for name in names:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                mode = path.stat().st_mode
            except OSError as exc:  # a dangling link or a vanished file
                rejected.append((path, f"cannot read file ({exc.strerror or exc})"))
                continue
            if stat.S_ISREG(mode):
                files.append(path)
            elif not stat.S_ISDIR(mode):
                rejected.append((path, "not a regular file (a FIFO, socket or device)"))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files, rejected


def _read_csv_labels(path: Path, root: Path) -> dict[Path, str]:
    """``path,label`` rows; relative paths are relative to the image root. A header row is allowed."""
    if not path.is_file():
        raise ImageError(f"label file {path} does not exist; give --labels csv:FILE a CSV of path,label rows")
    table: dict[Path, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if not row or (len(table) == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                    continue
                if len(row) < 2:
                    raise ImageError(f"label file {path} has a row without a label: {row}; use 'path,label' rows")
                p = Path(row[0].strip())
                table[(p if p.is_absolute() else root / p).resolve()] = row[1].strip()
    except UnicodeDecodeError:
        raise ImageError(f"label file {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    return table


def read_class_names(path: Path) -> list[str]:
    """One class name per line (index = line number); used to name predicted labels."""
    if not path.is_file():
        raise ImageError(f"class-names file {path} does not exist; give one name per line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def relative_to_root(path: Path, root: Path) -> Path:
    """``path`` as stored under ``--image-root``: relative to ``root``, so the database can move with its images."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise ImageError(f"image {path} is not under --image-root {root}; pass the folder that holds all the images") from None


def stored_image_path(stored: str | Path, image_root: str | Path | None) -> Path:
    """Where a stored image path is now: a relative one (stored under ``--image-root``) is joined to
    ``image_root``; an absolute one is used as it is."""
    path = Path(stored)
    if path.is_absolute():
        return path
    if image_root is None:
        raise ImageError(f"image paths are stored relative to their root ({stored}); pass --image-root DIR, the folder that holds them now")
    return Path(image_root) / path
