"""Optimisation options of paper-spec §3: schedules, optimizer-state reset at a decay, speed options."""

import pytest
import torch

from conftest import SYNTH, run_degl
from degl.cli import main
from degl.core.methods import DGL
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import make_config


def test_step_and_milestone_schedules():
    step = OptimSettings(schedule="step", steps_per_epoch=10, lr_decay_every=15, lr_decay_factor=0.2)
    assert step.lr_factor(149) == 1.0 and step.lr_factor(150) == pytest.approx(0.2)
    assert step.lr_factor(300) == pytest.approx(0.04)
    ddg = OptimSettings(schedule="milestones", steps_per_epoch=10, lr_milestones=(150, 225), lr_decay_factor=0.1)
    assert ddg.lr_factor(1499) == 1.0 and ddg.lr_factor(1500) == pytest.approx(0.1)
    assert ddg.lr_factor(2250) == pytest.approx(0.01)
    cosine = OptimSettings(schedule="cosine", epochs=2, steps_per_epoch=5)
    assert cosine.lr_factor(0) == 1.0 and cosine.lr_factor(5) == pytest.approx(0.5) and cosine.lr_factor(10) == 0.0


@pytest.mark.parametrize("reset", [False, True])
def test_reset_at_decay_clears_momentum_exactly_at_the_decay(reset):
    torch.manual_seed(0)
    stages = build_stages(build_model("cnn4", width=0.125, input_shape=(1, 8, 8)), 2, aux="linear")
    settings = OptimSettings(lr=0.1, schedule="step", steps_per_epoch=2, lr_decay_every=1, lr_decay_factor=0.5)
    dgl = DGL(
        stages, make_optimizer=settings.make_optimizer, make_scheduler=settings.make_scheduler, reset_at_decay=reset
    )
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    dgl.train_step(x, y)
    assert all(len(opt.state) > 0 for opt in dgl.optimizers)
    dgl.train_step(x, y)  # second step of epoch 0: the schedule decays after it
    assert dgl.current_lrs() == [0.05, 0.05]
    assert all((len(opt.state) == 0) == reset for opt in dgl.optimizers)


def test_option_combinations_are_checked():
    with pytest.raises(UserError, match="needs --lr-milestones"):
        make_config({"schedule": "milestones"})
    with pytest.raises(UserError, match="increasing"):
        make_config({"schedule": "milestones", "lr_milestones": "20,10"})
    with pytest.raises(UserError, match="--reset-at-decay needs"):
        make_config({"reset_at_decay": True, "schedule": "cosine"})


def test_channels_last_trains_to_the_same_numbers(tmp_path):
    common = [*SYNTH, "--epochs", "1", "--stages", "2"]
    assert main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--channels-last", "--out", str(tmp_path / "b")]) == 0
    import json

    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert a["test_acc_per_stage"] == pytest.approx(b["test_acc_per_stage"], abs=1.0)


@pytest.mark.slow
def test_compiled_stages_train_and_checkpoint_like_eager_ones(tmp_path):
    # In a child process: inductor keeps a process-wide compile thread pool alive, which would outlive the test.
    # One compile thread: on a machine of few cores, starting inductor's pool of compile workers costs
    # more than the few small graphs of this run take to compile.
    out = tmp_path / "run"
    args = ["train", *SYNTH, "--stages", "2", "--max-steps", "2", "--compile", "--out", str(out)]
    done = run_degl(*args, env={"TORCHINDUCTOR_COMPILE_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    from degl.run import checkpoint

    path, _ = checkpoint.load_meta(out)
    keys = set(checkpoint.load_stage(path, 0)["model"])
    assert keys and not any("_orig_mod" in k for k in keys)  # resumable without torch.compile
    assert main(["train", "--resume", str(out), "--no-compile", "--max-steps", "1"]) == 0
    assert checkpoint.load_meta(out)[1]["global_step"] == 3
