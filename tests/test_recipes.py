"""Every recipe in recipes/ runs through the real CLI for 2 steps on generated data in its format.

The recipes are the paper's experiments at full scale (paper-spec §3); here each one is started as
a user would start it (``degl train --config recipes/<name>.yaml --data-dir DIR``), with only the
overrides a CPU-only CI machine needs, and we check that the run recorded the recipe's own settings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from datagen import write_cifar10_python, write_imagenet_folders
from degl.cli import main
from degl.run import checkpoint
from degl.run.config import GRADIENT_METHODS, load_config_file, make_config

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))

# Overrides for a CPU-only CI machine, and why each one is needed:
CPU_CI = [
    "--max-steps", "2",  # a smoke run: two optimizer steps exercise build, loop, schedule and checkpoint
    "--batch-size", "4",  # the generated data sets hold a few dozen images, and 128-256 is slow on a CPU
    "--eval-batch-size", "4",  # likewise (2 steps stop mid-epoch, so evaluation does not run anyway)
    "--device", "cpu",  # CI has no GPU; recipes leave the device to the machine
    "--precision", "fp32",  # the ImageNet recipes train in fp16, which needs CUDA
    "--no-progress",  # no progress bars in CI logs
]  # fmt: skip
IMAGENET_CI = [
    "--image-size", "64",  # 224x224 steps of VGG/ResNet-152 take seconds each on a CPU; 64 still leaves
    # a non-empty map after VGG's five halvings (64 -> 2)
    "--data-workers", "0",  # decode in this process: no worker processes to start (seconds) or leak
]  # fmt: skip
OVERRIDDEN = {"max_steps", "batch_size", "eval_batch_size", "device", "precision", "progress", "out", "data_dir"}
OVERRIDDEN_IMAGENET = {"image_size", "data_workers"}

# One recipe per experiment of paper-spec §3 (and a backprop baseline per network).
EXPECTED = {
    "cifar10-auxnet-mlp",
    "cifar10-auxnet-mlp-sr",
    "cifar10-auxnet-cnn",
    "cifar10-backprop-cnn6",
    "cifar10-curves-dgl",
    "cifar10-curves-sgl",
    "cifar10-backprop-cnn4",
    "cifar10-ddg-resnet110-k2",
    "cifar10-backprop-resnet110",
    "cifar10-dni-dgl",
    "cifar10-dni-cnn-dni",
    "cifar10-dni-cnn-cdni",
    "cifar10-backprop-dni-cnn",
    "cifar10-ddg-resnet110-k2-ddg",
    "cifar10-ddg-resnet110-k2-fr",
    "cifar10-buffer-greedynet-sync",
    "cifar10-async-greedynet-buffer30",
    "cifar10-backprop-greedynet",
    "imagenet-vgg13-k4",
    "imagenet-vgg13-k10",
    "imagenet-vgg19-k2",
    "imagenet-vgg19-k4",
    "imagenet-resnet152-k2",
    "imagenet-backprop-vgg13",
    "imagenet-backprop-vgg19",
    "imagenet-backprop-resnet152",
}

# Methods whose stages 1..K-1 train an aux head (the others train only the last stage's head).
AUX_METHODS = ("dgl", "sgl", "async-dgl")

# The alternatives' recipes are their comparison's DGL (or backprop) recipe with only these keys
# changed, so that a table row differs from its neighbours by the method alone.
SAME_AS = {
    "cifar10-dni-cnn-dni": ("cifar10-dni-dgl", {"method", "aux", "epochs"}),  # 2000 epochs: cifar_cnn_dni.py
    "cifar10-dni-cnn-cdni": ("cifar10-dni-dgl", {"method", "aux", "epochs"}),
    "cifar10-backprop-dni-cnn": ("cifar10-dni-cnn-dni", {"method", "stages", "split"}),
    "cifar10-ddg-resnet110-k2-ddg": ("cifar10-ddg-resnet110-k2", {"method", "aux"}),
    "cifar10-ddg-resnet110-k2-fr": ("cifar10-ddg-resnet110-k2", {"method", "aux"}),
}

# Source labels of paper-spec §0, e.g. [N1], [LOG:learning_curves/parallel.log].
LABEL = re.compile(r"\[(R|LOG|LC|ARX|RK|N1|N2|FDG|GLS|FU|OWN)(:[^\]\s]+)?\]")


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each data set once per module, at absolute paths (the hygiene fixture chdirs per test)."""
    root = tmp_path_factory.mktemp("recipe-data")
    # CIFAR-10 python batches: 5 x 8 = 40 training images = 10 steps of 4, so 2 steps end mid-epoch.
    cifar = write_cifar10_python(root / "cifar10", n_per_batch=8, n_test=8)
    # ImageNet class folders: 3 classes x 4 = 12 training images = 3 steps of 4.
    imagenet = write_imagenet_folders(root / "imagenet", classes=3, per_class=4, val_per_class=2)
    return {"cifar10": cifar.resolve(), "imagenet": imagenet.resolve()}


