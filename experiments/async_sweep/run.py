"""Asynchronous DGL on Fashion-MNIST: final accuracy vs one stage's slowdown and vs buffer size.

The design of the paper's Fig. 5/6 (paper-spec §4.6) scaled to a 2-core machine: cnn4, K=4, the
simulated asynchronous protocol (``--method async-dgl``, random order, each stage picked with
weight 1/slowdown). Sweep 1 slows stage ``--slow-stage`` by 1.0 .. 2.0 at buffer ``--buffer``;
sweep 2 varies the buffer M at slowdown ``--slowdown`` (M=0 is synchronous DGL). Runs are reused
when complete and resumed when stopped. Writes a markdown table, a JSON file and two PNG plots to
benchmarks/results/.

    python experiments/async_sweep/run.py --seeds 0,1 --threads 1
    python experiments/async_sweep/run.py --train-size 512 --epochs 1 --width 0.125   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common

SLOWDOWNS = (1.0, 1.1, 1.25, 1.5, 2.0)
BUFFERS = (0, 1, 5, 10, 50)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn4", help="backbone (default: cnn4)")
    parser.add_argument("--stages", type=int, default=4, help="K (default: 4)")
    parser.add_argument("--slow-stage", type=int, default=1, help="the stage slowed in sweep 1 (default: 1)")
    parser.add_argument("--buffer", type=int, default=10, help="buffer M of sweep 1 (default: 10)")
    parser.add_argument("--slowdown", type=float, default=1.5, help="slowdown of sweep 2 (default: 1.5)")
    parser.add_argument("--max-reuse", type=int, default=None, help="replay reuse limit (default: none)")
    common.add_common_options(parser, width=0.25, epochs=3, out="runs/experiments/async_sweep")
    return parser.parse_args(argv)


def run_dir(args: argparse.Namespace, seed: int, buffer: int, slowdown: float) -> Path:
    return Path(args.out) / f"m{buffer}-s{slowdown}-seed{seed}"


def run(args: argparse.Namespace, seed: int, buffer: int, slowdown: float) -> dict[str, Any]:
    values = common.base_values(args)
    values.update(
        method="async-dgl",
        model=args.model,
        stages=args.stages,
        seed=seed,
        buffer=buffer,
        max_reuse=args.max_reuse,
        async_order="random",
        augment=False,
        slowdown=None if slowdown == 1.0 else f"{args.slow_stage}:{slowdown}",
        out=str(run_dir(args, seed, buffer, slowdown)),
    )
    if buffer == 0:  # M=0 is synchronous DGL: the replay options do not apply (degl refuses them)
        values.pop("async_order")
        values.pop("max_reuse")
    return common.train_or_reuse(values)


def table(title: str, key: str, rows: dict[Any, list[dict[str, Any]]]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"| {key} | final test acc % (last stage) | per-stage test acc % | steps "
        "per stage | reuse per stage | staleness per stage |",
        "|---|---|---|---|---|---|",
    ]
    for value, runs in rows.items():
        per_stage = [common.fmt(list(col)) for col in zip(*(r["test_acc_per_stage"] for r in runs))]
        reuse = [round(sum(c) / len(c), 2) for c in zip(*(r["reuse_per_stage"] for r in runs))]
        stale = [round(sum(c) / len(c), 2) for c in zip(*(r["staleness_per_stage"] for r in runs))]
        steps = runs[0]["steps_per_stage"]
        lines.append(
            f"| {value} | {common.fmt([r['test_acc'] for r in runs])} | {' / '.join(per_stage)} | "
            f"{steps} | {reuse} | {stale} |"
        )
    return [*lines, ""]


def plot(path: Path, xs: list[float], runs: dict[Any, list[dict[str, Any]]], xlabel: str, sync: list[float]) -> None:
    """Final accuracy against the swept setting (a sweep's summary; per-run curves: ``plot_curves``)."""
    from matplotlib.figure import Figure

    from degl.run.plot import save_figure

    means = [sum(r["test_acc"] for r in runs[x]) / len(runs[x]) for x in runs]
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(xs, means, marker="o", label="async DGL (last stage)")
    for x, value in zip(xs, runs):
        ax.scatter([x] * len(runs[value]), [r["test_acc"] for r in runs[value]], color="gray", s=8)
    ax.axhline(sum(sync) / len(sync), color="k", linestyle="--", linewidth=1, label="synchronous DGL (M=0)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    save_figure(fig, path)


def plot_curves(path: Path, args: argparse.Namespace, seed: int) -> None:
    """``degl plot`` of sweep 1's extremes: per-stage test accuracy and the steps each stage took."""
    from degl.run.plot import plot_runs, save_figure

    dirs = [run_dir(args, seed, args.buffer, slowdown) for slowdown in (SLOWDOWNS[0], SLOWDOWNS[-1])]
    save_figure(plot_runs(dirs, metric="acc", split="test"), path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = common.parse_seeds(args.seeds)
    by_slowdown = {s: [run(args, seed, args.buffer, s) for seed in seeds] for s in SLOWDOWNS}
    by_buffer = {m: [run(args, seed, m, args.slowdown if m > 0 else 1.0) for seed in seeds] for m in BUFFERS}
    sync = [r["test_acc"] for r in by_buffer[0]]
    device = common.resolved_device(args.device)
    stem = common.results_stem("async-sweep", device)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    plot(
        results / f"{stem}-slowdown.png",
        list(SLOWDOWNS),
        by_slowdown,
        f"slowdown of stage {args.slow_stage} (buffer M={args.buffer})",
        sync,
    )
    plot(
        results / f"{stem}-buffer.png",
        list(BUFFERS),
        by_buffer,
        f"buffer size M (stage {args.slow_stage} slowed {args.slowdown}x; M=0: synchronous)",
        sync,
    )
    plot_curves(results / f"{stem}-curves.png", args, seeds[0])
    command = "python experiments/async_sweep/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join(
        [
            f"# Asynchronous DGL on Fashion-MNIST: slowdown and buffer sweeps ({stem})",
            "",
            f"- command: `{command}`",
            f"- {args.model} width {args.width}, K={args.stages}, {args.epochs} epochs per stage,"
            f" batch {args.batch_size}, lr {args.lr} {args.schedule}, seeds {seeds},"
            f" simulated async-dgl (random order, weight 1/slowdown), max reuse {args.max_reuse}",
            f"- machine: {common.hardware_description(device, args.threads)}",
            "- every stage trains the same number of steps (its epochs); a slowed stage is picked less often, so it"
            " trains on older, reused activations while the others, once done, are frozen and keep feeding it.",
            "",
            *table(f"Sweep 1: stage {args.slow_stage} slowed, buffer M={args.buffer}", "slowdown", by_slowdown),
            *table(
                f"Sweep 2: buffer size, stage {args.slow_stage} slowed {args.slowdown}x"
                " (M=0: synchronous, no slowdown)",
                "M",
                by_buffer,
            ),
            f"![slowdown]({stem}-slowdown.png) ![buffer]({stem}-buffer.png)",
            "",
            f"Per-stage test accuracy per epoch and steps per stage, slowdown {SLOWDOWNS[0]} vs {SLOWDOWNS[-1]} "
            f"(seed {seeds[0]}): ![curves]({stem}-curves.png)",
            "",
        ]
    )
    data = {
        "slowdown": {str(k): v for k, v in by_slowdown.items()},
        "buffer": {str(k): v for k, v in by_buffer.items()},
    }
    md, _ = common.write_results(results, stem, markdown, data)
    print(markdown)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
