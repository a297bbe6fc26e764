import itertools
import random

import pytest
import torch
from torch import nn

from degl.core.split import balanced_cuts, build_stages, even_cuts, split_blocks
from degl.errors import UserError


def brute_force(costs, k):
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        value = max(sum(costs[bounds[i] : bounds[i + 1]]) for i in range(k))
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_balanced_cuts_are_optimal(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    k = rng.randint(1, n)
    costs = [rng.randint(1, 100) for _ in range(n)]
    cuts = balanced_cuts(costs, k)
    bounds = [0, *cuts, n]
    assert len(cuts) == k - 1 and all(bounds[i] < bounds[i + 1] for i in range(k))
    assert max(sum(costs[bounds[i] : bounds[i + 1]]) for i in range(k)) == brute_force(costs, k)


def test_even_cuts_give_extra_blocks_to_later_stages():
    assert even_cuts(6, 4) == [1, 2, 4]
    assert even_cuts(6, 3) == [2, 4]
    assert even_cuts(5, 1) == []


def test_split_never_drops_blocks():
    for n in range(1, 8):
        for k in range(1, n + 1):
            groups = split_blocks(n, k)
            assert [i for g in groups for i in g] == list(range(n))
            assert all(groups)


@pytest.mark.parametrize("cuts", [[0, 2], [2, 2], [3, 1], [1, 6], [1]])
def test_bad_cuts(cuts):
    with pytest.raises(UserError):
        split_blocks(6, 3, cuts=cuts)


def test_more_stages_than_blocks_is_an_error():
    with pytest.raises(UserError, match="more than the network's 3 blocks"):
        split_blocks(3, 4)
    with pytest.raises(UserError, match="at least 1"):
        split_blocks(3, 0)


def test_user_sequential_is_split_with_given_heads():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU())
    stages = build_stages(net, 2, aux="linear", input_shape=(1, 4, 4), num_classes=3, split="blocks")
    assert [s.block_indices for s in stages] == [(0, 1), (2, 3, 4)]
    x = torch.randn(5, 1, 4, 4)
    h, logits = stages[0](x)
    assert h.shape == (5, 32) and logits.shape == (5, 3)
    assert stages[1](h)[1].shape == (5, 3)


def test_flops_balance_moves_cut_towards_expensive_blocks():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding=1),
    )
    stages = build_stages(net, 2, aux="linear", input_shape=(1, 8, 8), num_classes=2, split="flops")
    assert stages[1].block_indices == (3,)


def test_time_split_is_measured_once_and_recorded_as_cuts(tmp_path, capsys):
    import yaml

    from conftest import SYNTH
    from degl.cli import main

    out = tmp_path / "run"
    assert main(["train", *SYNTH, "--stages", "3", "--split", "time", "--max-steps", "2", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    cuts = [int(c) for c in (saved["cuts"].split(",") if isinstance(saved["cuts"], str) else saved["cuts"])]
    assert len(cuts) == 2 and 0 < cuts[0] < cuts[1] < 4
    # resuming rebuilds exactly these stages, whatever the timings would say now
    assert main(["train", "--resume", str(out), "--max-steps", "1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["cuts"] == saved["cuts"]
