"""Options a run would ignore are refused, not silently dropped: one mechanism for every command.

A :class:`Rule` names options, the condition under which they apply, and what they apply to. An
option set away from its default whose rule does not apply is refused in one line, worded the
same everywhere: ``--buffer 4 applies to --method async-dgl; drop it (this run would ignore it)``.
``degl train`` checks :data:`TRAIN_RULES` against a :class:`TrainConfig`; ``degl bench`` keeps its
own tables (its options are not a config) and checks them with the same :func:`refuse_ignored`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from degl.errors import UserError
from degl.run.config.fields import TrainConfig, flag_of
from degl.run.config.options import format_option

Situation = TypeVar("Situation")


@dataclass(frozen=True)
class Rule(Generic[Situation]):
    """``options`` apply only when ``applies(situation)``; ``what`` says to what ("applies to ...")."""

    options: tuple[str, ...]
    applies: Callable[[Situation], bool]
    what: str
    show: Callable[[Any], str] = format_option  # how the refusal writes the value typed


def ignored_options(
    rules: Sequence[Rule[Situation]], situation: Situation, values: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Rule[Situation]]:
    """The options set away from their default that ``situation`` would ignore, each with the first
    rule (in table order) that does not apply to it; in that order."""
    ignored: dict[str, Rule[Situation]] = {}
    for rule in rules:
        if rule.applies(situation):
            continue
        for name in rule.options:
            ignored.setdefault(name, rule)
    return {name: rule for name, rule in ignored.items() if values[name] != defaults[name]}


def refusal(name: str, value: Any, rule: Rule[Any]) -> UserError:
    """The one-line error for an option the run would ignore."""
    given = flag_of(name) if value is True else f"{flag_of(name)} {rule.show(value)}"
    return UserError(f"{given} {rule.what}; drop it (this run would ignore it)")


def refuse_ignored(
    rules: Sequence[Rule[Situation]], situation: Situation, values: Mapping[str, Any], defaults: Mapping[str, Any]
) -> None:
    """Raise the refusal of the first option ``situation`` would ignore, if any."""
    for name, rule in ignored_options(rules, situation, values, defaults).items():
        raise refusal(name, values[name], rule)


@dataclass(frozen=True)
class TrainSituation:
    """What decides which options of ``degl train`` apply: the config and the processes it runs in."""

    cfg: TrainConfig
    processes: int

    @property
    def multi_process(self) -> bool:
        # torchrun's ranks parse the command line with --workers unset; WORLD_SIZE is torchrun's variable.
        return self.processes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


BUFFER_OPTIONS = ("buffer_policy", "buffer_compat", "buffer_storage", "max_reuse", "buffer_codec")
MULTI_PROCESS = "applies to multi-process runs (--workers K with K >= 2, or torchrun)"

TRAIN_RULES: tuple[Rule[TrainSituation], ...] = (
    Rule(("buffer", *BUFFER_OPTIONS), lambda s: s.cfg.method == "async-dgl", "applies to --method async-dgl"),
    Rule(
        ("codec",),
        lambda s: s.cfg.method in ("dgl", "async-dgl"),
        "applies to --method dgl and async-dgl (stage boundaries)",
    ),
    Rule(BUFFER_OPTIONS, lambda s: s.cfg.buffer > 0, "applies to replay buffers (--buffer M > 0)"),
    Rule(
        ("async_order",),
        lambda s: s.cfg.method == "async-dgl" and s.cfg.buffer > 0,
        "applies to the async-dgl simulation with --buffer M > 0",
    ),
    Rule(
        ("async_order",),
        lambda s: s.processes == 1,
        "applies to the one-process simulation (with --workers every rank runs at its own pace)",
    ),
    Rule(("momentum", "nesterov"), lambda s: s.cfg.optimizer == "sgd", "applies to --optimizer sgd"),
    Rule(("lr_decay_every",), lambda s: s.cfg.schedule == "step", "applies to --schedule step"),
    Rule(("lr_milestones",), lambda s: s.cfg.schedule == "milestones", "applies to --schedule milestones"),
    Rule(
        ("split", "cuts", "split_at"),
        lambda s: s.cfg.method != "backprop",
        "applies to methods that cut the network into stages (backprop trains it end to end)",
    ),
    Rule(
        ("data_dir",),
        lambda s: s.cfg.dataset != "synthetic",
        "applies to data sets read from disk (not --dataset synthetic)",
    ),
    Rule(
        ("data_workers",),
        lambda s: s.cfg.dataset == "imagenet",
        "applies to --dataset imagenet (decoded while training)",
    ),
    Rule(("buffer_storage",), lambda s: s.cfg.device != "cpu", "applies to a GPU device, not --device cpu"),
    Rule(
        ("lr_decay_factor",),
        lambda s: s.cfg.schedule in ("step", "milestones"),
        "applies to --schedule step or milestones",
    ),
    Rule(
        ("loss_scale_init", "loss_scale_growth_interval"),
        lambda s: s.cfg.precision == "fp16",
        "applies to --precision fp16",
    ),
    Rule(("feature_cache_gb",), lambda s: s.cfg.method == "sgl", "applies to --method sgl"),
    Rule(
        ("aux",),
        lambda s: s.cfg.method in ("dgl", "async-dgl", "sgl"),
        "applies to methods that train aux heads (dgl, async-dgl, sgl); the others train only the last head",
    ),
    Rule(
        ("objective",),
        lambda s: s.cfg.method in ("dgl", "async-dgl", "sgl"),
        "applies to methods whose stages learn from local objectives (dgl, async-dgl, sgl)",
    ),
    Rule(("predsim_beta",), lambda s: s.cfg.objective == "predsim", "applies to --objective predsim"),
    Rule(
        ("aux",),
        lambda s: s.cfg.objective == "aux",
        "applies to --objective aux (the other objectives bring their own heads)",
    ),
    Rule(
        ("synthetic_size", "num_classes"),
        lambda s: s.cfg.dataset == "synthetic",
        "applies to --dataset synthetic",
    ),
    Rule(("image_size",), lambda s: s.cfg.dataset == "imagenet", "applies to --dataset imagenet"),
    Rule(("download",), lambda s: s.cfg.dataset == "cifar10", "applies to --dataset cifar10"),
    Rule(("trace",), lambda s: s.multi_process, MULTI_PROCESS),
    Rule(("max_in_flight",), lambda s: s.multi_process, MULTI_PROCESS),
)
"""When each option of ``degl train`` applies, checked in this order (the first refusal is shown)."""


def inapplicable_options(cfg: TrainConfig, *, processes: int | None = None) -> dict[str, str]:
    """Options whose value differs from the default although this run would ignore them, each with
    what it applies to. ``processes``: the number of pipeline processes (default ``--workers``)."""
    situation = TrainSituation(cfg, processes or cfg.workers or 1)
    ignored = ignored_options(TRAIN_RULES, situation, vars(cfg), vars(TrainConfig()))
    return {name: rule.what for name, rule in ignored.items()}


def refuse_inapplicable(cfg: TrainConfig, *, processes: int | None = None) -> None:
    """One-line error for the first option this run would ignore."""
    situation = TrainSituation(cfg, processes or cfg.workers or 1)
    refuse_ignored(TRAIN_RULES, situation, vars(cfg), vars(TrainConfig()))


def settle_inapplicable(cfg: TrainConfig, typed: set[str], *, processes: int | None = None) -> TrainConfig:
    """Refuse an option typed on the command line that this run would ignore; one that came from a
    ``--config`` file (a recipe made for a GPU, run with ``--precision fp32``) is dropped with a note."""
    if {"cuts", "split"} <= typed:
        raise UserError("--cuts and --split both choose the cut (--cuts names it, --split searches for one); give one")
    situation = TrainSituation(cfg, processes or cfg.workers or 1)
    ignored = ignored_options(TRAIN_RULES, situation, vars(cfg), vars(TrainConfig()))
    for name, rule in ignored.items():
        if name in typed:
            raise refusal(name, getattr(cfg, name), rule)
    for name, rule in ignored.items():
        print(f"degl: note: {flag_of(name)} from the config file {rule.what}; left out", file=sys.stderr)
    return without_inapplicable(cfg)


def without_inapplicable(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option it would ignore put back to its default (``degl compare`` per method)."""
    defaults = TrainConfig()
    reset = {name: getattr(defaults, name) for name in inapplicable_options(cfg)}
    return dataclasses.replace(cfg, **reset) if reset else cfg
