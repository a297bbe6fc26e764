"""The run directory of a multi-process pipeline run (``degl train --workers K``).

Every rank saves its own stage file; rank 0, which gathers every rank's report at each epoch's end,
writes the rest: the checkpoint's metadata, ``metrics.jsonl`` and ``summary.json``. The rank loops
call it through the :class:`~degl.runtime.plan.Recorder` protocol.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from degl.core.accounting import EpochStats, Position
from degl.core.step import StageStep
from degl.run import checkpoint
from degl.run.config import TrainConfig
from degl.run.runstate import RunState

IDLE_HINT = 0.25  # a rank waiting more than this for its input is worth a note


class RunRecorder:
    """The run directory of a pipeline run: every rank saves its stage file, rank 0 the rest."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, state: RunState | None) -> None:
        self.cfg, self.run_dir, self.state = cfg, run_dir, state
        self.summary: dict[str, Any] | None = None
        self.hinted = False

    def save(self, rank: int, global_step: int, step: StageStep) -> None:
        checkpoint.save_stage(self.run_dir, checkpoint.checkpoint_name(global_step), rank, step.checkpoint())

    def _commit(self, reports: list[dict[str, Any]], merged: EpochStats, *, completed: bool) -> None:
        assert self.state is not None
        for key in ("idle", "recv_wait", "send_wait"):
            self.state.extra[f"{key}_fraction_per_stage"] = [round(r["timing"][key], 4) for r in reports]
        name = checkpoint.checkpoint_name(self.state.global_step)
        checkpoint.commit(self.run_dir, name, self.state.meta(merged, {}), len(reports), verify=False)
        self.summary = self.state.write_summary(completed=completed)
        self._hint_balance(reports)

    def _hint_balance(self, reports: list[dict[str, Any]]) -> None:
        """Once per run: say when a rank mostly waited and the cut was not balanced by measured time."""
        idle = [r["timing"]["recv_wait"] for r in reports]
        worst = max(range(len(idle)), key=idle.__getitem__)
        if idle[worst] > IDLE_HINT and self.cfg.split != "time" and self.cfg.cuts is None and not self.hinted:
            self.hinted = True
            print(
                f"degl: note: rank {worst} spent {idle[worst]:.0%} of its training time waiting for its input: "
                "the stages are unbalanced; --split time cuts where the measured step times are even",
                file=sys.stderr,
            )

    def _account(self, reports: list[dict[str, Any]], position: Position) -> EpochStats:
        assert self.state is not None
        self.state.train_time_s += max(r["elapsed"] for r in reports)
        self.state.position = position
        self.state.global_step = reports[0]["steps"]
        parts = []
        for report in reports:
            part = EpochStats()
            part.load_state_dict(report["stats"], torch.device("cpu"))
            parts.append(part)
        return EpochStats.merge(parts)

    def epoch_end(self, reports: list[dict[str, Any]], *, epoch: int, position: Position, finished: bool) -> None:
        assert self.state is not None
        merged = self._account(reports, position)
        self.state.write_epoch(
            phase=0,
            epoch=epoch,
            train=merged,
            lrs={r["rank"]: r["lr"] for r in reports},
            evaluation={r["rank"]: r["eval"] for r in reports if r["eval"] is not None},
        )
        self._commit(reports, merged, completed=finished)

    def stopped(self, reports: list[dict[str, Any]], *, position: Position) -> None:
        self._commit(reports, self._account(reports, position), completed=False)

    def async_end(self, reports: list[dict[str, Any]], *, position: Position, completed: bool) -> None:
        assert self.state is not None
        self.state.train_time_s = max(r["elapsed"] for r in reports)
        self.state.position = position
        self.state.global_step = reports[0]["steps"]
        # A rank reports only its total time: a line's time_s is interpolated from its step (rate ~constant).
        timed = [{"time_s": round(r["elapsed"] * x["step"] / r["steps"], 3), **x} for r in reports for x in r["lines"]]
        lines = sorted(timed, key=lambda line: (line["epoch"], line["stage"]))
        for line in lines:
            self.state.metrics.write(line)
        for r in reports:
            self.state.last_eval[r["rank"]] = r["eval"]
            self.state.metrics.write(
                {"epoch": self.cfg.epochs, "phase": 0, "stage": r["rank"], "split": "test", **r["eval"]}
            )
        self.state.extra.update(
            {
                "buffer": self.cfg.buffer,
                "steps_per_stage": [r["steps"] for r in reports],
                "served_per_stage": [r["served"] for r in reports],
                "budget_s_per_stage": [round(r["budget_s"], 3) for r in reports],
                "steps_per_s_per_stage": [round(r["steps_per_s"], 3) for r in reports],
                "reuse_per_stage": [round(r["reuse"], 4) for r in reports],
                "staleness_per_stage": [round(r["staleness"], 4) for r in reports],
                "buffer_bytes": sum(r["buffer_bytes"] for r in reports),
            }
        )
        accs = " ".join(f"s{r['rank']}={r['eval']['acc']:.2f}" for r in reports)
        print(f"[async-dgl] test acc {accs}; steps per stage {[r['steps'] for r in reports]}", file=sys.stderr)
        empty = []
        for r in reports:
            stats = EpochStats()
            stats.reset([r["rank"]], torch.device("cpu"))
            empty.append(stats)
        self._commit(reports, EpochStats.merge(empty), completed=completed)
