"""What the scan, NF and memory benchmarks share: the demo photos, the machine's description, results files."""

from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LITE0 = ROOT / "models" / "efficientnet_lite0.onnx"


def demo_photos(folder: Path | None = None) -> Path:
    """The 324 demo photo crops (256 px, 27 classes), built once into a cache folder."""
    from onnx_nfi.data.demo_images import build_demo_images

    folder = folder or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnx-nfi" / "bench-photos"
    if not folder.is_dir() or not any(folder.rglob("*.jpg")):
        build_demo_images(folder)
    return folder


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average: on a shared machine wall-clock numbers follow it."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict[str, Any]:
    """Where a benchmark ran, recorded with its numbers."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"Host `{info['host']}`: {info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}, "
        f"numpy {info['numpy']}, OpenCV {info['opencv']}, Python {info['python']}."
    )


def write_results(name: str, markdown: str, data: dict[str, Any], out: Path | None = None) -> Path:
    """``benchmarks/results/<name>-<host>.md`` and ``.json``; returns the markdown path."""
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{socket.gethostname()}"
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return stem.with_suffix(".md")


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for generated inputs (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
