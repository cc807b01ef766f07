"""WordNet 3.0's noun hierarchy, read from the derived table shipped in ``wordnet_data/``.

Image labels become concepts here (docs/method.md, Concept labels): a label that is an ImageNet wnid
(``n02085620``) or a WordNet noun (``Chihuahua``, ``golden_retriever``, ``dogs``) names a synset, and
the synset brings every hypernym with it (Chihuahua -> toy dog -> dog -> canine -> ... -> entity).
A name that is an ImageNet-1k class name maps to that class's synset first (``dalmatian`` is the
dog, not the person); otherwise the lemma's most frequent sense is taken. The same table answers
search words: a word's synsets and their hyponyms (``hound`` -> every hound breed).
"""

from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass
from importlib import resources

_WNID = re.compile(r"^n(\d{8})$")
#: WordNet's detachment rules for noun plurals (morphy), tried in order.
_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"), ("s", ""))


def normalise(name: str) -> str:
    """A label or lemma as compared: lower case, ``_`` and ``-`` as spaces, runs of spaces as one."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def wnid(offset: int) -> str:
    """The ImageNet/WordNet id of a noun synset: ``n`` and the 8-digit offset."""
    return f"n{offset:08d}"


@dataclass(frozen=True)
class Concept:
    """A concept of an image: a WordNet synset (``wnid`` set, ``depth`` its longest hypernym path
    from ``entity``) or a label WordNet does not know (``wnid`` None, depth 0)."""

    name: str
    wnid: str | None
    depth: int


class WordNet:
    """The noun synsets: hypernym offsets, lemmas, senses of lemmas, ImageNet-1k class names."""

    def __init__(self) -> None:
        folder = resources.files("onnx_nfi.neurons") / "wordnet_data"
        self.hypernyms: dict[int, tuple[int, ...]] = {}
        self.lemmas: dict[int, tuple[str, ...]] = {}
        self.by_lemma: dict[str, list[int]] = {}
        for line in _lines(folder / "nouns.tsv.gz"):
            offset, hyper, lemmas = line.split("\t")
            key = int(offset)
            self.hypernyms[key] = tuple(int(h) for h in hyper.split())
            self.lemmas[key] = tuple(lemmas.split("|"))
            for lemma in self.lemmas[key]:
                self.by_lemma.setdefault(normalise(lemma), []).append(key)
        for line in _lines(folder / "senses.tsv.gz"):  # most frequent sense first
            lemma, offsets = line.split("\t")
            self.by_lemma[normalise(lemma)] = [int(o) for o in offsets.split()]
        self.plurals = dict(line.split("\t") for line in _lines(folder / "plurals.tsv.gz"))
        self.imagenet: dict[str, int] = {}
        for line in (folder / "imagenet1k.tsv").read_text(encoding="utf-8").splitlines():
            class_wnid, name = line.split("\t")
            self.imagenet.setdefault(normalise(name), int(class_wnid[1:]))

    def synsets(self, word: str) -> list[int]:
        """Every synset a word (or its singular) names, most frequent sense first; ImageNet-1k's class first."""
        match = _WNID.match(word.strip())
        if match:
            return [int(match.group(1))] if int(match.group(1)) in self.hypernyms else []
        for form in self._forms(normalise(word)):
            found = ([self.imagenet[form]] if form in self.imagenet else []) + self.by_lemma.get(form, [])
            if found:
                return list(dict.fromkeys(found))
        return []

    def _forms(self, word: str) -> list[str]:
        """The word, its irregular singular, then the singulars of the regular rules (last word only)."""
        head, _, last = word.rpartition(" ")
        forms = [word]
        if last in self.plurals:
            forms.append(f"{head} {self.plurals[last]}".strip())
        forms += [f"{head} {last[: -len(end)] + new}".strip() for end, new in _SUFFIXES if last.endswith(end) and len(last) > len(end) + 1]
        return forms

    def name(self, offset: int) -> str:
        """A synset's display name: its first lemma, ``_`` as spaces."""
        return self.lemmas[offset][0].replace("_", " ")

    @functools.cache  # noqa: B019  (one WordNet per process, kept for its lifetime)
    def depth(self, offset: int) -> int:
        """The longest hypernym path from the root: a hyponym is always deeper than its hypernyms."""
        return 1 + max((self.depth(h) for h in self.hypernyms[offset]), default=-1)

    @functools.cache  # noqa: B019
    def ancestors(self, offset: int) -> frozenset[int]:
        """The synset and every hypernym of it, transitively (``@`` and ``@i``)."""
        out = {offset}
        for h in self.hypernyms[offset]:
            out |= self.ancestors(h)
        return frozenset(out)

    def concepts(self, label: str) -> list[Concept]:
        """A label's concepts: its synset and all hypernyms (deepest first), or the label alone."""
        found = self.synsets(label)
        if not found:
            return [Concept(label, None, 0)]
        offsets = sorted(self.ancestors(found[0]), key=lambda o: (-self.depth(o), o))
        return [Concept(self.name(o), wnid(o), self.depth(o)) for o in offsets]


def _lines(path: resources.abc.Traversable) -> list[str]:
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@functools.cache
def wordnet() -> WordNet:
    """The process's WordNet (read once, ~1 s)."""
    return WordNet()
