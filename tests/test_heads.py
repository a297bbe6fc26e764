"""Aux heads follow paper-spec §2.1; their MAC counts match the paper's figures for cnn6 and cnn4."""

import pytest
import torch

from degl.core.measure import count_flops
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_head, build_model


def aux_macs(model, k, aux):
    stages = build_stages(build_model(model), k, aux=aux)
    total = 0
    for stage in stages:
        total += count_flops(stage.head.eval(), torch.zeros(1, *stage.out_shape)) // 2
    return total


def main_macs(model):
    backbone = build_model(model)
    return count_flops(torch.nn.Sequential(*backbone.blocks).eval(), torch.zeros(1, 3, 32, 32)) // 2


def test_cnn6_main_macs():
    assert main_macs("cnn6") == pytest.approx(607.5e6, rel=0.005)


@pytest.mark.parametrize("aux, expected", [("mlp", 40.7e6), ("mlp-sr", 56.5e6)])
def test_cnn6_aux_macs_per_layer(aux, expected):
    # One stage per layer; the figures include the last head (paper-spec §2.2).
    assert aux_macs("cnn6", 6, aux) == pytest.approx(expected, rel=0.01)


def test_cnn6_cnn_aux_macs():
    # 2 x 3x3 convs per head at full resolution on layers 1-5, plus the last MLP head: 1518M, about
    # 2.5x the main network (paper-spec §2.2).
    assert aux_macs("cnn6", 6, "cnn") == pytest.approx(1518e6, rel=0.01)


def test_cnn4_macs():
    assert main_macs("cnn4") == pytest.approx(77.3e6, rel=0.005)
    assert aux_macs("cnn4", 4, "mlp-sr") / main_macs("cnn4") == pytest.approx(0.081, abs=0.002)


@pytest.mark.parametrize("kind", ["mlp", "mlp-sr", "cnn", "linear"])
@pytest.mark.parametrize("shape", [(8, 32, 32), (16, 7, 7), (4, 5, 9)])
def test_head_shapes(kind, shape):
    head = build_head(kind, shape, 7)
    assert head(torch.randn(3, *shape)).shape == (3, 7)


def test_flat_features():
    assert build_head("linear", (12,), 3)(torch.randn(2, 12)).shape == (2, 3)
    with pytest.raises(UserError, match="needs a \\(C, H, W\\)"):
        build_head("cnn", (12,), 3)


def test_unknown_head():
    with pytest.raises(UserError, match="unknown aux head"):
        build_head("transformer", (8, 4, 4), 10)
