"""DNI, cDNI, DDG and FR: K=1 is backprop, the delays and updates are the methods', and a pipeline of
processes equals one process bit for bit."""

import copy
import json

import pytest
import torch

from conftest import SYNTH, read_metrics, run_degl
from degl.core.alternatives import GradientMethod
from degl.core.alternatives.steps import DelayedGradientStep, SyntheticGradientStep
from degl.core.methods import Backprop, build_method
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.models import build_model
from degl.run import checkpoint

METHODS = ["dni", "cdni", "ddg", "fr"]


def stages_for(k, seed=0):
    torch.manual_seed(seed)
    return build_stages(build_model("cnn4", width=0.125, input_shape=(1, 16, 16)), k, aux="mlp")


def batches(n, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 16, 16, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def settings(**changes):
    base = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "epochs": 1, "steps_per_epoch": 6}
    s = OptimSettings(**{**base, **changes})
    return {"make_optimizer": s.make_optimizer, "make_scheduler": s.make_scheduler}


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("name", METHODS)
def test_one_stage_is_backprop_step_for_step(name):
    method, bp = build_method(name, stages_for(1), **settings()), Backprop(stages_for(1), **settings())
    for x, y in batches(6):
        (a,), (b,) = method.train_step(x, y), bp.train_step(x, y)
        assert torch.equal(a.loss, b.loss) and torch.equal(a.correct, b.correct)
        for p, q in zip(method.stages[0].parameters(), bp.stages[0].parameters()):
            assert torch.equal(p, q)
    method.finish_epoch()
    assert method.current_lrs() == bp.current_lrs()


@pytest.mark.parametrize("name", ["ddg", "fr"])
def test_delayed_methods_update_stage_k_2_k_minus_1_minus_k_batches_late(name):
    k = 3
    method = build_method(name, stages_for(k), **settings())
    assert [getattr(step, "delay", 0) for step in method.steps] == [4, 2, 0]
    first = [[p.clone() for p in stage.block.parameters()] for stage in method.stages]
    data = batches(6)
    for s, (x, y) in enumerate(data):
        method.train_step(x, y)
        for index, stage in enumerate(method.stages):
            unchanged = all(torch.equal(a, b) for a, b in zip(first[index], stage.block.parameters()))
            assert unchanged == (s < method.steps[index].delay), (index, s)
    assert [len(step.pending) for step in method.steps] == [4, 2, 0]
    method.finish_epoch()
    # every stage made one update per batch: the cosine schedule of 6 steps has reached its end
    assert not any(step.pending for step in method.steps)
    assert method.current_lrs()[0] == method.current_lrs()[2]
    assert method.steps[0].scheduler.last_epoch == len(data)


def test_ddg_and_fr_differ_only_in_how_the_delayed_gradient_is_formed():
    # K=2: stage 0 first updates at step 2 with batch 0's gradient; its weights are still the ones
    # batch 0 saw, so DDG and FR agree. At step 3 batch 1's gradient is applied: DDG's at the weights
    # batch 1 saw, FR's recomputed at the weights updated once, so they part.
    ddg, fr = (build_method(n, stages_for(2), **settings(momentum=0.0, weight_decay=0.0)) for n in ("ddg", "fr"))
    data = batches(4)
    for s, (x, y) in enumerate(data):
        ddg.train_step(x, y)
        fr.train_step(x, y)
        same0 = all(torch.equal(p, q) for p, q in zip(ddg.stages[0].parameters(), fr.stages[0].parameters()))
        assert same0 == (s < 3), s
        assert all(torch.equal(p, q) for p, q in zip(ddg.stages[1].parameters(), fr.stages[1].parameters()))


