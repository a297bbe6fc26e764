"""The reference trainers: K=1 DGL is backprop, DGL follows Alg. 1, SGL freezes lower stages."""

import copy

import pytest
import torch

from degl.core.methods import DGL, Backprop, SequentialGreedy, build_method
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model


def stages_for(k, seed=0, model="cnn4"):
    torch.manual_seed(seed)
    return build_stages(build_model(model, width=0.125, input_shape=(1, 16, 16)), k, aux="mlp")


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


SETTINGS = OptimSettings(lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=1, steps_per_epoch=6)
KWARGS = {"make_optimizer": SETTINGS.make_optimizer, "make_scheduler": SETTINGS.make_scheduler}


def test_dgl_with_one_stage_equals_backprop_step_for_step():
    torch.use_deterministic_algorithms(True)
    dgl = DGL(stages_for(1), **KWARGS)
    bp = Backprop(stages_for(1), **KWARGS)
    for x, y in batches(6):
        (r_dgl,), (r_bp,) = dgl.train_step(x, y), bp.train_step(x, y)
        assert torch.equal(r_dgl.loss, r_bp.loss)
        assert torch.equal(r_dgl.correct, r_bp.correct)
        for p, q in zip(dgl.stages[0].parameters(), bp.stages[0].parameters()):
            assert torch.equal(p, q)
    assert dgl.current_lrs() == bp.current_lrs()


def test_backprop_over_k_stages_equals_backprop_over_one():
    # The split does not change the end-to-end network: same loss sequence, same weights.
    torch.use_deterministic_algorithms(True)
    one, three = Backprop(stages_for(1), **KWARGS), Backprop(stages_for(3), **KWARGS)
    # stages_for(3) builds extra aux heads after the backbone, but the backbone draws the same init.
    for x, y in batches(4):
        assert torch.equal(one.train_step(x, y)[0].loss, three.train_step(x, y)[0].loss)


def test_dgl_matches_a_hand_written_alg1_loop():
    torch.use_deterministic_algorithms(True)
    stages = stages_for(3)
    reference = copy.deepcopy(stages)
    dgl = DGL(stages, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    optimizers = [torch.optim.SGD(s.parameters(), lr=0.1) for s in reference]
    for x, y in batches(3):
        dgl.train_step(x, y)
        h = x
        for stage, opt in zip(reference, optimizers):
            opt.zero_grad()
            out, logits = stage(h)
            torch.nn.functional.cross_entropy(logits, y).backward()
            opt.step()
            h = out.detach()  # computed before the update, as in the paper's code
    for a, b in zip(stages, reference):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_sgl_trains_only_the_current_stage_and_keeps_lower_ones_frozen():
    stages = stages_for(3)
    sgl = SequentialGreedy(stages, **KWARGS)
    assert sgl.num_phases == 3
    data = batches(3)
    sgl.start_phase(0)
    for x, y in data:
        assert [r.stage for r in sgl.train_step(x, y, phase=0)] == [0]
    sgl.start_phase(1)
    frozen = copy.deepcopy(stages[0].state_dict())
    current_before = copy.deepcopy(stages[1].state_dict())
    upper_before = copy.deepcopy(stages[2].state_dict())
    for x, y in data:
        sgl.train_step(x, y, phase=1)
    after = stages[0].state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen), "frozen stage changed (weights or BN stats)"
    assert not stages[0].training and stages[1].training
    assert all(torch.equal(upper_before[k], v) for k, v in stages[2].state_dict().items())
    assert not torch.equal(current_before["block.0.1.weight"], stages[1].state_dict()["block.0.1.weight"])
    assert sgl.evaluated_stages(1) == [0, 1]


def test_sgl_lr_schedule_restarts_per_stage():
    sgl = SequentialGreedy(stages_for(2), **KWARGS)
    for phase in range(2):
        sgl.start_phase(phase)
        for x, y in batches(6):
            sgl.train_step(x, y, phase=phase)
        assert sgl.current_lrs()[phase] == pytest.approx(0.0, abs=1e-12)
    # stage 1's schedule only ran during phase 1: six steps, like stage 0's
    assert sgl.schedulers[0].last_epoch == sgl.schedulers[1].last_epoch == 6


def test_unknown_method():
    with pytest.raises(UserError, match="unknown method"):
        build_method("feedback-alignment", stages_for(1), **KWARGS)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(UserError, match="fp16 needs a CUDA"):
        DGL(stages_for(1), precision="fp16", **KWARGS)


def test_bf16_autocast_trains_on_cpu():
    def train(precision):
        dgl = DGL(stages_for(2), precision=precision, **KWARGS)
        seen = []  # the dtype of every conv and linear output, heads included

        def hook(module, inputs, output):
            seen.append(output.dtype)

        for stage in dgl.stages:
            for module in stage.modules():
                if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                    module.register_forward_hook(hook)
        losses = [r.loss.item() for x, y in batches(4) for r in dgl.train_step(x, y)]
        return dgl, set(seen), losses

    bf16, bf16_dtypes, bf16_losses = train("bf16")
    _, fp32_dtypes, fp32_losses = train("fp32")
    assert bf16_dtypes == {torch.bfloat16} and fp32_dtypes == {torch.float32}
    assert all(torch.isfinite(torch.tensor(bf16_losses)))
    # the same run in fp32 gives other numbers (bf16 keeps 8 bits of mantissa) ...
    assert bf16_losses != fp32_losses
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.1)
    # ... while the weights the optimizer updates stay fp32 (autocast, not a model cast to bf16)
    assert all(p.dtype == torch.float32 for p in bf16.stages[0].parameters())
