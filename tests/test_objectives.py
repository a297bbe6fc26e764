"""Local objectives (``objective=`` / ``--objective``): aux as today, predsim, sim and a user's own."""

import pytest
import torch

import degl
from degl.core.objectives import objective_factory
from degl.core.objectives.predsim import PredSim, similarity
from degl.errors import UserError
from launch_fns import sgd, tiny_batches, tiny_net, tiny_stages
from objective_fns import centered_ce, objective_stages, train_objective_pipeline


def train_dgl(stages, epochs=2, batches=None):
    method = degl.DGL(stages, make_optimizer=sgd)
    losses = []
    for _ in range(epochs):
        results = [method.train_step(x, y) for x, y in batches or tiny_batches(6)]
        losses.append(sum(float(r[0].loss) for r in results) / len(results))
    return method, losses


def test_aux_is_the_head_of_today_bit_for_bit():
    default = tiny_stages(3)  # no objective given
    torch.manual_seed(0)
    aux = degl.build_stages(tiny_net(), 3, aux="mlp", objective="aux", input_shape=(1, 8, 8), num_classes=3)
    assert [type(s.head) for s in aux] == [type(s.head) for s in default]
    train_dgl(default)
    train_dgl(aux)
    for a, b in zip(default, aux, strict=True):
        for key, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[key]), key


def test_predsim_heads_train_on_prediction_and_similarity():
    stages = objective_stages(3, "predsim")
    assert all(isinstance(s.head, PredSim) for s in stages[:2]) and not isinstance(stages[2].head, PredSim)
    _, losses = train_dgl(stages, epochs=12, batches=tiny_batches(3))
    assert losses[-1] < losses[0]
    terms = stages[0].head.terms
    assert set(terms) == {"pred", "sim"} and all(torch.isfinite(v) for v in terms.values())


def test_similarity_matching_is_zero_when_features_match_the_labels():
    y = torch.tensor([0, 1, 0, 2])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(similarity(one_hot * 5.0), similarity(one_hot))
    assert similarity(one_hot)[0, 2] == pytest.approx(1.0) and similarity(one_hot)[0, 1] < 0


def test_sim_alone_trains_the_block_by_similarity_only():
    stage = objective_stages(2, "sim")[0]
    x, y = tiny_batches(1)[0]
    features, logits = stage(x)
    head = stage.head
    loss = head.local_loss(features, logits, y)
    block_grads = torch.autograd.grad(loss, list(stage.block.parameters()), retain_graph=True)
    features2 = stage.block(x)
    sim = torch.nn.functional.mse_loss(
        similarity(head.project(features2)), similarity(torch.nn.functional.one_hot(y, 3).float())
    )
    sim_grads = torch.autograd.grad(sim, list(stage.block.parameters()))
    for a, b in zip(block_grads, sim_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-7)
    assert head.classifier.weight.requires_grad and torch.autograd.grad(loss, head.classifier.weight)[0].abs().sum() > 0


@pytest.mark.distributed
@pytest.mark.parametrize("objective", ["predsim", centered_ce])
def test_an_objectives_pipeline_equals_its_one_process_run_bit_for_bit(objective):
    results = degl.launch(train_objective_pipeline, nprocs=2, args=(objective,), threads=1)
    torch.set_num_threads(1)
    stages = objective_stages(2, objective)
    train_dgl(stages)
    for rank, weights in enumerate(results):
        for key, tensor in stages[rank].state_dict().items():
            assert torch.equal(tensor, weights[key]), (rank, key)


def test_a_users_objective_from_a_file(tmp_path):
    path = tmp_path / "my_objective.py"
    path.write_text(
        "from objective_fns import CenteredCE\n\n\ndef build(in_shape, num_classes):\n"
        "    return CenteredCE(in_shape, num_classes)\n"
    )
    from_file = objective_stages(2, f"{path}:build")
    from_python = objective_stages(2, centered_ce)
    train_dgl(from_file)
    train_dgl(from_python)
    for a, b in zip(from_file, from_python, strict=True):
        for key, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[key]), key


def test_bad_objectives_get_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown objective 'infomax'; choose one of aux, predsim, sim"):
        objective_factory("infomax")
    with pytest.raises(ValueError, match="applies to the predsim objective"):
        objective_factory("sim", beta=0.5)
    with pytest.raises(UserError, match=r"must return an nn.Module with forward"):
        objective_stages(2, lambda shape, classes: torch.nn.Linear(3, 3))

    class NotScalar(torch.nn.Module):
        def __init__(self, shape, classes):
            super().__init__()
            self.linear = torch.nn.Linear(shape[0], classes)

        def forward(self, features):
            return self.linear(features.mean(dim=(2, 3)))

        def local_loss(self, features, logits, y):
            return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    with pytest.raises(UserError, match="local_loss must return a scalar tensor, got Tensor"):
        train_dgl(objective_stages(2, NotScalar), epochs=1)
