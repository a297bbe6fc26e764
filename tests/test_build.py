"""The rank builder: one place builds every rank loop, and the replay buffers are seeded by their boundary."""

import torch

from degl.run.async_sim import AsyncSimTrainer
from degl.run.config import make_config
from degl.run.setup import buffer_options, build_setup
from degl.runtime.async_rank import AsyncRank
from degl.runtime.build import make_link, make_rank
from degl.runtime.gradient_rank import GradientRank
from degl.runtime.plan import Plan
from degl.runtime.sync_rank import SyncRank

SYNTH = {
    "dataset": "synthetic",
    "input_shape": "1,12,12",
    "synthetic_size": 64,
    "num_classes": 4,
    "model": "cnn4",
    "width": 0.125,
    "batch_size": 16,
    "progress": False,
}
ASYNC = {**SYNTH, "stages": 3, "method": "async-dgl", "buffer": 3, "buffer_policy": "uniform"}


def train_config(values):
    return make_config(values)


def draws(buffer, steps=40):
    """The put indices of ``steps`` samples from ``buffer``, fed one new batch every other draw."""
    drawn = []
    for t in range(steps):
        if t % 2 == 0:
            buffer.put(torch.full((2, 4), float(t)), torch.tensor([t, t]), step=t)
        drawn.append(buffer.get()[2].index)
    return drawn


def test_the_simulation_and_the_real_runtime_draw_the_same_buffer_samples(tmp_path):
    cfg = train_config({**ASYNC, "seed": 7})
    setup = build_setup(cfg)
    simulated = AsyncSimTrainer(setup, tmp_path / "run").buffers
    plan = Plan((16,), (), 4, 1)
    sequences = []
    for boundary in range(2):
        rank = boundary + 1  # the rank after the boundary owns its buffer
        real = make_rank(
            "async-dgl",
            setup.method.steps[rank],
            make_link("async-dgl", rank, 3, torch.device("cpu")),
            plan,
            rank=rank,
            world=3,
            buffers=buffer_options(cfg),
            seed=cfg.seed,
        )
        assert isinstance(real, AsyncRank)
        sequence = draws(real.buffer)
        assert sequence == draws(simulated[boundary])
        sequences.append(sequence)
    assert sequences[0] != sequences[1]  # each boundary its own stream
    other_seed = AsyncSimTrainer(build_setup(train_config({**ASYNC, "seed": 8})), tmp_path / "run8").buffers
    assert draws(other_seed[0]) != sequences[0]


def test_each_method_gets_its_loop():
    setup = build_setup(train_config({**SYNTH, "stages": 2}))
    plan = Plan((16,), (), 4, 1)
    cpu = torch.device("cpu")

    def built(method, **options):
        link = make_link(method, 1, 2, cpu)
        return type(make_rank(method, setup.method.steps[1], link, plan, rank=1, world=2, **options))

    assert built("dgl") is SyncRank
    assert built("async-dgl", buffers=None) is SyncRank  # --buffer 0: the synchronous pipeline
    assert built("async-dgl", buffers=buffer_options(train_config(ASYNC))) is AsyncRank
    assert built("ddg") is GradientRank
