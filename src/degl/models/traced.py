"""Any ``nn.Module`` as a :class:`Backbone`: trace it with torch.fx, cut the graph where one tensor crosses.

The model is traced once (:class:`LeafTracer`), run once on zeros to learn which graph values are
tensors and their shapes, and its node order is scanned for **natural cut points**: places where
exactly one value, a batch tensor, is live across the cut and a named submodule begins or ends
there, not just before a normalization, activation or dropout (those belong with the layer before
them), and not inside the span between two uses of one parameter or buffer (a cut there would tie
weights across stages). The pieces between cut points become the blocks, each a
``torch.fx.GraphModule`` sharing its modules and parameters with the model; the suffix that turns
the last feature map or token sequence into logits becomes the classifier. Chaining the blocks and
the classifier runs exactly the model's operations in the model's order, so it reproduces
``model(x)`` bit for bit. See :mod:`degl.models.graph_cuts` for the scan itself.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn

from degl.errors import UserError
from degl.models.backbone import Backbone
from degl.models.graph_cuts import COMPUTE_OPS, PROBE_BATCH, Cut, find_cuts, group_blocks


class LeafTracer(fx.Tracer):
    """torch.fx tracer that also keeps every module without child modules as one call.

    Such modules (BatchNorm, Dropout, torchvision's StochasticDepth, ...) often branch on
    ``self.training``; tracing through them would bake the mode at trace time into the graph,
    whereas a module call keeps following ``.train()`` / ``.eval()``.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or next(m.children(), None) is None


def trace_backbone(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    *,
    name: str | None = None,
) -> Backbone:
    """Cut ``model`` into blocks and a classifier at its natural cut points (see the module doc).

    ``input_shape`` is one sample's shape (``(3, 224, 224)``); ``num_classes``, when given, must
    match the model's output. Uses no random numbers, so seeding before building the model is
    enough for two processes to get bit-identical stages.
    """
    label = name or type(model).__name__
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise UserError(f"input shape must be positive sizes, got {shape}")
    graph = _trace(model, label)
    shapes = _probe(model, graph, shape, label)
    output = _output_value(graph, shapes, label, num_classes)
    cuts = find_cuts(model, graph, shapes)
    order = [n for n in graph.nodes if n.op in COMPUTE_OPS]
    starts, head_start = group_blocks(model, order, cuts, shapes, label)
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    by_position = {c.position: c for c in cuts}
    bounds = [*starts, head_start.position]
    inputs = [placeholder, *(by_position[p].value for p in starts[1:])]
    blocks = [
        _extract(model, order[bounds[i] : bounds[i + 1]], inputs[i], by_position[bounds[i + 1]].value)
        for i in range(len(starts))
    ]
    classifier = _extract(model, order[head_start.position :], head_start.value, output)
    module_names = frozenset(n for n, _ in model.named_modules() if n)
    block_names, aliases = _names(order, starts, by_position)
    _check_ownership(model, [*blocks, classifier], label)
    return Backbone(
        name=label,
        blocks=list(blocks),
        classifier=classifier,
        input_shape=shape,
        block_names=block_names,
        name_aliases=aliases,
        module_names=module_names,
        num_classes=shapes[output][-1],
        module=model,
    )


def _trace(model: nn.Module, label: str) -> fx.Graph:
    """The model's graph; refuses models whose graph would depend on the mode at trace time."""
    concrete = _concrete_args(model, label)
    modes = [(m, m.training) for m in model.modules()]
    codes, graphs = [], []
    try:
        for training in (False, True):
            model.train(training)
            try:
                graph = LeafTracer().trace(model, concrete_args=concrete)
            except Exception as exc:  # TraceError, or any error raised by control flow on proxies
                raise UserError(
                    f"model {label!r} is not traceable by torch.fx ({type(exc).__name__}: "
                    f"{_first_line(exc)}); pass an nn.Sequential of its blocks instead (each child is a "
                    f"block), or make its forward traceable"
                ) from None
            codes.append(graph.python_code("self").src)
            graphs.append(graph)
    finally:
        for m, mode in modes:
            m.train(mode)
    if codes[0] != codes[1]:
        raise UserError(
            f"model {label!r} runs different code in training and eval mode outside its leaf modules "
            "(a forward that tests self.training, e.g. for auxiliary outputs); torch.fx would fix one "
            "mode in the graph, so it cannot be split: disable that option of the model"
        )
    graph = graphs[0]
    _drop_specialized_args(graph)
    return graph


def _concrete_args(model: nn.Module, label: str) -> dict[str, object]:
    """Arguments of ``forward`` beyond the input are fixed at their defaults."""
    params = list(inspect.signature(model.forward).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.default is p.empty and p.kind in positional]
    if len(required) != 1 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        raise UserError(
            f"model {label!r}: forward takes arguments ({', '.join(p.name for p in params)}); degl feeds it "
            "one input tensor, so it needs exactly one argument without a default"
        )
    return {p.name: p.default for p in params if p.default is not p.empty}


def _drop_specialized_args(graph: fx.Graph) -> None:
    # fx keeps a placeholder for each fixed argument, only to assert its value; the value itself is
    # baked into the graph, so the placeholder and its checks go (they would cross every cut).
    extra = [n for n in graph.nodes if n.op == "placeholder"][1:]
    doomed: list[fx.Node] = []
    pending = list(extra)
    while pending:
        node = pending.pop()
        if node not in doomed:
            doomed.append(node)
            pending.extend(node.users)
    for node in reversed([n for n in graph.nodes if n in doomed]):
        assert node.op != "output", "a fixed forward argument reached the output"
        graph.erase_node(node)


def _probe(model: nn.Module, graph: fx.Graph, shape: tuple[int, ...], label: str) -> dict[fx.Node, tuple[int, ...]]:
    """Shape of every tensor value of the graph, from one eval-mode run on zeros (no RNG used)."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                shapes[n] = tuple(result.shape)
            return result

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            Recorder(fx.GraphModule(model, graph)).run(torch.zeros(PROBE_BATCH, *shape))
    except UserError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        raise UserError(f"model {label!r} cannot take inputs of shape {shape}: {_first_line(exc)}") from None
    finally:
        for m, mode in modes:
            m.train(mode)
    return shapes


def _output_value(graph: fx.Graph, shapes: dict[fx.Node, tuple[int, ...]], label: str, num_classes: int | None):
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    shape = shapes.get(out) if isinstance(out, fx.Node) else None
    if shape is None or len(shape) != 2:
        what = f"a tensor of shape {shape}" if shape else f"a {type(out).__name__}"
        raise UserError(f"model {label!r} returns {what}; degl needs one tensor of logits (batch, classes)")
    if num_classes is not None and shape[1] != num_classes:
        raise UserError(
            f"model {label!r} outputs {shape[1]} classes but {num_classes} are needed; build it for "
            f"{num_classes} classes (a builder function can take a num_classes parameter)"
        )
    return out


def _extract(model: nn.Module, nodes: Sequence[fx.Node], source: fx.Node, result: fx.Node) -> fx.GraphModule:
    """The nodes as one GraphModule taking ``source`` and returning ``result``, sharing the model's modules."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder("x")}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg not in env:  # parameters travel with the segment using them
                env[arg] = graph.node_copy(arg)
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[result])
    # GraphModule installs the very submodules and tensors of ``model`` (no copies): parameters are shared.
    return fx.GraphModule(model, graph, class_name="TracedBlock")


