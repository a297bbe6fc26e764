from pathlib import Path

import pytest

from degl.errors import UserError
from degl.run.config import TrainConfig, load_config_file, make_config


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


def test_defaults_are_valid():
    make_config({})
    assert TrainConfig().dataset == "fashion-mnist"
