"""One local objective other than aux in every runtime, at K=4 on Fashion-MNIST.

    python experiments/local_objectives/runtimes.py [--objective predsim] [--epochs 2]

Trains the same net (cnn6 width 0.125, K=4, batch 128) with the same objective three ways: in one
process, as a real 4-process pipeline (``--workers 4``, bit-identical to one process: the table
checks it), and as a real asynchronous pipeline (``--method async-dgl --workers 4``, replay buffers
of ``--buffer`` batches, stage 2 slowed 1.5x with ``--slowdown 2:1.5``). It writes every stage's
final test accuracy beside each other (``benchmarks/results/<date>-objective-runtimes-...md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", default="predsim")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=2, help="async-dgl replay buffer capacity (default: 2)")
    parser.add_argument("--out", default="runs/experiments/objective_runtimes")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args()
    out = Path(args.out) / args.objective
    base = [
        "--model", "cnn6", "--width", "0.125", "--stages", "4", "--objective", args.objective,
        "--epochs", str(args.epochs), "--no-augment", "--threads", "1", "--deterministic",
    ]  # fmt: skip
    asynchronous = ["--method", "async-dgl", "--buffer", str(args.buffer), "--slowdown", "2:1.5"]
    runs = {
        "one process": common.train_command(out / "one-process", base),
        "--workers 4": common.train_command(out / "workers4", [*base, "--workers", "4"]),
        "async-dgl --workers 4, stage 2 slowed 1.5x": common.train_command(
            out / "async-workers4", [*base, *asynchronous, "--workers", "4"]
        ),
    }
    same = runs["one process"]["test_acc_per_stage"] == runs["--workers 4"]["test_acc_per_stage"]
    lines = [
        f"# {args.objective} in every runtime: cnn6 width 0.125, K=4, Fashion-MNIST, {args.epochs} epochs",
        "",
        f"- command: `python experiments/local_objectives/runtimes.py --objective {args.objective} "
        f"--epochs {args.epochs} --buffer {args.buffer}`",
        f"- machine: {common.hardware_description(common.resolved_device('cpu'), 1)}",
        f"- degl commit {common.git_commit()}",
        f"- `--workers 4` equals one process stage for stage: **{same}**",
        "",
        "| runtime | test accuracy per stage (0..3) | training s |",
        "|---|---|---|",
    ]
    for name, summary in runs.items():
        accs = " / ".join(f"{acc:.2f}" for acc in summary["test_acc_per_stage"])
        lines.append(f"| {name} | {accs} | {summary['train_time_s']:.1f} |")
    stem = common.results_stem(f"objective-runtimes-{args.objective}-cnn6w0.125-k4", common.resolved_device("cpu"))
    markdown = "\n".join(lines) + "\n"
    md, _ = common.write_results(args.results_dir, stem, markdown, {"runs": runs, "bit_identical": same})
    print(markdown)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
