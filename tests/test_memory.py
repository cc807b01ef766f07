"""Peak memory of a scan does not grow with the number of images (issue 2: 1,000 within 10 % of 100).

Each scan runs in a fresh interpreter, so the peak resident set it reports (``ru_maxrss``, the
kernel's high-water mark) is that scan's alone. Lite0 with every layer is the honest case: its
instrumented graph and top-N state are what a user's run holds (about 40 s for both runs here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LITE0

CHILD = """
import json, resource, sys
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.data.images import list_images
from onnx_nfi.scan.scanner import scan
lm, pre = open_model(sys.argv[1])
result = scan(lm, [i.layer for i in model_layers(lm)], pre, list_images(sys.argv[2]).files, provider="cpu")
print(json.dumps({"images": len(result.images), "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def copies(photo_dir: Path, count: int, target: Path) -> Path:
    """``count`` distinct image files, the real photos copied cyclically under new names."""
    sources = sorted(photo_dir.rglob("*.jpg"))
    target.mkdir()
    for k in range(count):
        shutil.copyfile(sources[k % len(sources)], target / f"img_{k:05d}.jpg")
    return target


def peak_of_scan(folder: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(LITE0), str(folder)], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["images"], report["peak_kib"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_scan_memory_does_not_grow_with_images(photo_dir: Path, tmp_path: Path) -> None:
    seen_small, small = peak_of_scan(copies(photo_dir, 100, tmp_path / "small"))
    seen_large, large = peak_of_scan(copies(photo_dir, 1000, tmp_path / "large"))
    assert (seen_small, seen_large) == (100, 1000)
    assert large <= 1.10 * small, f"peak RSS {large / 1024:.0f} MiB for 1000 images vs {small / 1024:.0f} MiB for 100"
