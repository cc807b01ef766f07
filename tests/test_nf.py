"""Neuron Features against a brute-force crop-and-average written independently here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import LITE0, TINY

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.display import decode_display
from onnx_nfi.data.images import list_images
from onnx_nfi.data.loader import iter_decoded
from onnx_nfi.errors import ImageError
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.neurons.nf import CropGeometry, chunk_sums, crop_geometry, finish_features, plan_features
from onnx_nfi.pipeline.features import FeatureWork, compute_features, top_image_ids
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.scan.scanner import scan
from onnx_nfi.scan.topn import TopN


def neuron_features(
    topn: TopN, images: Mapping[int, np.ndarray], geometry: CropGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's NFs ``float32 [C, cy, cx, 3]`` and alive mask, as the analysis computes them over
    chunks of top images, here in one chunk of all of them."""
    plans = plan_features([(topn, geometry)])
    return finish_features(plans, chunk_sums(plans, images, plans[0].used))[0]


def topns(result) -> dict[str, TopN]:
    return {tensor: st.topn for tensor, st in result.stats.items()}


def compute_nfs(lm, pre, result, infos, config: AnalyzeConfig, chunk_images: int | None = None, progress=None):
    """The analysis's NF pass (``chunk_images`` top images at a time) over a scan's top-N."""
    paths = {img.image_id: Path(img.path) for img in result.images}
    work = FeatureWork.of(lm, pre, infos, topns(result), paths, {}, config, *([chunk_images] if chunk_images else []))
    return compute_features(work, progress).nfs


def brute_force_nf(scores, ids, ys, xs, images, size, stride, offset, input_hw):
    """§4 literally: canvas = RF centre-cropped to the input; per pixel mean over in-image crops."""
    canvas = (min(size[0], input_hw[0]), min(size[1], input_hw[1]))
    start = ((size[0] - canvas[0]) // 2, (size[1] - canvas[1]) // 2)
    keep = scores > 0
    total = scores[keep].sum()
    if not keep.any():
        return None
    num = np.zeros((*canvas, 3))
    den = np.zeros(canvas)
    for a, image_id, y, x in zip(scores[keep], ids[keep], ys[keep], xs[keep]):
        top = y * stride[0] + offset[0] + start[0]
        left = x * stride[1] + offset[1] + start[1]
        # the part of the crop that lies inside the image, in image and in canvas coordinates
        y0, y1 = max(top, 0), min(top + canvas[0], input_hw[0])
        x0, x1 = max(left, 0), min(left + canvas[1], input_hw[1])
        if y0 >= y1 or x0 >= x1:
            continue
        num[y0 - top : y1 - top, x0 - left : x1 - left] += a * images[image_id][y0:y1, x0:x1]
        den[y0 - top : y1 - top, x0 - left : x1 - left] += a
    out = np.full((*canvas, 3), 127.0)
    ok = 10 * den >= total  # 'not below 10 %', exact when equal weights put it on the line
    out[ok] = num[ok] / den[ok][:, None]
    return out


def check_nfs(model: Path, photo_dir: Path, pick, top_n: int, unit_step: int) -> None:
    lm, pre = open_model(model)
    chosen = pick(model_layers(lm))
    files = list_images(photo_dir).files
    result = scan(lm, [i.layer for i in chosen], pre, files, top_n=top_n, provider="cpu")
    nfs = compute_nfs(lm, pre, result, chosen, AnalyzeConfig(nf_max_size=0, indexes=()))
    images = {k: d.image.astype(np.float64) for k, d in enumerate(x for x in iter_decoded(files, pre) if x.image is not None)}
    assert any(i.rf.offset[0] < 0 for i in chosen), "some crops must reach outside the image"
    for info in chosen:
        top = result.stats[info.layer.tensor].topn
        for unit in range(0, info.layer.channels, unit_step):
            expected = brute_force_nf(
                top.scores[unit], top.ids[unit], top.ys[unit], top.xs[unit], images,
                info.rf.size, info.rf.stride, info.rf.offset, pre.input_size,
            )
            got = nfs[info.layer.tensor][unit]
            if expected is None:
                assert np.isnan(got).all()
            else:
                np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{info.layer.alias}:{unit}")


def test_tiny_nfs_match_brute_force(photo_dir: Path) -> None:
    check_nfs(TINY, photo_dir, lambda infos: [infos[0], infos[3], infos[-1]], top_n=6, unit_step=5)


@pytest.mark.slow
def test_lite0_nfs_match_brute_force(photo_dir: Path) -> None:
    """Deep Lite0 layers: receptive fields far larger than the 224 input, canvas = the whole image."""
    check_nfs(LITE0, photo_dir, lambda infos: [infos[20], infos[-1]], top_n=5, unit_step=97)


def test_grey_fill_and_dead_neurons() -> None:
    """A crop mostly outside the image gets grey where under 10 % of the weight is valid; dead -> NaN."""
    image = np.full((8, 8, 3), 200, np.uint8)
    rf = ReceptiveField(size=(4, 4), stride=(1, 1), offset=(-3, -3))
    top = TopN.empty(2, 2)
    top.update(np.array([0]), np.array([[1.0, -1.0]], np.float32), np.zeros((1, 2), int), np.zeros((1, 2), int))
    nfs, alive = neuron_features(top, {0: image}, crop_geometry(rf, (8, 8)))
    assert alive.tolist() == [True, False]
    assert np.isnan(nfs[1]).all()
    # window rows/cols -3..0: only the last row and column are inside the image
    np.testing.assert_array_equal(nfs[0][3, 3], [200, 200, 200])
    np.testing.assert_array_equal(nfs[0][0, 0], [127, 127, 127])


def test_valid_weight_of_exactly_ten_percent_is_kept() -> None:
    """§4 greys a pixel whose valid weight is *below* 10 %. 100 equal scores (a saturated ReLU6
    neuron) with 10 crops covering the pixel sit exactly on the line; float rounding must not grey it."""
    image = np.full((8, 8, 3), 200, np.uint8)
    rf = ReceptiveField(size=(4, 4), stride=(1, 1), offset=(-3, -3))
    top = TopN.empty(1, 100)
    loc = np.where(np.arange(100) < 10, 4, 0)[:, None]  # location 4: crop starts at 1, fully inside
    top.update(np.arange(100), np.full((100, 1), 6.0, np.float32), loc, loc)
    nfs, _ = neuron_features(top, {i: image for i in range(100)}, crop_geometry(rf, (8, 8)))
    np.testing.assert_allclose(nfs[0][0, 0], [200, 200, 200], atol=1e-3)  # 10 % valid: kept
    np.testing.assert_allclose(nfs[0][3, 3], [200, 200, 200], atol=1e-3)


def test_reduced_resolution_nf_approximates_full(photo_dir: Path) -> None:
    """The ``nf_max_size`` deviation: a scaled NF is close to the area-downscaled exact NF."""
    import cv2

    lm, pre = open_model(TINY)
    info = model_layers(lm)[-1]
    files = list_images(photo_dir).files
    result = scan(lm, [info.layer], pre, files, top_n=8, provider="cpu")
    full = compute_nfs(lm, pre, result, [info], AnalyzeConfig(nf_max_size=0, indexes=()))[info.layer.tensor]
    small = compute_nfs(lm, pre, result, [info], AnalyzeConfig(nf_max_size=16, indexes=()))[info.layer.tensor]
    assert small.shape[1:3] == (16, 16) and full.shape[1:3] == (19, 19)
    alive = ~np.isnan(full).any(axis=(1, 2, 3))
    down = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in full[alive]])
    assert np.abs(down - small[alive]).mean() < 4.0  # grey levels out of 255


