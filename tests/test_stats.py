"""``degl models --stats``: the per-stage cost table, its JSON contract, and bad input."""

import json

import pytest
import torch

from conftest import run_degl
from degl.cli import main
from degl.core.stats import model_stats
from degl.models import build_model

STAGE_KEYS = {"out_shape", "params", "macs", "aux_params", "aux_macs"}


def stats_json(capsys, *args):
    assert main(["models", "--stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_json_contract(capsys):
    result = stats_json(capsys, "greedynet", "--stages", "3", "--aux", "mlp")
    assert {"stages", "total_macs", "aux_ratio", "classifier_macs"} <= set(result)
    stages = result["stages"]
    assert len(stages) == 3 and all(set(s) >= STAGE_KEYS for s in stages)
    assert [s["out_shape"] for s in stages] == [[128, 32, 32], [256, 16, 16], [512, 8, 8]]
    assert result["total_macs"] == sum(s["macs"] for s in stages)
    # The ratio leaves out the last stage's head: that is the classifier, which backprop has too.
    assert result["aux_ratio"] == pytest.approx(sum(s["aux_macs"] for s in stages[:-1]) / result["total_macs"])
    assert result["classifier_macs"] == stages[-1]["aux_macs"] > 0
    backbone = build_model("greedynet")
    assert sum(s["params"] for s in stages) == sum(p.numel() for b in backbone.blocks for p in b.parameters())
    assert stages[-1]["aux_params"] == sum(p.numel() for p in backbone.classifier.parameters())


def test_options_reach_the_model(capsys):
    result = stats_json(
        capsys, "cnn6", "--stages", "2", "--width", "0.5", "--input-shape", "1,28,28", "--split", "blocks"
    )
    assert result["input_shape"] == [1, 28, 28]
    assert result["cuts"] == [3]
    assert result["stages"][-1]["out_shape"] == [256, 7, 7]
    assert stats_json(capsys, "cnn6", "--stages", "3", "--cuts", "1,5")["cuts"] == [1, 5]


def test_macs_are_one_sample_and_leave_the_model_untouched():
    stats = model_stats("cnn4", 4, aux="mlp-sr")
    assert stats.total_macs == pytest.approx(77.3e6, rel=0.005)
    # Same figure as test_heads.py's cnn4 check (every head, the last one included).
    assert stats.all_heads_ratio == pytest.approx(0.081, abs=0.002)


def test_counting_does_not_change_training_mode_or_bn_statistics():
    from degl.core.stats import backbone_stats

    torch.manual_seed(0)
    backbone = build_model("cnn4", width=0.25)
    before = {k: v.clone() for k, v in backbone.as_sequential().state_dict().items()}
    backbone_stats(backbone, 2)
    after = backbone.as_sequential().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for b in backbone.blocks for m in b.modules())


def test_table(capsys):
    assert main(["models", "--stats", "dni-cnn", "--stages", "3", "--aux", "dni"]) == 0
    out = capsys.readouterr().out
    assert "128x10x10" in out and "classifier" in out
    assert "aux heads of stages 0..K-2" in out and "245.8" in out  # about 2.46x the main network


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stats", "resnet9000", "--stages", "2"], "unknown model"),
        (["--stats", "cnn6", "--stages", "7"], "more than the network's 6 blocks"),
        (["--stats", "cnn6", "--stages", "0"], "at least 1"),
        (["--stats", "cnn6"], "needs --stages"),
        (["--stats", "cnn6", "--stages", "2", "--aux", "nope"], "unknown aux head"),
        (["--stats", "cnn6", "--stages", "2", "--input-shape", "3,32"], "C,H,W"),
        (["--stats", "vgg13", "--stages", "2", "--input-shape", "1,28,28"], "too small"),
        (["--stages", "2"], "only meaningful with --stats"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    assert main(["models", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error: ") and message in lines[0]
    assert captured.out == ""


def test_real_command_line_bad_input():
    # One real process (torch's import is slow): status 2, one line on stderr, no traceback.
    bad = run_degl("models", "--stats", "resnet110", "--stages", "59", timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("degl: error: --stages 59 is more than the network's 58 blocks")
