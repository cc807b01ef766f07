"""The built-in indexes' measures: which pass each needs, with its variants, and its formula (§5-7, §9, §10).

Each is named by its declaration in ``names.INDEXES`` (``compute``), which holds everything else
about it (columns, help, docs section); ``neurons.indexes`` runs the passes and the formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnx_nfi.neurons.class_selectivity import class_selectivity
from onnx_nfi.neurons.color import color_selectivity, grey_region, to_grey
from onnx_nfi.neurons.color_names import TERMS, neuron_distributions, top_colors
from onnx_nfi.neurons.concepts import ConceptSpace, concept_labels
from onnx_nfi.neurons.indexes import (
    IndexLayer,
    IndexResult,
    Measure,
    MeasureInput,
    Variant,
    color_name_responses,
    transformed,
)
from onnx_nfi.neurons.transforms import (
    ANGLES,
    AXES,
    mirror_region,
    orientation_index,
    rotate_region,
    shape_index,
    shuffle_region,
    symmetry_index,
)
from onnx_nfi.scan.topn import TopN


def per_layer(rows: int, fn: Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]) -> Callable[[MeasureInput], None]:
    """A formula run layer by layer: ``fn(a, responses)`` -> the layer's columns, with ``a`` the top-N
    scores ``[C, N]`` and ``responses`` the index's own ``[rows, C, N]``."""

    def formula(inp: MeasureInput) -> None:
        for item in inp.layers:
            inp.result.columns[item.layer.tensor].update(fn(item.topn.scores, inp.responses_of(item, rows)))

    return formula


def _grey_window(img: np.ndarray, win: tuple[int, int, int, int], key: tuple[int, ...]) -> np.ndarray:
    return grey_region(img, win)


def _shuffled_window(img: np.ndarray, win: tuple[int, int, int, int], key: tuple[int, ...]) -> np.ndarray:
    return shuffle_region(img, win, np.random.default_rng(key))


def _rotation(angle: int) -> Variant:
    return lambda img, win, key: rotate_region(img, win, angle)


def _mirror(axis: int) -> Variant:
    return lambda img, win, key: mirror_region(img, win, axis)


