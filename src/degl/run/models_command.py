"""``degl models``: the registered models, or one model's per-stage cost (``--stats MODEL``).

The ``--stats`` options are ``degl train``'s (:func:`add_config_options`): the same names, help
and choices, and the same defaults except where the model decides (its input shape and classes).
"""

from __future__ import annotations

import argparse
import json

from degl.errors import UserError
from degl.run.config import TrainConfig, add_config_options, flag_of, parse_cuts, parse_names, parse_shape

STATS_OPTIONS = ("stages", "split_at", "aux", "objective", "split", "cuts", "input_shape", "width", "num_classes")
"""The options of ``degl train`` that ``--stats`` reads; none of them means anything without it."""
STATS_DEFAULTS = {"stages": None, "input_shape": None, "num_classes": None}
"""Not given by default: the stages are required, the shape and the classes are the model's."""

DESCRIPTION = (
    "List the registered models. With --stats MODEL --stages K: split MODEL as "
    "'degl train' would and print, per stage, the output shape, parameters and MACs of its block "
    "and of its head (MACs = FLOPs/2 from torch.utils.flop_counter, one sample, eval mode). MODEL may "
    "also be torchvision:NAME, path/to/file.py:FUNCTION or package.module:FUNCTION (a function "
    "returning an nn.Module): such models are traced with torch.fx and cut between their blocks."
)
EPILOG = (
    "Stages are numbered from 0. The aux/main ratio is the MACs of the aux heads of stages "
    "0..K-2 only (the heads DGL adds; the last stage's head is the network's classifier, "
    "reported on its own) divided by the MACs of the main network's blocks (classifier excluded)."
)


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="list the registered models, or show one model's per-stage cost (--stats)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats = parser.add_argument_group("per-stage cost (--stats)")
    stats.add_argument(
        "--stats",
        metavar="MODEL",
        help="model to measure (needs --stages or --split-at): a registered name, torchvision:NAME, "
        "path/to/file.py:FUNCTION or package.module:FUNCTION",
    )
    add_config_options(
        stats,
        STATS_OPTIONS,
        defaults=STATS_DEFAULTS,
        default_notes={
            "stages": "none: give it or --split-at, which sets K = names + 1",
            "input_shape": "the model's; 3,224,224 for torchvision:NAME; required for FILE.py:FUNCTION",
            "num_classes": "1000 for models whose default input is 224x224, else 10; a model from a file or "
            "module keeps its own unless its function takes num_classes",
        },
    )
    parser.set_defaults(command_func=models_command)


def models_command(args: argparse.Namespace) -> int:
    if args.stats is not None:
        return model_stats_command(args)
    defaults = {**{name: getattr(TrainConfig, name) for name in STATS_OPTIONS}, **STATS_DEFAULTS}
    given = [flag_of(name) for name in STATS_OPTIONS if getattr(args, name) != defaults[name]]
    if given:
        raise UserError(f"{', '.join(given)}: only meaningful with --stats MODEL")
    print_models(as_json=args.json)
    return 0


def print_models(*, as_json: bool) -> None:
    from degl.models import list_models, model_entry

    entries = [model_entry(name) for name in list_models()]
    if as_json:
        described = {
            e.name: {"description": e.description, "input_shape": list(e.default_input_shape)} for e in entries
        }
        print(json.dumps(described))
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}")
    print(
        "Any other model too, cut by tracing: torchvision:NAME, path/to/file.py:FUNCTION, package.module:FUNCTION "
        "(see 'degl models --stats MODEL --stages K' for its cut names)"
    )


def model_stats_command(args: argparse.Namespace) -> int:
    from degl.core.stats import model_stats
    from degl.models import model_entry

    entry = model_entry(args.stats)
    split_at = parse_names(args.split_at)
    if args.stages is None and split_at is None:
        raise UserError("--stats needs --stages K (the number of stages to split the model into) or --split-at")
    shape = parse_shape(args.input_shape) if args.input_shape else entry.default_input_shape
    if shape is None:
        raise UserError(f"model {args.stats!r} has no default input shape; pass --input-shape C,H,W")
    classes = args.num_classes
    if classes is None and not (entry.external and entry.default_input_shape is None):
        classes = 1000 if entry.default_input_shape[1:] == (224, 224) else 10
    result = model_stats(
        args.stats,
        args.stages,
        aux=args.aux,
        split=args.split,
        cuts=parse_cuts(args.cuts),
        input_shape=shape,
        width=args.width,
        num_classes=classes,
        split_at=split_at,
        objective=args.objective,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for line in result.format_table():
            print(line)
    return 0
