"""Bookkeeping shared by every runtime: position, metrics lines, summary.json and checkpoint metadata.

The single-process trainer and rank 0 of the pipeline write the same files in the same format,
so a run can be evaluated, compared or resumed whichever runtime produced it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import degl
from degl.core.accounting import EpochStats, Position, report_nonfinite, train_line
from degl.core.codecs import wire_bytes_per_sample
from degl.core.stage import Stage
from degl.core.step import PRECISION_DTYPES
from degl.run import checkpoint
from degl.run.config import TrainConfig
from degl.run.rundir import MetricsLog, write_json
from degl.run.tensorboard import SUBDIR as TB_SUBDIR
from degl.run.tensorboard import TensorBoardLog
from degl.run.tensorboard import resolve as resolve_tensorboard


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
        # --tensorboard unset: on when the package is installed (resolve raises if asked for but missing).
        board = TensorBoardLog(self.run_dir / TB_SUBDIR) if resolve_tensorboard(self.cfg.tensorboard) else None
        # time_s on every line: the training seconds so far, the x axis of 'degl plot --x time'.
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", clock=lambda: self.train_time_s, tensorboard=board)

    @staticmethod
    def describe_stages(stages: list[Stage]) -> list[dict[str, Any]]:
        return [
            {
                "blocks": list(s.block_indices),
                "params": sum(p.numel() for p in s.parameters()),
                "out_shape": list(s.out_shape),
            }
            for s in stages
        ]

    def wire_bytes_per_sample(self) -> list[float]:
        """Bytes per sample of a training message at each stage boundary under ``--codec`` (at the
        training batch size; codes, scales and codebook updates included); none: the run's precision."""
        if self.cfg.method == "backprop":
            return []
        shapes = [s["out_shape"] for s in self.stage_info[:-1]]
        wire = PRECISION_DTYPES[self.cfg.precision] or torch.float32
        return wire_bytes_per_sample(self.cfg.codec, shapes, self.cfg.batch_size, wire)

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
        self.check_finite(train, evaluation, where=f"epoch {number}")
        losses, accs = train.means()
        for stage, loss, acc in zip(train.stages, losses, accs):
            self.metrics.write(
                train_line(
                    epoch=number, phase=phase, stage=stage, loss=loss, acc=acc, lr=lrs[stage], step=self.global_step
                )
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
            # backprop, dni, cdni, ddg and fr train no aux head
            "aux": cfg.aux if num_stages > 1 and cfg.method in ("dgl", "async-dgl", "sgl") else None,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "epochs_completed": self.position.phase * cfg.epochs + self.position.epoch,
            "steps_completed": self.global_step,
            "completed": completed,
            "test_acc": per_stage[-1] if per_stage else None,
            "test_acc_per_stage": per_stage,
            "evaluated_stages": evaluated,
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
        summary["wire_bytes_per_sample"] = self.wire_bytes_per_sample()
        summary["buffer_bytes"] = 0  # runs with replay buffers set it in extra
        if evaluated and "exact_acc" in self.last_eval[evaluated[-1]]:  # --codec: the exact forward's too
            summary["test_acc_exact_per_stage"] = [self.last_eval[s].get("exact_acc") for s in evaluated]
        summary.update({k: v for k, v in self.extra.items() if k != "num_phases"})
        return summary

    def write_summary(self, *, completed: bool) -> dict[str, Any]:
        summary = self.summary(completed=completed)
        write_json(self.run_dir / "summary.json", summary)
        if self.metrics.tensorboard is not None:
            self.metrics.tensorboard.summary(summary)
        return summary

    def check_finite(
        self, train: EpochStats, evaluation: dict[int, dict[str, float]] | None = None, *, where: str = ""
    ) -> None:
        """Stop a diverged run: a NaN or infinite loss is never recorded as a result or checkpointed."""
        if train.loss_sum is not None:
            train.check_finite()
        bad: list[str] = []
        for stage, values in sorted((evaluation or {}).items()):
            if not math.isfinite(values.get("loss", 0.0)):
                bad.append(f"stage {stage}'s test loss is {values['loss']}")
        if bad:
            at = f"{where}, step {self.global_step}" if where else f"step {self.global_step}"
            report_nonfinite(f"training diverged ({'; '.join(bad[:2])} at {at})")

    def meta(self, epoch_stats: EpochStats, method_shared: dict[str, Any]) -> dict[str, Any]:
        self.check_finite(epoch_stats)
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
        epochs_completed = self.position.phase * self.cfg.epochs + self.position.epoch
        self.metrics.truncate(int(meta["metrics_lines"]), epochs_completed=epochs_completed)

    @property
    def checkpoint_name(self) -> str:
        return checkpoint.checkpoint_name(self.global_step)

    def save_checkpoint(
        self,
        stage_files: list[dict[str, Any]],
        epoch_stats: EpochStats,
        method_shared: dict[str, Any],
        *,
        name: str | None = None,
    ) -> None:
        """Every stage's file, then the metadata and the ``latest`` pointer (one process holds every stage)."""
        name = name or self.checkpoint_name
        self.check_finite(epoch_stats)  # before any stage file is written
        for index, state in enumerate(stage_files):
            checkpoint.save_stage(self.run_dir, name, index, state)
        checkpoint.commit(self.run_dir, name, self.meta(epoch_stats, method_shared), len(stage_files))


def format_summary(summary: dict[str, Any], run_dir: Path) -> list[str]:
    """The lines ``degl train`` prints at the end of a run."""
    accs = summary["test_acc_per_stage"]
    # Methods that score only some heads (backprop, dni, ddg, ...) say which.
    scored = summary.get("evaluated_stages") or list(range(summary["stages"] - len(accs), summary["stages"]))
    per_stage = " ".join(f"{acc:.2f}" for acc in accs)
    if len(accs) < summary["stages"]:
        per_stage = " ".join(f"s{s}={acc:.2f}" for s, acc in zip(scored, accs))
    state = "complete" if summary["completed"] else f"stopped after {summary['steps_completed']} steps"
    lines = [
        f"run: {run_dir} ({state})",
        f"method {summary['method']}, model {summary['model']}, {summary['stages']} stage(s), "
        f"{summary['epochs_completed']} epoch(s), {summary['train_time_s']:.1f}s training",
    ]
    if summary["test_acc"] is not None:
        lines.append(
            f"test accuracy per stage (%): {per_stage}; final {summary['test_acc']:.2f}; "
            f"ensemble {summary['test_acc_ensemble']:.2f}"
        )
    return lines