@pytest.mark.parametrize("offset", [(0, 0), (-2, 1)])
def test_crop_geometry_centre_crops_large_fields(offset) -> None:
    geometry = crop_geometry(ReceptiveField(size=(100, 40), stride=(4, 4), offset=offset), (64, 64))
    assert geometry.canvas == (64, 40)
    ty, tx = geometry.starts(np.array([2]), np.array([3]))
    assert (ty[0], tx[0]) == (2 * 4 + offset[0] + 18, 3 * 4 + offset[1])


def test_nfs_summed_over_image_chunks_equal_one_pass(photo_dir: Path) -> None:
    """Memory stays bounded on large sets by summing crops a chunk of top images at a time; the NFs
    must not depend on the chunking (7 images at a time against all at once, every tiny_lite0 layer)."""
    lm, pre = open_model(TINY)
    infos = model_layers(lm)
    result = scan(lm, [i.layer for i in infos], pre, list_images(photo_dir).files, top_n=10, provider="cpu")
    needed = top_image_ids(topns(result).values())
    assert needed.size > 20
    config = AnalyzeConfig(indexes=())
    whole = compute_nfs(lm, pre, result, infos, config)
    steps: list[tuple[str, int, int]] = []
    chunked = compute_nfs(lm, pre, result, infos, config, 7, lambda phase, d, t: steps.append((phase, d, t)))
    for info in infos:
        np.testing.assert_allclose(chunked[info.layer.tensor], whole[info.layer.tensor], atol=1e-3, err_msg=info.layer.alias)
    total = -(-needed.size // 7) * (1 + len(infos))  # per chunk: its decoding, then each layer
    assert steps == [("nf", k, total) for k in range(total + 1)]


def test_display_images_of_a_chunk_equal_a_direct_decode(photo_dir: Path, tmp_path: Path) -> None:
    """A chunk's display images are the decoded files under their ids; a file that no longer
    decodes (changed since the scan) is an error naming it."""
    _, pre = open_model(TINY)
    files = list_images(photo_dir).files
    paths = {k * 3 + 1: Path(f.path) for k, f in enumerate(files)}  # ids need not be dense
    direct = {image_id: d.image for image_id, d in zip(sorted(paths), iter_decoded(files, pre))}
    decoded = decode_display(paths, pre)
    assert sorted(decoded) == sorted(paths)
    for image_id, image in decoded.items():
        np.testing.assert_array_equal(image, direct[image_id])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg any more")
    with pytest.raises(ImageError, match="broken.jpg changed or vanished since the scan"):
        decode_display({**paths, 0: broken}, pre)
