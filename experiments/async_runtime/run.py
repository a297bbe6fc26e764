"""Synchronous vs asynchronous DGL on the real multi-process runtime, with one rank slowed down.

Runs of ``degl train --workers K`` on Fashion-MNIST (same model, data, epochs and seed): the
synchronous pipeline, then for every slowdown factor F the synchronous and the asynchronous
pipeline with ``--slowdown RANK:F`` (the rank repeats each step's work F times on average, so it
really occupies its core). At equal epochs every rank of either pipeline performs exactly
``epochs x batches`` updates. In the synchronous pipeline every rank waits for the slow one; in
the asynchronous one the others finish their budget early (then serve forward, frozen) and the
replay buffer absorbs the difference. Reports wall-clock (training, and the whole command with
start-up), each rank's time to finish its budget, steps/s per rank, reuse, staleness and final
test accuracy per stage; writes a markdown table and JSON to benchmarks/results/.

Keep the number of processes at most the number of cores (the default K=2 on a 2-core machine).

    python experiments/async_runtime/run.py                      # cnn4 width 0.25, K=2, 3 epochs, F=1.5,2
    python experiments/async_runtime/run.py --train-size 1024 --epochs 1 --width 0.125   # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn4")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=2, help="processes = stages (default: 2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slow-rank", type=int, default=1, help="the slowed rank (default: 1)")
    parser.add_argument(
        "--factors", type=lambda t: [float(f) for f in t.split(",")], default=[1.5, 2.0], help="slowdowns (1.5,2)"
    )
    parser.add_argument("--buffer", type=int, default=10, help="async replay buffer M (default: 10)")
    parser.add_argument("--max-reuse", type=int, default=2, help="async reuse limit (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--out", default="runs/experiments/async_runtime")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, name: str, extra: list[str]) -> dict[str, Any]:
    options = [
        "--workers", str(args.workers), "--model", args.model, "--width", str(args.width),
        "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", str(args.threads), "--no-augment",
        *extra,
    ]  # fmt: skip
    if args.train_size:
        options += ["--train-size", str(args.train_size)]
    return common.train_command(Path(args.out) / name, options)


def per_rank(summary: dict[str, Any], key: str) -> list[float]:
    """An async run's per-rank figure; the lock-step pipeline's ranks all share the run's."""
    if f"{key}_per_stage" in summary:
        return summary[f"{key}_per_stage"]
    lockstep = {
        "steps": summary["steps_completed"],
        "budget_s": summary["train_time_s"],
        "steps_per_s": summary["steps_completed"] / summary["train_time_s"],
        "reuse": 1.0,
        "staleness": 0.0,
    }
    return [lockstep[key]] * summary["stages"]


def row(name: str, s: dict[str, Any]) -> str:
    cells = [
        name,
        f"{s['train_time_s']:.1f} ({s['command_wall_s']:.1f})",
        " / ".join(f"{t:.1f}" for t in per_rank(s, "budget_s")),
        " / ".join(str(int(n)) for n in per_rank(s, "steps")),
        " / ".join(f"{r:.2f}" for r in per_rank(s, "steps_per_s")),
        " / ".join(f"{r:.2f}" for r in per_rank(s, "reuse")),
        " / ".join(f"{r:.2f}" for r in per_rank(s, "staleness")),
        " / ".join(f"{a:.2f}" for a in s["test_acc_per_stage"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers > (os.cpu_count() or 1):
        raise SystemExit(f"error: {args.workers} processes on {os.cpu_count()} cores would time the OS scheduler")
    async_opts = ["--method", "async-dgl", "--buffer", str(args.buffer), "--max-reuse", str(args.max_reuse)]
    runs = {"sync": train(args, "sync", [])}
    for factor in args.factors:
        slow = ["--slowdown", f"{args.slow_rank}:{factor}"]
        runs[f"sync, rank {args.slow_rank} x{factor}"] = train(args, f"sync-slow{factor}", slow)
        runs[f"async, rank {args.slow_rank} x{factor}"] = train(args, f"async-slow{factor}", [*async_opts, *slow])
    lines = [
        "| pipeline | training s (whole command) | s to finish its budget, per rank | updates per rank "
        "| updates/s per rank | reuse | staleness | test acc % per stage |",
        "|---|---|---|---|---|---|---|---|",
        *(row(name, s) for name, s in runs.items()),
    ]
    notes, findings = [], {}
    for factor in args.factors:
        sync, asyn = runs[f"sync, rank {args.slow_rank} x{factor}"], runs[f"async, rank {args.slow_rank} x{factor}"]
        budget = per_rank(asyn, "budget_s")
        advantage = sync["train_time_s"] / budget[0]
        delta = asyn["test_acc"] - sync["test_acc"]
        findings[str(factor)] = {"rank0_finishes_sooner_x": advantage, "last_stage_delta_vs_sync": delta}
        notes.append(
            f"- rank {args.slow_rank} slowed {factor}x: async rank 0 finished its {int(per_rank(asyn, 'steps')[0])}"
            f" updates in {budget[0]:.1f} s, {advantage:.2f}x sooner than in the synchronous pipeline with the same"
            f" slow rank ({sync['train_time_s']:.1f} s); the slowed rank needed {budget[args.slow_rank]:.1f} s; last"
            f" stage {asyn['test_acc']:.2f} vs sync {sync['test_acc']:.2f} ({delta:+.2f} points)."
        )
    device = common.resolved_device("cpu")
    stem = common.results_stem("async-runtime", device)
    command = "python experiments/async_runtime/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join(
        [
            f"# Synchronous vs asynchronous DGL pipelines with a slowed rank ({stem})",
            "",
            f"- command: `{command}`",
            f"- commit: {common.git_commit()}",
            f"- {args.model} width {args.width}, {args.workers} processes (one stage each, {args.threads} thread(s)"
            f" each), Fashion-MNIST, {args.epochs} epochs of data, seed {args.seed}, no augmentation; async: buffer"
            f" M={args.buffer}, max reuse {args.max_reuse}, priority_lifo. Every rank of every run performs"
            " epochs x batches updates; a slowed rank repeats each step's work (forward + backward, no effect)"
            " F times on average.",
            f"- machine: {common.hardware_description(device, args.threads)}",
            "",
            *lines,
            "",
            *notes,
            "",
        ]
    )
    common.write_results(args.results_dir, stem, markdown, {"runs": runs, "findings": findings})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
