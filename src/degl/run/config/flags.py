"""Command-line flags made from :class:`TrainConfig`'s fields, so every command that takes a
config option (``degl train``, ``compare``, ``models --stats``, ``bench``) has the same name, help,
choices and default for it, written once in :mod:`degl.run.config.fields`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from degl.run.config.fields import GROUPS, TrainConfig, base_type, config_fields, field_types, flag_of
from degl.run.config.options import LIST_OPTIONS, format_option

_FIELDS = {f.name: f for f in config_fields()}


def add_train_options(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """One flag per field, under an argument group per config group, defaulting to 'not given' so a
    ``--config`` file can fill it (:func:`given_options` reads the ones typed)."""
    excluded = set(exclude)
    groups = {name: parser.add_argument_group(name, description) for name, description in GROUPS.items()}
    for f in config_fields():
        if f.name not in excluded:
            _add(
                groups[f.metadata["group"]],
                f.name,
                default=argparse.SUPPRESS,
                shown=_shown(getattr(TrainConfig, f.name)),
            )


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    default_notes: Mapping[str, str] | None = None,
) -> None:
    """The flags of the fields ``names`` for a command that reads them itself (``args.width``).

    Each defaults to the config's default, unless ``defaults`` gives the command's own; then
    ``default_notes`` may say in words what that default means (``"the model's"``).
    """
    defaults, default_notes = defaults or {}, default_notes or {}
    for name in names:
        default = defaults.get(name, getattr(TrainConfig, name))
        if name in LIST_OPTIONS and default is not None:
            default = format_option(default)  # as typed: parsed by the command, like a typed value
        _add(parser, name, default=default, shown=default_notes.get(name, _shown(default)))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config options typed on the command line (flags from :func:`add_train_options`)."""
    return {name: value for name, value in vars(args).items() if name in _FIELDS}


def _shown(default: Any) -> str:
    return format_option(default) if default is not None else "None"


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *, default: Any, shown: str) -> None:
    f = _FIELDS[name]
    kind, _ = base_type(field_types()[name])
    help_text = f.metadata["help"]
    if "(default" not in help_text:  # some say their default in their own words
        help_text = f"{help_text} (default: {shown})"
    if kind is bool:
        parser.add_argument(
            flag_of(name), dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text
        )
        return
    choices = f.metadata.get("choices")
    parser.add_argument(
        flag_of(name),
        dest=name,
        type=str if name in LIST_OPTIONS else kind,  # list options are parsed once, by TrainConfig
        default=default,
        choices=choices,
        help=help_text,
        metavar=None if choices else f.metadata.get("metavar", name.upper()),
    )
