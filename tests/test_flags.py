"""The flag sets of ``degl train``, ``degl bench pipeline`` and ``degl models``, frozen.

Adding, renaming or removing a flag must be a deliberate change of this file: the lists below are
written out, one flag a line, not computed. The other tests check that the options these commands
share with ``degl train`` come from the same config fields.
"""

import argparse

import pytest

from degl.bench import COMMON_OPTIONS
from degl.cli import build_parser
from degl.run.config import GROUPS, TrainConfig, group_fields
from degl.run.models_command import STATS_OPTIONS

TRAIN_FLAGS = [
    "--async-order",
    "--augment",
    "--aux",
    "--batch-size",
    "--buffer",
    "--buffer-codec",
    "--buffer-compat",
    "--buffer-policy",
    "--buffer-storage",
    "--channels-last",
    "--codec",
    "--compile",
    "--config",
    "--cuts",
    "--data-dir",
    "--data-workers",
    "--dataset",
    "--deterministic",
    "--device",
    "--download",
    "--dropout",
    "--epochs",
    "--eval-batch-size",
    "--fault-timeout",
    "--feature-cache-gb",
    "--help",
    "--image-size",
    "--input-shape",
    "--loss-scale-growth-interval",
    "--loss-scale-init",
    "--lr",
    "--lr-decay-every",
    "--lr-decay-factor",
    "--lr-milestones",
    "--max-in-flight",
    "--max-reuse",
    "--max-steps",
    "--method",
    "--model",
    "--momentum",
    "--nesterov",
    "--no-augment",
    "--no-channels-last",
    "--no-compile",
    "--no-deterministic",
    "--no-download",
    "--no-nesterov",
    "--no-pin-cpus",
    "--no-progress",
    "--no-reset-at-decay",
    "--no-tensorboard",
    "--no-trace",
    "--num-classes",
    "--objective",
    "--on-nonfinite",
    "--optimizer",
    "--out",
    "--pin-cpus",
    "--precision",
    "--predsim-beta",
    "--progress",
    "--reset-at-decay",
    "--resume",
    "--schedule",
    "--seed",
    "--slowdown",
    "--split",
    "--split-at",
    "--stages",
    "--synthetic-size",
    "--tensorboard",
    "--threads",
    "--trace",
    "--train-size",
    "--weight-decay",
    "--width",
    "--workers",
    "-h",
]

BENCH_PIPELINE_FLAGS = [
    "--aux",
    "--batch-size",
    "--codec",
    "--cuts",
    "--device",
    "--help",
    "--input-shape",
    "--link-mbps",
    "--max-in-flight",
    "--method",
    "--microbatches",
    "--model",
    "--no-pin-cpus",
    "--num-classes",
    "--pin-cpus",
    "--precision",
    "--rounds",
    "--seed",
    "--split",
    "--stages",
    "--steps",
    "--threads",
    "--warmup",
    "--width",
    "--workers",
    "-h",
]

MODELS_FLAGS = [
    "--aux",
    "--cuts",
    "--help",
    "--input-shape",
    "--json",
    "--num-classes",
    "--objective",
    "--split",
    "--split-at",
    "--stages",
    "--stats",
    "--width",
    "-h",
]


def command(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return parser


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for action in parser._actions for s in action.option_strings)


@pytest.mark.parametrize(
    "names, frozen",
    [(("train",), TRAIN_FLAGS), (("bench", "pipeline"), BENCH_PIPELINE_FLAGS), (("models",), MODELS_FLAGS)],
    ids=["train", "bench pipeline", "models"],
)
def test_the_flag_set_is_frozen(names, frozen):
    assert frozen == sorted(frozen), "keep the frozen list sorted"
    assert option_strings(command(*names)) == frozen


def test_train_help_groups_are_the_config_groups():
    titles = [group.title for group in command("train")._action_groups]
    assert [t for t in titles if t in GROUPS] == list(GROUPS)
    for group in command("train")._action_groups:
        if group.title in GROUPS:
            assert {a.dest for a in group._group_actions} == {f.name for f in group_fields(group.title)}


@pytest.mark.parametrize(
    "names, shared_names",
    [
        (("models",), STATS_OPTIONS),
        (("bench", "pipeline"), COMMON_OPTIONS),
        (("bench", "step"), (*COMMON_OPTIONS, "channels_last")),
        (("bench", "memory"), (*COMMON_OPTIONS, "channels_last")),
    ],
)
def test_shared_options_have_train_help_and_choices(names, shared_names):
    train = {a.dest: a for a in command("train")._actions if a.option_strings}
    shared = [a for a in command(*names)._actions if a.dest in shared_names]
    assert len(shared) == len(shared_names)
    for action in shared:
        mine, theirs = action.help.split(" (default")[0], train[action.dest].help.split(" (default")[0]
        assert mine == theirs and action.choices == train[action.dest].choices, action.dest


def test_models_stats_splits_as_train_does():
    args = command("models").parse_args(["--stats", "cnn4", "--stages", "2", "--split", "time"])
    assert args.split == "time" and args.width == TrainConfig.width and args.aux == TrainConfig.aux
