"""degl export: every format's logits equal degl's own evaluation of the same checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SYNTH, run_degl
from degl.cli import main
from degl.run.evaluation import evaluate_run, load_run
from degl.run.exported import load_exported

TINY = [*SYNTH, "--threads", "1", "--epochs", "1"]
SEQUENTIAL = """
from torch import nn


def build(num_classes=10, **_):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 3 * 3, num_classes),
    )
"""


def with_model(model: str, *extra: str) -> list[str]:
    args = list(TINY)
    at = args.index("--model")
    args[at + 1] = model
    if model != "cnn4":
        del args[at + 2 : at + 4]  # --width applies to registry models
    return [*args, *extra]


def train(tmp_path: Path, name: str, *args: str) -> Path:
    run = tmp_path / name
    assert main(["train", *args, "--out", str(run)]) == 0
    return run


def degl_logits(run: Path, exit_stage: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw test images and the logits of degl's evaluation path (the test loader's normalised
    batches through each stage and the exit's head), as ``degl eval`` computes them."""
    loaded = load_run(run, device="cpu")
    stages = loaded.setup.stages
    exit_stage = loaded.evaluated[-1] if exit_stage is None else exit_stage
    x, y = next(iter(loaded.setup.test_loader))
    raw = loaded.setup.data.test_images[: len(y)]
    assert torch.equal(y, loaded.setup.data.test_labels[: len(y)])  # the loader keeps the stored order
    with torch.no_grad():
        for stage in stages:
            stage.eval()
        for stage in stages[: exit_stage + 1]:
            x, logits = stage(x)
        return raw, logits.float()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    model_file = root / "seq.py"
    model_file.write_text(SEQUENTIAL)
    made = {
        "cnn4-k1": train(root, "cnn4-k1", *TINY, "--stages", "1"),
        "cnn4-k2": train(root, "cnn4-k2", *TINY, "--stages", "2", "--epochs", "3"),  # one that learned
        "cnn4-k4": train(root, "cnn4-k4", *TINY, "--stages", "4", "--epochs", "3"),
        "sequential-k2": train(root, "sequential-k2", *with_model(f"{model_file}:build", "--stages", "2")),
        "torchvision-k2": train(
            root, "torchvision-k2", *with_model("torchvision:resnet18", "--stages", "2", "--input-shape", "3,16,16")
        ),
        "codec-k2": train(root, "codec-k2", *TINY, "--stages", "2", "--codec", "int8"),
    }
    done = run_degl("train", *TINY, "--stages", "2", "--workers", "2", "--out", str(root / "workers-k2"))
    assert done.returncode == 0, done.stderr
    made["workers-k2"] = root / "workers-k2"
    return made


CASES = ["cnn4-k1", "cnn4-k2", "cnn4-k4", "sequential-k2", "torchvision-k2", "codec-k2", "workers-k2"]
# Max abs difference per unit of logit scale: fp32 itself is only that exact. On the torchvision
# resnet18 after 8 steps (logits up to ~160), torch's fp32 logits are 1.9e-4 from an fp64 evaluation
# and onnxruntime's 1.0e-4, so an absolute 1e-4 would test rounding, not the export.
TOLERANCE = {"pt2": 1e-5, "onnx": 1e-4, "state-dict": 1e-5}


@pytest.mark.parametrize("case", CASES)
def test_every_format_gives_degls_logits(runs, case, tmp_path):
    run = runs[case]
    raw, expected = degl_logits(run)
    for fmt, suffix in (("pt2", "pt2"), ("onnx", "onnx"), ("state-dict", "pt")):
        out = tmp_path / f"model.{suffix}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        (logits,) = load_exported(out).run(raw)
        difference = (logits - expected).abs().max().item()
        assert difference <= TOLERANCE[fmt] * max(1.0, expected.abs().max().item()), (case, fmt, difference)


