"""Splitting any traceable model: torchvision nets, a user's file, a module's function.

The contract (docs/design.md): chaining the stages' blocks and the last head reproduces ``model(x)``
bit for bit, every parameter belongs to exactly one stage, and the per-stage MACs add up to the
whole model's. Inputs are 3x32x32 (ViT-B/16 built for 32x32: 4 patches + the class token) so that
the suite stays fast on two cores.
"""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import REPO
from degl.cli import main
from degl.core.split import build_stages
from degl.core.stats import count_macs
from degl.errors import UserError
from degl.models import build_head, build_model
from degl.models.traced import trace_backbone

SHAPE = (3, 32, 32)
MY_RESNET = f"{REPO / 'examples' / 'my_resnet.py'}:build"
TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
MODELS = [f"torchvision:{n}" for n in TORCHVISION] + [MY_RESNET]


def built(name, **options):
    torch.manual_seed(0)
    return build_model(name, input_shape=SHAPE, num_classes=10, **options)


@pytest.mark.parametrize("name", MODELS, ids=lambda n: n.rsplit("/", 1)[-1])
def test_stages_reproduce_the_model_and_partition_its_parameters_and_macs(name):
    torch.set_num_threads(1)
    backbone = built(name)
    model = backbone.module
    stages = build_stages(backbone, 4, aux="linear")
    assert len(stages) == 4 and stages[-1].head is backbone.classifier
    x = torch.randn(2, *SHAPE)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        h = x
        for stage in stages:
            stage.eval()
            h = stage.block(h)
            assert tuple(h.shape[1:]) == stage.out_shape
        assert torch.equal(stages[-1].head(h), expected)
    owners = [id(p) for s in stages for p in s.block.parameters()] + [id(p) for p in backbone.classifier.parameters()]
    assert len(owners) == len(set(owners)), "a parameter is in two stages"
    assert set(owners) == {id(p) for p in model.parameters()}
    assert not {id(p) for s in stages[:-1] for p in s.head.parameters()} & set(owners)
    parts = sum(count_macs(s.block, s.in_shape) for s in stages) + count_macs(backbone.classifier, stages[-1].out_shape)
    assert parts == count_macs(model, SHAPE) > 0


def test_training_mode_stays_live_and_backward_reaches_every_stage():
    # efficientnet's StochasticDepth and Dropout branch on self.training: traced as calls, they still do.
    torch.manual_seed(0)
    model = build_model("torchvision:efficientnet_b0", input_shape=SHAPE, num_classes=10).module
    stages = build_stages(model, 4, aux="mlp", input_shape=SHAPE, num_classes=10)
    reference = __import__("copy").deepcopy(model).train()
    x, y = torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    expected = reference(x)
    torch.manual_seed(1)
    h = x
    for stage in stages:
        stage.train()
        h = stage.block(h)
    assert torch.equal(stages[-1].head(h), expected)
    h = x
    for index, stage in enumerate(stages):
        features, logits = stage(h)
        nn.functional.cross_entropy(logits, y).backward()
        assert all(p.grad is not None for p in stage.block.parameters() if p.requires_grad)
        assert all(p.grad is None for later in stages[index + 1 :] for p in later.parameters())
        h = features.detach()


def test_vision_transformer_splits_into_token_stages_with_token_heads():
    backbone = built("torchvision:vit_b_16")
    assert backbone.block_names[:3] == ["conv_proj", "encoder", "encoder.layers"]
    stages = build_stages(
        backbone, split_at=["encoder.layers.encoder_layer_4", "encoder.layers.encoder_layer_8"], aux="mlp-sr"
    )
    assert [s.out_shape for s in stages] == [(5, 768)] * 3
    x, y = torch.randn(2, *SHAPE), torch.tensor([1, 2])
    _, logits = stages[0](x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, y).backward()
    assert stages[0].block[0].conv_proj.weight.grad is not None
    assert "getitem" in backbone.classifier.code and "heads" in backbone.classifier.code


def test_attention_is_counted():
    # Fused attention kernels hide their matmuls from the FLOP counter; count_macs must not.
    model = built("torchvision:vit_b_16").module
    tokens, dim, hidden = 5, 768, 3072
    layer = 4 * dim * dim * tokens + 2 * dim * hidden * tokens + 2 * tokens * tokens * dim
    assert count_macs(model, SHAPE) == 12 * layer + dim * 3 * 16 * 16 * 4 + dim * 10


