"""Gradient synthesizers for DNI and cDNI (Jaderberg et al. 2017).

A synthesizer sits after a stage boundary and predicts the gradient of the training loss with
respect to the stage's output from that output alone (DNI) or from the output and the label
(cDNI, "context" DNI). Its last layer starts at zero, so at first it predicts a zero gradient.

For feature maps (C, H, W) it is the conv synthesizer of the paper's DNI comparison (paper-spec
§2.5): conv5x5-BN-ReLU-conv5x5-BN-ReLU-conv5x5, spatial size kept; cDNI adds the one-hot label
through ``Linear(classes -> C)`` to the first conv's output. For flat features (D,) it is an MLP
with the same shape: two hidden layers of ``hidden`` units, the label added after the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from degl.data.loader import mix_seed


class Synthesizer(nn.Module):
    """Predicts ``dL/dh`` from ``h`` (and, with ``num_classes``, from the label)."""

    def __init__(self, shape: Sequence[int], *, num_classes: int | None = None, hidden: int = 1024) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.num_classes = num_classes
        if len(self.shape) == 3:
            chans = self.shape[0]
            self.first: nn.Module = nn.Conv2d(chans, chans, 5, padding=2)
            self.rest = nn.Sequential(
                nn.BatchNorm2d(chans),
                nn.ReLU(),
                nn.Conv2d(chans, chans, 5, padding=2),
                nn.BatchNorm2d(chans),
                nn.ReLU(),
                nn.Conv2d(chans, chans, 5, padding=2),
            )
            width = chans
        else:
            features = 1
            for size in self.shape:
                features *= size
            self.first = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden))
            self.rest = nn.Sequential(
                nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
            )
            self.rest.append(nn.Linear(hidden, features))
            width = hidden
        self.label = nn.Linear(num_classes, width) if num_classes else None
        last = self.rest[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z = self.first(h)
        if self.label is not None:
            assert y is not None, "a conditioned (cDNI) synthesizer needs the label"
            context = self.label(F.one_hot(y, self.num_classes).to(z.dtype))
            z = z + (context[:, :, None, None] if z.dim() == 4 else context)
        return self.rest(z).reshape(h.shape)


def build_synthesizer(
    shape: Sequence[int], *, num_classes: int, conditioned: bool, seed: int, boundary: int
) -> Synthesizer:
    """The synthesizer of ``boundary`` (after stage ``boundary``), initialised from its own seed, so
    one process and a pipeline rank build the same one without sharing a random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, 0xD41, boundary) & 0x7FFF_FFFF_FFFF_FFFF)
        return Synthesizer(shape, num_classes=num_classes if conditioned else None)
