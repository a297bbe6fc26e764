"""Early-exit inference from the stages' heads: ``degl eval --run RUN --early-exit T[,T...]``.

A sample leaves at the first exit whose head is confident enough: its largest softmax probability
reaches the threshold ``T`` (the last exit takes whatever is left). Each threshold trades accuracy
for compute; the study reports, per threshold, the test accuracy, the mean MACs per sample (a sample
leaving at exit ``i`` paid for the blocks up to it and for every head asked on the way) and the
fraction of samples leaving at each exit, beside every exit used alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError
from degl.run.evaluation import LoadedRun
from degl.run.exit_network import ExitChoice, ExitCost, build_exit_network, cascade_macs, exit_costs
from degl.run.exported import Exported

ACCURACY_SLACK = 0.2  # points below the last exit's accuracy that the summary line allows
CHUNK = 256


@dataclass
class ExitScores:
    """For every test sample and exit: the head's top softmax probability and its predicted class."""

    costs: list[ExitCost]
    confidence: torch.Tensor  # [exits, samples]
    predicted: torch.Tensor  # [exits, samples]
    labels: torch.Tensor  # [samples]

    @property
    def exits(self) -> list[int]:
        return [cost.stage for cost in self.costs]


def _score(logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    stacked = torch.stack([part.float() for part in logits])
    confidence = stacked.softmax(dim=-1).amax(dim=-1)
    return confidence.cpu(), stacked.argmax(dim=-1).cpu()


@torch.no_grad()
def scores_from_run(run: LoadedRun) -> ExitScores:
    """Every trained head on the run's test set, with the arithmetic ``degl eval`` uses."""
    setup = run.setup
    network = build_exit_network(setup.stages, ExitChoice("all", tuple(run.evaluated)), (0.0,), (1.0,))
    confidence, predicted, labels = [], [], []
    for x, y in setup.test_loader:  # already normalised by the loader
        with setup.method.precision.autocast():
            logits = network.exit_logits(x)
        c, p = _score(logits)
        confidence.append(c)
        predicted.append(p)
        labels.append(y.cpu())
    costs = exit_costs(setup.stages, run.evaluated)
    return ExitScores(costs, torch.cat(confidence, 1), torch.cat(predicted, 1), torch.cat(labels))


@torch.no_grad()
def scores_from_file(exported: Exported, images: torch.Tensor, labels: torch.Tensor) -> ExitScores:
    """The file's outputs on raw ``uint8`` test images (a ``--exit all`` file: one row per exit)."""
    meta = exported.metadata
    outputs = [exported.run(images[start : start + CHUNK]) for start in range(0, len(images), CHUNK)]
    rows = [torch.cat([chunk[i] for chunk in outputs]) for i in range(len(outputs[0]))]
    by_stage = {row["stage"]: row for row in meta["exits"]}
    stages = [output["stages"][-1] for output in meta["outputs"]]
    costs = [ExitCost(s, by_stage[s]["macs_per_sample"], by_stage[s]["head_macs_per_sample"]) for s in stages]
    if meta["exit_kind"] == "ensemble":  # the ensemble ran every head it covers
        used = [by_stage[s] for s in meta["exit_stages"]]
        costs = [
            ExitCost(stages[0], used[-1]["macs_per_sample"] + sum(r["head_macs_per_sample"] for r in used[:-1]), 0)
        ]
    confidence, predicted = _score(rows)
    return ExitScores(costs, confidence, predicted, labels.cpu())


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--early-exit {text!r}: give thresholds between 0 and 1, e.g. 0.9,0.99") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise UserError(f"--early-exit {text!r}: thresholds are softmax probabilities, between 0 and 1")
    return sorted(set(values))


def early_exit_study(scores: ExitScores, thresholds: Sequence[float]) -> dict[str, Any]:
    """``exits`` (each exit alone) and ``early_exit`` (per threshold): the ``degl eval --early-exit`` JSON."""
    correct = scores.predicted == scores.labels[None]
    exits = [
        {"stage": cost.stage, "test_acc": 100.0 * correct[i].float().mean().item(), "macs_per_sample": cost.macs}
        for i, cost in enumerate(scores.costs)
    ]
    leaving_cost = torch.tensor(cascade_macs(scores.costs), dtype=torch.float64)
    rows = []
    for threshold in thresholds:
        confident = scores.confidence >= threshold
        confident[-1] = True  # the last exit answers for every sample still in the network
        leave = confident.int().argmax(dim=0)  # the first confident exit
        right = correct.gather(0, leave[None])[0]
        counts = torch.bincount(leave, minlength=len(scores.costs))
        rows.append(
            {
                "threshold": threshold,
                "test_acc": 100.0 * right.float().mean().item(),
                "macs_per_sample": leaving_cost[leave].mean().item(),
                "exit_fractions": (counts.double() / len(leave)).tolist(),
            }
        )
    return {"exits": exits, "early_exit": rows, "samples": int(scores.labels.numel())}


def best_within(result: dict[str, Any], slack: float = ACCURACY_SLACK) -> dict[str, Any] | None:
    """The cheapest threshold whose accuracy is at most ``slack`` points below the last exit's."""
    last = result["exits"][-1]
    good = [row for row in result["early_exit"] if row["test_acc"] >= last["test_acc"] - slack - 1e-9]
    return min(good, key=lambda row: row["macs_per_sample"]) if good else None


def format_table(result: dict[str, Any]) -> list[str]:
    """The study as a table: each exit alone, then each threshold; the last line says what was reached."""
    last = result["exits"][-1]
    lines = [f"{'':<16}{'test acc':>9}  {'MACs/sample':>12}  {'fewer MACs':>10}  leaving at exits"]
    lines.append(
        f"{'':<16}{'':>9}  {'':>12}  {'than last':>10}  " + " ".join(f"{e['stage']:>5}" for e in result["exits"])
    )
    for row in result["exits"]:
        lines.append(
            f"{'exit ' + str(row['stage']) + ' alone':<16}{row['test_acc']:>8.2f}%  {row['macs_per_sample']:>12,.0f}  "
            f"{_fewer(row['macs_per_sample'], last):>10}"
        )
    for row in result["early_exit"]:
        fractions = " ".join(f"{100 * f:>4.0f}%" for f in row["exit_fractions"])
        lines.append(
            f"{'threshold ' + format(row['threshold'], 'g'):<16}{row['test_acc']:>8.2f}%  "
            f"{row['macs_per_sample']:>12,.0f}  {_fewer(row['macs_per_sample'], last):>10}  {fractions}"
        )
    best = best_within(result)
    if best is None:
        lines.append(f"no threshold stays within {ACCURACY_SLACK} points of the last exit's {last['test_acc']:.2f}%")
    else:
        lines.append(
            f"cheapest within {ACCURACY_SLACK} points of the last exit ({last['test_acc']:.2f}%): threshold "
            f"{best['threshold']:g}, {best['test_acc']:.2f}%, {_fewer(best['macs_per_sample'], last)} fewer MACs"
        )
    return lines


def _fewer(macs: float, last: dict[str, Any]) -> str:
    return f"{100 * (1 - macs / last['macs_per_sample']):.1f}%"


def plot_study(result: dict[str, Any], path: Path, *, title: str) -> None:
    """Accuracy against MACs per sample: each exit alone (points) and the thresholds (a line)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "the early-exit plot needs matplotlib: pip install 'degl[plot]' (or pass --plot none)"
        ) from None
    from degl.run.plot import save_figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    exits = result["exits"]
    ax.plot(
        [e["macs_per_sample"] for e in exits], [e["test_acc"] for e in exits], "s--", color="grey", label="one exit"
    )
    for e in exits:
        ax.annotate(f"exit {e['stage']}", (e["macs_per_sample"], e["test_acc"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")  # fmt: skip
    rows = result["early_exit"]
    ax.plot([r["macs_per_sample"] for r in rows], [r["test_acc"] for r in rows], "o-", color="C0", label="early exit")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["macs_per_sample"], r["test_acc"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points", color="C0")  # fmt: skip
    ax.set_xlabel("mean MACs per sample")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
