"""The docs cover the tool: every setting has help and a README mention, every command a help text."""

from __future__ import annotations

from conftest import ROOT
from typer.main import get_command

from onnx_nfi.cli import app
from onnx_nfi.config import HELP, config_fields

README = (ROOT / "README.md").read_text()


def test_every_setting_has_help_and_is_in_the_readme() -> None:
    for name in config_fields():
        assert HELP.get(name), f"AnalyzeConfig.{name} has no help text"
        if name not in ("probe_size", "seed", "population_threshold"):  # API-only settings
            assert f"--{name.replace('_', '-')}" in README, f"--{name.replace('_', '-')} is not in README.md"


def test_every_command_has_help_and_is_in_the_readme() -> None:
    commands = get_command(app).commands  # type: ignore[attr-defined]
    assert {"analyze", "layers", "index", "sql", "nf", "card", "top", "summary", "similar", "match", "remove", "probe", "demo"} <= set(commands)
    for name, command in commands.items():
        assert command.help, f"command {name} has no help"
        assert f"onnx-nfi {name}" in README or f"make {name}" in README, f"command {name} is not shown in README.md"
