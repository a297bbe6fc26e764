"""``degl eval``: rebuild a run from its checkpoint and evaluate every trained stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from degl.core.evaluate import evaluate
from degl.errors import UserError
from degl.run import checkpoint
from degl.run.config import TrainConfig, make_config
from degl.run.setup import build_setup


def evaluate_run(run_dir: Path, *, device: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    path, meta = checkpoint.load_meta(run_dir)
    values = dict(meta["config"])
    values["max_steps"] = None
    values["slowdown"] = TrainConfig().slowdown  # only the training's pace; evaluation runs in one process
    if device is not None:
        values["device"] = device
    if data_dir is not None:
        values["data_dir"] = data_dir
    cfg = make_config(values)
    setup = build_setup(cfg)
    for index, stage in enumerate(setup.stages):
        try:
            stage.load_state_dict(checkpoint.load_stage(path, index, setup.device)["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {path} does not match its config: {str(exc).splitlines()[0][:160]}") from None
    phase = min(int(meta["position"]["phase"]), setup.method.num_phases - 1)
    result = evaluate(
        setup.stages,
        setup.test_loader,
        evaluated=setup.method.evaluated_stages(phase),
        autocast=setup.method.precision.autocast,
    )
    return {
        "run": str(run_dir),
        "checkpoint": path.name,
        "stages": result.stages,
        "test_acc_per_stage": result.acc,
        "test_loss_per_stage": result.loss,
        "test_ensemble_acc_per_stage": result.ensemble_acc,
        "test_acc": result.acc[-1],
        "test_acc5_per_stage": result.acc5,
        "test_acc5": result.acc5[-1],
        "samples": result.count,
    }
