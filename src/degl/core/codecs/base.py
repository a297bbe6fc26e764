"""The codec interface and the helpers every codec shares (see :mod:`degl.core.codecs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TensorSpec = tuple[tuple[int, ...], torch.dtype]
"""``(shape, dtype)`` of one tensor of a message (the transport's own definition)."""


def channel_dim(ndim: int) -> int:
    """Where the channel of an activation of ``ndim`` dims is: dim 1 of (n, C, H, W), else the last."""
    return 1 if ndim == 4 else ndim - 1


def nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def spec_bytes(specs: Sequence[TensorSpec]) -> int:
    total = 0
    for shape, dtype in specs:
        count = 1
        for size in shape:
            count *= size
        total += count * torch.empty((), dtype=dtype).element_size()
    return total


def mix(seed: int, *parts: int) -> int:
    """A stable seed for one codec from the run's seed and the codec's position (boundary, kind)."""
    value = seed & (2**63 - 1)
    for part in parts:
        value = (value * 6364136223846793005 + 1442695040888963407 + part) & (2**63 - 1)
    return value


class Codec:
    """Encodes activations into wire tensors and decodes them. Subclasses override the four methods."""

    name = "none"
    stateful = False
    """Whether encode/decode change the codec's state (a checkpoint then needs :meth:`state_dict`)."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype  # none: the wire dtype (the run's precision), None: as produced

    def specs(self, n: int, shape: Sequence[int], *, train: bool) -> list[TensorSpec]:
        """The tensors of one message of ``n`` samples of per-sample ``shape``."""
        return [((n, *shape), self.dtype or torch.float32)]

    def encode(self, x: torch.Tensor, *, train: bool) -> list[torch.Tensor]:
        return [x if self.dtype is None else x.to(self.dtype)]

    def receive(self, parts: Sequence[torch.Tensor], *, train: bool) -> list[torch.Tensor]:
        """Apply a message's state updates (in message order); return the payload to decode."""
        return list(parts)

    def decode_payload(self, payload: Sequence[torch.Tensor]) -> torch.Tensor:
        return payload[0]

    def payload_batched(self, *, train: bool = True) -> tuple[bool, ...]:
        """For each payload tensor: whether its dim 0 is the batch (a smaller batch has a smaller one)."""
        return (True,)

    # ------------------------------------------------------------------ derived
    def decode(self, parts: Sequence[torch.Tensor], *, train: bool) -> torch.Tensor:
        return self.decode_payload(self.receive(parts, train=train))

    @torch.no_grad()
    def roundtrip(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        """What the receiver gets: ``decode(encode(x))`` (one process simulating a boundary)."""
        return self.decode(self.encode(x, train=train), train=train)

    def wire_bytes(self, n: int, shape: Sequence[int], *, train: bool = True) -> int:
        """Bytes of one message of ``n`` samples: every tensor sent, side information included."""
        return spec_bytes(self.specs(n, shape, train=train))

    def state_bytes(self) -> int:
        """Bytes the receiving side keeps besides the payloads (a codebook copy)."""
        return 0

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise :class:`UserError` when activations of per-sample ``shape`` cannot be encoded."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
