"""``degl eval``: rebuild a run from its checkpoint and evaluate every trained stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degl.core.evaluate import evaluate
from degl.run import checkpoint
from degl.run.config import TrainConfig, make_config
from degl.run.setup import RunSetup, build_setup


@dataclass
class LoadedRun:
    """A run rebuilt from its newest checkpoint: the setup with the trained weights loaded."""

    run_dir: Path
    checkpoint: Path
    meta: dict[str, Any]
    setup: RunSetup
    evaluated: list[int]
    """The stages whose heads are trained at this checkpoint (those ``degl eval`` scores)."""


def load_run(run_dir: Path, *, device: str | None = None, data_dir: str | None = None, **overrides: Any) -> LoadedRun:
    """Rebuild ``run_dir``'s stages from config + checkpoint; ``overrides`` replace config values."""
    path, meta = checkpoint.load_meta(run_dir)
    values = dict(meta["config"])
    values["max_steps"] = None
    values["slowdown"] = TrainConfig().slowdown  # only the training's pace; evaluation runs in one process
    if device is not None:
        values["device"] = device
    if data_dir is not None:
        values["data_dir"] = data_dir
    values.update(overrides)
    cfg = make_config(values)
    setup = build_setup(cfg)
    for index, stage in enumerate(setup.stages):
        with checkpoint.restoring(path, "does not match its config"):
            stage.load_state_dict(checkpoint.load_stage(path, index, setup.device)["model"])
    phase = min(int(meta["position"]["phase"]), setup.method.num_phases - 1)
    return LoadedRun(Path(run_dir), path, meta, setup, sorted(setup.method.evaluated_stages(phase)))


def evaluate_run(run_dir: Path, *, device: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    run = load_run(run_dir, device=device, data_dir=data_dir)
    setup = run.setup
    result = evaluate(
        setup.stages,
        setup.test_loader,
        evaluated=run.evaluated,
        autocast=setup.method.precision.autocast,
    )
    return {
        "run": str(run_dir),
        "checkpoint": run.checkpoint.name,
        "stages": result.stages,
        "test_acc_per_stage": result.acc,
        "test_loss_per_stage": result.loss,
        "test_ensemble_acc_per_stage": result.ensemble_acc,
        "test_acc": result.acc[-1],
        "test_acc5_per_stage": result.acc5,
        "test_acc5": result.acc5[-1],
        "samples": result.count,
    }
