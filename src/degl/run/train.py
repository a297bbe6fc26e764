"""One training run in one process: the loop, checkpoints, resume, progress bars and Ctrl-C.

For several processes (one stage each) see :mod:`degl.run.pipeline_run`; both write the same run
directory through :class:`degl.run.runstate.RunState`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from degl.core.codecs import evaluate_coded
from degl.core.feature_cache import FrozenFeatureCache
from degl.core.methods import SequentialGreedy
from degl.data.base import BatchLoader
from degl.errors import UserError
from degl.run import checkpoint
from degl.run.config import TrainConfig
from degl.run.control import Interrupted, StopPolicy, StopRequest, epoch_bar, step_bar
from degl.run.rundir import (
    check_new_run_dir,
    claim_new_run_dir,
    default_run_dir,
    lock_run_dir,
    release_run_dir,
    write_config,
)
from degl.run.runstate import EpochStats, Position, RunState
from degl.run.setup import RunSetup, build_setup


class Trainer:
    """Runs a :class:`RunSetup` to completion (or to ``max_steps``), writing the run directory."""

    def __init__(self, setup: RunSetup, run_dir: Path) -> None:
        self.setup = setup
        self.cfg: TrainConfig = setup.cfg
        self.method = setup.method
        self.stats = EpochStats()
        self.feature_cache = FrozenFeatureCache(setup.train_loader, int(self.cfg.feature_cache_gb * 2**30))
        self.state = RunState(
            self.cfg,
            run_dir,
            RunState.describe_stages(setup.stages),
            str(setup.device),
            extra={"num_phases": self.method.num_phases},
        )

    def save_checkpoint(self) -> None:
        self.state.save_checkpoint(self.method.stage_files(), self.stats, self.method.shared_state())

    def restore(self, path: Path, meta: dict[str, Any]) -> None:
        device = self.setup.device
        stage_states = [checkpoint.load_stage(path, i, device) for i in range(len(self.setup.stages))]
        if meta["num_stages"] != len(self.setup.stages):
            raise UserError(f"checkpoint {path} has {meta['num_stages']} stages, this run {len(self.setup.stages)}")
        with checkpoint.restoring(path):
            self.method.load_stage_files(stage_states, meta["method_shared"])
        self.state.restore(meta)
        self.stats.load_state_dict(meta["epoch_stats"], device)

    def end_of_epoch(self, phase: int, epoch: int) -> None:
        # Through the boundaries' codecs when --codec simulates one (exact_acc: without them).
        evaluation = evaluate_coded(
            self.setup.stages,
            getattr(self.method, "codecs", []),
            self.setup.test_loader,
            evaluated=self.method.evaluated_stages(phase),
            autocast=self.method.precision.autocast,
        )
        lrs = self.method.current_lrs()
        self.state.write_epoch(
            phase=phase,
            epoch=epoch,
            train=self.stats,
            evaluation=evaluation,
            lrs={s: lrs[s] if len(lrs) > 1 else lrs[0] for s in self.stats.stages},
        )

    def fit(self) -> dict[str, Any]:
        cfg, method, state = self.cfg, self.method, self.state
        start = state.position
        device = self.setup.device
        with (
            StopRequest() as request,
            epoch_bar(cfg, method.num_phases * cfg.epochs, start.phase * cfg.epochs + start.epoch) as epochs_bar,
        ):
            policy = StopPolicy(cfg.max_steps, request)
            for phase in range(start.phase, method.num_phases):
                method.start_phase(phase)
                tick = time.perf_counter()
                loader, step_options = self._phase_loader(phase)
                state.train_time_s += time.perf_counter() - tick  # filling sgl's feature cache is training work
                for epoch in range(start.epoch if phase == start.phase else 0, cfg.epochs):
                    first_step = start.resumed_step(phase, epoch)
                    if first_step == 0:
                        self.stats.reset(method.trained_stages(phase), device)
                    state.position = Position(phase, epoch, first_step)
                    seed_epoch = phase * cfg.epochs + epoch
                    with step_bar(cfg, len(loader), first_step, seed_epoch + 1) as bar:
                        for step, (x, y) in enumerate(loader.epoch(seed_epoch, first_step), first_step):
                            tick = time.perf_counter()
                            self.stats.add(method.train_step(x, y, phase, **step_options))
                            if device.type == "cuda":
                                torch.cuda.synchronize(device)
                            state.train_time_s += time.perf_counter() - tick
                            state.global_step += 1
                            policy.stepped()
                            state.position.step = step + 1
                            bar.update(1)
                            if step % 20 == 0 or step + 1 == len(loader):
                                bar.set_postfix_str(self._postfix(), refresh=False)
                            if policy.due and step + 1 < len(loader):
                                self._finish_epoch()
                                return self._stop(policy.requested)
                    self._finish_epoch()
                    self.end_of_epoch(phase, epoch)
                    state.position = state.position.after_epoch(cfg.epochs)
                    epochs_bar.update(1)
                    finished = state.position.phase == method.num_phases
                    self.save_checkpoint()
                    state.write_summary(completed=finished)
                    if policy.due and not finished:
                        return self._stop(policy.requested)
        return state.write_summary(completed=True)

    def _finish_epoch(self) -> None:
        tick = time.perf_counter()
        self.method.finish_epoch()
        self.state.train_time_s += time.perf_counter() - tick

    def _phase_loader(self, phase: int) -> tuple[BatchLoader, dict[str, Any]]:
        """The training batches of ``phase``: images, or (sgl) the frozen stages' cached features."""
        if isinstance(self.method, SequentialGreedy):
            cached = self.feature_cache.loader_for(phase, self.setup.stages, self.method.precision.autocast)
            if cached is not None:
                return cached, {"frozen_applied": True}
        return self.setup.train_loader, {}

    def _stop(self, interrupted: bool) -> dict[str, Any]:
        self.save_checkpoint()
        summary = self.state.write_summary(completed=False)
        if interrupted:
            raise Interrupted(self.state.run_dir)
        return summary

    def _postfix(self) -> str:
        losses, accs = self.stats.means()
        return " ".join(f"s{s}:{loss:.2f}/{acc:.0f}%" for s, loss, acc in zip(self.stats.stages, losses, accs))


