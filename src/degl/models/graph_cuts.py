"""Where a traced graph can be cut: the scan behind :func:`degl.models.traced.trace_backbone`.

Positions are indices into the graph's compute nodes (``call_module``, ``call_function``,
``call_method``) in order; a cut at position ``p`` runs nodes ``< p`` in one piece and ``>= p`` in
the next. ``get_attr`` nodes are not positions: each piece re-reads the parameters it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

from torch import fx, nn
from torch.nn.modules import activation, dropout, pooling

from degl.errors import UserError

COMPUTE_OPS = ("call_module", "call_function", "call_method")
PROBE_BATCH = 3
"""Batch size of the shape probe: a value whose first dimension is not this is not a batch tensor."""

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_FOLLOWER_WORDS = ("norm", "dropout", "droppath", "stochasticdepth")
# Functions and tensor methods that belong with the layer before them (a norm, activation or dropout).
_FOLLOWER_FUNCTIONS = frozenset(
    [
        "relu",
        "relu6",
        "gelu",
        "silu",
        "hardswish",
        "hardsigmoid",
        "sigmoid",
        "tanh",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "mish",
        "softplus",
        "hardtanh",
        "prelu",
        "glu",
        "softmax",
        "log_softmax",
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "layer_norm",
        "batch_norm",
        "group_norm",
        "instance_norm",
        "local_response_norm",
        "rms_norm",
        "normalize",
        "stochastic_depth",
    ]
)
_GLOBAL_POOLS = (pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd)
_GLOBAL_POOL_FUNCTIONS = frozenset(f"adaptive_{k}_pool{d}d" for k in ("avg", "max") for d in (1, 2, 3))


@dataclass
class Cut:
    """A natural cut point: before compute node ``position``, with ``value`` the one tensor crossing it."""

    position: int
    value: fx.Node
    names: list[str] = field(default_factory=list)
    """Submodules that begin right after the cut, outermost first."""


def find_cuts(model: nn.Module, graph: fx.Graph, shapes: dict[fx.Node, tuple[int, ...]]) -> list[Cut]:
    """Every natural cut point of ``graph``, in order (see :mod:`degl.models.traced`)."""
    order = [n for n in graph.nodes if n.op in COMPUTE_OPS]
    position = {n: i for i, n in enumerate(order)}
    end = len(order)
    last_use = {n: max((position.get(u, end) for u in n.users), default=-1) for n in graph.nodes}
    tied = _tied_positions(model, graph, position, end)
    scopes = [_scopes(n) for n in order]
    live = {n for n in graph.nodes if n.op == "placeholder" and n.users}
    cuts: list[Cut] = []
    for p, node in enumerate(order):
        live = {v for v in live if last_use[v] >= p}
        if p > 0 and len(live) == 1 and p not in tied:
            (value,) = live
            shape = shapes.get(value)
            before, after = set(scopes[p - 1]), set(scopes[p])
            begins = [s for s in scopes[p] if s not in before]
            ends = [s for s in scopes[p - 1] if s not in after]
            # A norm, activation or dropout belongs with the layer before it, unless it opens a bigger
            # named submodule (a pre-norm transformer layer, convnext's downsampling layer).
            own = str(node.target) if node.op == "call_module" else None
            opens = any(s != own for s in begins)
            if shape and shape[0] == PROBE_BATCH and (begins or ends) and (opens or not _is_follower(model, node)):
                cuts.append(Cut(p, value, begins))
        if node.users:
            live.add(node)
    return cuts


def group_blocks(
    model: nn.Module,
    order: Sequence[fx.Node],
    cuts: Sequence[Cut],
    shapes: dict[fx.Node, tuple[int, ...]],
    label: str,
) -> tuple[list[int], Cut]:
    """Start positions of the blocks (the first is 0) and the cut where the classifier begins.

    The classifier begins at the last cut where a feature map or token sequence (two or more
    per-sample dimensions) crosses, or before the global pool leading there if only norms come in
    between (resnet's avgpool, convnext's avgpool and norm); without such cuts (an MLP), at the last
    cut before the final ``nn.Linear``. Pieces without parameters join the block before them (a pool ends the
    block it pools), so that every block has parameters.
    """
    spatial = [i for i, c in enumerate(cuts) if len(shapes[c.value]) >= 3]
    if spatial:
        head = spatial[-1]
        # A global pool shortly before that cut (with nothing but norms between) is the classifier's too.
        pools = [p for p in range(cuts[head].position) if _pools_globally(model, order[p])]
        at_pool = [i for i, c in enumerate(cuts) if pools and c.position <= pools[-1]]
        if (
            at_pool
            and 0 < at_pool[-1] < head
            and _norms_only(model, order[cuts[at_pool[-1]].position : cuts[head].position])
        ):
            head = at_pool[-1]
    else:
        linears = [p for p, n in enumerate(order) if n.op == "call_module" and _module(model, n, nn.Linear)]
        before = [i for i, c in enumerate(cuts) if linears and c.position <= linears[-1]]
        if not before:
            raise UserError(
                f"model {label!r} has no place to cut it into blocks and a classifier (no single tensor "
                "crosses between two named submodules, outside weights used twice); pass an nn.Sequential "
                "of its blocks instead"
            )
        head = before[-1]
    starts = [0, *(c.position for c in cuts[:head])]
    stop = cuts[head].position
    bounds = [*starts, stop]
    has_params = [bool(_params(model, order[bounds[i] : bounds[i + 1]])) for i in range(len(starts))]
    kept = [s for s, ok in zip(starts, has_params) if ok or s == 0]
    while len(kept) > 1 and not _params(model, order[kept[0] : kept[1]]):
        del kept[1]  # a parameter-free first piece (input checks, a fixed normalization) joins the next
    return kept, cuts[head]


def _scopes(node: fx.Node) -> list[str]:
    """Qualified names of the submodules ``node`` runs inside, outermost first (a leaf's own included)."""
    stack = node.meta.get("nn_module_stack") or {}
    names = list(dict.fromkeys(qualname for qualname, _ in stack.values()))
    if node.op == "call_module" and node.target not in names:
        names.append(str(node.target))
    return names


def _tied_positions(model: nn.Module, graph: fx.Graph, position: dict[fx.Node, int], end: int) -> set[int]:
    """Positions between two uses of one parameter or buffer: a cut there would tie weights across stages."""
    uses: dict[int, list[int]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            for tensor in chain(module.parameters(), module.buffers()):
                uses.setdefault(id(tensor), []).append(position[node])
        elif node.op == "get_attr":
            target = _attr(model, str(node.target))
            uses.setdefault(id(target), []).extend(position.get(u, end) for u in node.users)
    tied: set[int] = set()
    for where in uses.values():
        if where:
            tied.update(range(min(where) + 1, max(where) + 1))
    return tied


def _params(model: nn.Module, nodes: Sequence[fx.Node]) -> set[int]:
    found: set[int] = set()
    for node in nodes:
        if node.op == "call_module":
            found.update(id(p) for p in model.get_submodule(str(node.target)).parameters())
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and isinstance(_attr(model, str(arg.target)), nn.Parameter):
                found.add(id(_attr(model, str(arg.target))))
    return found


def _is_follower(model: nn.Module, node: fx.Node) -> bool:
    """A norm, activation or dropout: it belongs with the layer before it, so no cut goes just before it."""
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if isinstance(module, (*_NORMS, dropout._DropoutNd)):
            return True
        if type(module).__module__ == activation.__name__ and not isinstance(module, nn.MultiheadAttention):
            return True
        return any(word in type(module).__name__.lower() for word in _FOLLOWER_WORDS)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return isinstance(name, str) and name.rstrip("_") in _FOLLOWER_FUNCTIONS


def _pools_globally(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return _module(model, node, _GLOBAL_POOLS)
    return node.op == "call_function" and getattr(node.target, "__name__", "") in _GLOBAL_POOL_FUNCTIONS


def _norms_only(model: nn.Module, nodes: Sequence[fx.Node]) -> bool:
    """No parameters in ``nodes`` but those of normalization layers."""
    for node in nodes:
        if node.op == "call_module" and not _module(model, node, _NORMS) and _params(model, [node]):
            return False
        if node.op != "call_module" and _params(model, [node]):
            return False
    return True


def _module(model: nn.Module, node: fx.Node, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(model.get_submodule(str(node.target)), kinds)


def _attr(model: nn.Module, target: str) -> object:
    obj: object = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
