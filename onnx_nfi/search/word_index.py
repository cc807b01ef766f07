"""The static neuron browser's word search: ``find`` precomputed into a small JSON index.

A static report has no server to ask, so each described neuron carries what ``find`` would match
in it: the synsets of its labelling concept rows with their evidence ``f × -log10 p``, and its
colour names with their shares; the synsets come with their lemmas and hypernyms (so ``dog`` finds
a Chihuahua neuron). The browser looks words up among the lemmas, walks down to the neurons' synsets
and multiplies evidence, as ``find`` does (docs/method.md, Concept labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onnx_nfi.names import COLOR_TERMS
from onnx_nfi.neurons.concepts import LABEL_P, LABEL_SHARE
from onnx_nfi.neurons.wordnet import normalise, wordnet
from onnx_nfi.search.describe import description_text
from onnx_nfi.search.find import COLOR_NAME_SHARE, COLOR_SYNONYMS, concept_evidence
from onnx_nfi.store.descriptions import described_neurons, neuron_colors, qualifying_concepts
from onnx_nfi.store.duckdb_store import Store


def word_index(store: Store, models: list[str], href: Callable[[str, str], str]) -> dict[str, Any]:
    """``{"colors", "synonyms", "terms", "parents", "layers", "neurons"}``: ``terms[i]`` the lemmas of
    one synset (or one unmapped concept name) and ``parents[i]`` its hypernyms among the terms;
    ``layers[i]`` is ``[model, alias, folder]`` (``folder = href(model, alias)``, relative to the
    report's root); each neuron ``[layer, unit, description, [[term, evidence]...], [[colour,
    share]...]]``, its terms those of its labelling concept rows (a word matches a term or any term
    below it)."""
    net, terms, parents, term_of = wordnet(), [], [], {}

    def term(key: int | str) -> int:
        if key not in term_of:
            term_of[key] = len(terms)
            terms.append(sorted({normalise(x) for x in net.lemmas[key]}) if isinstance(key, int) else [normalise(key)])
            parents.append([])
            if isinstance(key, int):
                parents[term_of[key]] = [term(h) for h in net.hypernyms[key]]
        return term_of[key]

    evidence: dict[int, dict[int, float]] = {}
    colors: dict[int, list[list[Any]]] = {}
    if store.has_table("concept_labels"):
        for r in qualifying_concepts(store, LABEL_P, LABEL_SHARE):
            if r["model"] in models:
                mine, t = evidence.setdefault(r["neuron_id"], {}), term(int(r["wnid"][1:]) if r["wnid"] else r["concept"])
                mine[t] = max(mine.get(t, 0.0), concept_evidence(float(r["share"]), float(r["p_holm"])))
        for r in neuron_colors(store, list(COLOR_TERMS), COLOR_NAME_SHARE):
            colors.setdefault(r["neuron_id"], []).append([COLOR_TERMS.index(r["color"]), round(float(r["share"]), 4)])
    layers: dict[tuple[str, str], int] = {}
    neurons = []
    for r in described_neurons(store, models) if store.has_table("concept_labels") else []:
        layer = layers.setdefault((r["model"], r["alias"]), len(layers))
        neurons.append([layer, int(r["unit"]), description_text(r),
                        [[t, round(v, 3)] for t, v in sorted(evidence.get(r["neuron_id"], {}).items())],
                        colors.get(r["neuron_id"], [])])
    return {
        "colors": list(COLOR_TERMS), "synonyms": COLOR_SYNONYMS, "terms": terms, "parents": parents,
        "layers": [[m, a, href(m, a)] for m, a in layers], "neurons": neurons,
    }
