"""``onnx-nfi describe`` and ``find``: neurons in words (top colour, concept label) and by words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onnx_nfi.cli.common import DEFAULT_DB, Db, app, layer_patterns, print_table, say, user_errors

if TYPE_CHECKING:
    from onnx_nfi.search.find import Match

#: The layers ``find`` searches.
SearchedLayers = layer_patterns("Search only these layers")


@app.command("describe")
@user_errors
def describe_cmd(
    neuron: Annotated[str, typer.Argument(metavar="NEURON",
        help="The neuron, MODEL:LAYER:UNIT (LAYER: alias such as conv3, or tensor name).")],
    db: Db = Path(DEFAULT_DB),
) -> None:
    """A neuron's top colour and concept label in words, with their evidence, and its indexes."""
    from onnx_nfi import api

    d = api.describe(neuron, db=db)
    say(f"{d.neuron}: {d.text}")
    shown = [(name, value) for name, value in d.indexes.items() if value is not None]
    if d.top_class is not None:
        shown.append(("top_class", f"{d.top_class} ({d.top_class_frequency:.2f})"))
    for name, value in shown:
        say(f"  {name}: {value if isinstance(value, str) else f'{value:.3f}'}")


@app.command("find")
@user_errors
def find_cmd(
    words: Annotated[str, typer.Argument(metavar="WORDS",
        help='Colour terms and nouns every neuron must match, e.g. "red dog".')],
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="MODEL", help="Search only these models (comma-separated or repeated).")] = None,
    layers: SearchedLayers = None,
    k: Annotated[int, typer.Option("-k", metavar="K", min=1, help="How many neurons to list, best first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per neuron and line.")] = False,
    db: Db = Path(DEFAULT_DB),
) -> None:
    """Neurons of every model whose colour names and concept labels match every word, best evidence first."""
    from onnx_nfi import api
    from onnx_nfi.config import parse_list

    result = api.find(words, db=db, models=parse_list(model), layers=parse_list(layers), k=k)
    if as_json:
        for h in result.hits:
            matched = [{"word": m.term, "kind": m.kind, "name": m.name, "share": m.share, "p": m.p} for m in h.matches]
            say(json.dumps({"neuron": h.neuron, "score": h.score, "description": h.description, "matched": matched}, ensure_ascii=False))
        return
    if not result.hits:
        say(f"No neuron matches {' + '.join(result.terms)}.")
        return
    say(f"Neurons matching {' + '.join(result.terms)}, best first:")
    print_table(
        ["neuron", "score", "description", "matched"],
        [(h.neuron, f"{h.score:.1f}", h.description, "; ".join(_matched(m) for m in h.matches)) for h in result.hits],
    )


def _matched(m: Match) -> str:
    """What a word matched: ``red 0.41`` (a colour name's share), ``dog 0.90, p 1e-25`` (a concept)."""
    from onnx_nfi.search.describe import p_text

    return f"{m.name} {m.share:.2f}" if m.p is None else f"{m.name} {m.share:.2f}, p {p_text(m.p)}"
