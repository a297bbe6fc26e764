"""Auxiliary-head study on Fashion-MNIST: cnn6 with one stage per layer (K=6), DGL, heads mlp vs
mlp-sr vs cnn on the same budget (the paper's CIFAR-10 aux-net study, paper-spec §2.2 / §4.3).

For every head and seed, one ``degl`` run (reused when already complete, resumed when stopped);
then a markdown table and a JSON file in benchmarks/results/: per-stage final test accuracy per
head, training time, and the heads' MACs relative to the main network.

    python experiments/aux_heads/run.py                        # defaults: width 0.25, 10 epochs, seed 0
    python experiments/aux_heads/run.py --seeds 0,1,2 --threads 2
    python experiments/aux_heads/run.py --train-size 512 --epochs 1 --width 0.125   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common

MODEL, STAGES, HEADS = "cnn6", 6, ("mlp", "mlp-sr", "cnn")
INPUT_SHAPE = "1,28,28"  # Fashion-MNIST


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--heads", default=",".join(HEADS), help=f"comma-separated aux heads (default: {','.join(HEADS)})"
    )
    common.add_common_options(parser, width=0.25, epochs=10, out="runs/experiments/aux_heads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    seeds = common.parse_seeds(args.seeds)
    base = {**common.base_values(args), "method": "dgl", "model": MODEL, "stages": STAGES}

    runs: dict[str, list[dict[str, Any]]] = {}
    for head in heads:
        runs[head] = []
        for seed in seeds:
            out = Path(args.out) / f"{head}-seed{seed}"
            print(f"== aux {head}, seed {seed}: {out}", file=sys.stderr, flush=True)
            summary = common.train_or_reuse({**base, "aux": head, "seed": seed, "out": str(out)})
            runs[head].append({"run_dir": str(out), **summary})

    stats = {head: common.model_stats(MODEL, STAGES, head, args.width, INPUT_SHAPE) for head in heads}
    device = common.resolved_device(args.device)
    data = {
        "study": "aux-heads",
        "dataset": "fashion-mnist",
        "model": MODEL,
        "stages": STAGES,
        "method": "dgl",
        "budget": {k: base[k] for k in ("width", "epochs", "batch_size", "lr", "schedule", "train_size", "augment")},
        "seeds": seeds,
        "hardware": common.hardware_description(device, args.threads),
        "torch": runs[heads[0]][0]["torch"],
        "degl": runs[heads[0]][0]["degl"],
        "heads": {
            head: {
                "test_acc_per_stage": [r["test_acc_per_stage"] for r in runs[head]],
                "test_acc": [r["test_acc"] for r in runs[head]],
                "train_time_s": [r["train_time_s"] for r in runs[head]],
                "completed": all(r["completed"] for r in runs[head]),
                "aux_macs": stats[head]["aux_macs"],
                "main_macs": stats[head]["total_macs"],
                "classifier_macs": stats[head]["classifier_macs"],
                "aux_ratio": stats[head]["aux_ratio"],
                "all_heads_ratio": stats[head]["all_heads_ratio"],
                "aux_params": stats[head]["aux_params"],
                "run_dirs": [r["run_dir"] for r in runs[head]],
            }
            for head in heads
        },
    }
    stem = common.results_stem("aux-heads-fashion-mnist", device)
    md, js = common.write_results(args.results_dir, stem, markdown(data, argv), data)
    print(markdown(data, argv))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


def markdown(data: dict[str, Any], argv: list[str] | None) -> str:
    budget = data["budget"]
    command = "python experiments/aux_heads/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stage_cols = " | ".join(f"stage {k}" for k in range(data["stages"]))
    lines = [
        f"# Aux-head study: {data['model']}, K={data['stages']} (one stage per layer), DGL, Fashion-MNIST",
        "",
        f"- command: `{command.strip()}`",
        f"- budget (same for every head): width {budget['width']}, {budget['epochs']} epoch(s), batch "
        f"{budget['batch_size']}, SGD lr {budget['lr']} ({budget['schedule']} schedule), "
        f"augmentation {'on' if budget.get('augment', True) else 'off'}"
        + (f", first {budget['train_size']} training images" if budget["train_size"] else ", 60k training images")
        + "; test: the 10k test images",
        f"- seeds: {', '.join(map(str, data['seeds']))} (mean ± std where several)",
        f"- hardware: {data['hardware']}; torch {data['torch']}, degl {data['degl']}",
        "",
        "Final test accuracy (%) of each stage's head (stage 5's head is the network's classifier):",
        "",
        f"| aux head | {stage_cols} | train time (s) | aux MACs | aux / main MACs | all heads / main |",
        "|---|" + "---|" * data["stages"] + "---|---|---|---|",
    ]
    for head, row in data["heads"].items():
        per_stage = list(zip(*row["test_acc_per_stage"]))
        accs = " | ".join(common.fmt(list(values)) for values in per_stage)
        if len(per_stage) < data["stages"]:  # a run stopped before its first evaluation
            accs += " | -" * (data["stages"] - len(per_stage))
        lines.append(
            f"| {head} | {accs} | {common.fmt(row['train_time_s'])} | {row['aux_macs'] / 1e6:.1f}M | "
            f"{100 * row['aux_ratio']:.2f}% | {100 * row['all_heads_ratio']:.2f}% |"
        )
    lines += [
        "",
        "MACs are per image at 1x28x28 and this width (`degl models --stats`); 'aux' counts the heads of "
        "stages 0-4, 'all heads' adds the classifier. Train time is the sum of training-step times "
        "(no evaluation, no data loading).",
    ]
    if not all(row["completed"] for row in data["heads"].values()):
        lines += ["", "**Some runs are incomplete** (stopped before their last epoch); rerun to finish them."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
