"""Help that says what to type: a real metavar on every option that takes a value, none on a flag, no
Python type names, each option's own text (not another command's), and errors that name the option
the command has."""

from __future__ import annotations

import re
import sys
import typing
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
import typer
from cli_helpers import invoke
from conftest import TINY
from typer.main import get_command
from typer.models import ArgumentInfo, OptionInfo

from onnx_nfi import api
from onnx_nfi.cli import app
from onnx_nfi.cli import common as cli_common
from onnx_nfi.config import AnalyzeConfig

GROUP = get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def params(name: str) -> list:
    """The parameters of command ``name`` as its help shows them (``--help`` included)."""
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    return command.get_params(typer.Context(command, info_name=name))


def label(param: typer.core.TyperOption | typer.core.TyperArgument) -> str:
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0] if longs else param.name


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_python_types(command: str | None) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    for wrong in ("<bool>", "<list[", "<str>", "<int", "<float>", "<path>"):
        assert wrong not in result.stdout, f"{command or 'onnx-nfi'} --help shows {wrong}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_with_a_value_has_a_real_metavar(command: str) -> None:
    for param in params(command):
        if getattr(param, "is_flag", False):
            assert param.metavar == "", f"{command} {label(param)}: a flag shows no value"
            continue
        metavar = param.metavar or ""
        assert re.fullmatch(r"[A-Z][A-Z0-9_,./|]*(\.\.\.)?", metavar), f"{command} {label(param)}: metavar {metavar!r}"


def declared_once() -> set[str]:
    """The help texts of the options and arguments declared once, as module-level aliases of
    ``onnx_nfi.cli`` (``Db``, ``Silent``, ...), for every command that shares them."""
    texts = set()
    for module in [cli_common, *(sys.modules[m.__module__] for m in (c.callback for c in GROUP.commands.values()))]:
        for value in vars(module).values():
            if typing.get_origin(value) is typing.Annotated:
                texts |= {i.help for i in value.__metadata__ if isinstance(i, (OptionInfo, ArgumentInfo))}
    return texts


def test_no_command_shows_another_commands_help_text() -> None:
    """A text on two commands belongs to an option both share by declaration (not one written out
    again); and words about analysing stay on analyze."""
    users: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for command in COMMANDS:
        for param in params(command):
            users[param.help or ""].add((command, label(param)))
    shared = declared_once()
    assert {"DuckDB database file.", "No progress bars."} <= shared
    copied = {text: sorted(used) for text, used in users.items()
              if len({c for c, _ in used}) > 1 and text not in shared | {"Show this message and exit."}}
    assert not copied, copied
    for command in COMMANDS:
        texts = " ".join(p.help or "" for p in params(command))
        if command != "analyze":
            assert "Layers to analyse" not in texts, command
        if command not in ("analyze", "merge"):
            assert "Store image paths" not in texts, command


def test_top_by_an_unknown_column_names_tops_own_option(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=4, nf=False, indexes=("color",), layers=("conv2",)))
    result = invoke("top", "tiny_lite0", "conv2", "--by", "colour", "-o", tmp_path / "top.png", "--db", db)
    assert result.exit_code == 2 and result.stdout == ""
    prefix = "Error: --by: 'colour' is not a numeric neurons column; use one of: "
    line, = result.stderr.splitlines()
    assert line.startswith(prefix), line
    with duckdb.connect(str(db), read_only=True) as con:  # a neuron's numeric columns, as DuckDB lists them
        numeric = {c for c, t in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'neurons'").fetchall()
            if t in ("FLOAT", "DOUBLE", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT") or t.startswith("DECIMAL")}
    assert numeric > {"unit", "color_selectivity", "max_activation"}
    assert set(line[len(prefix):].split(", ")) == numeric | {"prob_drop", "flip_rate"}  # and the relevance per neuron
    assert not (tmp_path / "top.png").exists()