def _names(order: Sequence[fx.Node], starts: Sequence[int], cuts: dict[int, Cut]) -> tuple[list[str], dict[str, int]]:
    """Name of each block and every other name for it: the submodules starting there, outermost first.

    A block that starts with no submodule (after a functional op that ends one) is named after
    its first graph node, e.g. ``add_3``.
    """
    # The first block has no cut before it: name it after the first submodule it runs.
    names = [next((s for n in order for s in _outermost(n)), order[0].name)]
    aliases: dict[str, int] = {}
    for index, position in enumerate(starts[1:], start=1):
        cut = cuts[position]
        names.append(cut.names[0] if cut.names else order[position].name)
        for alias in cut.names[1:]:
            aliases[alias] = index
    return names, aliases


def _outermost(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [qualname for qualname, _ in list(stack.values())[:1]]


def _check_ownership(model: nn.Module, pieces: Sequence[nn.Module], label: str) -> None:
    """Each parameter in at most one piece (cuts avoid tied weights); warn about any in none."""
    owned = [id(p) for piece in pieces for p in piece.parameters()]
    assert len(owned) == len(set(owned)), "a parameter is shared by two pieces"
    used = set(owned)
    unused = [n for n, p in model.named_parameters() if id(p) not in used]
    if unused:
        warnings.warn(
            f"model {label!r}: {len(unused)} parameter(s) are not used by forward and belong to no stage "
            f"({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''})",
            stacklevel=3,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
