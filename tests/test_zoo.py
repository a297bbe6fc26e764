"""The paper's model zoo (paper-spec §2): every published size figure, and each family's quirks.

Figure conventions (paper-spec §2, and :mod:`degl.core.stats`):
- "main MACs" are the blocks only, without the classifier;
- per-stage MACs are the stage's blocks only;
- "aux %" for the ImageNet nets and dni-cnn counts the aux heads of stages 0..K-2 (``aux_ratio``),
  but for greedynet (and cnn6, see test_heads.py) it counts every head including the last one,
  which is the classifier (``all_heads_ratio``);
- the ImageNet figures are for 1000 classes, the CIFAR ones for 10.
MAC figures must match within 2%; percentages printed with one decimal within half that decimal.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from degl.core.split import build_stages
from degl.core.stats import backbone_stats, model_stats
from degl.errors import UserError
from degl.models import build_model, list_models, model_entry
from degl.models.greedynet import Psi
from degl.models.heads import mlp_head
from degl.models.resnet_cifar import ShortcutA

M, G = 1e6, 1e9


def percent(value):
    """A percentage printed with one decimal: equal up to the rounding of that decimal."""
    return pytest.approx(value / 100, abs=0.0005)


@pytest.fixture(scope="module")
def vgg13():
    torch.manual_seed(0)
    return build_model("vgg13", num_classes=1000)


@pytest.fixture(scope="module")
def vgg19():
    torch.manual_seed(0)
    return build_model("vgg19", num_classes=1000)


# --- CIFAR nets -------------------------------------------------------------------------------


def test_cnn6_main_macs():
    assert model_stats("cnn6", 1).total_macs == pytest.approx(607.5 * M, rel=0.02)


@pytest.mark.parametrize(
    "name, main, heads",
    [("greedynet", 607.5 * M, 5.45), ("greedynet-psi", 1060.5 * M, 3.1)],
)
def test_greedynet_macs(name, main, heads):
    stats = model_stats(name, 6, aux="mlp")
    assert stats.total_macs == pytest.approx(main, rel=0.02)
    # This figure counts all six heads, the last one (the classifier) included.
    assert stats.all_heads_ratio == pytest.approx(heads / 100, abs=0.0005)
    assert [s.out_shape for s in stats.stages] == [
        [128, 32, 32],
        [128, 32, 32],
        [256, 16, 16],
        [256, 16, 16],
        [512, 8, 8],
        [512, 8, 8],
    ]


@pytest.mark.parametrize("name", ["greedynet-avgpool", "greedynet-stride"])
def test_other_greedynet_downsamplings_cost_like_maxpool(name):
    assert model_stats(name, 6, aux="mlp").total_macs == model_stats("greedynet", 6, aux="mlp").total_macs


def test_psi_is_the_papers_exact_permutation():
    x = torch.randn(2, 3, 8, 6)
    y = Psi()(x)
    assert y.shape == (2, 12, 4, 3)
    for dy in range(2):
        for dx in range(2):
            for c in range(3):
                assert torch.equal(y[:, (dy * 2 + dx) * 3 + c], x[:, c, dy::2, dx::2])
    assert torch.equal(Psi.inverse(y), x)
    assert torch.equal(y.flatten(1).sort().values, x.flatten(1).sort().values)
    # Same values as PixelUnshuffle, in another channel order.
    assert not torch.equal(y, nn.PixelUnshuffle(2)(x))


def test_psi_rejects_odd_maps():
    with pytest.raises(UserError, match="even"):
        build_model("greedynet-psi", input_shape=(3, 30, 30))


@pytest.mark.parametrize("size", [32, 16, 8])
def test_generic_mlp_head_pools_like_the_greedy_head(size):
    # The paper's greedynet head is avg_pool2d(kernel S/2) then the MLP; the generic mlp head pools to
    # S/4 then 2x2, which must give the same features, so no greedynet-specific head is needed.
    head = mlp_head((4, size, size), 10)
    x = torch.randn(3, 4, size, size)
    pooled = head[1](head[0](x))
    assert torch.allclose(pooled, F.avg_pool2d(x, size // 2), atol=1e-6)


def test_dni_cnn_shapes_and_aux_cost():
    stats = model_stats("dni-cnn", 3, aux="dni")
    assert stats.cuts == [1, 2]
    assert [s.out_shape for s in stats.stages] == [[128, 10, 10], [128, 3, 3], [128, 1, 1]]
    # 2.46x: the dni heads of the first two stages over the main network (the last head is a linear).
    assert stats.aux_macs / stats.total_macs == pytest.approx(2.46, rel=0.02)
    assert stats.classifier_params == 128 * 10 + 10


def test_dni_head_last_conv_starts_at_zero():
    backbone = build_model("dni-cnn")
    head = backbone.extra_heads["dni"]((128, 10, 10), 10)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 3
    assert not convs[-1].weight.any() and convs[0].weight.any()
    assert head(torch.randn(2, 128, 10, 10)).shape == (2, 10)


def test_resnet110_k2_stage_macs():
    stats = model_stats("resnet110", 2)
    assert stats.cuts == [29]
    assert stats.stages[0].out_shape == [32, 16, 16]
    assert stats.stages[0].macs == pytest.approx(121.9 * M, rel=0.02)
    assert stats.stages[1].macs == pytest.approx(130.9 * M, rel=0.02)
    # The DDG code's hard-coded aux: mlp-sr on 32 channels, MLP width 4C = 128.
    assert stats.stages[0].aux_params < 60_000


def test_resnet110_layout():
    backbone = build_model("resnet110")
    assert len(backbone.blocks) == 58
    residual = [b for b in backbone.blocks if isinstance(b, BasicBlock)]
    assert len(residual) == 54
    assert [b.conv2.out_channels for b in residual[::18]] == [16, 32, 64]
    shortcuts = [b.downsample for b in residual if b.downsample is not None]
    assert len(shortcuts) == 2 and all(isinstance(s, ShortcutA) for s in shortcuts)
    assert sum(p.numel() for s in shortcuts for p in s.parameters()) == 0


def test_option_a_shortcut():
    x = torch.randn(2, 16, 32, 32)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert not y[:, 16:].any()
    # Odd maps: same size as the block's stride-2 3x3 conv with padding 1.
    assert ShortcutA(16, 32, 2)(torch.randn(1, 16, 7, 7)).shape == (1, 32, 4, 4)


# --- ImageNet nets ----------------------------------------------------------------------------


def test_vgg13_figures(vgg13):
    assert len(vgg13.blocks) == 10
    k4 = backbone_stats(vgg13, 4)
    assert k4.total_macs == pytest.approx(11.2 * G, rel=0.02)
    assert k4.cuts == [3, 6, 9]
    assert [s.out_shape for s in k4.stages] == [[128, 112, 112], [256, 56, 56], [512, 14, 14], [512, 14, 14]]
    assert k4.aux_ratio == percent(1.0)
    k10 = backbone_stats(vgg13, 10)
    assert k10.cuts == list(range(1, 10))
    assert k10.aux_ratio == percent(3.4)


def test_vgg19_figures(vgg19):
    assert len(vgg19.blocks) == 16
    k4 = backbone_stats(vgg19, 4)
    assert k4.total_macs == pytest.approx(19.5 * G, rel=0.02)
    assert [len(s.blocks) for s in k4.stages] == [4, 4, 4, 4]
    assert [s.out_shape for s in k4.stages] == [[128, 112, 112], [256, 56, 56], [512, 28, 28], [512, 14, 14]]
    assert k4.aux_ratio == percent(0.7)
    k2 = backbone_stats(vgg19, 2)
    assert [s.out_shape for s in k2.stages] == [[256, 56, 56], [512, 14, 14]]
    assert k2.aux_ratio == percent(0.2)


def test_vgg_pools_are_prepended_and_the_classifier_is_the_papers(vgg13):
    starts_with_pool = [isinstance(b[0], nn.MaxPool2d) for b in vgg13.blocks]
    assert starts_with_pool == [False, False, True, False, True, False, True, False, True, False]
    linears = [m for m in vgg13.classifier.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25088, 4096), (4096, 4096), (4096, 1000)]
    assert not any(isinstance(m, nn.Dropout) for m in vgg13.classifier.modules())
    assert isinstance(vgg13.classifier[0], nn.MaxPool2d)
    assert not linears[0].bias.any() and linears[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_resnet152_k2():
    torch.manual_seed(0)
    backbone = build_model("resnet152", num_classes=1000)
    assert len(backbone.blocks) == 51
    assert sum(isinstance(b, Bottleneck) for b in backbone.blocks) == 50  # torchvision's own block
    stats = backbone_stats(backbone, 2)
    first, second = stats.stages
    assert stats.cuts == [26] and first.out_shape == [1024, 14, 14]
    assert first.macs == pytest.approx(5.90 * G, rel=0.02)
    assert second.macs == pytest.approx(5.61 * G, rel=0.02)
    assert first.params == pytest.approx(18.6 * M, rel=0.02)
    assert second.params == pytest.approx(39.5 * M, rel=0.02)  # blocks only, the FC excluded
    assert first.aux_params == pytest.approx(57.6 * M, rel=0.02)  # mlp-sr on C=1024: MLP width 4096


# --- every model -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_paper_cuts_never_drop_a_block(name):
    backbone = build_model(name, width=0.125, input_shape=model_entry(name).contract_input_shape)
    assert backbone.paper_cuts, "every paper model has at least one paper split"
    for k, cuts in backbone.paper_cuts.items():
        stages = build_stages(backbone, k, aux="linear")
        assert [s.block_indices[0] for s in stages[1:]] == list(cuts)
        assert [i for s in stages for i in s.block_indices] == list(range(len(backbone.blocks)))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_small_inputs_work_or_fail_clearly(name, shape):
    try:
        backbone = build_model(name, width=0.125, input_shape=shape)
    except UserError as exc:
        assert name in ("vgg13", "vgg19") and shape == (1, 28, 28), f"{name} at {shape}: {exc}"
        assert "too small" in str(exc)
        return
    assert backbone.as_sequential().eval()(torch.zeros(1, *shape)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, first_width",
    [("greedynet", 128), ("greedynet-psi", 128), ("dni-cnn", 128), ("resnet110", 16), ("vgg13", 64)],
)
def test_width_scales_every_conv(name, first_width):
    full = build_model(name, input_shape=(3, 32, 32)).as_sequential()
    half = build_model(name, width=0.5, input_shape=(3, 32, 32)).as_sequential()
    widths = [[m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)] for net in (full, half)]
    assert widths[0][0] == first_width
    assert widths[1] == [w // 2 for w in widths[0]]
    assert half.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_width_scales_resnet152():
    backbone = build_model("resnet152", width=0.25, input_shape=(3, 32, 32))
    linear = backbone.classifier[-1]
    assert linear.in_features == 512
    assert backbone.blocks[1].conv1.out_channels == 16


def test_vgg_dropout_is_torchvisions_classifier_dropout_and_only_where_it_exists():
    plain = build_model("vgg13", width=0.125, input_shape=(3, 32, 32))
    dropped = build_model("vgg13", width=0.125, input_shape=(3, 32, 32), dropout=0.5)
    dropouts = [m for m in dropped.classifier if isinstance(m, nn.Dropout)]
    assert [m.p for m in dropouts] == [0.5, 0.5] and not any(isinstance(m, nn.Dropout) for m in plain.classifier)
    # torchvision's order: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    kinds = [type(m) for m in dropped.classifier if not isinstance(m, (nn.MaxPool2d, nn.Flatten))]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    features = torch.randn(8, 64, 2, 2)  # the last block's output: 512 x 0.125 channels, 32 / 16 pixels
    dropped.classifier.eval()
    assert torch.equal(dropped.classifier(features), dropped.classifier(features))
    dropped.classifier.train()
    assert not torch.equal(dropped.classifier(features), dropped.classifier(features))
    with pytest.raises(UserError, match="applies to: vgg13, vgg19"):
        build_model("cnn4", width=0.25, input_shape=(1, 28, 28), dropout=0.5)
    with pytest.raises(UserError, match=r"--dropout must be in \[0, 1\)"):
        build_model("vgg19", width=0.125, input_shape=(3, 32, 32), dropout=1.0)
