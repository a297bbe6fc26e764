"""Start two ``degl train`` runs at the same moment, N times: into one ``--out``, and on the default path.

One ``--out``: exactly one run may train there and the other must be refused with one error line.
Default path (both started in the same second): each run must get a directory of its own.

    .venv/bin/python benchmarks/concurrent_runs.py --tries 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = [
    "--dataset", "synthetic", "--model", "cnn4", "--width", "0.125", "--stages", "2", "--batch-size", "32",
    "--epochs", "2", "--threads", "1", "--no-progress",
]  # fmt: skip


def pair(cwd: Path, out: list[str]) -> list[tuple[int, str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "degl", "train", *RUN, "--seed", str(seed), *out],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    return [(p.wait(), p.stderr.read()) for p in procs]


def one_out(cwd: Path) -> bool:
    results = pair(cwd, ["--out", "R"])
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    lines = (cwd / "R/metrics.jsonl").read_text().splitlines()
    seed = json.loads((cwd / "R/summary.json").read_text())["seed"]
    winner = [i + 1 for i, (code, _) in enumerate(results) if code == 0]
    return codes == [0, 2] and refused[0].strip().startswith("degl: error:") and len(lines) == 8 and [seed] == winner


def default_out(cwd: Path) -> bool:
    results = pair(cwd, [])
    dirs = sorted((cwd / "runs").iterdir())
    seeds = sorted(json.loads((d / "summary.json").read_text())["seed"] for d in dirs)
    return [code for code, _ in results] == [0, 0] and len(dirs) == 2 and seeds == [1, 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10)
    args = parser.parse_args()
    counts = {}
    for name, check in (("one_out", one_out), ("default_out", default_out)):
        passed = 0
        for _ in range(args.tries):
            with tempfile.TemporaryDirectory() as cwd:
                passed += check(Path(cwd))
        counts[name] = passed
        print(f"{name}: {passed} of {args.tries} tries as expected", flush=True)
    print(json.dumps({"tries": args.tries, **counts}))
    return 0 if all(v == args.tries for v in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
