"""Errors about one named parameter, worded for the interface that received it.

The library and the CLI take the same settings under different names (``num_stages=3`` in Python,
``--stages 3`` on the command line). A :class:`ParameterError` keeps its message as a template
whose placeholders name parameters, so one raise site serves both: ``str(error)`` speaks Python,
:func:`cli_message` speaks the CLI's flags.

Placeholders: ``{num_stages}`` is the parameter's name (``num_stages`` / ``--stages``);
``{num_stages=}`` its name and value (``num_stages=5`` / ``--stages 5``); ``{cuts!v}`` its value
alone, as that interface writes it (``[2, 1, 3]`` / ``2,1,3``). Values enter a message only
through placeholders, so a brace in a value is never mistaken for one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from degl.errors import UserError

__all__ = ["CLI_FLAGS", "ParameterError", "cli_message"]

# The command-line flag of each Python parameter whose name differs from the flag's; any other
# parameter ``some_name`` is the flag ``--some-name``.
CLI_FLAGS: Mapping[str, str] = {"num_stages": "--stages"}

_PLACEHOLDER = re.compile(r"\{(\w+)(=|!v)?\}")


def cli_value(value: object) -> str:
    """A value as it is typed after its flag: ``2,1,3`` for a list, ``int8`` for a string."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ",".join(str(item) for item in value)
    return str(value)


def cli_flag(parameter: str) -> str:
    return CLI_FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


class ParameterError(UserError):
    """A bad value of a named parameter: a :class:`~degl.errors.UserError` that knows which one.

    ``ParameterError("{num_stages=} is more than the network's 4 blocks", num_stages=5)`` reads
    ``num_stages=5 is more than the network's 4 blocks``; the CLI shows it (via :func:`cli_message`)
    as ``--stages 5 is more than the network's 4 blocks``.

    Attributes:
        parameter: the first parameter the message names (the one to fix).
        values: every parameter the message names, with the value it was given.
    """

    def __init__(self, template: str, /, **values: Any) -> None:
        names = [name for name, _ in _PLACEHOLDER.findall(template)]
        missing = sorted(set(names) - set(values))
        if missing:
            raise TypeError(f"ParameterError template names {missing} but no value was given for them")
        self.template = template
        self.values = dict(values)
        self.parameter = names[0] if names else None
        super().__init__(self.render(name_of=str, value_of=repr, joiner="="))

    def render(self, *, name_of: Any, value_of: Any, joiner: str) -> str:
        """The message with each placeholder filled in by ``name_of(parameter)`` and ``value_of(value)``."""

        def fill(match: re.Match[str]) -> str:
            name, form = match.groups()
            if form == "=":
                return f"{name_of(name)}{joiner}{value_of(self.values[name])}"
            if form == "!v":
                return value_of(self.values[name])
            return name_of(name)

        return _PLACEHOLDER.sub(fill, self.template)

    def cli_text(self) -> str:
        """The message in the command line's words: ``--stages 5`` for ``num_stages=5``."""
        return " ".join(self.render(name_of=cli_flag, value_of=cli_value, joiner=" ").split())

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the template, not the rendered text, so an error sent between processes
        # (a pipeline rank's) can still be shown in either interface's words.
        return (functools.partial(type(self), self.template, **self.values), ())


def cli_message(error: BaseException) -> str:
    """What the CLI prints for ``error``: a :class:`ParameterError` in flag names, anything else as is."""
    if isinstance(error, ParameterError):
        return error.cli_text()
    return str(error)
