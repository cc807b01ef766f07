"""``find``: neurons of every model by words, e.g. ``red dog`` (docs/method.md, Concept labels and finding neurons by words).

Each term of the query (a word, or consecutive words that form a WordNet noun: ``golden retriever``)
is a colour term, matched through ``color_names`` (share >= 0.1: one of the neuron's colour names),
and/or a noun, matched through WordNet: a concept row that labels its neuron (corrected p < 0.01,
share >= 0.5) matches when its synset is one of the word's synsets or a hyponym of one (``hound``
finds every hound breed; ``dog`` a Chihuahua neuron). A neuron must match every term. Its score is
the product over terms of the term's evidence: a colour's share, or a concept's ``f × -log10 p``
(the best matching row's), so strong and significant labels rank first.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnx_nfi.errors import NotFoundError, SearchError
from onnx_nfi.names import COLOR_TERMS
from onnx_nfi.neurons.concepts import LABEL_P, LABEL_SHARE
from onnx_nfi.neurons.wordnet import normalise, wordnet
from onnx_nfi.refs import NeuronRef
from onnx_nfi.search.describe import description_text
from onnx_nfi.store.descriptions import concept_names, descriptions_of, neuron_colors, qualifying_concepts
from onnx_nfi.store.duckdb_store import Store

#: A colour is one of a neuron's colour names from this share on (docs/method.md §9 of colour names).
COLOR_NAME_SHARE = 0.1
#: Other spellings of colour terms.
COLOR_SYNONYMS = {"gray": "grey"}
#: p-values below this are read as this in a score (double precision's floor).
P_FLOOR = 1e-300


@dataclass(frozen=True)
class Match:
    """What one query term matched in a neuron: a colour (``kind`` ``color``) or a concept."""

    term: str
    kind: str
    name: str
    share: float
    p: float | None
    evidence: float


@dataclass(frozen=True)
class Hit:
    """A neuron matching every term, with its score and what each term matched."""

    model: str
    layer: str
    alias: str
    unit: int
    neuron_id: int
    score: float
    matches: tuple[Match, ...]
    description: str = ""

    @property
    def neuron(self) -> str:
        """``MODEL:ALIAS:UNIT``, spelt as every message spells a neuron."""
        return str(NeuronRef(self.model, self.alias, self.unit))


@dataclass(frozen=True)
class FindResult:
    """``find``'s answer: the terms the query was read as and the best ``k`` neurons."""

    terms: tuple[str, ...]
    hits: tuple[Hit, ...] = field(default_factory=tuple)


def find(db: str | Path, query: str, *, models: Sequence[str] = (), layers: Sequence[str] = (), k: int = 20) -> FindResult:
    """The ``k`` neurons that best match every term of ``query`` (``models``/``layers``: names, aliases or globs)."""
    with Store.open(db, read_only=True) as store:
        return find_in(store, query, models=models, layers=layers, k=k)


def find_in(store: Store, query: str, *, models: Sequence[str] = (), layers: Sequence[str] = (), k: int = 20) -> FindResult:
    """:func:`find` on an open database (``serve`` passes its own read-only connection)."""
    if k < 1:
        raise SearchError(f"-k must be at least 1, got {k}")
    known = set(store.models())
    unknown_models = [m for m in models if m not in known]
    if unknown_models:
        raise NotFoundError(f"model {unknown_models[0]!r} is not in {store.path} (models: {', '.join(sorted(known)) or 'none'})")
    if not store.has_table("concept_labels"):
        raise NotFoundError(f"{store.path} has no colour or concept labels yet; compute them with: onnx-nfi index MODEL --indexes concepts")
    terms = _terms(query, concept_names(store))
    colors = sorted({c for t in terms if (c := _color(t))})
    concept_rows = qualifying_concepts(store, LABEL_P, LABEL_SHARE)
    color_rows = neuron_colors(store, colors, COLOR_NAME_SHARE) if colors else []
    per_term = [_term_matches(t, concept_rows, color_rows) for t in terms]
    neurons = {r["neuron_id"]: r for r in [*concept_rows, *color_rows]}
    hits = []
    for nid in set.intersection(*(set(m) for m in per_term)):
        row = neurons[nid]
        if (models and row["model"] not in models) or (layers and not _in_layers(row, layers)):
            continue
        matches = tuple(m[nid] for m in per_term)
        hits.append(Hit(row["model"], row["layer"], row["alias"], int(row["unit"]), int(nid),
                        math.prod(m.evidence for m in matches), matches))
    hits = sorted(hits, key=lambda h: (-h.score, h.model, h.neuron_id))[:k]
    described = descriptions_of(store, [h.neuron_id for h in hits])
    return FindResult(tuple(terms), tuple(replace(h, description=description_text(described[h.neuron_id])) for h in hits))


def _terms(query: str, stored: Sequence[str]) -> list[str]:
    """The query's terms: longest runs of up to 3 words that name a noun, else single words; a word
    that is no colour, no WordNet noun and no stored concept is refused with the closest known terms."""
    words, terms = query.split(), []
    stored_keys = {normalise(s) for s in stored}
    while words:
        size = next((n for n in (3, 2) if len(words) >= n and _known(" ".join(words[:n]), stored_keys)), 1)
        terms.append(" ".join(words[:size]))
        words = words[size:]
    if not terms:
        raise SearchError("find needs at least one word, e.g. onnx-nfi find dog")
    for term in terms:
        if not (_color(term) or _known(term, stored_keys)):
            close = difflib.get_close_matches(normalise(term), sorted({*COLOR_TERMS, *map(normalise, stored)}), n=3, cutoff=0.6)
            hint = f"closest known: {', '.join(close)}" if close else "try a colour term or a noun such as dog"
            raise SearchError(f"{term!r} is no colour term, WordNet noun or stored concept; {hint}")
    return terms


def _known(term: str, stored_keys: set[str]) -> bool:
    return normalise(term) in stored_keys or bool(wordnet().synsets(term))


def _color(term: str) -> str | None:
    word = normalise(term)
    word = COLOR_SYNONYMS.get(word, word)
    return word if word in COLOR_TERMS else None


def concept_evidence(share: float, p_holm: float) -> float:
    """How strongly a concept row speaks for its neuron: ``f × -log10 p`` (p floored at ``P_FLOOR``)."""
    return share * -math.log10(max(p_holm, P_FLOOR))


def _term_matches(term: str, concept_rows: list[dict[str, Any]], color_rows: list[dict[str, Any]]) -> dict[int, Match]:
    """Neuron id -> the term's best match in it (colour and concept readings both count)."""
    best: dict[int, Match] = {}

    def offer(nid: int, match: Match) -> None:
        if nid not in best or match.evidence > best[nid].evidence:
            best[nid] = match

    color = _color(term)
    for r in color_rows if color else ():
        if r["color"] == color:
            offer(r["neuron_id"], Match(term, "color", color, float(r["share"]), None, float(r["share"])))
    net = wordnet()
    synsets, key = set(net.synsets(term)), normalise(term)
    for r in concept_rows:
        wnid = r["wnid"]
        hit = net.ancestors(int(wnid[1:])) & synsets if wnid else normalise(r["concept"]) == key
        if hit:
            p = float(r["p_holm"])
            offer(r["neuron_id"], Match(term, "concept", r["concept"], float(r["share"]), p, concept_evidence(float(r["share"]), p)))
    return best


def _in_layers(row: dict[str, Any], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(row["layer"], p) or fnmatch.fnmatchcase(row["alias"], p) for p in patterns)
