"""Learning curves on Fashion-MNIST: cnn4, K=4, synchronous DGL vs sequential greedy learning (SGL),
per-stage test accuracy per epoch (the paper's CIFAR-10 learning-curve comparison, paper-spec §4.2).

DGL trains the four stages together for E epochs; SGL trains stage 0 for E epochs, freezes it, then
stage 1 for E epochs, and so on (4E epochs in all). For every method and seed, one ``degl`` run
(reused when already complete, resumed when stopped); the curves come from each run's
metrics.jsonl. Writes a markdown table, a JSON file and a PNG plot to benchmarks/results/.

    python experiments/learning_curves/run.py                  # defaults: width 0.25, 10 epochs, seed 0
    python experiments/learning_curves/run.py --seeds 0,1,2 --epochs 20 --threads 2
    python experiments/learning_curves/run.py --train-size 512 --epochs 1 --width 0.125   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common

MODEL, STAGES, AUX, METHODS = "cnn4", 4, "mlp-sr", ("dgl", "sgl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    common.add_common_options(parser, width=0.25, epochs=10, out="runs/experiments/learning_curves")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return parser.parse_args(argv)


def stage_curves(run_dir: str, method: str, epochs: int) -> list[list[float]]:
    """Per stage, its test accuracy after each of its own epochs of training (1..epochs).

    DGL: stage k trains in every epoch, so its curve is its test line of epochs 1..E. SGL: stage k
    trains in phase k only (global epochs kE+1..(k+1)E); later phases re-report it frozen.
    """
    curves: list[list[float]] = [[] for _ in range(STAGES)]
    for record in common.read_metrics(run_dir):
        if record["split"] != "test":
            continue
        stage = record["stage"]
        if method == "sgl" and record["phase"] != stage:
            continue
        curves[stage].append(record["acc"])
    return [curve[:epochs] for curve in curves]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = common.parse_seeds(args.seeds)
    base = {**common.base_values(args), "model": MODEL, "stages": STAGES, "aux": AUX}

    data: dict[str, Any] = {
        "study": "learning-curves",
        "dataset": "fashion-mnist",
        "model": MODEL,
        "stages": STAGES,
        "aux": AUX,
        "budget": {k: base[k] for k in ("width", "epochs", "batch_size", "lr", "schedule", "train_size", "augment")},
        "seeds": seeds,
        "methods": {},
    }
    for method in METHODS:
        entries = []
        for seed in seeds:
            out = Path(args.out) / f"{method}-seed{seed}"
            print(f"== {method}, seed {seed}: {out}", file=sys.stderr, flush=True)
            summary = common.train_or_reuse({**base, "method": method, "seed": seed, "out": str(out)})
            entries.append(
                {
                    "run_dir": str(out),
                    "completed": summary["completed"],
                    "train_time_s": summary["train_time_s"],
                    "epochs_completed": summary["epochs_completed"],
                    "test_acc_per_stage": summary["test_acc_per_stage"],
                    "curves": stage_curves(str(out), method, args.epochs),
                }
            )
            data.setdefault("torch", summary["torch"])
            data.setdefault("degl", summary["degl"])
        data["methods"][method] = {
            "runs": entries,
            "mean_curves": [_mean_curve([e["curves"][k] for e in entries]) for k in range(STAGES)],
        }
    device = common.resolved_device(args.device)
    data["hardware"] = common.hardware_description(device, args.threads)

    stem = common.results_stem("learning-curves-fashion-mnist", device)
    text = markdown(data, argv, None if args.no_plot else f"{stem}.png")
    md, js = common.write_results(args.results_dir, stem, text, data)
    written = [md, js]
    if not args.no_plot:
        png = Path(args.results_dir) / f"{stem}.png"
        plot(data, png)
        written.append(png)
    print(text)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


def _mean_curve(curves: list[list[float]]) -> list[float]:
    length = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(length)]


def markdown(data: dict[str, Any], argv: list[str] | None, png: str | None) -> str:
    budget, methods = data["budget"], data["methods"]
    epochs = budget["epochs"]
    command = "python experiments/learning_curves/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Learning curves: {data['model']}, K={data['stages']}, sync DGL vs sequential greedy, Fashion-MNIST",
        "",
        f"- command: `{command.strip()}`",
        f"- budget: width {budget['width']}, {epochs} epoch(s) per stage (DGL: {epochs} in all, all stages at "
        f"once; SGL: {epochs} per stage, {data['stages'] * epochs} in all), batch {budget['batch_size']}, "
        f"SGD lr {budget['lr']} ({budget['schedule']} schedule, restarted per stage for SGL), aux {data['aux']}"
        + (f", first {budget['train_size']} training images" if budget["train_size"] else ", 60k training images")
        + f", augmentation {'on' if budget.get('augment', True) else 'off'}; test: the 10k test images",
        f"- seeds: {', '.join(map(str, data['seeds']))} (curves are seed means)",
        f"- hardware: {data['hardware']}; torch {data['torch']}, degl {data['degl']}",
        "",
        "Final test accuracy (%) per stage, and training time (sum of training-step times):",
        "",
        "| method | " + " | ".join(f"stage {k}" for k in range(data["stages"])) + " | train time (s) |",
        "|---|" + "---|" * data["stages"] + "---|",
    ]
    for method, row in methods.items():
        finals = list(zip(*(run["test_acc_per_stage"] for run in row["runs"])))
        cells = " | ".join(common.fmt(list(v)) for v in finals) + " | -" * (data["stages"] - len(finals))
        lines.append(f"| {method} | {cells} | {common.fmt([r['train_time_s'] for r in row['runs']])} |")
    lines += [
        "",
        "Test accuracy (%) of each stage after its own e-th epoch of training (DGL: global epoch e; "
        "SGL: epoch e of that stage's phase, i.e. global epoch k·E+e):",
        "",
        "| epoch | " + " | ".join(f"s{k} dgl | s{k} sgl" for k in range(data["stages"])) + " |",
        "|---|" + "---|---|" * data["stages"] + "",
    ]
    for e in range(epochs):
        cells = []
        for k in range(data["stages"]):
            for method in METHODS:
                curve = methods[method]["mean_curves"][k]
                cells.append(f"{curve[e]:.2f}" if e < len(curve) else "-")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    if png:
        lines += ["", f"![per-stage test accuracy per epoch]({png})"]
    if not all(run["completed"] for row in methods.values() for run in row["runs"]):
        lines += ["", "**Some runs are incomplete** (stopped before their last epoch); rerun to finish them."]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """``degl plot`` of every run: per-stage test accuracy per global epoch, DGL and SGL overlaid.

    SGL's stage k starts after k*E epochs of the stages below it; the per-own-epoch comparison
    ([N1]'s) is the markdown table.
    """
    from degl.run.plot import plot_runs, save_figure

    run_dirs = [run["run_dir"] for row in data["methods"].values() for run in row["runs"]]
    figure = plot_runs(run_dirs, metric="acc", split="test", x="epoch")
    budget, seeds = data["budget"], ",".join(map(str, data["seeds"]))
    figure.suptitle(f"{data['model']} K={data['stages']} on Fashion-MNIST, width {budget['width']}, seeds {seeds}")
    save_figure(figure, path)


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
