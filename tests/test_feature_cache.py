"""Sequential greedy learning computes each frozen stage's training-set features once, not per batch."""

import json

import pytest
import torch

from conftest import SYNTH
from degl.cli import main
from degl.core.feature_cache import FrozenFeatureCache
from degl.core.split import build_stages
from degl.data.loader import ChannelsLast, DeviceLoader
from degl.data.synthetic import make_synthetic
from degl.models import build_model
from degl.run import checkpoint


def frozen_stages(k: int):
    torch.manual_seed(0)
    stages = build_stages(build_model("cnn4", width=0.125, input_shape=(1, 12, 12)), k, aux="mlp")
    for stage in stages:
        stage.eval()
    return stages


def image_loader(augment: bool = False, size: int = 2500) -> DeviceLoader:
    return DeviceLoader(make_synthetic((1, 12, 12), 4, size), train=True, batch_size=64, augment=augment, seed=3)


def count_samples(stages):
    seen = [0] * len(stages)
    for i, stage in enumerate(stages):
        stage.block.register_forward_hook(lambda module, inputs, out, i=i: seen.__setitem__(i, seen[i] + len(out)))
    return seen


def test_cached_batches_are_the_frozen_stages_output_on_the_image_batches():
    stages, images = frozen_stages(3), image_loader()
    cache = FrozenFeatureCache(images, budget_bytes=2**30)
    for phase in (1, 2):
        cached = cache.loader_for(phase, stages)
        assert cached is not None and len(cached) == len(images)
        for (features, labels), (x, y) in zip(cached.epoch(4, 5), images.epoch(4, 5)):
            assert torch.equal(labels, y)
            with torch.no_grad():
                for stage in stages[:phase]:
                    x = stage.block(x)
            torch.testing.assert_close(features, x, rtol=1e-5, atol=1e-6)


def test_each_frozen_block_runs_over_the_training_set_once_per_run():
    stages, images = frozen_stages(4), image_loader()
    seen = count_samples(stages)
    cache = FrozenFeatureCache(images, budget_bytes=2**30)
    assert cache.loader_for(0, stages) is None  # phase 0 trains on images
    for phase in (1, 2, 3):
        loader = cache.loader_for(phase, stages)
        for _ in loader.epoch(0):
            pass
        for _ in loader.epoch(1):
            pass
    n = len(images.labels)
    assert seen == [n, n, n, 0]


def test_no_cache_with_augmentation_over_budget_or_off():
    stages = frozen_stages(2)
    assert FrozenFeatureCache(image_loader(augment=True), 2**30).loader_for(1, stages) is None
    assert FrozenFeatureCache(image_loader(), 0).loader_for(1, stages) is None
    size = 2500 * torch.Size(stages[0].out_shape).numel() * 4  # float32 features of the training set
    assert FrozenFeatureCache(image_loader(), size - 1).loader_for(1, stages) is None
    assert FrozenFeatureCache(image_loader(), size).loader_for(1, stages) is not None


def test_channels_last_loaders_get_channels_last_features():
    stages = frozen_stages(2)
    for stage in stages:
        stage.to(memory_format=torch.channels_last)
    cached = FrozenFeatureCache(ChannelsLast(image_loader()), 2**30).loader_for(1, stages)
    features, _ = next(iter(cached.epoch(0)))
    assert features.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("extra", [[], ["--channels-last"]])
def test_sgl_run_with_the_cache_matches_one_that_recomputes(tmp_path, extra):
    common = ["train", *SYNTH, "--method", "sgl", "--stages", "3", "--epochs", "2", "--no-augment", *extra]
    common += ["--deterministic", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "cached")]) == 0
    assert main([*common, "--feature-cache-gb", "0", "--out", str(tmp_path / "recomputed")]) == 0
    runs = ("cached", "recomputed")
    cached, recomputed = (json.loads((tmp_path / d / "summary.json").read_text()) for d in runs)
    assert cached["test_acc_per_stage"] == pytest.approx(recomputed["test_acc_per_stage"], abs=0.5)
    for stage in range(3):
        weights = [checkpoint.load_stage(checkpoint.load_meta(tmp_path / d)[0], stage)["model"] for d in runs]
        for name, value in weights[0].items():
            torch.testing.assert_close(value, weights[1][name], rtol=1e-4, atol=1e-5, msg=f"stage {stage} {name}")
