"""Images read again after the scan (the NF and index passes, ``index``, pictures) must be the images
the scan hashed: a file replaced by another image, or by a FIFO, is refused in one line naming it and
nothing is written; reads never block; the picture reader has the loader's pixel limit and errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_helpers import invoke, query
from conftest import ROOT, TINY
from test_hostile_images import png_header_only

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.display import display_image
from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.loader import decode
from onnx_nfi.data.preprocess import preset
from onnx_nfi.errors import ImageError

PRE = preset("torchvision", (224, 224), "NCHW")
CONFIG = AnalyzeConfig(batch_size=8, provider="cpu", indexes=("class",))

#: Analyses IMAGES into DB and, when the scan has seen every image, puts in place of FILE another
#: image (MODE "copy") or a FIFO nobody writes (MODE "fifo").
SWAPPER = """
import os, shutil, sys
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

model, images, db, target, other, mode = sys.argv[1:7]

def progress(phase, done, total):
    if phase == "scan" and done == total and os.path.isfile(target) and not os.path.islink(target):
        os.unlink(target)
        shutil.copy(other, target) if mode == "copy" else os.mkfifo(target)

api.analyze(model, images, db=db, config=AnalyzeConfig(batch_size=8, provider="cpu", indexes=("class",)),
            progress=progress)
"""


def swapped_run(images: Path, db: Path, mode: str) -> tuple[subprocess.CompletedProcess, Path]:
    files = sorted(p for p in images.rglob("*.jpg"))
    target, other = files[0], files[-1]
    proc = subprocess.run(
        [sys.executable, "-c", SWAPPER, str(TINY), str(images), str(db), str(target), str(other), mode],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300, check=False,
    )
    return proc, target


@pytest.mark.parametrize("mode", ["copy", "fifo"])
def test_an_image_replaced_after_the_scan_is_refused_and_nothing_written(
    mode: str, photos_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "nfi.duckdb"
    proc, target = swapped_run(photos_copy, db, mode)  # a FIFO would hang a blocking read: the timeout fails it
    assert proc.returncode == 1 and "ImageError" in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    if mode == "copy":
        assert last.endswith(f"image {target} changed since the scan (its SHA-256 is not the one stored); put the "
                             "original back or analyse again"), last
    else:
        assert last.endswith(f"image {target} changed or vanished since the scan (not a regular file (a FIFO, socket "
                             "or device)); put it back (images that moved: pass --image-root with their new folder) "
                             "or analyse again"), last
    assert not db.exists() or query(db, "SELECT count(*) FROM models") == [(0,)]


def test_index_refuses_an_image_changed_since_the_scan(photos_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photos_copy, db=db, config=CONFIG)
    files = sorted(photos_copy.rglob("*.jpg"))
    files[0].write_bytes(files[-1].read_bytes())
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = invoke("index", "tiny_lite0", "--db", db, "--indexes", "class,color", "--silent")
    assert (result.exit_code, result.output.strip()) == (2, (
        f"Error: image {files[0]} changed since the scan (its SHA-256 is not the one stored); put the original back "
        "or analyse again"
    ))
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_reading_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(decode(ImageFile(fifo, None), PRE)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert found, "reading a FIFO blocked"
    assert found[0].image is None and found[0].error == "not a regular file (a FIFO, socket or device)"
    with pytest.raises(ImageError, match="cannot be read any more"):
        display_image(fifo, PRE)


def test_display_image_has_the_pixel_limit_and_decode_errors_of_the_loader(photo_dir: Path, tmp_path: Path) -> None:
    pre = PRE
    huge = png_header_only(tmp_path / "huge.png", 33000, 33000)
    with pytest.raises(ImageError) as caught:
        display_image(huge, pre)
    assert str(caught.value) == (f"image {huge} has 33000x33000 pixels now, above the 100 MP limit: it changed since "
                                 "the scan; put the original back or analyse again")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match=r"changed or vanished since the scan \(not a decodable image"):
        display_image(broken, pre)
    photo = next(photo_dir.rglob("*.jpg"))
    assert display_image(photo, pre).shape == (224, 224, 3)
    with pytest.raises(ImageError, match="SHA-256 is not the one stored"):
        display_image(photo, pre, sha256="0" * 64)
    assert display_image(photo, pre, hashlib.sha256(photo.read_bytes()).hexdigest()).shape == (224, 224, 3)
