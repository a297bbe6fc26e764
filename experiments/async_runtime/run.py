"""Synchronous vs asynchronous DGL on the real multi-process runtime, with one rank slowed down.

Four runs of ``degl train --workers K`` on Fashion-MNIST (same model, data, epochs and seed):
synchronous and asynchronous pipelines, each with and without ``--slowdown RANK:FACTOR``. A slowed
rank computes FACTOR times longer per step. In the synchronous pipeline every rank then waits for
it; in the asynchronous one the ranks before it keep their pace and its replay buffer absorbs the
difference. Reports wall-clock, steps/s per rank and final test accuracy per stage; writes a
markdown table and JSON to benchmarks/results/.

    python experiments/async_runtime/run.py                      # cnn4 width 0.25, K=3, 3 epochs
    python experiments/async_runtime/run.py --train-size 1024 --epochs 1 --width 0.125   # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn4")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=3, help="processes = stages (default: 3)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slow-rank", type=int, default=1, help="the slowed rank (default: 1, the middle one)")
    parser.add_argument("--factor", type=float, default=1.5, help="its slowdown (default: 1.5)")
    parser.add_argument("--buffer", type=int, default=10, help="async replay buffer M (default: 10)")
    parser.add_argument("--max-reuse", type=int, default=2, help="async reuse limit (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--out", default="runs/experiments/async_runtime")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, name: str, extra: list[str]) -> dict[str, Any]:
    out = Path(args.out) / name
    if (out / "summary.json").is_file() and json.loads((out / "summary.json").read_text()).get("completed"):
        return json.loads((out / "summary.json").read_text())
    if out.exists():
        raise SystemExit(f"error: {out} holds an unfinished run; remove it")
    command = [
        sys.executable,
        "-m",
        "degl",
        "train",
        "--workers",
        str(args.workers),
        "--model",
        args.model,
        "--width",
        str(args.width),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--no-augment",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    if args.train_size:
        command += ["--train-size", str(args.train_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[2:])} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def steps_per_s(summary: dict[str, Any]) -> list[float]:
    if "steps_per_s_per_stage" in summary:
        return summary["steps_per_s_per_stage"]
    return [summary["steps_completed"] / summary["train_time_s"]] * summary["stages"]  # lock-step pipeline


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    slow = f"{args.slow_rank}:{args.factor}"
    async_opts = ["--method", "async-dgl", "--buffer", str(args.buffer), "--max-reuse", str(args.max_reuse)]
    runs = {
        "sync": train(args, "sync", []),
        f"sync, rank {args.slow_rank} slowed {args.factor}x": train(args, "sync-slow", ["--slowdown", slow]),
        "async": train(args, "async", async_opts),
        f"async, rank {args.slow_rank} slowed {args.factor}x": train(
            args, "async-slow", [*async_opts, "--slowdown", slow]
        ),
    }
    lines = [
        "| pipeline | wall-clock training s | steps per rank | steps/s per rank | test acc % per stage |",
        "|---|---|---|---|---|",
    ]
    for name, s in runs.items():
        steps = s.get("steps_per_stage", [s["steps_completed"]] * s["stages"])
        rates = " / ".join(f"{r:.2f}" for r in steps_per_s(s))
        accs = " / ".join(f"{a:.2f}" for a in s["test_acc_per_stage"])
        lines.append(f"| {name} | {s['train_time_s']:.1f} | {steps} | {rates} | {accs} |")
    slowed = runs[f"async, rank {args.slow_rank} slowed {args.factor}x"]
    rates = steps_per_s(slowed)
    ratio = rates[0] / rates[args.slow_rank]
    delta = slowed["test_acc"] - runs["async"]["test_acc"]
    device = common.resolved_device("cpu")
    stem = common.results_stem("async-runtime", device)
    command = "python experiments/async_runtime/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join(
        [
            f"# Synchronous vs asynchronous DGL pipelines with a slowed rank ({stem})",
            "",
            f"- command: `{command}`",
            f"- {args.model} width {args.width}, {args.workers} processes (one stage each, {args.threads} thread(s)"
            f" each), Fashion-MNIST, {args.epochs} epochs of data, seed {args.seed}; async: buffer M={args.buffer},"
            f" max reuse {args.max_reuse}, priority_lifo",
            f"- machine: {common.hardware_description(device, args.threads)}",
            "",
            *lines,
            "",
            f"Async with rank {args.slow_rank} slowed {args.factor}x: rank 0 ran {ratio:.2f}x the steps/s of the slowed"
            f" rank; the last stage's test accuracy changed by {delta:+.2f} points against the unslowed async run.",
            "",
        ]
    )
    common.write_results(
        args.results_dir, stem, markdown, {"runs": runs, "rank0_over_slowed": ratio, "last_stage_delta": delta}
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
