"""Time to accuracy at equal cores: the DGL pipeline (K processes x 1 thread) vs backprop in one
process with K threads, same net, data and epochs, test accuracy against wall-clock training time.

    python experiments/time_to_accuracy/run.py                    # cnn6 width 0.125, K=2, 4 epochs
    python experiments/time_to_accuracy/run.py --train-size 2048 --epochs 1   # smoke test

Both runs record the test accuracy of every stage after every epoch together with the training
seconds so far (``time_s`` in metrics.jsonl; evaluation excluded, identically for both). The
figure is ``degl plot --x time`` of the two runs; the table gives each run's final accuracy and
the training time each needed to reach backprop's final accuracy (or how close DGL got).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common

from degl.run.plot import plot_runs, save_figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn6")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--workers", type=int, default=2, help="pipeline processes = stages = cores (default: 2)")
    parser.add_argument("--cuts", default="3", help="where stages 1..K-1 start, 0-based block indices (default: 3)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--out", default="runs/experiments/time_to_accuracy")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    return parser.parse_args(argv)


def last_stage_curve(run: Path) -> list[tuple[float, float]]:
    """(training seconds, test accuracy of the last stage) after every epoch."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in lines if r["split"] == "test"]
    last = max(r["stage"] for r in tests)
    return [(r["time_s"], r["acc"]) for r in tests if r["stage"] == last]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in curve if acc >= target), None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    k = args.workers
    common_opts = [
        "--model", args.model, "--width", str(args.width), "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--no-augment", "--channels-last",
    ]  # fmt: skip
    if args.train_size:
        common_opts += ["--train-size", str(args.train_size)]
    out = Path(args.out)
    dgl_dir, bp_dir = out / f"dgl-workers{k}x1", out / f"backprop-1x{k}threads"
    dgl = common.train_command(
        dgl_dir, [*common_opts, "--stages", str(k), "--cuts", args.cuts, "--aux", "mlp", "--workers", str(k),
                  "--threads", "1"]
    )  # fmt: skip
    bp = common.train_command(bp_dir, [*common_opts, "--method", "backprop", "--threads", str(k)])
    dgl_wall, bp_wall = dgl.get("command_wall_s", float("nan")), bp.get("command_wall_s", float("nan"))
    dgl_curve, bp_curve = last_stage_curve(dgl_dir), last_stage_curve(bp_dir)
    target = bp_curve[-1][1]
    dgl_time, bp_time = time_to(dgl_curve, target), time_to(bp_curve, target)

    device = common.resolved_device("cpu")
    stem = common.results_stem("time-to-accuracy", device)
    png = Path(args.results_dir) / f"{stem}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(plot_runs([dgl_dir, bp_dir], metric="acc", split="test", x="time"), png)

    def curve_text(curve: list[tuple[float, float]]) -> str:
        return ", ".join(f"{acc:.2f} @ {t:.0f} s" for t, acc in curve)

    reached = (
        f"DGL reached it after {dgl_time:.1f} s of training ({bp_time / dgl_time:.2f}x backprop's {bp_time:.1f} s)"
        if dgl_time is not None
        else f"DGL did not reach it: its best last-stage accuracy was {max(a for _, a in dgl_curve):.2f}"
        f" ({target - max(a for _, a in dgl_curve):.2f} points short)"
    )
    command = "python experiments/time_to_accuracy/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join(
        [
            f"# Time to accuracy at equal cores: DGL pipeline vs backprop ({stem})",
            "",
            f"- command: `{command}`",
            f"- commit: {common.git_commit()}",
            f"- {args.model} width {args.width}, Fashion-MNIST, {args.epochs} epochs, seed {args.seed},"
            f" no augmentation, batch 128, SGD lr 0.1 cosine; DGL: K={k} (cut at block {args.cuts}, mlp heads),"
            f" `--workers {k} --threads 1`; backprop: one process, `--threads {k}`. Training time excludes"
            " evaluation in both.",
            f"- machine: {common.hardware_description(device, k)}",
            "",
            "| run | final test acc % (last stage) | training s | whole command s | test acc after each epoch |",
            "|---|---|---|---|---|",
            f"| DGL, {k} processes x 1 thread | {dgl['test_acc']:.2f} | {dgl['train_time_s']:.1f} | {dgl_wall:.1f} |"
            f" {curve_text(dgl_curve)} |",
            f"| backprop, 1 process x {k} threads | {bp['test_acc']:.2f} | {bp['train_time_s']:.1f} | {bp_wall:.1f} |"
            f" {curve_text(bp_curve)} |",
            "",
            f"Backprop's final accuracy: {target:.2f}. {reached}.",
            "",
            f"![test accuracy against training time]({png.name})",
            "",
        ]
    )
    findings = {"target": target, "dgl_time_s": dgl_time, "backprop_time_s": bp_time}
    common.write_results(args.results_dir, stem, markdown, {"dgl": dgl, "backprop": bp, **findings})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
