"""Frozen stages' features computed once per sequential-greedy phase instead of once per batch.

In ``sgl``, phase k trains stage k on the output of the frozen stages 0..k-1. Without augmentation
a frozen stage maps each training image to the same features in every epoch, so they are computed
once when the phase starts -- from the previous phase's features through the one stage frozen since,
so each block runs over the training set once in the whole run -- and the phase trains on slices
of them, in exactly the batches the image loader would have produced. With augmentation every
epoch's inputs differ, and the frozen stages run on each batch instead. So do loaders that do not
hold the data set on the device (ImageNet folders) and caches larger than their memory budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from degl.core.stage import Stage
from degl.data.base import BatchLoader
from degl.data.loader import ChannelsLast, DeviceLoader

_CHUNK = 1000  # samples per forward pass while filling the cache


class CachedFeatureLoader:
    """Batches of ``(features, labels)``: the image loader's batches, read from precomputed features."""

    def __init__(self, images: DeviceLoader, features: torch.Tensor) -> None:
        assert len(features) == len(images.labels)
        self.images = images
        self.features = features
        self.batch_size = images.batch_size

    def __len__(self) -> int:
        return len(self.images)

    def batch_sizes(self) -> list[int]:
        return self.images.batch_sizes()

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self.images.batch_indices(epoch, start_step):
            yield self.features[index], self.images.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


class FrozenFeatureCache:
    """Training-set features of the frozen stages for the current ``sgl`` phase, within a byte budget."""

    def __init__(self, loader: BatchLoader, budget_bytes: int) -> None:
        self.channels_last = isinstance(loader, ChannelsLast)
        base = loader.loader if isinstance(loader, ChannelsLast) else loader
        usable = isinstance(base, DeviceLoader) and base.train and not base.augment
        self.images: DeviceLoader | None = base if usable else None  # type: ignore[assignment]
        self.budget_bytes = budget_bytes
        self._phase = 0
        self._features: torch.Tensor | None = None

    def loader_for(
        self,
        phase: int,
        stages: Sequence[Stage],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> BatchLoader | None:
        """A loader of the output of ``stages[:phase]`` (frozen), or None: compute them per batch."""
        if phase == 0 or self.images is None or self.budget_bytes <= 0:
            return None
        if self._features is None or self._phase != phase - 1:
            start, chunks = 0, self.images.samples_in_order(_CHUNK)  # from the images
        else:
            start, chunks = phase - 1, iter(self._features.split(_CHUNK))  # from the last phase's cache
        self._features = None  # the old cache is dropped before the new one is filled
        self._features = self._fill(chunks, stages[start:phase], autocast)
        self._phase = phase
        if self._features is None:
            return None
        cached = CachedFeatureLoader(self.images, self._features)
        return ChannelsLast(cached) if self.channels_last else cached  # type: ignore[arg-type]

    def _fill(
        self,
        chunks: Iterator[torch.Tensor],
        stages: Sequence[Stage],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> torch.Tensor | None:
        assert self.images is not None
        total = len(self.images.labels)
        features: torch.Tensor | None = None
        filled = 0
        with torch.no_grad(), autocast():
            for chunk in chunks:
                if self.channels_last and chunk.dim() == 4:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                for stage in stages:
                    assert not stage.training, "frozen stages run in eval mode"
                    chunk = stage.block(chunk)
                if features is None:
                    if total * chunk[0].numel() * chunk.element_size() > self.budget_bytes:
                        return None
                    features = torch.empty((total, *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device)
                features[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
        assert filled == total
        return features
