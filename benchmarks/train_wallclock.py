"""``degl train --workers K`` against one process with the same total cores, wall-clock included.

Runs, interleaved for ``--rounds`` rounds, the same training (Fashion-MNIST by default) twice:
``--workers K --threads T`` (K processes x T threads) and one process with ``--threads K*T``, each
as a fresh ``degl train`` command. Reports per run the training time the run directory records
(``train_time_s``) and the whole command's wall-clock (start-up, data loading and evaluation
included), and the medians' ratios. Last stdout line: one JSON object.

    python benchmarks/report.py --name train-wallclock -- python benchmarks/train_wallclock.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(command: list[str]) -> tuple[float, dict]:
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"train_wallclock: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    out = Path(command[command.index("--out") + 1])
    return wall, json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn6")
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process of the pipeline (default: 1)")
    parser.add_argument("--max-steps", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more degl train options (after --)")
    args = parser.parse_args()
    base = [
        sys.executable, "-m", "degl", "train", "--model", args.model, "--stages", str(args.workers),
        "--batch-size", "128", "--epochs", "1", "--max-steps", str(args.max_steps), "--no-progress",
        "--no-augment", *args.extra,
    ]  # fmt: skip
    if args.width is not None and not args.model.startswith("torchvision:"):
        base += ["--width", args.width]
    results: dict[str, list[tuple[float, float]]] = {"pipeline": [], "single": []}
    with tempfile.TemporaryDirectory(prefix="degl-wallclock-") as tmp:
        for round_ in range(args.rounds):
            for kind in ("pipeline", "single"):
                out = str(Path(tmp) / f"{kind}-{round_}")
                if kind == "pipeline":
                    extra = ["--workers", str(args.workers), "--threads", str(args.threads)]
                else:
                    extra = ["--threads", str(args.workers * args.threads)]
                wall, summary = run([*base, *extra, "--out", out])
                results[kind].append((summary["train_time_s"], wall))
                print(f"round {round_} {kind}: training {summary['train_time_s']:.1f} s, wall-clock {wall:.1f} s")
    med = {k: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v)) for k, v in results.items()}
    result = {
        "model": args.model,
        "width": None if args.model.startswith("torchvision:") else args.width,
        "workers": args.workers,
        "threads_per_process": args.threads,
        "single_threads": args.workers * args.threads,
        "steps": args.max_steps,
        "rounds": args.rounds,
        "pipeline_train_s": [round(t, 2) for t, _ in results["pipeline"]],
        "pipeline_wall_s": [round(w, 2) for _, w in results["pipeline"]],
        "single_train_s": [round(t, 2) for t, _ in results["single"]],
        "single_wall_s": [round(w, 2) for _, w in results["single"]],
        "speedup_train": round(med["single"][0] / med["pipeline"][0], 4),
        "speedup_wall": round(med["single"][1] / med["pipeline"][1], 4),
    }
    print(
        f"{args.workers} processes x {args.threads} thread(s) vs 1 process x {args.workers * args.threads}: "
        f"training {result['speedup_train']:.3f}x, wall-clock {result['speedup_wall']:.3f}x (medians)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