def make_trainer(setup: RunSetup, run_dir: Path) -> Trainer:
    """The single-process trainer for the method: the batch loop, or the async-dgl simulation."""
    if setup.cfg.method == "async-dgl":
        from degl.run.async_sim import AsyncSimTrainer

        return AsyncSimTrainer(setup, run_dir)  # type: ignore[return-value]
    return Trainer(setup, run_dir)


def prepare_new_run(cfg: TrainConfig) -> tuple[TrainConfig, Path]:
    """Choose and check the run directory; nothing is created yet."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
    check_new_run_dir(run_dir)
    return cfg, run_dir


def create_run_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    """Claim ``run_dir`` for this run (see :func:`claim_new_run_dir`), write its config; the directory."""
    run_dir = claim_new_run_dir(run_dir, default=not cfg.out)
    saved = cfg.to_dict()
    saved["out"] = str(run_dir)
    write_config(run_dir, {k: v for k, v in saved.items() if k != "max_steps"})
    return run_dir


def train(cfg: TrainConfig) -> tuple[dict[str, Any], Path]:
    """Start a new run in this process; return its summary and directory."""
    cfg, run_dir = prepare_new_run(cfg)
    setup = build_setup(cfg)  # every user error surfaces here, before the run directory exists
    run_dir = create_run_dir(setup.cfg, run_dir)
    try:
        return make_trainer(setup, run_dir).fit(), run_dir
    finally:
        release_run_dir(run_dir)


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The checkpoint to resume from, its metadata, and the saved config with invocation overrides."""
    from degl.run.config import INVOCATION_KEYS, make_config, upgrade_saved_config

    path, meta = checkpoint.load_meta(run_dir)
    saved = upgrade_saved_config(meta["config"])
    saved["max_steps"] = None
    refuse_edited_config(run_dir, saved, INVOCATION_KEYS)
    for key, value in overrides.items():
        if key not in INVOCATION_KEYS:
            if saved.get(key) != value:
                flag = "--" + key.replace("_", "-")
                raise UserError(
                    f"{flag} cannot change when resuming (the run was started with {saved.get(key)!r}); "
                    "drop it to continue with the saved configuration"
                )
            continue
        saved[key] = value
    saved["out"] = str(run_dir)
    return path, meta, make_config(saved)


def refuse_edited_config(run_dir: Path, saved: dict[str, Any], may_change: frozenset[str]) -> None:
    """A resume continues the checkpoint's configuration: an edit of config.yaml is an error, not ignored."""
    import yaml

    from degl.run.config import upgrade_saved_config

    try:
        on_disk = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # unreadable or absent: the checkpoint holds the configuration anyway
    if not isinstance(on_disk, dict):
        return
    on_disk = upgrade_saved_config(on_disk)
    edited = sorted(k for k in on_disk if k not in may_change and k in saved and on_disk[k] != saved[k])
    if edited:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {on_disk[k]!r}" for k in edited[:3])
        raise UserError(
            f"{Path(run_dir) / 'config.yaml'} was edited since the run was checkpointed ({changes}); a resume "
            "continues the checkpoint's configuration: undo the edit, or start a new run with --config"
        )


def resume_from(run_dir: Path, path: Path, meta: dict[str, Any], cfg: TrainConfig) -> tuple[dict[str, Any], Path]:
    """Continue the run in ``run_dir`` in this process from checkpoint ``path``."""
    lock_run_dir(run_dir)
    try:
        setup = build_setup(cfg)
        trainer = make_trainer(setup, Path(run_dir))
        trainer.restore(path, meta)
        if trainer.state.position.phase >= setup.method.num_phases:
            tqdm.write(f"degl: {run_dir} is already complete ({trainer.state.global_step} steps)", file=sys.stderr)
            return trainer.state.summary(completed=True), Path(run_dir)
        return trainer.fit(), Path(run_dir)
    finally:
        release_run_dir(run_dir)


def resume(run_dir: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """Continue the run in ``run_dir`` in this process from its newest checkpoint."""
    path, meta, cfg = resume_config(run_dir, overrides)
    return resume_from(run_dir, path, meta, cfg)
