"""The backbone: a network cut into its smallest splittable pieces, and naming those pieces.

A registry model builds its :class:`Backbone` by hand; any other ``nn.Module`` gets one by tracing
(:mod:`degl.models.traced`). Stages are made of whole blocks, so a block's start is the only place
a stage can begin: :func:`resolve_split_at` turns the user's submodule names into those indices.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from degl.errors import UserError

HeadBuilder = Callable[[tuple[int, ...], int], nn.Module]
"""``builder(in_shape, num_classes) -> head`` for one stage's output of per-sample shape ``in_shape``."""


@dataclass
class Backbone:
    """A network cut into its smallest splittable pieces.

    Attributes:
        name: registry name (or the ``torchvision:NAME`` / ``FILE.py:FUNCTION`` it was built from).
        blocks: consecutive pieces of the main network; stages are made of whole blocks.
        classifier: the network's own head, applied to the last block's output.
        input_shape: per-sample input shape the backbone was built for (``(C, H, W)`` for images).
        paper_cuts: cut points (block indices where a new stage starts) used in the paper for some
            numbers of stages; other K are balanced automatically.
        extra_heads: aux-head kinds specific to this model (e.g. ``dni`` for the DNI-comparison CNN).
        block_names: the name where each block starts: a qualified submodule name of the traced
            model (``layer2``, ``encoder.layers.encoder_layer_6``), or the block's index for
            hand-built backbones. ``split_at`` takes these names.
        name_aliases: further names accepted by ``split_at``, by block index: every submodule that
            begins exactly where a block begins (``layer2.0`` and ``layer2.0.conv1`` for ``layer2``).
        module_names: every submodule name of the source model, so that ``split_at`` can tell a
            name that does not exist from one that is not a block start.
        num_classes: classes of the classifier's output, when known without looking inside it.
        module: the ``nn.Module`` a traced backbone was cut from; it shares every parameter with the
            blocks and the classifier (``None`` for hand-built backbones).
    """

    name: str
    blocks: list[nn.Module]
    classifier: nn.Module
    input_shape: tuple[int, ...]
    paper_cuts: dict[int, tuple[int, ...]] = field(default_factory=dict)
    extra_heads: dict[str, HeadBuilder] = field(default_factory=dict)
    block_names: list[str] = field(default_factory=list)
    name_aliases: dict[str, int] = field(default_factory=dict)
    module_names: frozenset[str] = frozenset()
    num_classes: int | None = None
    module: nn.Module | None = None

    def __post_init__(self) -> None:
        if not self.block_names:
            # Hand-built backbones are an nn.Sequential of their blocks: its child names are the indices.
            self.block_names = [str(i) for i in range(len(self.blocks))]
        assert len(self.block_names) == len(self.blocks), "one name per block"

    def as_sequential(self) -> nn.Sequential:
        """The whole network, end to end, sharing parameters with the blocks."""
        return nn.Sequential(*self.blocks, self.classifier)

    def cuts_for(self, split_at: Sequence[str]) -> list[int]:
        """Block indices where stages 1..K-1 begin, for the submodule names ``split_at``."""
        return resolve_split_at(split_at, self.block_names, self.name_aliases, self.module_names)


def resolve_split_at(
    split_at: Sequence[str],
    block_names: Sequence[str],
    aliases: Mapping[str, int] | None = None,
    module_names: Collection[str] = (),
) -> list[int]:
    """Map names where stages 1..K-1 begin to block indices; one-line errors for anything else."""
    index = {name: i for i, name in enumerate(block_names)}
    index.update(aliases or {})
    valid = ", ".join(block_names[1:9]) + (", ..." if len(block_names) > 9 else "")
    cuts: list[int] = []
    for name in split_at:
        position = index.get(name)
        if position is None:
            if module_names and name not in module_names:
                raise UserError(f"split_at: the model has no submodule named {name!r}; valid split points: {valid}")
            raise UserError(
                f"split_at: {name!r} is not a place where a stage can begin (it is inside a block, or more "
                f"than one tensor crosses there); valid split points: {valid}"
            )
        if position == 0:
            raise UserError(
                f"split_at: {name!r} is where the first stage begins; name where stages 1..K-1 begin (0-based)"
            )
        cuts.append(position)
    for (a, ca), (b, cb) in zip(zip(split_at, cuts), zip(split_at[1:], cuts[1:])):
        if cb <= ca:
            relation = "is the same place as" if cb == ca else "comes before"
            raise UserError(
                f"split_at: {b!r} {relation} {a!r} in the model; give split points in forward order, each once"
            )
    return cuts
