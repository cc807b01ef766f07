"""Non-finite activations are refused at the batch where they appear, naming the layer, not after
the whole scan: the scan's progress stops at that batch."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from hostile_models import two_conv_net

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ModelError


def test_nan_activations_stop_the_scan_at_their_first_batch(photo_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "log.onnx"
    onnx.save(two_conv_net(["N", 3, 16, 16], log=True), model)  # conv2 reads log(-|x|): NaN on every image
    seen: list[tuple[int, int]] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "scan":
            seen.append((done, total))

    with pytest.raises(ModelError) as caught:
        api.analyze(model, photo_dir, db=tmp_path / "nfi.duckdb", progress=progress,
                    config=AnalyzeConfig(batch_size=4, provider="cpu", preprocess="raw", input_size=(16, 16)))
    assert str(caught.value).startswith("layer conv2 (") and "gives non-finite activations (NaN or Inf) in 4 of 4 units " \
        "(first: unit 0); the model computes them (e.g. a Log or a division before it): fix the model or leave the " \
        "layer out with --layers" in str(caught.value)
    total = seen[0][1]
    assert total > 8 and max(done for done, _ in seen) == 0, seen  # refused at the first batch: none counted
    assert not (tmp_path / "nfi.duckdb").exists()
