"""Building a config: from ``--config`` YAML files, command-line values and saved runs.

Precedence: built-in defaults < ``--config FILE`` < command-line flags. Every field can be set in a
YAML file under its flag name (``batch-size``) or its field name (``batch_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from degl.errors import UserError
from degl.run.config.applicability import refuse_inapplicable
from degl.run.config.fields import TrainConfig, base_type, config_fields, field_types, flag_of
from degl.run.config.options import LIST_OPTIONS, parse_names
from degl.run.config.validation import validate


def coerce(name: str, value: Any, *, source: str) -> Any:
    """Check ``value`` against the declared type of field ``name``; ints are accepted for floats."""
    kind, optional = base_type(field_types()[name])
    flag = flag_of(name)
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: {flag} cannot be empty")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise UserError(f"{source}: {flag} must be an integer, got {value!r}")
    if name in LIST_OPTIONS:
        return LIST_OPTIONS[name](value)
    if not isinstance(value, kind):
        raise UserError(f"{source}: {flag} must be of type {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into validated field values (unknown keys and wrong types are errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        first = (getattr(exc, "problem", None) or str(exc).splitlines()[0])[:120]
        raise UserError(f"config file {path} is not valid YAML{where}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of option: value, got {type(data).__name__}")
    names = {f.name for f in config_fields()}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"config file {path}: unknown option {key!r}; see 'degl train --help' for the options")
        values[name] = coerce(name, value, source=f"config file {path}")
    return values


def make_config(values: dict[str, Any], *, check_applicable: bool = True) -> TrainConfig:
    """Build and validate a config from field values (missing fields take their defaults).

    ``--split-at`` names K-1 cuts, so it sets ``--stages`` when that is not given. With
    ``check_applicable``, an option set that the chosen method, optimizer or runtime would ignore
    is an error (``degl compare`` checks per method instead).
    """
    if values.get("split_at") is not None and "stages" not in values:
        names = parse_names(values["split_at"]) or ()
        values = {**values, "stages": len(names) + 1}
    cfg = TrainConfig(**values)
    validate(cfg)
    if check_applicable:
        refuse_inapplicable(cfg)
    return cfg


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config in today's terms: runs saved before ``--async-order`` defaulted to
    "not given" recorded ``random`` for every method."""
    saved = dict(saved)
    buffered = saved.get("method") == "async-dgl" and (saved.get("buffer") or 0) > 0
    if saved.get("async_order") == "random" and not buffered:
        saved["async_order"] = None
    return saved