def _lists(values: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array as an object column of lists (NULL for all-NaN rows, i.e. dead neurons)."""
    out = np.empty(values.shape[0], dtype=object)
    for i, row in enumerate(values):
        out[i] = None if np.isnan(row).all() else row.astype(np.float64)
    return out


def _orientation(a: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    per_angle, mean = orientation_index(a, responses.transpose(1, 0, 2))
    return {"orientation_selectivity": mean, "orientation_by_angle": _lists(per_angle)}


def _symmetry(a: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    per_axis, mean = symmetry_index(a, responses.transpose(1, 0, 2))
    return {"symmetry_selectivity": mean, "symmetry_by_axis": _lists(per_axis)}


def _color_names(inp: MeasureInput) -> None:
    """``neurons.top_color``/``top_color_share`` and each layer's colour-term distributions ``[C, 11]``."""
    for item in inp.layers:
        names = neuron_distributions(item.topn.scores, inp.responses_of(item, TERMS))
        cols = inp.result.columns[item.layer.tensor]
        cols["top_color"], cols["top_color_share"] = top_colors(names)
        inp.result.color_names[item.layer.tensor] = names


def _label_codes(labels: Mapping[int, str | None], names: Sequence[str]) -> Callable[[TopN], np.ndarray]:
    """``codes(topn)``: each top entry's label as its position in ``names`` (-1: unlabelled or empty)."""
    code = {name: k for k, name in enumerate(names)}
    max_id = max(labels, default=0) + 1
    codes_by_id = np.full(max_id + 1, -1, np.int64)
    for image_id, label in labels.items():
        if label is not None and label in code:
            codes_by_id[image_id] = code[label]
    return lambda topn: np.where(topn.ids >= 0, codes_by_id[np.clip(topn.ids, 0, max_id)], -1)


def _concepts(inp: MeasureInput) -> None:
    """``neurons.concept``/``concept_p`` and the ``concept_labels`` rows of every layer (none unlabelled)."""
    layers, labels, result = inp.layers, inp.labels, inp.result
    counts = {name: n for name, n in inp.label_counts.items() if n > 0}
    if not counts:
        result.notes = (*result.notes, "concepts: the images carry no labels, so no neuron has a concept label "
                        "(label them with --labels folder or csv:FILE)")
        return
    space = ConceptSpace.of(counts)
    codes = _label_codes(labels, space.labels)
    names = np.array([c.name for c in space.concepts], dtype=object)
    wnids = np.array([c.wnid for c in space.concepts], dtype=object)
    depths = np.array([c.depth for c in space.concepts], np.int32)
    for item in layers:
        found = concept_labels(item.topn.scores, codes(item.topn), space)
        result.columns[item.layer.tensor].update({
            "concept": np.where(found.label >= 0, names[np.clip(found.label, 0, None)], None), "concept_p": found.label_p,
        })
        r = found.rows
        result.concepts[item.layer.tensor] = {
            "unit": r.unit.astype(np.int32), "concept": names[r.concept], "wnid": wnids[r.concept],
            "depth": depths[r.concept], "share": r.share, "top_count": r.top_count.astype(np.int32),
            "labelled_top": r.labelled_top.astype(np.int32), "base_rate": r.base_rate, "enrichment": r.enrichment,
            "p_value": r.p_value, "p_holm": r.p_holm,
        }


def _class(inp: MeasureInput) -> None:
    """The class index columns and each layer's class frequencies (columns stay NULL without labels)."""
    names = sorted({v for v in inp.labels.values() if v is not None})
    if not names:
        return
    codes = _label_codes(inp.labels, names)
    names_arr = np.array(names, dtype=object)
    for item in inp.layers:
        _class_layer(item, codes(item.topn), names_arr, inp.config.rho, inp.config.population_threshold, inp.result)


def _class_layer(item: IndexLayer, codes: np.ndarray, names: np.ndarray, rho: float, threshold: float,
                 result: IndexResult) -> None:
    cs = class_selectivity(item.topn.scores, codes, rho, threshold)
    cols = result.columns[item.layer.tensor]
    cols["class_selectivity"] = cs.index
    cols["top_class"] = np.where(cs.top_class >= 0, names[np.clip(cs.top_class, 0, None)], None)
    cols["top_class_frequency"] = cs.top_class_frequency
    cols["population_code"] = np.where(cs.n_images > 0, cs.population_code, np.nan)
    d = cs.distribution
    result.class_frequencies[item.layer.tensor] = (d.unit, names[d.label], d.frequency)


#: Colour: one grey response per entry, from a whole-image pass (``color_mode="image"``) or a region one.
COLOR = Measure(
    per_layer(1, lambda a, r: {"color_selectivity": color_selectivity(a, r[0])}),
    whole=lambda config: transformed(to_grey) if config.color_mode == "image" else None,
    region=lambda config: [_grey_window] if config.color_mode != "image" else [],
)
#: Class: the top images' labels only, no pass.
CLASS = Measure(_class)
#: Orientation: one rotation of the RF window per angle of ``ANGLES``.
ORIENTATION = Measure(per_layer(len(ANGLES), _orientation), region=lambda config: [_rotation(a) for a in ANGLES])
#: Symmetry: one mirroring of the RF window per axis of ``AXES``.
SYMMETRY = Measure(per_layer(len(AXES), _symmetry), region=lambda config: [_mirror(a) for a in AXES])
#: Shape: one pixel shuffle of the RF window, seeded by (seed, layer, image, location).
SHAPE = Measure(
    per_layer(1, lambda a, r: {"shape_selectivity": shape_index(a, r[0])}), region=lambda config: [_shuffled_window]
)
#: Colour names: a whole-image pass of the top images as they are, 11 colour-term shares per entry.
COLOR_NAMES = Measure(_color_names, whole=lambda config: color_name_responses)
#: Concept labels: the top images' labels only, no pass.
CONCEPTS = Measure(_concepts)
