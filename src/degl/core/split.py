"""Cut a backbone, an ``nn.Sequential`` or any traceable ``nn.Module`` into K stages.

Cuts are block indices where a new stage starts. They are given explicitly (as indices, or as the
submodule names where stages begin: ``split_at``), taken from the paper for the model, or chosen to
balance a measured per-block cost (FLOPs from ``torch.utils.flop_counter``, or bytes saved for
backward). No block is ever dropped. Any other ``nn.Module`` is first traced into blocks at its
natural boundaries (:func:`degl.models.traced.trace_backbone`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from degl.core.measure import count_flops, saved_activation_bytes, train_time
from degl.core.objectives import ObjectiveFactory, objective_factory
from degl.core.parameter_error import ParameterError
from degl.core.stage import Stage
from degl.errors import UserError
from degl.models.backbone import resolve_split_at
from degl.models.heads import build_head
from degl.models.registry import Backbone
from degl.models.traced import trace_backbone


def time_input(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, *x.shape[1:]).requires_grad_()


def block_costs(
    blocks: Sequence[nn.Module], input_shape: Sequence[int], measure: str = "flops", *, batch_size: int = 32
) -> tuple[list[float], list[tuple[int, ...]]]:
    """Per-block cost and each block's per-sample output shape.

    ``flops`` and ``memory`` are exact counts for one sample; ``time`` is the measured seconds of a
    forward + backward on a batch of ``batch_size`` with the current torch thread setting. Measured
    on copies in training mode so the real blocks' BatchNorm statistics are untouched.
    """
    costs: list[float] = []
    shapes: list[tuple[int, ...]] = []
    x = torch.zeros(2, *input_shape)
    for index, block in enumerate(blocks):
        probe = copy.deepcopy(block).train()
        try:
            if measure == "flops":
                costs.append(count_flops(probe, x) / 2)
            elif measure == "memory":
                costs.append(saved_activation_bytes(probe, x) / 2)
            elif measure == "time":
                costs.append(train_time(probe, time_input(x, batch_size)))
            else:
                costs.append(1.0)
            with torch.no_grad():
                out = probe(x)
        except RuntimeError as exc:
            # Typically the children of a model whose forward does more than call them in turn
            # (torchvision's ResNet flattens before fc): tracing the model itself keeps that.
            raise UserError(
                f"block {index} ({type(block).__name__}) fails on its input of shape {tuple(x.shape[1:])} "
                f"(model input {tuple(input_shape)}): {str(exc).strip().splitlines()[0]}; if these blocks are "
                "a model's children, pass the model itself to build_stages, which traces its forward"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise UserError(f"block {index} ({type(block).__name__}) returns a {type(out).__name__}, not a tensor")
        x = out
        shapes.append(tuple(x.shape[1:]))
    return costs, shapes


def balanced_cuts(costs: Sequence[float], num_stages: int, end_costs: Sequence[float] | None = None) -> list[int]:
    """Contiguous partition of ``costs`` into ``num_stages`` groups minimising the largest group cost.

    A group's cost is the sum of its blocks' costs plus ``end_costs[j]`` for its last block j (the
    head it feeds). Exact dynamic programme, O(K n^2); ties prefer later cuts.
    """
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: minimal max-group cost of splitting the first i blocks into k groups.
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    choice = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, num_stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                end = end_costs[i - 1] if end_costs is not None else 0.0
                value = max(best[k - 1][j], prefix[i] - prefix[j] + end)
                if value <= best[k][i]:
                    best[k][i], choice[k][i] = value, j
    cuts: list[int] = []
    i = n
    for k in range(num_stages, 1, -1):
        i = choice[k][i]
        cuts.append(i)
    return sorted(cuts)


def even_cuts(num_blocks: int, num_stages: int) -> list[int]:
    """Equal block counts; the extra blocks go to the later stages."""
    base, extra = divmod(num_blocks, num_stages)
    sizes = [base] * (num_stages - extra) + [base + 1] * extra
    cuts, start = [], 0
    for size in sizes[:-1]:
        start += size
        cuts.append(start)
    return cuts


def check_cuts(cuts: Sequence[int], num_blocks: int, num_stages: int) -> list[int]:
    cuts = list(cuts)
    if len(cuts) != num_stages - 1:
        raise ParameterError(
            f"{{cuts}} needs {num_stages - 1} indices for {num_stages} stages, got {len(cuts)}: {{cuts!v}}", cuts=cuts
        )
    if any(not 0 < c < num_blocks for c in cuts) or sorted(set(cuts)) != cuts:
        raise ParameterError(
            f"{{cuts}} must be strictly increasing block indices between 1 and {num_blocks - 1}, got {{cuts!v}}",
            cuts=cuts,
        )
    return cuts


def split_blocks(
    num_blocks: int,
    num_stages: int,
    *,
    cuts: Sequence[int] | None = None,
    costs: Sequence[float] | None = None,
) -> list[tuple[int, ...]]:
    """Group block indices ``0..num_blocks-1`` into ``num_stages`` consecutive, non-empty groups."""
    if num_stages < 1:
        raise ParameterError("{num_stages} must be at least 1, got {num_stages!v}", num_stages=num_stages)
    if num_stages > num_blocks:
        raise ParameterError(
            f"{{num_stages=}} is more than the network's {num_blocks} blocks; use at most {num_blocks}",
            num_stages=num_stages,
        )
    if cuts is None:
        cuts = balanced_cuts(costs, num_stages) if costs is not None else even_cuts(num_blocks, num_stages)
    cuts = check_cuts(cuts, num_blocks, num_stages)
    bounds = [0, *cuts, num_blocks]
    return [tuple(range(bounds[i], bounds[i + 1])) for i in range(num_stages)]


def build_stages(
    model: nn.Module,
    num_stages: int | None = None,
    *,
    aux: str = "mlp-sr",
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    cuts: Sequence[int] | None = None,
    split: str = "auto",
    classifier: nn.Module | None = None,
    time_batch: int = 32,
    split_at: Sequence[str] | None = None,
    objective: str | ObjectiveFactory = "aux",
    predsim_beta: float | None = None,
) -> list[Stage]:
    """Cut ``model`` into ``num_stages`` stages with aux heads.

    Args:
        model: a registered :class:`Backbone`, an ``nn.Sequential`` (each child is a block), or any
            other ``nn.Module`` traceable by ``torch.fx`` (cut at its natural block boundaries;
            chaining the stages' blocks and the last head reproduces ``model(x)``).
        num_stages: K; may be left out when ``split_at`` is given (K = len(split_at) + 1).
        aux: head of stages 0..K-2 (``mlp``, ``mlp-sr``, ``cnn`` or ``linear``).
        num_classes: needed for an ``nn.Sequential``; for a traced module, checked against its output.
        input_shape: per-sample input shape; needed for an ``nn.Sequential`` or a traced module.
        cuts: block indices where stages 1..K-1 start; overrides ``split``.
        split: ``auto`` (paper cut when known, else ``flops``), ``flops``, ``memory`` (bytes saved
            for backward), ``blocks`` (equal counts) or ``time`` (measured training time of each
            block plus the head it would feed, on batches of ``time_batch``).
        classifier: head of the last stage; defaults to the backbone's classifier, or an ``aux``
            head for an ``nn.Sequential``.
        split_at: qualified submodule names where stages 1..K-1 begin (``["layer2", "layer4"]``;
            ``Backbone.block_names`` lists them; for an ``nn.Sequential``, its child names).
        objective: what stages 0..K-2 minimise (:mod:`degl.core.objectives`): ``aux`` (the
            ``aux`` head with cross-entropy), ``predsim``, ``sim``, ``path/to/file.py:FUNCTION`` or a
            function ``f(in_shape, num_classes)`` returning an objective module.
        predsim_beta: predsim's weight of similarity matching (default 0.99).
    """
    objective_for = objective_factory(objective, beta=predsim_beta)
    if not isinstance(model, (Backbone, nn.Module)):
        raise UserError(f"build_stages needs an nn.Module or a Backbone, got a {type(model).__name__}")
    if not isinstance(model, (Backbone, nn.Sequential)):
        if input_shape is None:
            raise UserError(f"build_stages on a {type(model).__name__} needs input_shape (one sample's shape)")
        model = trace_backbone(model, input_shape, num_classes)
    if isinstance(model, Backbone):
        blocks = list(model.blocks)
        shape = tuple(input_shape or model.input_shape)
        head = classifier if classifier is not None else model.classifier
        paper_cuts = model.paper_cuts
        extra_heads = model.extra_heads
        if num_classes is None:
            num_classes = model.num_classes or _out_features(model.classifier)
        names = model.block_names
        resolve = model.cuts_for
    else:
        blocks = list(model.children())
        if input_shape is None or num_classes is None:
            raise ValueError("build_stages on an nn.Sequential needs input_shape and num_classes")
        shape = tuple(input_shape)
        head = classifier
        paper_cuts, extra_heads = {}, {}
        names = [name for name, _ in model.named_children()]
        module_names = frozenset(name for name, _ in model.named_modules() if name)

        def resolve(split_at: Sequence[str]) -> list[int]:
            return resolve_split_at(split_at, names, None, module_names)

    if split_at is not None:
        split_at = list(split_at)
        if num_stages is not None and num_stages != len(split_at) + 1:
            raise ParameterError(
                f"{{split_at}} names {len(split_at)} split point(s), which make {len(split_at) + 1} stages, "
                "but {num_stages} is {num_stages!v}; give one of them, or make them agree",
                split_at=split_at,
                num_stages=num_stages,
            )
        if cuts is not None:
            raise ParameterError(
                "give either {cuts} (block indices) or {split_at} (names), not both", cuts=cuts, split_at=split_at
            )
        num_stages = len(split_at) + 1
        cuts = resolve(split_at)
    if num_stages is None:
        raise ParameterError(
            "build_stages needs {num_stages}, or {split_at} (the names where stages 1..K-1 begin, 0-based)",
            num_stages=num_stages,
            split_at=split_at,
        )
    if not blocks:
        raise UserError("the model has no blocks to split")
    if split == "auto":
        if cuts is None and num_stages in paper_cuts:
            cuts = paper_cuts[num_stages]
        split = "flops"
    if split not in ("flops", "memory", "blocks", "time"):
        raise ParameterError("unknown {split} {split!v}; choose auto, flops, memory, blocks or time", split=split)
    costs, shapes = block_costs(blocks, shape, split, batch_size=time_batch)
    if cuts is None and split == "time" and num_stages > 1:
        # Each stage also trains the head after its last block: measure every candidate head.
        end_costs = [
            train_time(
                copy.deepcopy(
                    head if j == len(blocks) - 1 and head is not None else build_head(aux, shapes[j], num_classes)
                ).train(),
                time_input(torch.zeros(1, *shapes[j]), time_batch),
                loss="ce",
            )
            for j in range(len(blocks))
        ]
        cuts = balanced_cuts(costs, num_stages, end_costs)
    groups = split_blocks(len(blocks), num_stages, cuts=cuts, costs=None if split == "blocks" else costs)
    if split_at is not None:
        # Registry nets may have parameter-free blocks (a ReLU); a stage of only those is a mistake.
        for index, group in enumerate(groups):
            if not any(True for i in group for _ in blocks[i].parameters()):
                raise ParameterError(
                    f"{{split_at}}: stage {index} (blocks {', '.join(names[i] for i in group)}) has no parameters; "
                    "move its split points",
                    split_at=split_at,
                )
    stages: list[Stage] = []
    in_shape = shape
    for index, group in enumerate(groups):
        out_shape = shapes[group[-1]]
        last = index == num_stages - 1
        if last and head is not None:
            stage_head = head
        elif objective_for is not None and not last:  # the last stage is scored by its classifier
            stage_head = objective_for(tuple(out_shape), num_classes)
        elif aux in extra_heads:
            stage_head = extra_heads[aux](out_shape, num_classes)
        else:
            stage_head = build_head(aux, out_shape, num_classes)
        block = nn.Sequential(*(blocks[i] for i in group))
        stages.append(
            Stage(block, stage_head, index=index, block_indices=group, in_shape=in_shape, out_shape=out_shape)
        )
        in_shape = out_shape
    return stages


def _out_features(classifier: nn.Module) -> int:
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    assert linears, "a backbone classifier must end with nn.Linear"
    return linears[-1].out_features
