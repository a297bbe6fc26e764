"""Contract tests over every registered model x several K (the registry is the list of cases).

Each model is built at width 0.125 for its ``contract_input_shape``: the default input shape, or a
smaller one the model registers (3x64x64 for the 224x224 ImageNet nets) to keep the suite fast.
"""

import pytest
import torch

from degl.core.methods import DGL
from degl.core.split import build_stages
from degl.models import build_model, list_models, model_entry

CASES = []
for name in list_models():
    shape = model_entry(name).contract_input_shape
    num_blocks = len(build_model(name, width=0.125, input_shape=shape).blocks)
    for k in sorted({1, 2, min(3, num_blocks), num_blocks}):
        CASES.append((name, k))


def tiny(name):
    torch.manual_seed(0)
    return build_model(name, width=0.125, input_shape=model_entry(name).contract_input_shape)


@pytest.mark.parametrize("name, k", CASES)
def test_stages_compose_to_the_full_network(name, k):
    backbone = tiny(name)
    full = backbone.as_sequential().eval()
    stages = build_stages(backbone, k, aux="linear")
    assert len(stages) == k
    assert [i for s in stages for i in s.block_indices] == list(range(len(backbone.blocks)))
    x = torch.randn(2, *backbone.input_shape)
    with torch.no_grad():
        expected = full(x)
        h = x
        for stage in stages:
            stage.eval()
            h, logits = stage(h)
            assert tuple(h.shape[1:]) == stage.out_shape
            assert logits.shape == (2, 10)
    assert torch.equal(logits, expected)
    assert stages[-1].head is backbone.classifier


@pytest.mark.parametrize("name, k", CASES)
def test_parameters_are_partitioned_exactly(name, k):
    backbone = tiny(name)
    stages = build_stages(backbone, k, aux="mlp")
    backbone_params = {id(p) for b in backbone.blocks for p in b.parameters()}
    owners: dict[int, int] = {}
    for stage in stages:
        for p in stage.block.parameters():
            assert id(p) not in owners, "a parameter is in two stages"
            owners[id(p)] = stage.index
    assert set(owners) == backbone_params
    aux_params = {id(p) for s in stages[:-1] for p in s.head.parameters()}
    assert not aux_params & backbone_params
    assert {id(p) for p in stages[-1].head.parameters()} == {id(p) for p in backbone.classifier.parameters()}


@pytest.mark.parametrize("name, k", [c for c in CASES if c[1] > 1])
def test_no_gradient_crosses_a_stage_boundary(name, k):
    backbone = tiny(name)
    stages = build_stages(backbone, k, aux="linear")
    method = DGL(stages, make_optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    x = torch.randn(2, *backbone.input_shape)
    y = torch.tensor([1, 2])
    grads_after: list[list[torch.Tensor]] = []
    for index in range(k):
        x, _ = method.local_step(index, x, y)
        assert not x.requires_grad
        for later in stages[index + 1 :]:
            assert all(p.grad is None for p in later.parameters())
        for earlier, snapshot in zip(stages[:index], grads_after):
            current = [p.grad for p in earlier.parameters() if p.grad is not None]
            assert all(torch.equal(a, b) for a, b in zip(current, snapshot)), "a later loss changed an earlier stage"
        grads_after.append([p.grad.clone() for p in stages[index].parameters() if p.grad is not None])
        assert grads_after[-1], "a stage's own loss must produce gradients"
