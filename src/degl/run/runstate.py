"""Bookkeeping shared by every runtime: position, metrics lines, summary.json and checkpoint metadata.

The single-process trainer and rank 0 of the pipeline write the same files in the same format,
so a run can be evaluated, compared or resumed whichever runtime produced it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import degl
from degl import checkpoint
from degl.config import TrainConfig
from degl.core.methods import StepResult
from degl.core.stage import Stage
from degl.rundir import MetricsLog, write_json


@dataclass
class Position:
    """Where training stands: ``step`` batches of epoch ``epoch`` of phase ``phase`` are done."""

    phase: int = 0
    epoch: int = 0
    step: int = 0

    def after_epoch(self, epochs_per_phase: int) -> Position:
        if self.epoch + 1 == epochs_per_phase:
            return Position(self.phase + 1, 0, 0)
        return Position(self.phase, self.epoch + 1, 0)


@dataclass
class EpochStats:
    """Running sums of the trained heads' training loss and accuracy over the current epoch."""

    stages: list[int] = field(default_factory=list)
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    count: int = 0

    def reset(self, stages: list[int], device: torch.device) -> None:
        self.stages = list(stages)
        self.loss_sum = torch.zeros(len(stages), dtype=torch.float64, device=device)
        self.correct = torch.zeros(len(stages), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, results: list[StepResult]) -> None:
        assert self.loss_sum is not None and self.correct is not None
        for i, result in enumerate(results):
            self.loss_sum[i] += result.loss.double() * result.count
            self.correct[i] += result.correct
        self.count += results[0].count

    def means(self) -> tuple[list[float], list[float]]:
        assert self.loss_sum is not None and self.correct is not None
        n = max(self.count, 1)
        return (self.loss_sum / n).tolist(), (100.0 * self.correct.double() / n).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.stages = list(state["stages"])
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.count = int(state["count"])

    @staticmethod
    def merge(parts: list[EpochStats]) -> EpochStats:
        """Stats of several processes (one stage each) as if one process had trained them all."""
        merged = EpochStats(stages=[s for p in parts for s in p.stages], count=parts[0].count)
        merged.loss_sum = torch.cat([p.loss_sum.cpu() for p in parts])  # type: ignore[union-attr]
        merged.correct = torch.cat([p.correct.cpu() for p in parts])  # type: ignore[union-attr]
        return merged


@dataclass
class RunState:
    """What rank 0 (or the only process) records about a run."""

    cfg: TrainConfig
    run_dir: Path
    stage_info: list[dict[str, Any]]
    device: str
    position: Position = field(default_factory=Position)
    global_step: int = 0
    train_time_s: float = 0.0
    last_eval: dict[int, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    @staticmethod
    def describe_stages(stages: list[Stage]) -> list[dict[str, Any]]:
        return [{"blocks": list(s.block_indices), "params": sum(p.numel() for p in s.parameters())} for s in stages]

    def write_epoch(
        self,
        *,
        phase: int,
        epoch: int,
        train: EpochStats,
        lrs: dict[int, float],
        evaluation: dict[int, dict[str, float]],
    ) -> None:
        """Append the epoch's train and test lines to metrics.jsonl and print one line."""
        number = phase * self.cfg.epochs + epoch + 1
        losses, accs = train.means()
        for stage, loss, acc in zip(train.stages, losses, accs):
            self.metrics.write(
                {
                    "epoch": number,
                    "phase": phase,
                    "stage": stage,
                    "split": "train",
                    "loss": loss,
                    "acc": acc,
                    "lr": lrs[stage],
                    "step": self.global_step,
                }
            )
        for stage, values in sorted(evaluation.items()):
            self.last_eval[stage] = values
            self.metrics.write({"epoch": number, "phase": phase, "stage": stage, "split": "test", **values})
        accs_text = " ".join(f"s{s}={v['acc']:.2f}" for s, v in sorted(evaluation.items()))
        total = self.extra.get("num_phases", 1) * self.cfg.epochs
        tqdm.write(
            f"[{self.cfg.method}] epoch {number}/{total} test acc {accs_text} ({self.train_time_s:.0f}s training)",
            file=sys.stderr,
        )

    def summary(self, *, completed: bool) -> dict[str, Any]:
        cfg = self.cfg
        evaluated = sorted(self.last_eval)
        per_stage = [self.last_eval[s]["acc"] for s in evaluated]
        samples = self.global_step * cfg.batch_size
        num_stages = len(self.stage_info)
        summary = {
            "method": cfg.method,
            "model": cfg.model,
            "width": cfg.width,
            "stages": num_stages,
            "aux": cfg.aux if num_stages > 1 else None,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "epochs_completed": self.position.phase * cfg.epochs + self.position.epoch,
            "steps_completed": self.global_step,
            "completed": completed,
            "test_acc": per_stage[-1] if per_stage else None,
            "test_acc_per_stage": per_stage,
            "test_acc_ensemble": self.last_eval[evaluated[-1]]["ensemble_acc"] if evaluated else None,
            # .get: runs checkpointed before top-5 existed resume without it
            "test_acc5": self.last_eval[evaluated[-1]].get("acc5") if evaluated else None,
            "test_acc5_per_stage": [self.last_eval[s].get("acc5") for s in evaluated],
            "train_time_s": round(self.train_time_s, 3),
            "samples_per_s": round(samples / self.train_time_s, 1) if self.train_time_s > 0 else None,
            "stage_blocks": [s["blocks"] for s in self.stage_info],
            "stage_params": [s["params"] for s in self.stage_info],
            "seed": cfg.seed,
            "device": self.device,
            "precision": cfg.precision,
            "torch": torch.__version__,
            "degl": degl.__version__,
        }
        summary.update({k: v for k, v in self.extra.items() if k != "num_phases"})
        return summary

    def write_summary(self, *, completed: bool) -> dict[str, Any]:
        summary = self.summary(completed=completed)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def meta(self, epoch_stats: EpochStats, method_shared: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.cfg.to_dict(),
            "degl_version": degl.__version__,
            "num_stages": len(self.stage_info),
            "position": vars(self.position).copy(),
            "global_step": self.global_step,
            "train_time_s": self.train_time_s,
            "metrics_lines": self.metrics.lines,
            "epoch_stats": epoch_stats.state_dict(),
            "last_eval": {str(k): v for k, v in self.last_eval.items()},
            "method_shared": method_shared,
        }

    def restore(self, meta: dict[str, Any]) -> None:
        self.position = Position(**meta["position"])
        self.global_step = int(meta["global_step"])
        self.train_time_s = float(meta["train_time_s"])
        self.last_eval = {int(k): v for k, v in meta["last_eval"].items()}
        self.metrics.truncate(int(meta["metrics_lines"]))

    @property
    def checkpoint_name(self) -> str:
        return checkpoint.checkpoint_name(self.global_step)


def stage_checkpoint(stage: Stage, method_stage_state: dict[str, Any]) -> dict[str, Any]:
    """The content of ``stage-<k>.pt``: weights plus that stage's optimizer/schedule/scaler state."""
    return {"model": stage.state_dict(), **method_stage_state}
