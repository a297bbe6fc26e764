"""Training configuration: one dataclass is the single source of truth for CLI flags and YAML keys.

- :mod:`~degl.run.config.fields`: :class:`TrainConfig`, its fields grouped (method, model,
  pipeline, data, optimisation, run) with their help, choices and metavar.
- :mod:`~degl.run.config.options`: the choices and the parsers of list-valued options.
- :mod:`~degl.run.config.files`: building a config from YAML files and command-line values.
- :mod:`~degl.run.config.validation`: the rules a config must satisfy.
- :mod:`~degl.run.config.applicability`: refusing options a run would ignore (one rule table).
- :mod:`~degl.run.config.flags`: argparse flags made from the fields.
"""

from degl.core.alternatives import GRADIENT_METHODS
from degl.run.config.applicability import (
    TRAIN_RULES,
    Rule,
    inapplicable_options,
    refusal,
    refuse_ignored,
    refuse_inapplicable,
    settle_inapplicable,
    without_inapplicable,
)
from degl.run.config.fields import (
    GROUPS,
    INVOCATION_KEYS,
    TrainConfig,
    base_type,
    config_fields,
    field_types,
    flag_of,
    group_fields,
)
from degl.run.config.files import coerce, load_config_file, make_config, upgrade_saved_config
from degl.run.config.flags import add_config_options, add_train_options, given_options
from degl.run.config.options import (
    ASYNC_ORDERS,
    BUFFER_POLICIES,
    DATASETS,
    LIST_OPTIONS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SPLITS,
    check_slowdowns,
    format_option,
    parse_cuts,
    parse_milestones,
    parse_names,
    parse_shape,
    parse_slowdowns,
)
from degl.run.config.validation import validate

__all__ = [
    "ASYNC_ORDERS",
    "BUFFER_POLICIES",
    "DATASETS",
    "GRADIENT_METHODS",
    "GROUPS",
    "INVOCATION_KEYS",
    "LIST_OPTIONS",
    "METHODS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "SPLITS",
    "TRAIN_RULES",
    "Rule",
    "TrainConfig",
    "add_config_options",
    "add_train_options",
    "base_type",
    "check_slowdowns",
    "coerce",
    "config_fields",
    "field_types",
    "flag_of",
    "format_option",
    "given_options",
    "group_fields",
    "inapplicable_options",
    "load_config_file",
    "make_config",
    "parse_cuts",
    "parse_milestones",
    "parse_names",
    "parse_shape",
    "parse_slowdowns",
    "refusal",
    "refuse_ignored",
    "refuse_inapplicable",
    "settle_inapplicable",
    "upgrade_saved_config",
    "validate",
    "without_inapplicable",
]
