"""Hostile and odd images: refused by header size, FIFOs and unreadable entries reported, EXIF
applied, every skip listed with its reason; a property test over sizes, modes and preprocessings."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_errors import ANALYZE_FAST

from onnx_nfi.data.images import ImageFile, list_images
from onnx_nfi.data.limits import header_size
from onnx_nfi.data.loader import decode
from onnx_nfi.data.preprocess import from_dict, preset


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width``×``height`` (RGB 8-bit) with a tiny IDAT: a few hundred bytes
    that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_header_size_reads_png_without_decoding(tmp_path: Path) -> None:
    assert header_size(png_header_only(tmp_path / "big.png", 33000, 33000)) is not None
    assert header_size(png_header_only(tmp_path / "small.png", 40, 30)) == (30, 40)
    cv2.imwrite(str(tmp_path / "real.jpg"), np.zeros((12, 34, 3), np.uint8))
    assert header_size(tmp_path / "real.jpg") == (12, 34)
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert header_size(tmp_path / "junk.png") is None


def test_oversized_fifo_and_corrupt_images_are_skipped_and_listed(photos_copy: Path, tmp_path: Path) -> None:
    cls = next(p for p in sorted(photos_copy.iterdir()) if p.is_dir())
    png_header_only(cls / "huge.png", 33000, 33000)
    png_header_only(cls / "wide.png", 12000, 9000)  # 108 MP: above the default 100 MP
    os.mkfifo(cls / "pipe.jpg")
    (cls / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", TINY, photos_copy, "--db", db, "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Skipped 4 file(s):" in out
    assert f"{cls / 'huge.png'}: image too large (33000x33000, 1089 MP, above the 100 MP limit); shrink it or raise --max-pixels" in out
    assert f"{cls / 'wide.png'}: image too large (12000x9000, 108 MP" in out
    assert f"{cls / 'pipe.jpg'}: not a regular file (a FIFO, socket or device)" in out
    assert f"{cls / 'corrupt.jpg'}: not a decodable image" in out
    assert "WARN" not in result.output and "Traceback" not in result.output
    stored = dict(query(db, "SELECT path, reason FROM skipped_images"))
    assert set(stored) == {str(cls / n) for n in ("huge.png", "wide.png", "pipe.jpg", "corrupt.jpg")}


def test_max_pixels_option_sets_the_limit(tmp_path: Path) -> None:
    for name, side in (("small.png", 100), ("large.png", 101)):
        cv2.imwrite(str(tmp_path / name), np.zeros((side, side, 3), np.uint8))
    found = list_images(tmp_path, max_pixels=100 * 100)
    assert [f.path.name for f in found.files] == ["small.png"]
    assert found.rejected == (
        (tmp_path / "large.png", "image too large (101x101, 0.0102 MP, above the 0.01 MP limit); shrink it or raise --max-pixels"),
    )
    refused = invoke("analyze", TINY, tmp_path, "--max-pixels", "0", *ANALYZE_FAST)
    assert refused.exit_code == 2 and "--max-pixels must be an integer >= 1" in refused.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_reported(photos_copy: Path) -> None:
    locked = photos_copy / "locked"
    locked.mkdir()
    cv2.imwrite(str(locked / "a.png"), np.zeros((8, 8, 3), np.uint8))
    locked.chmod(0)
    try:
        rejected = dict(list_images(photos_copy).rejected)
    finally:
        locked.chmod(0o755)
    assert rejected[locked].startswith("cannot read folder")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, 16:] = 255  # right half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    pre = preset("raw", (32, 16), "NCHW")
    decoded = decode(ImageFile(tmp_path / "rot.jpg", None), pre)
    assert decoded.error is None and decoded.image is not None
    upright = np.rot90(stored, k=-1)  # 90° clockwise: the white right half becomes the bottom half
    assert decoded.image.shape == upright.shape
    assert np.abs(decoded.image.astype(int) - upright).mean() < 10


# --- property: any image size, mode and preprocessing: a display image of the input size, or a reason

MODES = {
    "gray": (lambda rng, h, w: rng.integers(0, 256, (h, w), dtype=np.uint8)),
    "bgr": (lambda rng, h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
    "bgra": (lambda rng, h, w: rng.integers(0, 256, (h, w, 4), dtype=np.uint8)),
    "gray16": (lambda rng, h, w: rng.integers(0, 65536, (h, w), dtype=np.uint16)),
}
FORMATS = {"gray": (".png", ".jpg", ".bmp", ".tif"), "bgr": (".png", ".jpg", ".bmp", ".tif", ".webp"),
           "bgra": (".png", ".tif"), "gray16": (".png", ".tif")}


@st.composite
def preprocessing(draw: st.DrawFn) -> dict:
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    resize = draw(st.sampled_from([
        {"mode": "none"},
        {"mode": "exact", "height": draw(st.integers(1, 64)), "width": draw(st.integers(1, 64))},
        {"mode": "shorter_side", "size": draw(st.integers(1, 64)),
         "interpolation": draw(st.sampled_from(["bilinear", "area", "bicubic", "nearest"])),
         "library": draw(st.sampled_from(["opencv", "pillow"]))},
    ]))
    crop = draw(st.sampled_from([{"mode": "none"}, {"mode": "center", "height": h, "width": w}]))
    return {"layout": "NCHW", "channel_order": draw(st.sampled_from(["RGB", "BGR"])), "input_size": [h, w],
            "resize": resize, "crop": crop, "pixel_scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(sorted(MODES)), h=st.integers(1, 80), w=st.integers(1, 80), fmt_index=st.integers(0, 4),
    pre_dict=preprocessing(), garbage=st.booleans(), seed=st.integers(0, 2**16),
)
def test_any_image_gives_an_input_or_a_reason(
    tmp_path: Path, mode: str, h: int, w: int, fmt_index: int, pre_dict: dict, garbage: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    formats = FORMATS[mode]
    path = tmp_path / f"img{seed}_{mode}{formats[fmt_index % len(formats)]}"
    if garbage:
        path.write_bytes(rng.bytes(int(rng.integers(0, 200))))
    else:
        assert cv2.imwrite(str(path), MODES[mode](rng, h, w))
    pre = from_dict(pre_dict, "hypothesis")
    result = decode(ImageFile(path, None), pre, normalise=True)
    if result.image is None:
        assert result.error, "a skipped file must carry its reason"
        assert result.tensor is None
    else:
        assert result.error is None
        assert result.image.shape == (*pre.input_size, 3) and result.image.dtype == np.uint8
        assert result.tensor is not None and result.tensor.shape == (3, *pre.input_size)
        assert np.isfinite(result.tensor).all()


def test_linked_folders_are_followed_and_loops_are_not(tmp_path: Path) -> None:
    (tmp_path / "root" / "cls").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    cv2.imwrite(str(tmp_path / "root" / "cls" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "other" / "b.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "root" / "cls" / "loop").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "other")
    found = list_images(tmp_path / "root")
    assert [f.path.relative_to(tmp_path / "root").as_posix() for f in found.files] == ["cls/a.png", "linked/b.png"]
    assert [f.label for f in found.files] == ["cls", "linked"]
