"""libpng's warnings (written from C to file descriptor 2) never reach the terminal: a PNG with a
broken colour profile decodes to the same pixels, silently, in the analysis and the one-image paths."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from conftest import TINY
from PIL import Image
from test_errors import ANALYZE_FAST


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_bad_profile(photo: Path, target: Path) -> np.ndarray:
    """``photo`` saved as a PNG carrying a broken iCCP profile and a text chunk after IHDR; its RGB pixels."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    Image.fromarray(rgb).save(target)
    data = target.read_bytes()
    ihdr_end = 8 + 12 + 13
    extra = _chunk(b"iCCP", b"broken\0\0" + zlib.compress(b"\0" * 132)) + _chunk(b"tEXt", b"Comment\0hello")
    target.write_bytes(data[:ihdr_end] + extra + data[ihdr_end:])
    return rgb


DECODE_BOTH = """
import sys, cv2, numpy as np
from onnx_nfi.data.loader import decode
from onnx_nfi.data.one_image import read_image
from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.preprocess import preset
path = sys.argv[1]
if sys.argv[2] == "raw":
    cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
else:
    bgr = read_image(path, 10**8)
    np.save(sys.argv[3], bgr[:, :, ::-1])
    assert decode(ImageFile(path, None), preset("torchvision", (32, 32), "NCHW")).error is None
"""


def test_broken_profile_decodes_silently_to_the_same_pixels(photo_dir: Path, tmp_path: Path) -> None:
    photo = sorted(photo_dir.rglob("*.jpg"))[0]
    png = tmp_path / "profile.png"
    rgb = with_bad_profile(photo, png)
    raw = subprocess.run([sys.executable, "-c", DECODE_BOTH, str(png), "raw"], capture_output=True, text=True)
    assert "libpng warning: iCCP" in raw.stderr  # the file really makes libpng talk
    ours = subprocess.run([sys.executable, "-c", DECODE_BOTH, str(png), "ours", str(tmp_path / "px.npy")],
                          capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert "libpng" not in ours.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "px.npy"), rgb)


def test_analyze_over_such_pngs_keeps_stderr_clean(photos_copy: Path, tmp_path: Path) -> None:
    for i, photo in enumerate(sorted(photos_copy.rglob("*.jpg"))[:4]):
        with_bad_profile(photo, photo.with_name(f"profile{i}.png"))
    db = tmp_path / "nfi.duckdb"
    run = subprocess.run([sys.executable, "-m", "onnx_nfi", "analyze", str(TINY), str(photos_copy), "--db", str(db),
                          *ANALYZE_FAST], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "libpng" not in run.stderr + run.stdout
    assert "Skipped" not in run.stdout
