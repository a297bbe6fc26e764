"""The values an option may take: the choices of the choice options, and the parsers of the
options whose values are lists (``--cuts 1,3,5``, ``--slowdown 1:1.5``, ``--input-shape 3,32,32``).

List options arrive as text (flags, run files written before YAML lists) or as lists (YAML);
each parser accepts both and returns one canonical value, so a config compares equal however
it was written.
"""

from __future__ import annotations

from typing import Any

from degl.core.alternatives import GRADIENT_METHODS
from degl.errors import UserError

METHODS = ("backprop", "dgl", "sgl", "async-dgl", *GRADIENT_METHODS)
ASYNC_ORDERS = ("random", "round-robin")
BUFFER_POLICIES = ("priority_lifo", "fifo", "uniform")
DATASETS = ("fashion-mnist", "cifar10", "imagenet", "synthetic")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "step", "milestones", "cosine")
OPTIMIZERS = ("sgd", "adam")
SPLITS = ("auto", "flops", "memory", "blocks", "time")


def format_option(value: Any) -> str:
    """A value as it would be typed on the command line (``3,32,32``, ``1:1.5``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def split_items(value: Any) -> list[str]:
    """Comma-separated text, a number or a list, as a list of stripped item strings."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [p for p in str(value).replace(" ", "").split(",") if p != ""]


def parse_shape(value: Any, *, what: str = "--input-shape") -> tuple[int, int, int]:
    """``"3,32,32"`` (or a list) -> ``(3, 32, 32)``: three positive integers C,H,W."""
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value):
        return value  # type: ignore[return-value]
    try:
        shape = tuple(int(p) for p in split_items(value))
    except ValueError:
        raise UserError(f"{what} must be three integers C,H,W, got {format_option(value)!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"{what} must be three positive integers C,H,W, got {format_option(value)!r}")
    return shape  # type: ignore[return-value]


def parse_cuts(value: Any) -> tuple[int, ...] | None:
    """``"1,3,5"`` -> ``(1, 3, 5)``: 0-based block indices where stages 1..K-1 start."""
    if value is None:
        return None
    try:
        return tuple(int(p) for p in split_items(value))
    except ValueError:
        raise UserError(f"--cuts must be comma-separated block indices, got {format_option(value)!r}") from None


def parse_names(value: Any) -> tuple[str, ...] | None:
    """``"layer2,layer4"`` -> ``("layer2", "layer4")``: the submodules where stages 1..K-1 start."""
    if value is None:
        return None
    names = tuple(split_items(value))
    if not names or any(not n for n in names):
        raise UserError(f"--split-at must be comma-separated submodule names, got {format_option(value)!r}")
    return names


def parse_slowdowns(value: Any) -> dict[int, float] | None:
    """``"1:1.5,2:2"`` (or a mapping) -> ``{1: 1.5, 2: 2.0}``; stages are 0-based, factors >= 1."""
    if value is None or (isinstance(value, str) and value.strip() == "") or value == {}:
        return None
    pairs = list(value.items()) if isinstance(value, dict) else [p.split(":") for p in split_items(value)]
    slowdowns: dict[int, float] = {}
    for pair in pairs:
        try:
            stage_text, factor_text = pair
            stage, factor = int(stage_text), float(factor_text)
        except ValueError:
            raise UserError(
                f"--slowdown must be STAGE:FACTOR[,STAGE:FACTOR...], got {format_option(value)!r}"
            ) from None
        if factor < 1 or stage < 0:
            raise UserError(f"--slowdown {stage}:{factor}: the stage must be >= 0 and the factor >= 1")
        slowdowns[stage] = factor
    return slowdowns


def check_slowdowns(slowdowns: dict[int, float] | None, num_stages: int) -> dict[int, float]:
    """The slowdowns of a run with ``num_stages`` stages (every stage named must exist)."""
    for stage in slowdowns or {}:
        if stage >= num_stages:
            raise UserError(f"--slowdown {stage}:...: the stage must be in 0..{num_stages - 1}")
    return dict(slowdowns or {})


def parse_milestones(value: Any) -> tuple[int, ...] | None:
    """``"150,225"`` -> ``(150, 225)``: increasing positive epochs."""
    if value is None:
        return None
    try:
        milestones = tuple(int(p) for p in split_items(value))
    except ValueError:
        raise UserError(f"--lr-milestones must be comma-separated epochs, got {format_option(value)!r}") from None
    if any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise UserError(f"--lr-milestones must be increasing positive epochs, got {format_option(value)!r}")
    return milestones


LIST_OPTIONS = {
    "cuts": parse_cuts,
    "split_at": parse_names,
    "slowdown": parse_slowdowns,
    "input_shape": parse_shape,
    "lr_milestones": parse_milestones,
}
"""The options whose values are lists or mappings, each with its parser (flags pass them as text)."""
