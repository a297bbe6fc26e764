"""Build everything a run needs from a :class:`TrainConfig`: device, data, stages, method.

Shared by ``degl train``, ``degl eval`` and the multi-process runtime, so that every entry point
builds bit-identical stages from the same config and seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from degl.core.accounting import set_nonfinite_policy
from degl.core.methods import Method, build_method
from degl.core.optim import OptimSettings
from degl.core.replay_buffer import BufferOptions
from degl.core.split import build_stages
from degl.core.stage import Stage
from degl.data import BatchLoader, Dataset, load_dataset
from degl.data.loader import ChannelsLast
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import TrainConfig, check_slowdowns


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise UserError(f"unsupported --device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


def configure_torch(cfg: TrainConfig) -> None:
    """Threads, determinism and what a non-finite loss does; call before any CUDA work."""
    set_nonfinite_policy(cfg.on_nonfinite)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def num_stages_for(cfg: TrainConfig) -> int:
    # Backprop trains the network end to end: one stage, whatever --stages says.
    return 1 if cfg.method == "backprop" else cfg.stages


def load_data(cfg: TrainConfig) -> Dataset:
    data = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        input_shape=cfg.input_shape,
        num_classes=cfg.num_classes,
        synthetic_size=cfg.synthetic_size,
        image_size=cfg.image_size,
        data_workers=cfg.data_workers,
        download=cfg.download,
    )
    data = data.subset(cfg.train_size)
    if data.num_train < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {data.num_train} training samples")
    return data


def make_stages(cfg: TrainConfig, data: Dataset) -> list[Stage]:
    """Stages initialised from ``cfg.seed`` (the same weights in every process that calls this)."""
    torch.manual_seed(cfg.seed)
    backbone = build_model(
        cfg.model, width=cfg.width, input_shape=data.input_shape, num_classes=data.num_classes, dropout=cfg.dropout
    )
    # Backprop trains the whole network as one stage: no cut applies.
    split_at = cfg.split_at if num_stages_for(cfg) > 1 else None
    return build_stages(
        backbone,
        num_stages_for(cfg),
        aux=cfg.aux,
        cuts=cfg.cuts,
        split_at=split_at,
        split=cfg.split,
        objective=cfg.objective,
        predsim_beta=cfg.predsim_beta,
    )


def check_async_options(cfg: TrainConfig, num_stages: int, *, processes: int = 1) -> None:
    check_slowdowns(cfg.slowdown, num_stages)
    if cfg.slowdown and cfg.method != "async-dgl" and processes == 1:
        raise UserError("--slowdown applies to --method async-dgl, or to runs with --workers")


def buffer_options(cfg: TrainConfig) -> BufferOptions:
    """The run's replay buffers as ``--buffer``, ``--buffer-policy`` ... describe them (capacity at least 1)."""
    return BufferOptions(
        max(cfg.buffer, 1),
        policy=cfg.buffer_policy,
        max_reuse=cfg.max_reuse,
        storage=cfg.buffer_storage,
        compat=cfg.buffer_compat,
        codec=cfg.buffer_codec,
    )


def resolve_cuts(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Record a measured (``--split time``) cut as explicit ``--cuts``.

    Timings differ between processes and runs; deciding once and saving the result means every
    rank and every resume builds exactly the same stages.
    """
    if cfg.split != "time" or cfg.cuts is not None or cfg.split_at is not None or num_stages_for(cfg) == 1:
        return cfg
    with torch.random.fork_rng():
        stages = make_stages(cfg, data)
    return replace(cfg, cuts=tuple(stage.block_indices[0] for stage in stages[1:]))


def optim_settings(cfg: TrainConfig, steps_per_epoch: int) -> OptimSettings:
    return OptimSettings(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        lr_decay_every=cfg.lr_decay_every,
        lr_decay_factor=cfg.lr_decay_factor,
        lr_milestones=cfg.lr_milestones or (),
        reset_at_decay=cfg.reset_at_decay,
    )


def method_options(cfg: TrainConfig, settings: OptimSettings, device: torch.device) -> dict[str, Any]:
    """Keyword arguments of every training method (:class:`degl.core.methods.Method`) for ``cfg``."""
    return {
        "make_optimizer": settings.make_optimizer,
        "make_scheduler": settings.make_scheduler,
        "precision": cfg.precision,
        "device": device,
        "reset_at_decay": cfg.reset_at_decay,
        "loss_scale_init": cfg.loss_scale_init,
        "loss_scale_growth_interval": cfg.loss_scale_growth_interval,
        "codec": cfg.codec,
        "codec_seed": cfg.seed,
    }


@dataclass
class RunSetup:
    cfg: TrainConfig
    device: torch.device
    data: Dataset
    stages: list[Stage]
    method: Method
    train_loader: BatchLoader
    test_loader: BatchLoader


def build_setup(cfg: TrainConfig) -> RunSetup:
    device = resolve_device(cfg.device)
    configure_torch(cfg)
    data = load_data(cfg)
    cfg = resolve_cuts(cfg, data)
    stages = [prepare_stage(stage, cfg, device) for stage in make_stages(cfg, data)]
    check_async_options(cfg, len(stages))
    train_loader, test_loader = loaders(cfg, data, device)
    settings = optim_settings(cfg, len(train_loader))
    method = build_method(cfg.method, stages, **method_options(cfg, settings, device))
    return RunSetup(cfg, device, data, stages, method, train_loader, test_loader)


def loaders(cfg: TrainConfig, data: Dataset, device: torch.device) -> tuple[BatchLoader, BatchLoader]:
    train_loader, test_loader = data.loaders(
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        device=device,
        augment=cfg.augment,
        seed=cfg.seed,
    )
    if cfg.channels_last:
        return ChannelsLast(train_loader), ChannelsLast(test_loader)
    return train_loader, test_loader


def prepare_stage(stage: Stage, cfg: TrainConfig, device: torch.device) -> Stage:
    """Move a stage to its device and apply the speed options (memory format, torch.compile)."""
    stage = stage.to(device)
    if cfg.channels_last:
        stage = stage.to(memory_format=torch.channels_last)
    if cfg.compile:
        # In place: the state_dict keys stay those of the plain module, so checkpoints do not change.
        stage.block.compile()
        stage.head.compile()
    return stage
