"""The rules a configuration must satisfy before anything is built: ranges, choices, and options
that contradict each other. Each broken rule is one :class:`UserError` line naming the flag.

Checks that need the model or the data (a cut past the last block, a batch larger than the
training set) happen where those are built.
"""

from __future__ import annotations

import functools
import math
import os
import sys

from degl.core.alternatives import GRADIENT_METHODS
from degl.core.codecs import parse_codec
from degl.core.objectives import OBJECTIVES
from degl.errors import UserError
from degl.run.config.fields import TrainConfig, config_fields, flag_of

POSITIVE_INTS = ("stages", "epochs", "batch_size", "eval_batch_size", "num_classes", "synthetic_size", "image_size")
POSITIVE_INTS_OR_UNSET = ("train_size", "threads", "max_steps", "lr_decay_every")
POSITIVE_FINITE = ("width", "lr")


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks that do not need the model or the data."""
    for f in config_fields():
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise UserError(f"unknown {flag_of(f.name)} {value!r}; choose one of: {', '.join(choices)}")
    if cfg.tensorboard:
        from degl.run.tensorboard import resolve

        resolve(cfg.tensorboard)  # asked for explicitly: fail now, before the run directory exists
    if cfg.objective not in OBJECTIVES and ":" not in cfg.objective:
        raise UserError(
            f"unknown --objective {cfg.objective!r}; choose one of: {', '.join(OBJECTIVES)}, "
            "or path/to/file.py:FUNCTION"
        )
    if cfg.predsim_beta is not None and not 0.0 < cfg.predsim_beta < 1.0:
        raise UserError(
            f"--predsim-beta must be strictly between 0 and 1 (sim alone is --objective sim), got {cfg.predsim_beta}"
        )
    for name in POSITIVE_INTS:
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag_of(name)} must be a positive integer, got {getattr(cfg, name)}")
    for name in POSITIVE_INTS_OR_UNSET:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"{flag_of(name)} must be a positive integer, got {value}")
    for name in POSITIVE_FINITE:
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise UserError(f"{flag_of(name)} must be a positive finite number, got {getattr(cfg, name)}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {cfg.momentum} (at 1 or above SGD diverges)")
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cores:
        note_once(f"--threads {cfg.threads} is more than this machine's {cores} cores; the threads will share them")
    if not 0 < cfg.lr_decay_factor <= 1:
        raise UserError(f"--lr-decay-factor must be in (0, 1], got {cfg.lr_decay_factor}")
    if cfg.buffer < 0:
        raise UserError(f"--buffer must be 0 or more, got {cfg.buffer}")
    if cfg.max_reuse is not None and cfg.max_reuse < 1:
        raise UserError(f"--max-reuse must be a positive integer, got {cfg.max_reuse}")
    if cfg.buffer_compat == "paper" and cfg.buffer_policy != "priority_lifo":
        raise UserError("--buffer-compat paper only exists for --buffer-policy priority_lifo")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers must be a positive integer, got {cfg.workers}")
    if not cfg.fault_timeout > 0:
        raise UserError(f"--fault-timeout must be positive, got {cfg.fault_timeout}")
    if cfg.max_in_flight < 1:
        raise UserError(f"--max-in-flight must be a positive integer, got {cfg.max_in_flight}")
    if cfg.data_workers < 0:
        raise UserError(f"--data-workers must be 0 or more, got {cfg.data_workers}")
    if cfg.loss_scale_init <= 0 or cfg.loss_scale_growth_interval < 1:
        raise UserError("--loss-scale-init must be positive and --loss-scale-growth-interval at least 1")
    if cfg.feature_cache_gb < 0:
        raise UserError(f"--feature-cache-gb must be 0 or more, got {cfg.feature_cache_gb}")
    if cfg.weight_decay < 0:
        raise UserError("--weight-decay must not be negative")
    check_consistent(cfg)
    parse_codec(cfg.codec, flag="--codec")
    parse_codec(cfg.buffer_codec, flag="--buffer-codec")


def check_consistent(cfg: TrainConfig) -> None:
    """Options that are each valid but contradict one another."""
    if cfg.method in GRADIENT_METHODS and cfg.precision == "fp16":
        raise UserError(
            f"--method {cfg.method} runs in fp32 or bf16: fp16's loss scale would scale the gradients it sends"
        )
    if cfg.nesterov and cfg.momentum == 0:
        raise UserError("--nesterov needs momentum: give --momentum > 0 (or drop --nesterov)")
    if cfg.cuts is not None and cfg.split_at is not None:
        raise UserError("--cuts and --split-at both choose the cut; give one of them")
    if cfg.split_at is not None and cfg.method != "backprop" and cfg.stages != len(cfg.split_at) + 1:
        raise UserError(
            f"--split-at names {len(cfg.split_at)} cut(s), which make {len(cfg.split_at) + 1} stages, "
            f"but --stages is {cfg.stages}; drop --stages"
        )
    if cfg.schedule == "milestones" and not cfg.lr_milestones:
        raise UserError("--schedule milestones needs --lr-milestones, e.g. --lr-milestones 150,225")
    if cfg.reset_at_decay and cfg.schedule not in ("step", "milestones"):
        raise UserError("--reset-at-decay needs a decaying schedule: --schedule step or milestones")
    if cfg.num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {cfg.num_classes}")


@functools.cache
def note_once(message: str) -> None:
    """A ``degl: note:`` line on stderr, once per process for the same message."""
    print(f"degl: note: {message}", file=sys.stderr)