@pytest.mark.parametrize("kind", ["mlp", "mlp-sr", "linear"])
def test_heads_on_tokens(kind):
    head = build_head(kind, (5, 16), 7)
    assert head(torch.randn(3, 5, 16)).shape == (3, 7)


def test_cnn_head_on_tokens_names_the_heads_that_work():
    with pytest.raises(UserError, match=r"tokens .* use --aux mlp or mlp-sr or linear"):
        build_head("cnn", (5, 16), 7)


def test_cut_points_are_whole_blocks_never_between_a_layer_and_its_norm():
    backbone = built("torchvision:resnet18")
    assert backbone.block_names == [
        "conv1",
        "layer1",
        "layer1.1",
        "layer2",
        "layer2.1",
        "layer3",
        "layer3.1",
        "layer4",
        "layer4.1",
    ]
    assert "avgpool" in backbone.classifier.code and "fc" in backbone.classifier.code
    vgg = built("torchvision:vgg11_bn")
    assert all(isinstance(vgg.module.get_submodule(n), nn.Conv2d) for n in vgg.block_names[1:])


def test_split_at_names_where_stages_begin():
    backbone = built("torchvision:resnet18")
    stages = build_stages(backbone, split_at=["layer2", "layer4"], aux="mlp")
    assert [s.block_indices for s in stages] == [(0, 1, 2), (3, 4, 5, 6), (7, 8)]
    assert backbone.cuts_for(["layer2.0", "layer4.0.conv1"]) == [3, 7]  # the same places, other names
    assert [s.block_indices for s in build_stages(backbone, 3, split_at=["layer3", "layer4.1"])][1:] == [
        (5, 6, 7),
        (8,),
    ]


@pytest.mark.parametrize(
    "split_at, message",
    [
        (["layer9"], "no submodule named 'layer9'; valid split points: layer1, layer1.1, layer2"),
        (["layer2.0.bn1"], "'layer2.0.bn1' is not a place where a stage can begin"),
        (["layer3", "layer2"], "'layer2' comes before 'layer3'"),
        (["layer2", "layer2.0"], "'layer2.0' is the same place as 'layer2'"),
        (["conv1"], "is where the first stage begins"),
        (["fc"], "'fc' is not a place where a stage can begin"),
    ],
)
def test_split_at_errors(split_at, message):
    with pytest.raises(UserError, match=message):
        build_stages(built("torchvision:resnet18"), split_at=split_at)


def test_split_at_other_errors():
    backbone = built("torchvision:resnet18")
    with pytest.raises(UserError, match="which make 2 stages, but num_stages is 3"):
        build_stages(backbone, 3, split_at=["layer2"])
    with pytest.raises(UserError, match="more than the network's 9 blocks"):
        build_stages(backbone, 10)
    with pytest.raises(UserError, match="needs num_stages, or split_at"):
        build_stages(backbone)
    torch.manual_seed(0)
    resnet110 = build_model("resnet110", width=0.125)  # registry blocks are named by index; block 2 is a ReLU
    with pytest.raises(UserError, match="stage 1 \\(blocks 2\\) has no parameters"):
        build_stages(resnet110, split_at=["2", "3"])


def test_sequential_keeps_its_children_as_blocks_and_names_them():
    net = nn.Sequential(
        OrderedDict(conv1=nn.Conv2d(3, 8, 3), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3), pool=nn.AdaptiveAvgPool2d(1))
    )
    stages = build_stages(net, split_at=["conv2"], aux="linear", input_shape=(3, 8, 8), num_classes=4)
    assert [s.block_indices for s in stages] == [(0, 1), (2, 3)]


def test_sequential_of_a_models_children_fails_clearly():
    import torchvision

    children = nn.Sequential(*torchvision.models.resnet18(num_classes=10).children())
    with pytest.raises(
        UserError, match=r"block 9 \(Linear\) fails on its input of shape \(512, 1, 1\).*pass the model itself"
    ):
        build_stages(children, 2, input_shape=SHAPE, num_classes=10)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.a(x) if x.sum() > 0 else x)


class AuxOutput(Branchy):
    def forward(self, x):
        return (self.b(x), self.a(x)) if self.training else self.b(x)


class TwoOutputs(Branchy):
    def forward(self, x):
        return self.b(x), self.a(x)


