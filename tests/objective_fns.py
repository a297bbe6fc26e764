"""A user's own local objective, and the ranks that train objectives (spawned ranks import this by name)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import degl
from launch_fns import sgd, tiny_batches, tiny_net


class CenteredCE(nn.Module):
    """A user objective: a linear head on pooled features, cross-entropy plus a pull of the features to 0."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_shape[0], num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=(2, 3)))

    def local_loss(self, features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) + 0.01 * features.pow(2).mean()


def centered_ce(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CenteredCE(in_shape, num_classes)


def objective_stages(num_stages: int, objective: object) -> list[degl.Stage]:
    torch.manual_seed(0)
    return degl.build_stages(tiny_net(), num_stages, objective=objective, input_shape=(1, 8, 8), num_classes=3)


def train_objective_pipeline(env: degl.DistEnv, objective: object, method: str = "dgl") -> dict:
    stages = objective_stages(env.world_size, objective)
    result = degl.train_stage(
        env,
        stages,
        sgd,
        train_batches=tiny_batches(6) if env.rank == 0 else None,
        epochs=2,
        method=method,
        buffer_size=1,
        progress=False,
    )
    return {k: v.clone() for k, v in result.step.stage.state_dict().items()}