def test_onnxruntime_runs_the_file_without_degl_with_a_dynamic_batch(runs, tmp_path):
    import onnxruntime

    out = tmp_path / "all.onnx"
    assert main(["export", str(runs["cnn4-k4"]), "--format", "onnx", "--exit", "all", "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["degl"])
    assert metadata["onnx_opset"] == 18 and len(metadata["exits"]) == 4
    assert [e["macs_per_sample"] for e in metadata["exits"]] == sorted(e["macs_per_sample"] for e in metadata["exits"])
    raw, _ = degl_logits(runs["cnn4-k4"])
    for batch in (1, 5):
        outputs = session.run(None, {session.get_inputs()[0].name: raw[:batch].numpy()})
        assert len(outputs) == 4 and all(o.shape == (batch, 4) for o in outputs)
    for stage, output in enumerate(session.run(None, {"images": raw.numpy()})):
        _, expected = degl_logits(runs["cnn4-k4"], stage)
        assert np.abs(output - expected.numpy()).max() <= 1e-4


def test_the_exported_models_test_accuracy_is_degl_evals(runs, tmp_path, capsys):
    run = runs["cnn4-k2"]
    expected = evaluate_run(run)["test_acc_per_stage"][-1]
    for fmt, suffix in (("onnx", "onnx"), ("pt2", "pt2")):
        out = tmp_path / f"m.{suffix}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        capsys.readouterr()
        assert main(["eval", "--run", str(out)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert abs(result["test_acc"] - expected) <= 0.01


def test_the_ensemble_exit_equals_degl_evals_ensemble(runs, tmp_path, capsys):
    run = runs["cnn4-k2"]
    expected = evaluate_run(run)["test_ensemble_acc_per_stage"][-1]
    out = tmp_path / "ens.pt2"
    assert main(["export", str(run), "--format", "pt2", "--exit", "ensemble", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(result["test_acc"] - expected) <= 0.01


def test_early_exit_reports_every_exit_and_threshold(runs, tmp_path, capsys):
    run = runs["cnn4-k4"]
    assert main(["eval", "--run", str(run), "--early-exit", "0.5,0.99", "--plot", str(tmp_path / "e.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    accs = evaluate_run(run)["test_acc_per_stage"]
    assert [e["test_acc"] for e in result["exits"]] == pytest.approx(accs, abs=0.01)
    macs = [e["macs_per_sample"] for e in result["exits"]]
    assert macs == sorted(macs)
    for row in result["early_exit"]:
        assert sum(row["exit_fractions"]) == pytest.approx(1.0)
        assert macs[0] <= row["macs_per_sample"] <= sum(macs)  # a cascade never costs less than exit 0
    assert (tmp_path / "e.png").stat().st_size > 0
    # a threshold of 1.0 can only be met at the last exit: it scores as the last exit alone
    assert main(["eval", "--run", str(run), "--early-exit", "1.0", "--plot", "none"]) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["early_exit"]
    assert row["exit_fractions"][-1] == pytest.approx(1.0) and row["test_acc"] == pytest.approx(accs[-1], abs=0.01)


def test_images_are_classified_from_a_run_and_from_an_exported_file(runs, tmp_path, capsys):
    from PIL import Image

    run = runs["cnn4-k2"]
    loaded = load_run(run, device="cpu")
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(loaded.setup.data.test_images[i, 0].numpy()).save(folder / f"{i}.png")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    answers = []
    for source in (run, out):
        capsys.readouterr()
        assert main(["eval", "--run", str(source), "--images", str(folder)]) == 0
        answers.append(
            [row["class"] for row in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]]
        )
    assert answers[0] == answers[1] and len(answers[0]) == 3
    Image.new("RGB", (30, 30)).save(folder / "wrong.png")
    assert main(["eval", "--run", str(run), "--images", str(folder / "wrong.png")]) == 2
    assert capsys.readouterr().err.strip().startswith("degl: error:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--exit", "7"], "--exit 7"),
        (["--format", "tflite"], "invalid choice"),
    ],
)
def test_export_refuses_what_it_cannot_do_and_writes_nothing(runs, tmp_path, capsys, args, message):
    out = tmp_path / "never.onnx"
    assert main(["export", str(runs["cnn4-k2"]), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_export_of_a_run_without_a_checkpoint_and_of_a_corrupt_file_is_one_line(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(empty), "--out", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err.strip().startswith("degl: error:") and not (tmp_path / "x.onnx").exists()
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"not a model")
    assert main(["eval", "--run", str(corrupt)]) == 2
    assert capsys.readouterr().err.strip().startswith("degl: error:")


def test_without_the_onnx_extra_export_says_how_to_install_it(runs, tmp_path):
    # A module that fails to import stands where the extra would be: the real import machinery runs.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "onnxscript.py").write_text("raise ImportError('onnxscript is not installed')\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "m.onnx"
    done = run_degl("export", str(runs["cnn4-k2"]), "--format", "onnx", "--out", str(out), env=env)
    assert done.returncode == 2 and "degl[onnx]" in done.stderr.strip().splitlines()[-1]
    assert not out.exists()