class Tied(nn.Module):
    """``block`` runs twice: its weights must stay in one stage."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.block(self.block(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize(
    "model, message",
    [
        (Branchy(), "not traceable by torch.fx .*TraceError"),
        (AuxOutput(), "different code in training and eval mode"),
        (TwoOutputs(), "returns a tuple; degl needs one tensor of logits"),
    ],
)
def test_models_that_cannot_be_split(model, message):
    with pytest.raises(UserError, match=message):
        build_stages(model, 2, input_shape=(4,), num_classes=3)


def test_weights_used_twice_stay_in_one_block():
    backbone = trace_backbone(Tied(), (3, 8, 8), 3)
    assert backbone.block_names == ["stem", "block"] and len(backbone.blocks) == 2
    assert [len(list(b.parameters())) for b in backbone.blocks] == [2, 2]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.body(x))


def test_an_mlp_has_its_last_linear_as_classifier():
    backbone = trace_backbone(MLP(), (1, 4, 4), 3)
    assert backbone.block_names == ["body", "body.3"]
    assert [n.target for n in backbone.classifier.graph.nodes if n.op == "call_module"] == ["out"]


def test_wrong_input_shape_or_classes():
    with pytest.raises(UserError, match="cannot take inputs of shape \\(3, 32\\)"):
        build_model("torchvision:resnet18", input_shape=(3, 32))
    with pytest.raises(UserError, match="outputs 10 classes but 7 are needed"):
        build_stages(built("torchvision:resnet18").module, 2, input_shape=SHAPE, num_classes=7)


def test_tracing_uses_no_random_numbers_and_builds_are_reproducible():
    model = built("torchvision:resnet18").module
    state = torch.get_rng_state()
    trace_backbone(model, SHAPE, 10)
    assert torch.equal(state, torch.get_rng_state())
    one, two = built("torchvision:resnet18"), built("torchvision:resnet18")
    for a, b in zip(one.as_sequential().state_dict().values(), two.as_sequential().state_dict().values()):
        assert torch.equal(a, b)


def test_torchvision_names():
    assert built("torchvision:mobilenet_v3_small").name == "torchvision:mobilenet_v3_small"
    with pytest.raises(UserError, match=r"no classification model 'resnet9000'.*list_models"):
        built("torchvision:resnet9000")
    with pytest.raises(UserError, match=r"--width 0\.5: the width multiplier applies to registered models only"):
        built("torchvision:resnet18", width=0.5)
    with pytest.raises(UserError, match=r"--dropout 0\.2: applies to registered models only"):
        built("torchvision:resnet18", dropout=0.2)


def test_file_and_module_functions(tmp_path):
    assert built(MY_RESNET).block_names[:2] == ["stem", "layer1"]
    assert built("torchvision.models:resnet18").num_classes == 10  # num_classes reaches **kwargs builders
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def mlp(k):\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 16), nn.ReLU(), nn.Linear(16, k))\n"
        "def fixed():\n    return mlp(5)\n"
        "def sized(num_classes):\n    return mlp(num_classes)\n"
        "def text():\n    return 'not a model'\n"
    )
    assert build_model("nets.py:fixed", input_shape=SHAPE, num_classes=None).num_classes == 5
    assert build_model("nets.py:sized", input_shape=SHAPE, num_classes=7).num_classes == 7
    for name, message in [
        ("nets.py:text", "text\\(\\) returned a str, not an nn.Module"),
        ("nets.py:missing", "has no function 'missing' \\(functions there: fixed, mlp, sized, text\\)"),
        ("gone.py:build", "model file 'gone.py' does not exist"),
        ("no_such_package.nets:build", "cannot import module 'no_such_package.nets'"),
        ("nets.py:fixed", "outputs 5 classes but 10 are needed"),
    ]:
        with pytest.raises(UserError, match=message):
            build_model(name, input_shape=SHAPE, num_classes=10)
    with pytest.raises(UserError, match="needs an input shape: pass --input-shape"):
        build_model(MY_RESNET)


def stats(capsys, *args):
    assert main(["models", "--stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_models_stats_command(capsys):
    result = stats(capsys, "torchvision:resnet18", "--stages", "4", "--input-shape", "3,32,32")
    assert result["num_classes"] == 1000 and result["cut_names"] == ["layer2", "layer3", "layer4"]
    assert result["model_macs"] == result["total_macs"] + result["classifier_macs"]
    result = stats(capsys, MY_RESNET, "--split-at", "layer2,layer3", "--input-shape", "3,32,32")
    assert [s["name"] for s in result["stages"]] == ["stem", "layer2", "layer3"] and result["num_classes"] == 10
    assert main(["models", "--stats", MY_RESNET, "--stages", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"degl: error: model {MY_RESNET!r} has no default input shape; pass --input-shape C,H,W"
    )
