"""One training run in one process: the loop, metrics, checkpoints, resume, progress, Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import degl
from degl import checkpoint
from degl.config import TrainConfig
from degl.core.evaluate import EvalResult, evaluate
from degl.core.methods import StepResult
from degl.rundir import MetricsLog, check_new_run_dir, default_run_dir, write_config, write_json
from degl.setup import RunSetup, build_setup


@dataclass
class Position:
    """Where training stands: ``step`` batches of epoch ``epoch`` of phase ``phase`` are done."""

    phase: int = 0
    epoch: int = 0
    step: int = 0


@dataclass
class EpochStats:
    """Running sums of the trained heads' training loss and accuracy over the current epoch."""

    stages: list[int] = field(default_factory=list)
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    count: int = 0

    def reset(self, stages: list[int], device: torch.device) -> None:
        self.stages = list(stages)
        dtype = torch.float64 if device.type != "mps" else torch.float32
        self.loss_sum = torch.zeros(len(stages), dtype=dtype, device=device)
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
        return {
            "stages": self.stages,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.stages = list(state["stages"])
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.count = int(state["count"])


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM asks the loop to checkpoint and stop; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "degl: stopping after this step and writing a checkpoint (Ctrl-C again to abort)", file=sys.stderr
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Raised after the checkpoint is written when training was stopped by a signal."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved, continue with: degl train --resume {run_dir}")
        self.run_dir = run_dir


class Trainer:
    """Runs a :class:`RunSetup` to completion (or to ``max_steps``), writing the run directory."""

    def __init__(self, setup: RunSetup, run_dir: Path) -> None:
        self.setup = setup
        self.cfg: TrainConfig = setup.cfg
        self.method = setup.method
        self.run_dir = run_dir
        self.position = Position()
        self.global_step = 0
        self.train_time_s = 0.0
        self.stats = EpochStats()
        self.last_eval: dict[int, dict[str, float]] = {}
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        name = checkpoint.checkpoint_name(self.global_step)
        method_state = self.method.state_dict()
        for index, stage in enumerate(self.setup.stages):
            state = {"model": stage.state_dict(), **method_state["stages"][index]}
            checkpoint.save_stage(self.run_dir, name, index, state)
        meta = {
            "format": 1,
            "config": self.cfg.to_dict(),
            "degl_version": degl.__version__,
            "num_stages": len(self.setup.stages),
            "position": vars(self.position).copy(),
            "global_step": self.global_step,
            "train_time_s": self.train_time_s,
            "metrics_lines": self.metrics.lines,
            "epoch_stats": self.stats.state_dict(),
            "last_eval": {str(k): v for k, v in self.last_eval.items()},
            "method_shared": method_state["shared"],
        }
        checkpoint.commit(self.run_dir, name, meta, len(self.setup.stages))

    def restore(self, path: Path, meta: dict[str, Any]) -> None:
        device = self.setup.device
        stage_states = [checkpoint.load_stage(path, i, device) for i in range(len(self.setup.stages))]
        try:
            for stage, state in zip(self.setup.stages, stage_states):
                stage.load_state_dict(state["model"])
            self.method.load_state_dict(
                {
                    "stages": [{k: v for k, v in s.items() if k != "model"} for s in stage_states],
                    "shared": meta["method_shared"],
                }
            )
        except (RuntimeError, KeyError, ValueError) as exc:
            raise degl.UserError(
                f"checkpoint {path} does not match this run's model: {str(exc).splitlines()[0][:160]}"
            ) from None
        self.position = Position(**meta["position"])
        self.global_step = int(meta["global_step"])
        self.train_time_s = float(meta["train_time_s"])
        self.stats.load_state_dict(meta["epoch_stats"], device)
        self.last_eval = {int(k): v for k, v in meta["last_eval"].items()}
        self.metrics.truncate(int(meta["metrics_lines"]))

    # ---------------------------------------------------------------- metrics
    def summary(self, *, completed: bool) -> dict[str, Any]:
        cfg, stages = self.cfg, self.setup.stages
        evaluated = sorted(self.last_eval)
        per_stage = [self.last_eval[s]["acc"] for s in evaluated]
        epochs_done = self.position.phase * cfg.epochs + self.position.epoch
        samples = self.global_step * cfg.batch_size
        return {
            "method": cfg.method,
            "model": cfg.model,
            "width": cfg.width,
            "stages": len(stages),
            "aux": cfg.aux if len(stages) > 1 else None,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "epochs_completed": epochs_done,
            "steps_completed": self.global_step,
            "completed": completed,
            "test_acc": per_stage[-1] if per_stage else None,
            "test_acc_per_stage": per_stage,
            "test_acc_ensemble": self.last_eval[evaluated[-1]]["ensemble_acc"] if evaluated else None,
            "train_time_s": round(self.train_time_s, 3),
            "samples_per_s": round(samples / self.train_time_s, 1) if self.train_time_s > 0 else None,
            "stage_blocks": [list(s.block_indices) for s in stages],
            "stage_params": [sum(p.numel() for p in s.parameters()) for s in stages],
            "seed": cfg.seed,
            "device": str(self.setup.device),
            "precision": cfg.precision,
            "torch": torch.__version__,
            "degl": degl.__version__,
        }

    def end_of_epoch(self, phase: int, epoch: int) -> EvalResult:
        cfg = self.cfg
        result = evaluate(
            self.setup.stages,
            self.setup.test_loader,
            evaluated=self.method.evaluated_stages(phase),
            autocast=self.method.precision.autocast,
        )
        number = phase * cfg.epochs + epoch + 1
        train_loss, train_acc = self.stats.means()
        lrs = self.method.current_lrs()
        for i, stage in enumerate(self.stats.stages):
            lr = lrs[stage] if len(lrs) > stage else lrs[0]
            self.metrics.write(
                {
                    "epoch": number,
                    "phase": phase,
                    "stage": stage,
                    "split": "train",
                    "loss": train_loss[i],
                    "acc": train_acc[i],
                    "lr": lr,
                    "step": self.global_step,
                }
            )
        for stage, values in result.by_stage().items():
            self.last_eval[stage] = values
            self.metrics.write({"epoch": number, "phase": phase, "stage": stage, "split": "test", **values})
        accs = " ".join(f"s{s}={v['acc']:.2f}" for s, v in sorted(result.by_stage().items()))
        total = self.method.num_phases * cfg.epochs
        tqdm.write(
            f"[{cfg.method}] epoch {number}/{total} test acc {accs} ({self.train_time_s:.0f}s training)",
            file=sys.stderr,
        )
        return result

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        cfg, method, loader = self.cfg, self.method, self.setup.train_loader
        steps_here = 0
        total_epochs = method.num_phases * cfg.epochs
        start = self.position
        with (
            StopRequest() as stop,
            tqdm(
                total=total_epochs,
                initial=start.phase * cfg.epochs + start.epoch,
                desc=f"{cfg.method} epochs",
                unit="ep",
                disable=not cfg.progress,
                file=sys.stderr,
                dynamic_ncols=True,
            ) as epoch_bar,
        ):
            for phase in range(start.phase, method.num_phases):
                method.start_phase(phase)
                first_epoch = start.epoch if phase == start.phase else 0
                for epoch in range(first_epoch, cfg.epochs):
                    resumed_mid_epoch = (phase, epoch) == (start.phase, start.epoch) and start.step > 0
                    first_step = start.step if resumed_mid_epoch else 0
                    if not resumed_mid_epoch:
                        self.stats.reset(method.trained_stages(phase), self.setup.device)
                    self.position = Position(phase, epoch, first_step)
                    seed_epoch = phase * cfg.epochs + epoch
                    with tqdm(
                        total=len(loader),
                        initial=first_step,
                        leave=False,
                        unit="step",
                        desc=f"epoch {seed_epoch + 1}",
                        disable=not cfg.progress,
                        file=sys.stderr,
                        dynamic_ncols=True,
                    ) as step_bar:
                        for step, (x, y) in enumerate(loader.epoch(seed_epoch, first_step), first_step):
                            tick = time.perf_counter()
                            results = method.train_step(x, y, phase)
                            self.stats.add(results)
                            if self.setup.device.type == "cuda":
                                torch.cuda.synchronize(self.setup.device)
                            self.train_time_s += time.perf_counter() - tick
                            self.global_step += 1
                            steps_here += 1
                            self.position.step = step + 1
                            step_bar.update(1)
                            if step % 20 == 0 or step + 1 == len(loader):
                                step_bar.set_postfix_str(self._postfix(), refresh=False)
                            limit_hit = cfg.max_steps is not None and steps_here >= cfg.max_steps
                            if (limit_hit or stop.requested) and step + 1 < len(loader):
                                return self._stop(stop.requested)
                    self.end_of_epoch(phase, epoch)
                    self.position = Position(phase, epoch + 1, 0)
                    if epoch + 1 == cfg.epochs:
                        self.position = Position(phase + 1, 0, 0)
                    epoch_bar.update(1)
                    finished = self.position.phase == method.num_phases
                    self.save_checkpoint()
                    write_json(self.run_dir / "summary.json", self.summary(completed=finished))
                    limit_hit = cfg.max_steps is not None and steps_here >= cfg.max_steps
                    if (limit_hit or stop.requested) and not finished:
                        return self._stop(stop.requested)
        summary = self.summary(completed=True)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _stop(self, interrupted: bool) -> dict[str, Any]:
        self.save_checkpoint()
        summary = self.summary(completed=False)
        write_json(self.run_dir / "summary.json", summary)
        if interrupted:
            raise Interrupted(self.run_dir)
        return summary

    def _postfix(self) -> str:
        losses, accs = self.stats.means()
        return " ".join(
            f"s{s}:{loss:.2f}/{acc:.0f}%" for s, loss, acc in zip(self.stats.stages, losses, accs)
        )