def header_of(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def section(header: str, title: str) -> str:
    """The text of ``# Title: ...`` up to the next ``# Other title:`` line."""
    match = re.search(rf"^# {re.escape(title)}:(.*?)(?=^# [A-Z][^:\n]*:|\Z)", header, re.M | re.S)
    assert match, f"the header has no '# {title}:' section"
    return match.group(1)


def test_every_paper_experiment_has_a_recipe():
    names = {path.stem for path in RECIPES}
    assert names >= EXPECTED, f"missing recipes: {sorted(EXPECTED - names)}"


@pytest.mark.parametrize("name", sorted(SAME_AS))
def test_an_alternative_differs_from_its_comparison_by_the_method_only(name):
    other, allowed = SAME_AS[name]
    mine, theirs = (load_config_file(RECIPE_DIR / f"{n}.yaml") for n in (name, other))
    differing = {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
    assert differing <= allowed, f"{name} differs from {other} in {sorted(differing - allowed)}"
    assert mine["method"] != theirs["method"]
    # Its header names the command that puts it in the comparison's table.
    run = section(header_of(RECIPE_DIR / f"{name}.yaml"), "Run")
    if make_config(mine).method in GRADIENT_METHODS:
        assert f"degl compare --config recipes/{other}.yaml --methods dgl," in run


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_names_its_source(recipe):
    values = load_config_file(recipe)
    cfg = make_config(values)  # valid as a whole, not only key by key
    assert cfg.dataset == recipe.stem.split("-")[0]  # the name's prefix is the data set
    for key in ("method", "model", "stages", "optimizer", "lr", "schedule", "epochs", "batch_size", "seed"):
        assert key in values, f"{recipe.name} leaves {key} to the library default"
    if cfg.method in AUX_METHODS:
        assert "aux" in values
    else:  # backprop, dni, cdni, ddg and fr train no aux head: an aux in the recipe would mislead
        assert "aux" not in values, f"{recipe.name}: --method {cfg.method} trains only the last stage's head"
    header = header_of(recipe)
    assert section(header, "Reproduces").strip()  # which table / figure / comparison
    number = section(header, "Paper's number")
    assert LABEL.search(number) or "not found" in number, "quote the number with its source label, or say not found"
    assert LABEL.search(section(header, "Official code")) or "none" in section(header, "Official code").lower()
    assert section(header, "Deviations from the official code").strip()
    assert f"degl train --config recipes/{recipe.name}" in section(header, "Run")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_two_steps_through_the_cli(recipe, data_dirs, tmp_path, capsys):
    values = load_config_file(recipe)
    dataset = values["dataset"]
    out = tmp_path / "run"
    argv = ["train", "--config", str(recipe), "--data-dir", str(data_dirs[dataset]), *CPU_CI, "--out", str(out)]
    overridden = set(OVERRIDDEN)
    if dataset == "imagenet":
        argv += IMAGENET_CI
        overridden |= OVERRIDDEN_IMAGENET
    assert main(argv) == 0, capsys.readouterr().err
    # --precision fp32 makes a fp16 recipe's loss-scale settings moot: left out, with a note.
    moot = {
        k for k in ("loss_scale_init", "loss_scale_growth_interval") if k in values and values["precision"] == "fp16"
    }
    moot |= {"buffer_storage"} if values.get("buffer_storage", "device") != "device" else set()  # --device cpu
    notes = capsys.readouterr().err
    for key in moot:
        flag = f"--{key.replace('_', '-')}"
        assert any(line.startswith(f"degl: note: {flag}") and "left out" in line for line in notes.splitlines()), notes
    overridden |= moot

    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is False
    assert checkpoint.latest_checkpoint(out) is not None
    ckpt, meta = checkpoint.load_meta(out)
    if values["method"] == "async-dgl":  # --max-steps counts stage 0's updates there too
        assert summary["steps_per_stage"][0] == 2
    else:
        assert summary["steps_completed"] == 2 and meta["global_step"] == 2

    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key, value in values.items():  # every recipe setting not overridden above is what ran
        if key not in overridden:
            recorded = list(value) if isinstance(value, tuple) else value  # list options are YAML lists
            assert saved[key] == recorded, f"{key}: recipe {value!r}, run recorded {saved[key]!r}"
    assert (saved["batch_size"], saved["device"], saved["precision"]) == (4, "cpu", "fp32")
    assert summary["method"] == values["method"] and summary["model"] == values["model"]
    assert summary["stages"] == (1 if values["method"] == "backprop" else values["stages"])
    if values["method"] in AUX_METHODS or values["method"] == "backprop":
        assert summary["aux"] == (values.get("aux") if summary["stages"] > 1 else None)
    if values["method"] in GRADIENT_METHODS:  # stage 1 learns from a synthesizer (dni, cdni) or not (ddg, fr)
        assert len(summary["stage_blocks"]) == values["stages"]
        synthesizer = checkpoint.load_stage(ckpt, 0).get("synthesizer")
        assert (synthesizer is not None) == (values["method"] in ("dni", "cdni"))
        if synthesizer is not None:  # cDNI's synthesizer takes the label through a Linear(classes -> C)
            assert ("label.weight" in synthesizer) == (values["method"] == "cdni")
    assert meta["config"]["lr"] == values["lr"] and meta["config"]["schedule"] == values["schedule"]