def test_ddg_update_equals_the_gradient_at_the_old_weights():
    method = build_method("ddg", stages_for(2), **settings(momentum=0.0, weight_decay=0.0, schedule="constant"))
    stage0, stage1 = copy.deepcopy(method.stages[0]), copy.deepcopy(method.stages[1])
    data = batches(3)
    # Reference by hand: batch 0's forward through both stages with the initial weights, the loss
    # backpropagated to stage 0's output by stage 1 (as stage 1 was at step 0), then through stage 0.
    x0, y0 = data[0]
    h = stage0.block(x0)
    h_in = h.detach().requires_grad_()
    loss = torch.nn.functional.cross_entropy(stage1.head(stage1.block(h_in)), y0)
    loss.backward()
    h.backward(h_in.grad)
    expected = [p.detach() - 0.05 * p.grad for p in stage0.block.parameters()]
    for x, y in data:
        method.train_step(x, y)
    # Batch 1 and 2 ran forward through stage 0 (updating BN statistics) but only batch 0's gradient
    # has been applied.
    for got, want in zip(method.stages[0].block.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_dni_updates_with_the_synthesizer_and_trains_it_on_the_true_gradient():
    method = build_method("dni", stages_for(2), **settings(momentum=0.0, weight_decay=0.0, schedule="constant"))
    step = method.steps[0]
    assert isinstance(step, SyntheticGradientStep)
    block0 = [p.clone() for p in method.stages[0].block.parameters()]
    synth0 = [p.clone() for p in step.synthesizer.parameters()]
    data = batches(4)
    method.train_step(*data[0])
    # The synthesizer's last layer starts at zero: the first synthetic gradient is zero.
    assert all(torch.equal(a, b) for a, b in zip(block0, method.stages[0].block.parameters()))
    method.train_step(*data[1])
    assert all(torch.equal(a, b) for a, b in zip(synth0, step.synthesizer.parameters()))
    method.train_step(*data[2])  # batch 0's true gradient arrives: the synthesizer learns
    assert not all(torch.equal(a, b) for a, b in zip(synth0, step.synthesizer.parameters()))
    method.train_step(*data[3])  # and the stage now moves with a non-zero prediction
    assert not all(torch.equal(a, b) for a, b in zip(block0, method.stages[0].block.parameters()))
    assert step.synth_loss > 0
    method.finish_epoch()
    assert not step.pending and not any(method.grads)


def test_cdni_synthesizer_sees_the_label():
    method = build_method("cdni", stages_for(2), **settings())
    synth = method.steps[0].synthesizer
    torch.nn.init.normal_(synth.rest[-1].weight)
    h = torch.randn(4, *method.stages[0].out_shape)
    synth.eval()
    a, b = synth(h, torch.tensor([0, 1, 2, 3])), synth(h, torch.tensor([3, 2, 1, 0]))
    assert a.shape == h.shape and not torch.equal(a, b)
    assert build_method("dni", stages_for(2), **settings()).steps[0].synthesizer.label is None


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_holds_every_part_of_a_stage(name):
    method = build_method(name, stages_for(3), **settings())
    for x, y in batches(4):
        method.train_step(x, y)
    method.finish_epoch()
    files = method.stage_files()
    other = build_method(name, stages_for(3, seed=5), **settings())
    other.load_stage_files(copy.deepcopy(files), method.shared_state())  # as from a file: nothing shared
    for x, y in batches(3, seed=9):
        a, b = method.train_step(x, y), other.train_step(x, y)
        assert torch.equal(a[0].loss, b[0].loss)
    if name in ("dni", "cdni"):
        assert "synthesizer" in files[0] and "synth_optimizer" in files[1] and "synthesizer" not in files[2]


def test_only_the_last_stage_is_trained_and_scored():
    method = build_method("ddg", stages_for(3), **settings())
    assert isinstance(method, GradientMethod) and method.trained_stages(0) == [2]
    assert isinstance(method.steps[0], DelayedGradientStep) and method.steps[1].replay is False


def test_fr_replay_leaves_normalisation_statistics_alone():
    method = build_method("fr", stages_for(2), **settings())
    x, y = batches(1)[0]
    step = method.steps[0]
    step.advance(x, y, input_grad=False)
    after_play = [b.clone() for b in method.stages[0].buffers()]
    step.settle(torch.ones(8, *method.stages[0].out_shape))
    assert all(torch.equal(a, b) for a, b in zip(after_play, method.stages[0].buffers()))


# ------------------------------------------------------------------ CLI and processes

EXACT = [*SYNTH, "--epochs", "2", "--threads", "1", "--deterministic", "--stages", "3"]


def same_run(a, b):
    assert read_metrics(a) == read_metrics(b)
    (pa, ma), (pb, mb) = checkpoint.load_meta(a), checkpoint.load_meta(b)
    assert ma["position"] == mb["position"] and ma["global_step"] == mb["global_step"]
    for i in range(ma["num_stages"]):
        assert_equal_nested(checkpoint.load_stage(pa, i), checkpoint.load_stage(pb, i), f"stage {i}")


def assert_equal_nested(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.distributed
@pytest.mark.parametrize("name", METHODS)
def test_three_processes_equal_one_bit_for_bit(tmp_path, name):
    one, three = tmp_path / "one", tmp_path / "three"
    for out, extra in ((one, []), (three, ["--workers", "3"])):
        done = run_degl("train", *EXACT, "--method", name, *extra, "--out", str(out))
        assert done.returncode == 0, done.stderr
    same_run(one, three)
    tests = [line for line in read_metrics(three) if line["split"] == "test"]
    assert {line["stage"] for line in tests} == {2}  # only the last stage's head is trained and scored


@pytest.mark.distributed
def test_a_stopped_ddg_pipeline_resumes_across_runtimes_like_one_process(tmp_path):
    # A stop settles the gradients in flight; the same stops give the same run in either runtime.
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    base = [*EXACT, "--method", "ddg"]
    assert run_degl("train", *base, "--max-steps", "5", "--out", str(one)).returncode == 0
    assert run_degl("train", "--resume", str(one), "--max-steps", "6").returncode == 0
    assert run_degl("train", "--resume", str(one)).returncode == 0
    done = run_degl("train", *base, "--workers", "3", "--max-steps", "5", "--out", str(mixed))
    assert done.returncode == 0, done.stderr
    done = run_degl("train", "--resume", str(mixed), "--workers", "1", "--max-steps", "6")
    assert done.returncode == 0, done.stderr
    done = run_degl("train", "--resume", str(mixed), "--workers", "3")
    assert done.returncode == 0, done.stderr
    same_run(one, mixed)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "dni", "--codec", "int8"], "--codec int8"),
        (["--method", "ddg", "--precision", "fp16"], "fp32 or bf16"),
        (["--method", "fr", "--buffer", "4"], "--buffer 4"),
        (["--method", "ddg", "--aux", "mlp"], "--aux mlp"),
    ],
)
def test_options_that_do_not_apply_are_refused(tmp_path, args, message):
    out = tmp_path / "run"
    done = run_degl("train", *SYNTH, "--stages", "2", *args, "--out", str(out))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error:") and message in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.distributed
def test_eval_of_a_slowed_dni_pipeline_run_scores_the_last_stage(tmp_path):
    out = tmp_path / "run"
    done = run_degl("train", *EXACT, "--method", "dni", "--workers", "3", "--slowdown", "1:1.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    done = run_degl("eval", "--run", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    last = [line for line in read_metrics(out) if line["split"] == "test"][-1]
    assert result["stages"] == [2] and result["test_acc"] == pytest.approx(last["acc"], abs=1e-9)
