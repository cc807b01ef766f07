"""One benchmark run on two versions of onnx-nfi, alternated in one session: is there a regression?

Usage: python benchmarks/revisions.py --before REV [--rounds 2] SCRIPT [ARGS...]
e.g.   python benchmarks/revisions.py --before 228aa01 scan.py --repeats 2
       python benchmarks/revisions.py --before 228aa01 startup.py --repeats 10

REV (any git revision) and the working tree ("after") are copied to a temporary folder. Each round
runs ``benchmarks/SCRIPT`` of each version in a fresh process (before, after, then after, before:
a load that rises or falls over the session hits both alike), with that version's package first
on ``PYTHONPATH``. The numeric tables of the scripts' JSON results (``images_per_s``,
``cpu_ms_per_image``, ``median``) are compared: the median over the rounds of each version and
after / before. Writes benchmarks/results/revisions-SCRIPT-<host>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, machine_line, markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The result tables compared (each a dict of name -> number in a script's JSON).
TABLES = ("images_per_s", "cpu_ms_per_image", "median")


def export(rev: str, into: Path) -> Path:
    """The files of ``rev`` (tracked files only) under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def copy_working_tree(into: Path) -> Path:
    """The working tree's files (tracked, and untracked ones git does not ignore) under ``into``: both
    versions then start from equal folders (run from the checkout itself, the same files started 7 %
    slower, bare Python included)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                            capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


def run(root: Path, script: str, args: list[str], out: Path) -> dict:
    """``benchmarks/SCRIPT ARGS`` of the version at ``root``; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "benchmarks" / script), *args, "--out", str(out)],
                   check=True, cwd=root, env=env, stdout=subprocess.DEVNULL)
    (result,) = out.glob("*.json")
    return json.loads(result.read_text())


def compare(results: dict[str, list[dict]]) -> list[list[object]]:
    """Rows ``table, name, before, after, after/before`` (medians over the rounds)."""
    rows: list[list[object]] = []
    for table in TABLES:
        names = [n for n in results["before"][0].get(table, {}) if n in results["after"][0].get(table, {})]
        for name in names:
            b = statistics.median(r[table][name] for r in results["before"])
            a = statistics.median(r[table][name] for r in results["after"])
            rows.append([table, name, f"{b:.4g}", f"{a:.4g}", f"{a / b:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("script", help="a benchmark in benchmarks/ that takes --out (scan.py, startup.py, ...)")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="nfi-revisions-"))
    try:
        versions = {"before": export(ns.before, scratch / "before"), "after": copy_working_tree(scratch / "after")}
        results: dict[str, list[dict]] = {"before": [], "after": []}
        load_start = load_average()
        for k in range(ns.rounds):
            order = ("before", "after") if k % 2 == 0 else ("after", "before")
            for label in order:
                out = scratch / f"{label}-{k}"
                results[label].append(run(versions[label], ns.script, ns.args, out))
                print(f"round {k + 1}/{ns.rounds}: {label} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    data = {"machine": machine(), "script": ns.script, "args": ns.args, "before": ns.before,
            "after": f"{head.strip()} (working tree)", "rounds": ns.rounds, "results": results,
            "load_average": [load_start, load_average()]}
    md = (
        f"# revisions.py: `{ns.script} {' '.join(ns.args)}`, {ns.before} against {data['after']}\n\n"
        f"{machine_line(data['machine'])}\n\n{ns.rounds} rounds, versions alternated; 1-minute load average "
        f"{load_start} at start, {data['load_average'][1]} at end. Medians over the rounds.\n\n"
        + markdown_table(["table", "name", "before", "after", "after / before"], compare(results)) + "\n"
    )
    print(md)
    name = "revisions-" + Path(ns.script).stem
    print(f"Wrote {write_results(name, md, data, ns.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
