"""The package's shape: layers import only downwards, modules stay small, the CLI starts light,
and the package surface is what Python users expect."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "onnx_nfi"
#: The data flow, lowest first: a module may import from its own layer or any layer before it.
LAYERS = (
    {"errors", "config", "names", "refs", "progress", "files", "jit", "signals"},
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


def test_no_function_is_over_60_lines() -> None:
    """A function that does one thing fits on a screen (signature and docstring included)."""
    long = [
        f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


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


#: SQL statements as they are written in a string: a keyword pair of one statement kind.
SQL_TEXT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\b(CREATE|DROP|ALTER)\s+(TABLE|VIEW|INDEX)\b|\bCOPY\s*\(|\bATTACH\s+'"
)


def sql_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant and f-string that reads as SQL, CLI help texts aside
    (a ``help=`` argument may show an example query)."""
    helps = {id(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords if kw.arg == "help"}
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}  # read whole
    found = []
    for node in ast.walk(tree):
        if id(node) in helps or id(node) in parts:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "{}".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if SQL_TEXT.search(text):
            found.append((node.lineno, text))
    return sorted(found)


def test_sql_text_lives_in_the_store_only() -> None:
    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if top_level(path) == "store":
            continue
        outside += [f"{name}:{line}: {text[:60]!r}" for line, text in sql_strings(ast.parse(path.read_text()))]
    assert not outside, "SQL outside onnx_nfi/store/ (add a Store reader or writer):\n" + "\n".join(outside)


def test_the_sql_text_check_finds_sql_and_passes_prose() -> None:
    found = sql_strings(ast.parse(
        'a = "SELECT unit\\nFROM neurons"\n'
        'b = f"DELETE FROM {table} WHERE model = ?"\n'
        'c = "INSERT OR REPLACE INTO meta VALUES (?, ?)"\n'
        'd = "select the layers from the model; update the settings"\n'
        'e = typer.Option(help="SQL to run, e.g. \\"SELECT * FROM layer_summary\\".")\n'
        'f = "CREATE TABLE t (x INT)"\n'
    ))
    assert [line for line, _ in found] == [1, 2, 3, 6]


#: An f-string that puts a neuron's parts together by hand, ``f"{model}:{alias}:{unit}"`` or with ``/``.
HAND_SPELT_NEURON = re.compile(r"\{[^{}]*model\}[:/]\{[^{}]*alias\}[:/]\{[^{}]*unit\}")


def test_neurons_are_spelt_by_neuron_ref_only() -> None:
    """Every message, title and key names a neuron through ``NeuronRef``: one spelling, one place."""
    hand_spelt = [
        f"{path.relative_to(ROOT).as_posix()}:{n}: {line.strip()[:70]}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "refs.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if HAND_SPELT_NEURON.search(line)
    ]
    assert not hand_spelt, "neuron spelt by hand (use str(NeuronRef(...))):\n" + "\n".join(hand_spelt)


def test_the_spelling_check_finds_a_hand_spelt_neuron() -> None:
    assert HAND_SPELT_NEURON.search('neuron = f"{engine.model}:{item.layer.alias}:{unit}"')
    assert HAND_SPELT_NEURON.search('f"{self.model}/{self.alias}:{self.unit}"')
    assert HAND_SPELT_NEURON.search('f"{r.model}/{r.alias}/{r.unit}"')
    assert HAND_SPELT_NEURON.search('f"{model}:{layer}"') is None
