"""One-pass evaluation of every stage equals the official code's per-stage full forward passes."""

import pytest
import torch
import torch.nn.functional as F

from degl.core.evaluate import evaluate
from degl.core.split import build_stages
from degl.models import build_model


def naive(stages, batches, evaluated):
    """The official O(K^2) way: for each stage, a forward pass from the input through its head."""
    totals = {k: {"loss": 0.0, "acc": 0, "acc5": 0, "ensemble_acc": 0} for k in evaluated}
    count = 0
    for x, y in batches:
        count += len(y)
        ensemble = 0
        for k in evaluated:
            h = x
            for stage in stages[: k + 1]:
                h = stage.block(h)
            logits = stages[k].head(h)
            ensemble = ensemble + logits.softmax(1) * 2.0**k
            totals[k]["loss"] += F.cross_entropy(logits, y, reduction="sum").item()
            totals[k]["acc"] += (logits.argmax(1) == y).sum().item()
            top5 = logits.argsort(1, descending=True)[:, :5]
            totals[k]["acc5"] += sum(int(label in row) for label, row in zip(y.tolist(), top5.tolist()))
            totals[k]["ensemble_acc"] += (ensemble.argmax(1) == y).sum().item()
    return {
        k: {name: value / count * (1 if name == "loss" else 100) for name, value in t.items()}
        for k, t in totals.items()
    }


@pytest.mark.parametrize("evaluated", [None, [0, 2], [1]])
def test_one_pass_matches_per_stage_passes_with_top5_and_ensemble(evaluated):
    torch.manual_seed(0)
    stages = build_stages(build_model("cnn4", width=0.125, input_shape=(3, 16, 16), num_classes=12), 3, aux="mlp")
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(20, 3, 16, 16, generator=generator), torch.randint(0, 12, (20,), generator=generator))]
    batches.append((torch.randn(7, 3, 16, 16, generator=generator), torch.randint(0, 12, (7,), generator=generator)))
    for stage in stages:
        stage.train()
    result = evaluate(stages, batches, evaluated=evaluated)
    assert all(stage.training for stage in stages)  # modes restored
    for stage in stages:
        stage.eval()
    with torch.no_grad():
        expected = naive(stages, batches, result.stages)
    assert result.stages == (evaluated or [0, 1, 2]) and result.count == 27
    for k, values in result.by_stage().items():
        assert values == pytest.approx(expected[k], rel=1e-5, abs=1e-6), k
        assert values["acc"] <= values["acc5"]
