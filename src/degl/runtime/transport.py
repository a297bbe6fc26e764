"""Point-to-point messages between neighbouring ranks, with backpressure and wait-time accounting.

A message is a short list of tensors sent with ``isend`` and received with ``irecv`` in the same
order (gloo on CPU, NCCL on GPU preserve per-pair order). Receivers know each message's shapes in
advance (the schedule is deterministic), so they post the receive for message t+1 before working
on message t and the transfer overlaps with compute.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

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
    """Sends to rank ``dst``; at most ``max_in_flight`` messages may be unacknowledged.

    With ``staging`` (a GPU rank on gloo) tensors are copied there before sending.
    """

    def __init__(self, dst: int, max_in_flight: int, staging: torch.device | None = None) -> None:
        self.dst = dst
        self.staging = staging
        self.max_in_flight = max_in_flight
        self._pending: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()
        self.wait_s = 0.0
        self.messages = 0
        self.bytes = 0

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        while len(self._pending) >= self.max_in_flight:
            self._wait_oldest()
        tensors = [(t.to(self.staging) if self.staging is not None else t).contiguous() for t in tensors]
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
    """Receives from rank ``src`` into freshly allocated tensors, in order; receives are posted ahead."""

    def __init__(self, src: int, device: torch.device, staging: torch.device | None = None) -> None:
        self.src = src
        self.device = device
        self.staging = staging
        self._posted: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()
        self.wait_s = 0.0

    @property
    def pending(self) -> int:
        """Messages posted and not yet taken with :meth:`wait`."""
        return len(self._posted)

    def post(self, specs: Sequence[TensorSpec]) -> None:
        where = self.staging or self.device
        tensors = [torch.empty(shape, dtype=dtype, device=where) for shape, dtype in specs]
        try:
            works = [dist.irecv(t, self.src) for t in tensors]
        except (RuntimeError, dist.DistError) as exc:
            raise PeerError(self.src, "receiving from", exc) from None
        self._posted.append((works, tensors))

    def ready(self) -> bool:
        """Whether the oldest posted message has arrived (never blocks)."""
        return bool(self._posted) and all(work.is_completed() for work in self._posted[0][0])

    def wait(self) -> list[torch.Tensor]:
        """The oldest posted message, waiting for it if needed."""
        assert self._posted, "wait() without post()"
        works, tensors = self._posted.popleft()
        tick = time.perf_counter()
        _wait_all(works, self.src, "receiving from")
        self.wait_s += time.perf_counter() - tick
        return [t.to(self.device, non_blocking=True) for t in tensors] if self.staging is not None else tensors


class BackgroundInbox:
    """Receives from rank ``src`` on a background thread and queues complete messages.

    For consumers that must never block on their producer (asynchronous DGL): :meth:`take` returns
    what has arrived without waiting. A thread is needed because a gloo receive's
    ``is_completed()`` only turns true inside ``wait()``, although the bytes arrive in the
    background. Every message has the shapes ``specs``. The thread stops after the message for
    which ``last(message)`` is true.
    """

    def __init__(
        self,
        src: int,
        device: torch.device,
        specs: Sequence[TensorSpec],
        last: Callable[[list[torch.Tensor]], bool],
        *,
        capacity: int,
        timeout_s: float,
        staging: torch.device | None = None,
    ) -> None:
        self.src = src
        self.timeout_s = timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._error: BaseException | None = None
        self.wait_s = 0.0

        def receive() -> None:
            try:
                while True:
                    tensors = [torch.empty(shape, dtype=dtype, device=staging or device) for shape, dtype in specs]
                    _wait_all([dist.irecv(t, src) for t in tensors], src, "receiving from")
                    if staging is not None:
                        tensors = [t.to(device) for t in tensors]
                    self._queue.put(tensors)
                    if last(tensors):
                        return
            except BaseException as exc:
                self._error = exc
                self._queue.put(None)

        self._thread = threading.Thread(target=receive, name=f"degl-recv-from-{src}", daemon=True)
        self._thread.start()

    def take(self, *, block: bool) -> list[torch.Tensor] | None:
        """The next message, or None when ``block`` is false and nothing has arrived."""
        tick = time.perf_counter()
        try:
            message = self._queue.get(block=block, timeout=self.timeout_s if block else None)
        except queue.Empty:
            if not block:
                return None
            raise PeerError(self.src, "receiving from", TimeoutError(f"nothing for {self.timeout_s:.0f}s")) from None
        finally:
            self.wait_s += time.perf_counter() - tick
        if message is None:
            assert self._error is not None
            raise self._error
        return message

    def join(self) -> None:
        self._thread.join()
