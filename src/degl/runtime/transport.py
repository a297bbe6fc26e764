"""Point-to-point messages between neighbouring ranks, with backpressure and wait-time accounting.

A message is a short list of tensors sent with ``isend`` and received with ``irecv`` in the same
order (gloo on CPU, NCCL on GPU preserve per-pair order). Receivers know each message's shapes in
advance (the schedule is deterministic), so they post the receive for message t+1 before working
on message t and the transfer overlaps with compute.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import torch
import torch.distributed as dist

TensorSpec = tuple[tuple[int, ...], torch.dtype]


class PeerError(RuntimeError):
    """A neighbouring rank failed, was killed or stayed silent past the timeout."""

    def __init__(self, peer: int, action: str, cause: BaseException) -> None:
        first = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"{action} rank {peer} (stage {peer}) failed: {first}; rank {peer} probably died, see its output"
        )
        self.peer = peer


def _wait_all(works: Sequence[dist.Work], peer: int, action: str) -> None:
    try:
        for work in works:
            work.wait()
    except (RuntimeError, dist.DistError) as exc:  # gloo: connection closed / timed out
        raise PeerError(peer, action, exc) from None


class Outbox:
    """Sends to rank ``dst``; at most ``max_in_flight`` messages may be unacknowledged."""

    def __init__(self, dst: int, max_in_flight: int) -> None:
        self.dst = dst
        self.max_in_flight = max_in_flight
        self._pending: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()
        self.wait_s = 0.0
        self.messages = 0
        self.bytes = 0

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        while len(self._pending) >= self.max_in_flight:
            self._wait_oldest()
        tensors = [t.contiguous() for t in tensors]
        try:
            works = [dist.isend(t, self.dst) for t in tensors]
        except (RuntimeError, dist.DistError) as exc:
            raise PeerError(self.dst, "sending to", exc) from None
        self._pending.append((works, tensors))  # the tensors must live until the send completes
        self.messages += 1
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)

    def _wait_oldest(self) -> None:
        works, _ = self._pending.popleft()
        tick = time.perf_counter()
        _wait_all(works, self.dst, "sending to")
        self.wait_s += time.perf_counter() - tick

    def flush(self) -> None:
        while self._pending:
            self._wait_oldest()


class Inbox:
    """Receives from rank ``src`` into freshly allocated tensors; one message posted ahead at most."""

    def __init__(self, src: int, device: torch.device) -> None:
        self.src = src
        self.device = device
        self._posted: tuple[list[dist.Work], list[torch.Tensor]] | None = None
        self.wait_s = 0.0

    def post(self, specs: Sequence[TensorSpec]) -> None:
        assert self._posted is None, "one message may be posted ahead at most"
        tensors = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in specs]
        try:
            works = [dist.irecv(t, self.src) for t in tensors]
        except (RuntimeError, dist.DistError) as exc:
            raise PeerError(self.src, "receiving from", exc) from None
        self._posted = (works, tensors)

    def wait(self) -> list[torch.Tensor]:
        assert self._posted is not None, "wait() without post()"
        works, tensors = self._posted
        self._posted = None
        tick = time.perf_counter()
        _wait_all(works, self.src, "receiving from")
        self.wait_s += time.perf_counter() - tick
        return tensors
