"""The pipeline at work, for ``make demo``: the same short training as K processes x 1 thread
against one process x 1 thread (one core per stage against one core: what the pipeline is for),
and beside it one process x K threads (equal cores), with the pipeline's timeline.

    python scripts/demo_pipeline.py [--out runs/demo/pipeline] [--steps 120] [--workers 2]

Both runs train the demo's net (``cnn6`` width 0.125, K stages, the same cut) on Fashion-MNIST for
``--steps`` steps. The pipeline run records ``--trace``; the script prints each run's training
time, samples/s and the ranks' busy fractions, and draws the timeline (``timeline.png``). Runs that
already finished are reused, so a second ``make demo`` only prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(out: Path, options: list[str]) -> tuple[dict, float | None]:
    """The run's summary and the command's wall-clock (None when an earlier finished run is reused)."""
    summary_path = out / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text()), None
    if out.exists():
        raise SystemExit(f"demo_pipeline: {out} holds an unfinished run; remove it and run again")
    command = [sys.executable, "-m", "degl", "train", *options, "--no-progress", "--out", str(out)]
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"demo_pipeline: {' '.join(command[2:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(summary_path.read_text()), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo/pipeline")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cuts", default="3", help="where stages 1..K-1 start (0-based block indices; default: 3)")
    args = parser.parse_args()
    out, k = Path(args.out), args.workers
    common = [
        "--model", "cnn6", "--width", "0.125", "--stages", str(k), "--cuts", args.cuts, "--aux", "mlp",
        "--no-augment", "--channels-last", "--epochs", "1", "--max-steps", str(args.steps),
    ]  # fmt: skip
    pipeline, pipeline_wall = train(out / f"workers{k}x1", [*common, "--workers", str(k), "--threads", "1", "--trace"])
    one_core, one_core_wall = train(out / "one-process-1thread", [*common, "--threads", "1"])
    single, single_wall = train(out / f"one-process-{k}threads", [*common, "--threads", str(k)])

    print(f"\nthe pipeline at work: {args.steps} steps of cnn6 width 0.125, K={k}, batch 128")
    print(f"{'run':<28}{'cores':>6}{'training s':>12}{'samples/s':>12}{'wall s':>9}")
    for name, cores, summary, wall in (
        (f"{k} processes x 1 thread", k, pipeline, pipeline_wall),
        ("1 process x 1 thread", 1, one_core, one_core_wall),
        (f"1 process x {k} threads", k, single, single_wall),
    ):
        shown = f"{wall:.1f}" if wall is not None else "reused"
        print(f"{name:<28}{cores:>6}{summary['train_time_s']:>12.1f}{summary['samples_per_s']:>12.0f}{shown:>9}")
    devices = one_core["train_time_s"] / pipeline["train_time_s"]
    equal = single["train_time_s"] / pipeline["train_time_s"]
    print(f"one core per stage against one core (K={k} devices against 1; the limit is {k}x): {devices:.2f}x")
    print(f"at equal cores ({k} processes x 1 thread against 1 process x {k} threads): {equal:.2f}x")
    print(
        f"  (one process already uses all {k} cores of this machine through torch's threads, so here the pipeline "
        "can at best tie; on K devices, one per stage, it is the first figure that counts)"
    )
    trace = out / f"workers{k}x1" / "trace.json"
    if trace.is_file():
        subprocess.run([sys.executable, "-m", "degl", "trace", "summary", str(trace)], check=False)
        png = out / "timeline.png"
        subprocess.run([sys.executable, str(REPO / "scripts" / "render_trace.py"), str(trace), str(png)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
