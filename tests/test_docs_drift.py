"""Docs that cannot drift: every option the README and the method page name exists on a command, and
every API name they mention is exported by the package."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from typer.main import get_command

import onnx_nfi
from onnx_nfi import api
from onnx_nfi.cli import app

DOCS = ("README.md", "docs/method.md")
#: Code that is not onnx-nfi: an option written beside one of these belongs to that tool.
OTHER_TOOLS = re.compile(r"benchmarks/|\bpip\b|\bpytest\b|\bmake\b|\bapt-get\b|\bgit\b|\bray start\b")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def cli_options() -> set[str]:
    """Every long option of every command (and ``--help``)."""
    found = {"--help"}

    def walk(command) -> None:  # noqa: ANN001 - a click command or group
        for param in command.params:
            found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(get_command(app))
    return found


def contexts(text: str) -> list[str]:
    """The pieces an option is read in: each line of a code block, each inline code span, each prose line."""
    pieces: list[str] = []
    for n, block in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE)):
        if n % 2:  # inside a fenced block
            pieces += block.splitlines()
            continue
        for line in block.splitlines():
            spans = re.findall(r"`([^`]*)`", line)
            pieces += spans
            pieces.append(re.sub(r"`[^`]*`", " ", line))
    return pieces


@pytest.mark.parametrize("doc", DOCS)
def test_every_option_the_docs_name_exists(doc: str) -> None:
    known = cli_options()
    unknown = {
        option
        for piece in contexts((ROOT / doc).read_text()) if not OTHER_TOOLS.search(piece)
        for option in OPTION.findall(piece) if option not in known
    }
    assert not unknown, f"{doc} names options no command has: {sorted(unknown)}"


def test_every_api_name_the_docs_name_is_exported() -> None:
    text = "\n".join((ROOT / doc).read_text() for doc in DOCS)
    named = set(re.findall(r"\bonnx_nfi\.([a-z_][a-z0-9_]*)\b(?!\.)", text, flags=re.IGNORECASE))
    modules = {"api", "report", "errors", "names", "config", "cli", "graph", "scan", "store", "neurons", "search",
               "pipeline", "data"}
    missing = [name for name in named - modules if not hasattr(onnx_nfi, name)]
    assert not missing, f"the docs name onnx_nfi.{missing} but the package does not export them"
    paragraph = (ROOT / "README.md").read_text().split("re-exported from the")[1].split("errors a user can fix")[0]
    verbs = set(re.findall(r"`(?:onnx_nfi\.)?([a-z_]+)[`(]", paragraph))
    assert verbs and not verbs - set(api.__all__), f"README lists verbs the API lacks: {sorted(verbs - set(api.__all__))}"


def test_the_package_exports_exactly_the_api() -> None:
    exported = set(onnx_nfi.__all__) - {"AnalyzeConfig", "NfiError", "__version__"}
    assert exported == set(api.__all__)
    for name in onnx_nfi.__all__:
        assert getattr(onnx_nfi, name) is not None
