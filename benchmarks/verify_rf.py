"""Wall time and peak memory of ``onnx-nfi layers MODEL --verify-rf``, one fresh process per model.

The check runs the model once per perturbed input row and column, so its cost follows the model's
cost per image; this script records what a user waits for. Each model runs alone in a fresh process
under ``/usr/bin/time`` (wall seconds, CPU seconds, maximum resident set); models run one after
another. On a shared machine the CPU seconds are the steadier number: wall time follows the load.

```
.venv/bin/python benchmarks/verify_rf.py                       # Lite0, tiny Lite0, Inception-v1, VGG19
.venv/bin/python benchmarks/verify_rf.py --label before MODEL.onnx ...
```

The default models: ``models/efficientnet_lite0.onnx``, ``models/tiny_lite0.onnx`` and the
constant-weight Inception-v1 and VGG19 that the ``onnx`` package ships for its backend tests.
Writes ``benchmarks/results/verify_rf[-LABEL]-<hostname>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LITE0, load_average, machine, machine_line, markdown_table, write_results

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = (LITE0, LITE0.with_name("tiny_lite0.onnx"), LIGHT / "light_inception_v1.onnx", LIGHT / "light_vgg19.onnx")


def measure(model: Path) -> dict:
    """One ``layers --verify-rf`` run under ``/usr/bin/time``: wall seconds, peak RSS, its verdict."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        command = [sys.executable, "-m", "onnx_nfi", "layers", str(model), "--verify-rf", "--preprocess", "raw"]
        timed = ["/usr/bin/time", "-o", timing.name, "-f", "%e %U %S %M", *command]
        done = subprocess.run(timed, capture_output=True, text=True, check=False)  # a failed check is a result
        seconds, user, system, peak_kib = timing.read().split()[-4:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("RF mismatch", "Receptive fields verified"))]
    return {
        "model": model.name, "seconds": float(seconds), "cpu_seconds": round(float(user) + float(system), 1),
        "peak_mib": round(int(peak_kib) / 1024), "exit_code": done.returncode, "verdict": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path, default=list(MODELS))
    parser.add_argument("--label", default=None, help="e.g. before/after: verify_rf-LABEL-<hostname>.md")
    args = parser.parse_args()
    info, load_start = machine(), load_average()
    runs = []
    for model in args.models:
        runs.append(measure(model))
        print(runs[-1], flush=True)
    rows = [
        [r["model"], r["seconds"], r["cpu_seconds"], r["peak_mib"], r["exit_code"], "; ".join(r["verdict"])[:120]]
        for r in runs
    ]
    markdown = "\n\n".join([
        "# verify_rf.py: `onnx-nfi layers MODEL --verify-rf`",
        machine_line(info),
        f"One fresh process per model; 1-minute load average {load_start} at start, {load_average()} at end.",
        markdown_table(["model", "wall s", "CPU s (user + sys)", "peak RSS MiB", "exit", "verdict"], rows),
    ]) + "\n"
    data = {"machine": info, "runs": runs}
    print(write_results(f"verify_rf-{args.label}" if args.label else "verify_rf", markdown, data))


if __name__ == "__main__":
    main()
