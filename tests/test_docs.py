"""The docs cover the tool: every setting has help and a README mention, every command a help text."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT
from typer.main import get_command

from onnx_nfi.cli import app
from onnx_nfi.config import HELP, config_fields

README = (ROOT / "README.md").read_text()


def test_every_setting_has_help_and_is_in_the_readme() -> None:
    for name in config_fields():
        assert HELP.get(name), f"AnalyzeConfig.{name} has no help text"
        if name not in ("probe_size", "population_threshold"):  # API-only settings
            assert f"--{name.replace('_', '-')}" in README, f"--{name.replace('_', '-')} is not in README.md"


def test_every_command_has_help_and_is_in_the_readme() -> None:
    commands = get_command(app).commands  # type: ignore[attr-defined]
    assert {"analyze", "layers", "index", "sql", "nf", "card", "top", "summary", "similar", "match", "remove", "probe", "demo"} <= set(commands)
    for name, command in commands.items():
        assert command.help, f"command {name} has no help"
        assert f"onnx-nfi {name}" in README or f"make {name}" in README, f"command {name} is not shown in README.md"


#: A reference to one of this repository's files: a document (``method.md``, ``../x/NOTES.md``) or a
#: path into one of its folders (``onnx_nfi/scan/topn.py``, ``models/tiny_lite0.onnx``).
FILE_REF = re.compile(
    r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w.-]+\.md|(?:onnx_nfi|benchmarks|tests|docs|models)/[\w./-]+\.(?:py|onnx|json|png))\b"
)


def referenced_files(text: str) -> set[str]:
    return {m.group(1) for m in FILE_REF.finditer(text)}


def documents() -> list[Path]:
    """The prose users read: READMEs, docs, and the package's docstrings and help texts."""
    return [
        *ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").glob("*.md"),
        *(ROOT / "models").glob("*.md"), *(ROOT / "onnx_nfi").rglob("*.py"),
    ]


def test_docs_refer_only_to_files_in_the_repository() -> None:
    names = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts}
    missing = []
    for doc in documents():
        for ref in referenced_files(doc.read_text()):
            if "/" in ref:
                found = (doc.parent / ref).exists() or (ROOT / ref).exists() or (ROOT / "onnx_nfi" / ref).exists()
            else:
                found = ref in names
            if not found:
                missing.append(f"{doc.relative_to(ROOT)}: {ref}")
    assert not missing, "\n".join(missing)


def test_the_method_is_documented_in_the_repository() -> None:
    method = (ROOT / "docs" / "method.md").read_text()
    for section in range(1, 10):
        assert f"## §{section} " in method, f"docs/method.md has no section §{section}"
    assert "docs/method.md" in README


def test_user_facing_text_speaks_of_the_product() -> None:
    words = re.compile(r"\b(issues?|brief|session's|last session)\b", re.IGNORECASE)
    for doc in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").glob("*.md")]:
        hits = [line for line in doc.read_text().splitlines() if words.search(line)]
        assert not hits, f"{doc.relative_to(ROOT)}: {hits[:3]}"
