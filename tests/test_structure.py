"""The package's shape: layers import only downwards, modules stay small, the CLI starts light,
and the package surface is what Python users expect."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "onnx_nfi"
#: The data flow, lowest first: a module may import from its own layer or any layer before it.
LAYERS = (
    {"errors", "config", "names", "progress", "files", "jit", "signals"},
    {"graph"},
    {"data"},
    {"scan"},
    {"neurons"},
    {"store"},
    {"search"},
    {"report"},
    {"pipeline"},
    {"api"},
    {"cli"},
    {"__init__", "__main__"},
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
HEAVY = ("numpy", "onnx", "onnxruntime", "numba", "scipy", "cv2", "matplotlib", "faiss", "duckdb")


def top_level(path) -> str:
    """The layer a module belongs to: its sub-package, or the module name at the package's top."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_layers(path) -> list[tuple[int, str]]:
    """(line, layer) of every onnx_nfi module that ``path`` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("onnx_nfi."):
                found.append((node.lineno, name.split(".")[1]))
    return found


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = {top_level(p) for p in PACKAGE.rglob("*.py")} - set(RANK)
    assert not unknown, f"modules outside the layer table: {unknown}"


def test_no_import_from_a_lower_layer_up_to_a_higher_one() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = top_level(path)
        for line, layer in imported_layers(path):
            if RANK[layer] > RANK[own]:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports onnx_nfi.{layer}")
    assert not violations, "\n".join(violations)


def test_cli_modules_do_not_import_each_others_commands() -> None:
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name in ("__init__.py", "common.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnx_nfi.cli"):
                assert node.module == "onnx_nfi.cli.common", f"{path.name} imports {node.module}"


def test_no_module_is_over_450_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_help_imports_no_heavy_library() -> None:
    code = "import sys, onnx_nfi.cli; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (HEAVY,)
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing the CLI loads {loaded}"


@pytest.mark.parametrize("command", [["-m", "onnx_nfi", "--version"], ["-c", "from onnx_nfi.cli import main; main()", "--version"]])
def test_version(command: list[str]) -> None:
    from importlib.metadata import version

    result = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"onnx-nfi {version('onnx-nfi')}\n"


def test_package_surface() -> None:
    import onnx_nfi
    from onnx_nfi import api

    assert onnx_nfi.analyze is api.analyze and onnx_nfi.similar is api.similar and onnx_nfi.layers is api.layers
    assert issubclass(onnx_nfi.NfiError, Exception) and onnx_nfi.AnalyzeConfig().top_n == 100
    assert (PACKAGE / "py.typed").exists()
    with pytest.raises(AttributeError):
        onnx_nfi.no_such_verb  # noqa: B018


def test_every_error_class_lives_in_errors_py() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                assert not node.name.endswith("Error"), f"{node.name} is defined in {path.relative_to(ROOT)}"
