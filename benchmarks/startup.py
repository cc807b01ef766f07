"""How long ``onnx-nfi --help`` takes to start, against a bare Python interpreter in the same run.

Usage: python benchmarks/startup.py [--repeats 20]

Each sample is a fresh process (the way a user runs the command); the table gives medians and the
difference to ``python -c pass``, which is the part onnx-nfi's imports are responsible for.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, machine_line, write_results  # noqa: E402


def sample(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    script = shutil.which("onnx-nfi") or str(Path(sys.executable).parent / "onnx-nfi")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "onnx-nfi --help": [script, "--help"],
        "onnx-nfi analyze --help": [script, "analyze", "--help"],
        "python -m onnx_nfi --version": [sys.executable, "-m", "onnx_nfi", "--version"],
    }
    load_start = load_average()
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):  # round-robin, so load changes hit every command alike
        for name, command in commands.items():
            runs[name].append(sample(command))
    median = {name: statistics.median(values) for name, values in runs.items()}
    bare = median["python -c pass"]
    rows = [f"| `{name}` | {1000 * m:.0f} | {1000 * (m - bare):+.0f} |" for name, m in median.items()]
    data = {"machine": machine(), "repeats": args.repeats, "seconds": runs, "median": median,
            "load_average": [load_start, load_average()]}
    md = (
        f"# startup.py: command start-up\n\n{machine_line(data['machine'])}\n\nMedian of {args.repeats} fresh "
        f"processes each, round-robin; 1-minute load average {load_start} at start, {data['load_average'][1]} at end.\n\n"
        "| command | median ms | vs bare Python ms |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(md)
    print(f"Wrote {write_results('startup', md, data, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