def train(cfg: TrainConfig) -> tuple[dict[str, Any], Path]:
    """Start a new run; return its summary and directory."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
    check_new_run_dir(run_dir)
    setup = build_setup(cfg)  # every user error surfaces here, before the run directory exists
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = cfg.to_dict()
    saved["out"] = str(run_dir)
    write_config(run_dir, {k: v for k, v in saved.items() if k != "max_steps"})
    trainer = Trainer(setup, run_dir)
    return trainer.fit(), run_dir


def resume(run_dir: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """Continue the run in ``run_dir`` from its newest checkpoint with its saved configuration."""
    from degl.config import INVOCATION_KEYS, make_config

    path, meta = checkpoint.load_meta(run_dir)
    saved = dict(meta["config"])
    saved["max_steps"] = None
    for key, value in overrides.items():
        if key not in INVOCATION_KEYS:
            if saved.get(key) != value:
                flag = "--" + key.replace("_", "-")
                raise degl.UserError(
                    f"{flag} cannot change when resuming (the run was started with {saved.get(key)!r}); "
                    "drop it to continue with the saved configuration"
                )
            continue
        saved[key] = value
    saved["out"] = str(run_dir)
    cfg = make_config(saved)
    setup = build_setup(cfg)
    trainer = Trainer(setup, Path(run_dir))
    trainer.restore(path, meta)
    if trainer.position.phase >= setup.method.num_phases:
        tqdm.write(f"degl: {run_dir} is already complete ({trainer.global_step} steps)", file=sys.stderr)
        return trainer.summary(completed=True), Path(run_dir)
    return trainer.fit(), Path(run_dir)
