"""Online vector quantization of activations (``--codec vq:C:D:R``), learned on the sending side.

Scheme (docs/codecs.md has the byte accounting):

- **Sub-vectors.** The channel vector at every spatial position (of a token, or of a sample for
  ``(n, D)`` features) is cut into ``G = channels / D`` consecutive groups of ``D`` channels. Group
  ``g`` has its own codebook of ``C`` codes of length ``D``; a sub-vector is sent as the index of
  its nearest code (squared Euclidean distance, lowest index on ties): ``uint8`` for ``C <= 256``,
  ``int16`` above.
- **Learning (sender).** A *working* codebook is trained by exponential-moving-average k-means (the
  VQ-VAE EMA update, van den Oord et al. 2017, appendix): every training message assigns each
  sub-vector to its nearest *published* code (the code it is sent as: one search per message), then
  ``count = decay * count + (1 - decay) * n_assigned``, ``sum = decay * sum + (1 - decay) *
  sum_assigned`` and ``code = sum / count`` (counts Laplace-smoothed), decay 0.99. With ``R = C``
  the published codebook is the working one and this is exact online k-means; with ``R < C`` the
  assignments use codes up to ``C / R`` messages old. The codes start as ``C`` sub-vectors of the
  first batch chosen by k-means++ (seeded). A code whose EMA count falls below 3 % of its fair
  share (``N / C`` sub-vectors per message) is dead: it is re-seeded with a random sub-vector of
  the current batch.
- **Keeping the receiver in sync.** The sender encodes with a *published* codebook, of which the
  receiver holds an exact copy. Every training message publishes ``R`` rows of the working
  codebook, round-robin (rows ``s .. s+R-1`` mod ``C``, ``s`` advancing by ``R`` per message), and
  carries them (``float32``) with their start ``s`` (``int64``), so every message has the same size
  and a row is at most ``C / R`` messages old. Rows not yet published are zero on both sides. The
  receiver applies the rows, then decodes. Evaluation messages carry codes only and change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from degl.core.codecs.base import Codec, TensorSpec, channel_dim
from degl.errors import UserError

DECAY = 0.99
EPS = 1e-5
DEAD_FRACTION = 0.03
CHUNK = 2048  # sub-vectors per distance computation: a (G, chunk, C) block stays in cache


class VQCodec(Codec):
    """Per-group codebooks of ``codes`` codes of length ``dim``; ``rows`` published per message."""

    stateful = True

    def __init__(self, *, codes: int = 256, dim: int = 8, rows: int | None = None, seed: int = 0) -> None:
        super().__init__(torch.uint8 if codes <= 256 else torch.int16)
        self.codes, self.dim = codes, dim
        self.rows = rows if rows is not None else max(1, codes // 8)
        self.name = f"vq:{codes}:{dim}:{self.rows}"
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # sender
        self.working: torch.Tensor | None = None  # (G, C, D)
        self.count: torch.Tensor | None = None  # (G, C)
        self.total: torch.Tensor | None = None  # (G, C, D): EMA of assigned sums
        self.published: torch.Tensor | None = None  # (G, C, D), the receiver's copy as the sender knows it
        self.live: torch.Tensor | None = None  # (G, C) bool: rows published at least once
        self.next_row = 0
        # receiver
        self.copy: torch.Tensor | None = None  # (G, C, D)
        self.dead_reseeded = 0

    # ------------------------------------------------------------------ shapes
    def check_shape(self, shape: Sequence[int]) -> None:
        channels = shape[channel_dim(len(shape) + 1) - 1]
        if channels % self.dim:
            raise UserError(
                f"--codec {self.name}: activations with {channels} channels (shape {tuple(shape)}) cannot be "
                f"cut into sub-vectors of {self.dim}; choose a length that divides every boundary's channels"
            )

    def _groups(self, shape: Sequence[int]) -> int:
        return shape[channel_dim(len(shape) + 1) - 1] // self.dim

    @staticmethod
    def _positions(shape: Sequence[int]) -> tuple[int, ...]:
        cdim = channel_dim(len(shape) + 1) - 1
        return tuple(s for i, s in enumerate(shape) if i != cdim)

    def specs(self, n: int, shape: Sequence[int], *, train: bool) -> list[TensorSpec]:
        groups = self._groups(shape)
        codes = ((n, *self._positions(shape), groups), self.dtype)
        if not train:
            return [codes]  # type: ignore[list-item]
        return [codes, ((groups, self.rows, self.dim), torch.float32), ((1,), torch.int64)]  # type: ignore[list-item]

    def payload_batched(self, *, train: bool = True) -> tuple[bool, ...]:
        return (True,)

    def state_bytes(self) -> int:
        return 0 if self.copy is None else self.copy.numel() * self.copy.element_size()

    # ------------------------------------------------------------------ sub-vectors
    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(n, ..., channels) -> (G, N, D) float32, N = n x positions."""
        x = x.detach().float()
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        flat = x.reshape(-1, x.shape[-1])
        return flat.reshape(flat.shape[0], -1, self.dim).transpose(0, 1).contiguous()

    def _nearest(self, v: torch.Tensor) -> torch.Tensor:
        """(G, N) index of the nearest published code for every sub-vector of ``v`` (G, N, D)."""
        assert self.published is not None
        book = self.published
        # ||v - c||^2 = ||v||^2 - 2 v.c + ||c||^2; ||v||^2 is the same for every code. Codes not yet
        # published (the first C/R messages) are never chosen.
        norms = (book * book).sum(-1)
        norms = torch.where(self.live, norms, torch.full_like(norms, float("inf"))).unsqueeze(1)
        book_t = book.transpose(1, 2).contiguous()
        chunks = [
            torch.baddbmm(norms, v[:, start : start + CHUNK], book_t, alpha=-2).min(dim=-1).indices
            for start in range(0, v.shape[1], CHUNK)
        ]
        return torch.cat(chunks, dim=1)

    def _init(self, v: torch.Tensor) -> None:
        """k-means++ seeding on the first batch: each next code is a sub-vector drawn with probability
        proportional to its squared distance to the nearest code so far (seeded), so no cluster of the
        data starts without a code (plain random draws leave some out, and EMA k-means rarely recovers)."""
        groups, n, _ = v.shape
        rows = torch.arange(groups, device=v.device)
        book = torch.zeros(groups, self.codes, self.dim, device=v.device)
        first = torch.randint(n, (groups,), generator=self.generator).to(v.device)
        book[:, 0] = v[rows, first]
        nearest = ((v - book[:, :1]) ** 2).sum(-1)  # (G, N)
        for code in range(1, self.codes):
            weights = nearest.double().cpu() + 1e-30  # all-equal data: uniform
            pick = torch.multinomial(weights, 1, generator=self.generator).squeeze(1).to(v.device)
            book[:, code] = v[rows, pick]
            nearest = torch.minimum(nearest, ((v - book[:, code : code + 1]) ** 2).sum(-1))
        self.working = book
        fair = n / self.codes
        self.count = torch.full((groups, self.codes), fair, device=v.device)
        self.total = self.working * fair
        self.published = torch.zeros_like(self.working)
        self.live = torch.zeros(groups, self.codes, dtype=torch.bool, device=v.device)

    def _publish(self, device: torch.device) -> list[torch.Tensor]:
        """Copy the next R rows of the working codebook to the published one; return them with their start."""
        assert self.working is not None and self.published is not None and self.live is not None
        start = self.next_row
        rows = self._row_index(start, device)
        self.published[:, rows] = self.working[:, rows]
        self.live[:, rows] = True
        self.next_row = (start + self.rows) % self.codes
        return [self.published[:, rows].clone(), torch.tensor([start], dtype=torch.int64, device=device)]

    def _learn(self, v: torch.Tensor, index: torch.Tensor) -> None:
        """One EMA k-means step of the working codebook (sub-vectors assigned to ``index``), then dead codes."""
        assert self.working is not None and self.count is not None and self.total is not None
        groups, n, _ = v.shape
        flat = (index + torch.arange(groups, device=v.device).unsqueeze(1) * self.codes).reshape(-1)
        # index_add_ is deterministic on the CPU, and on CUDA under torch.use_deterministic_algorithms.
        counts = torch.zeros(groups * self.codes, device=v.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=v.dtype)
        )
        sums = torch.zeros(groups * self.codes, self.dim, device=v.device).index_add_(0, flat, v.reshape(-1, self.dim))
        self.count.mul_(DECAY).add_(counts.reshape(groups, self.codes), alpha=1 - DECAY)
        self.total.mul_(DECAY).add_(sums.reshape(groups, self.codes, self.dim), alpha=1 - DECAY)
        size = self.count.sum(-1, keepdim=True)
        smoothed = (self.count + EPS) / (size + self.codes * EPS) * size
        self.working = self.total / smoothed.unsqueeze(-1)
        # Draw every step (not only when needed), so the random stream does not depend on the data.
        pick = torch.randint(n, (groups, self.codes), generator=self.generator).to(v.device)
        fresh = torch.gather(v, 1, pick.unsqueeze(-1).expand(-1, -1, self.dim))
        fair = n / self.codes
        dead = self.count < DEAD_FRACTION * fair
        if bool(dead.any()):
            self.dead_reseeded += int(dead.sum())
            self.working = torch.where(dead.unsqueeze(-1), fresh, self.working)
            self.count = torch.where(dead, torch.full_like(self.count, fair), self.count)
            self.total = torch.where(dead.unsqueeze(-1), fresh * fair, self.total)

    def _row_index(self, start: int, device: torch.device) -> torch.Tensor:
        return (torch.arange(self.rows, device=device) + start) % self.codes

    # ------------------------------------------------------------------ sender
    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, train: bool) -> list[torch.Tensor]:
        v = self._vectors(x)
        if self.working is None:
            self._init(v)
        extra = self._publish(v.device) if train else []
        index = self._nearest(v)
        if train:
            self._learn(v, index)
        codes = index.transpose(0, 1).to(self.dtype)  # (N, G)
        positions = x.shape[2:] if x.dim() == 4 else x.shape[1:-1]
        return [codes.reshape(x.shape[0], *positions, -1), *extra]

    # ------------------------------------------------------------------ receiver
    def receive(self, parts: Sequence[torch.Tensor], *, train: bool) -> list[torch.Tensor]:
        codes = parts[0]
        if self.copy is None:
            self.copy = torch.zeros(codes.shape[-1], self.codes, self.dim, device=codes.device)
        if train:
            rows, start = parts[1], parts[2]
            self.copy[:, self._row_index(int(start[0]), codes.device)] = rows.to(self.copy.device)
        return [codes]

    def decode_payload(self, payload: Sequence[torch.Tensor]) -> torch.Tensor:
        codes = payload[0]
        assert self.copy is not None, "decode before any message was received"
        groups = codes.shape[-1]
        flat = codes.reshape(-1, groups).long() + torch.arange(groups, device=codes.device) * self.codes
        vectors = self.copy.to(codes.device).reshape(-1, self.dim)[flat]  # (N, G, D)
        out = vectors.reshape(*codes.shape[:-1], groups * self.dim)
        return out.permute(0, 3, 1, 2) if out.dim() == 4 else out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state(), "next_row": self.next_row}
        for name in ("working", "count", "total", "published", "live", "copy"):
            value = getattr(self, name)
            if value is not None:
                state[name] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.next_row = int(state["next_row"])
        for name in ("working", "count", "total", "published", "live", "copy"):
            setattr(self, name, state[name].clone() if name in state else None)
