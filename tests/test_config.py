import dataclasses
from pathlib import Path

import pytest
import yaml

from degl.errors import UserError
from degl.run.config import TrainConfig, inapplicable_options, load_config_file, make_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_accepts_flag_and_field_names(tmp_path):
    values = load_config_file(write(tmp_path / "c.yaml", "batch-size: 64\nweight_decay: 0\nlr: 1\n"))
    assert values == {"batch_size": 64, "weight_decay": 0.0, "lr": 1.0}
    cfg = make_config(values)
    assert cfg.batch_size == 64 and isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz: 3\n", "unknown option 'epochz'"),
        ("epochs: three\n", "--epochs must be of type int"),
        ("epochs: true\n", "--epochs must be an integer"),
        ("augment: 1\n", "--augment must be of type bool"),
        ("epochs: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_config_file(write(tmp_path / "c.yaml", text))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("lr", 0.0),
        ("width", -0.5),
        ("stages", 0),
        ("method", "magic"),
        ("dataset", "mnist2"),
        ("input_shape", "3,32"),
        ("cuts", "1,x"),
    ],
)
def test_validation_rejects(field, value):
    with pytest.raises(UserError):
        make_config({field: value})


def test_defaults_make_a_run_that_ignores_nothing_and_a_saved_config_loads_back(tmp_path):
    # Missing fields take their defaults, and no default is one the run would ignore.
    cfg = make_config({})
    assert cfg == TrainConfig() and inapplicable_options(cfg) == {}
    # A config written as YAML (what compare hands to each run) loads back to the same config,
    # list-valued options included.
    given = {"epochs": 3, "stages": 3, "cuts": "1,2", "input_shape": "1,8,8", "slowdown": "1:1.5"}
    changed = make_config(given)
    parsed = {"epochs": 3, "stages": 3, "cuts": (1, 2), "input_shape": (1, 8, 8), "slowdown": {1: 1.5}}
    assert changed == dataclasses.replace(cfg, **parsed)
    path = write(tmp_path / "c.yaml", yaml.safe_dump(changed.to_dict()))
    assert make_config(load_config_file(path)) == changed


@pytest.mark.parametrize(
    "values, message",
    [
        ({"nesterov": True, "momentum": 0.0}, "--nesterov needs momentum"),
        ({"optimizer": "adam", "momentum": 0.5}, "--momentum 0.5 applies to --optimizer sgd"),
        ({"optimizer": "adam", "nesterov": True}, "--nesterov applies to --optimizer sgd"),
        ({"method": "dgl", "buffer": 4}, "--buffer 4 applies to --method async-dgl"),
        ({"method": "sgl", "max_reuse": 2}, "--max-reuse 2 applies to --method async-dgl"),
        ({"method": "backprop", "buffer_policy": "fifo"}, "--buffer-policy fifo applies to --method async-dgl"),
        ({"method": "async-dgl", "buffer_policy": "fifo"}, "applies to replay buffers (--buffer M > 0)"),
        ({"method": "dgl", "async_order": "random"}, "--async-order random applies to the async-dgl simulation"),
        (
            {"method": "async-dgl", "buffer": 2, "workers": 2, "stages": 2, "async_order": "round-robin"},
            "applies to the one-process simulation",
        ),
        ({"schedule": "cosine", "lr_decay_every": 5}, "--lr-decay-every 5 applies to --schedule step"),
        ({"precision": "bf16", "loss_scale_init": 1024.0}, "applies to --precision fp16"),
        ({"dataset": "fashion-mnist", "num_classes": 7}, "--num-classes 7 applies to --dataset synthetic"),
    ],
)
def test_options_the_run_would_ignore_are_refused(values, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        make_config(values)


def test_applicable_options_and_their_defaults_are_accepted():
    cfg = make_config({"method": "async-dgl", "buffer": 3, "async_order": "round-robin", "max_reuse": 2})
    assert (cfg.buffer, cfg.async_order, cfg.max_reuse) == (3, "round-robin", 2) and inapplicable_options(cfg) == {}
    # The defaults of options adam ignores are accepted: only a value that differs is one the run would ignore.
    cfg = make_config({"optimizer": "adam", "momentum": 0.9, "nesterov": False})
    assert cfg.optimizer == "adam" and inapplicable_options(cfg) == {}
    changed = make_config({"optimizer": "adam", "momentum": 0.5}, check_applicable=False)
    assert inapplicable_options(changed) == {"momentum": "applies to --optimizer sgd"}
    cfg = make_config({"schedule": "step", "lr_decay_every": 5, "lr_decay_factor": 0.5})
    assert (cfg.lr_decay_every, cfg.lr_decay_factor) == (5, 0.5) and inapplicable_options(cfg) == {}


def test_compare_keeps_an_option_for_the_methods_it_applies_to(tmp_path):
    from degl.run.compare import compare

    base = make_config({"buffer": 3}, check_applicable=False)
    with pytest.raises(UserError, match="--buffer applies to none of --methods dgl,backprop"):
        compare(base, ["dgl", "backprop"], [0], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_runs_saved_before_async_order_defaulted_to_none_still_load():
    from degl.run.config import upgrade_saved_config

    old = {**TrainConfig().to_dict(), "async_order": "random"}  # what every run recorded then
    assert make_config(upgrade_saved_config(old)).async_order is None
    buffered = {**old, "method": "async-dgl", "buffer": 2}
    assert make_config(upgrade_saved_config(buffered)).async_order == "random"


def test_every_option_is_in_one_group_and_a_group_reads_as_a_dict():
    from degl.run.config import GROUPS, config_fields

    assert {f.metadata["group"] for f in config_fields()} == set(GROUPS)
    cfg = make_config({"lr": 0.5})
    assert cfg.group("optimisation")["lr"] == 0.5 == cfg.lr and "lr" not in cfg.group("run")
    assert sum(len(cfg.group(name)) for name in GROUPS) == len(config_fields())
    with pytest.raises(ValueError, match="unknown option group 'nope'"):
        cfg.group("nope")


def test_gradient_methods_are_defined_once():
    from degl.core import alternatives
    from degl.run import config

    assert config.GRADIENT_METHODS is alternatives.GRADIENT_METHODS
