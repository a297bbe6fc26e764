"""Point-to-point messages between neighbouring ranks, with backpressure and wait-time accounting.

A message is a short list of tensors sent with ``isend`` and received with ``irecv`` in the same
order (gloo on CPU, NCCL on GPU preserve per-pair order). Receivers know each message's shapes in
advance (the schedule is deterministic), so they post the receive for message t+1 before working
on message t and the transfer overlaps with compute.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

TensorSpec = tuple[tuple[int, ...], torch.dtype]
STAMP: TensorSpec = ((1,), torch.float64)
"""An emulated link's delivery time, sent after a message's own tensors (not counted in its bytes)."""


class EmulatedLink:
    """A link of ``mbps`` megabits per second, emulated on one host (``degl bench pipeline --link-mbps``).

    Messages cross it one after another: a message of B bytes sent at time t is delivered at
    ``max(t, previous delivery) + 8 B / (mbps 10^6)``. The sender stamps that time (the host's
    monotonic clock, shared by its processes) on the message; the receiver does not hand the message
    over, and the sender does not count it complete, before then. Real transfers still happen at
    full speed underneath, so link speeds faster than the real transport are not emulated.
    """

    def __init__(self, mbps: float) -> None:
        if not mbps > 0:
            raise ValueError(f"link speed must be positive, got {mbps} Mbit/s")
        self.mbps = mbps
        self.free_at = 0.0

    def delivery(self, nbytes: int) -> float:
        start = max(time.monotonic(), self.free_at)
        self.free_at = start + nbytes * 8 / (self.mbps * 1e6)
        return self.free_at


def _until(deadline: float) -> None:
    """Sleep until the monotonic clock reads ``deadline`` (an emulated delivery)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


WaitHook = Callable[[float, float], None]
"""``on_wait(start, end)``: told of every blocking wait (``perf_counter`` seconds); for ``--trace``."""


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

    def __init__(
        self, dst: int, max_in_flight: int, staging: torch.device | None = None, *, link_mbps: float | None = None
    ) -> None:
        self.dst = dst
        self.staging = staging
        self.max_in_flight = max_in_flight
        self.link = EmulatedLink(link_mbps) if link_mbps is not None else None
        self._pending: deque[tuple[list[dist.Work], list[torch.Tensor], float]] = deque()
        self.wait_s = 0.0
        self.on_wait: WaitHook | None = None
        self.messages = 0
        self.bytes = 0

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        while len(self._pending) >= self.max_in_flight:
            self._wait_oldest()
        tensors = [(t.to(self.staging) if self.staging is not None else t).contiguous() for t in tensors]
        size = sum(t.numel() * t.element_size() for t in tensors)
        deliver_at = 0.0
        if self.link is not None:
            deliver_at = self.link.delivery(size)
            tensors.append(torch.tensor([deliver_at], dtype=torch.float64, device=tensors[0].device))
        try:
            works = [dist.isend(t, self.dst) for t in tensors]
        except (RuntimeError, dist.DistError) as exc:
            raise PeerError(self.dst, "sending to", exc) from None
        self._pending.append((works, tensors, deliver_at))  # the tensors must live until the send completes
        self.messages += 1
        self.bytes += size

    def _wait_oldest(self) -> None:
        works, _, deliver_at = self._pending.popleft()
        tick = time.perf_counter()
        _wait_all(works, self.dst, "sending to")
        _until(deliver_at)
        tock = time.perf_counter()
        self.wait_s += tock - tick
        if self.on_wait is not None:
            self.on_wait(tick, tock)

    def flush(self) -> None:
        while self._pending:
            self._wait_oldest()


class Inbox:
    """Receives from rank ``src`` into freshly allocated tensors, in order; receives are posted ahead."""

    def __init__(
        self, src: int, device: torch.device, staging: torch.device | None = None, *, link_mbps: float | None = None
    ) -> None:
        self.src = src
        self.device = device
        self.staging = staging
        self.link_mbps = link_mbps  # the sender emulates the link; this side honours its delivery stamps
        self._posted: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()
        self.wait_s = 0.0
        self.on_wait: WaitHook | None = None

    @property
    def pending(self) -> int:
        """Messages posted and not yet taken with :meth:`wait`."""
        return len(self._posted)

    def post(self, specs: Sequence[TensorSpec]) -> None:
        where = self.staging or self.device
        specs = [*specs, STAMP] if self.link_mbps is not None else specs
        tensors = [torch.empty(shape, dtype=dtype, device=where) for shape, dtype in specs]
        try:
            works = [dist.irecv(t, self.src) for t in tensors]
        except (RuntimeError, dist.DistError) as exc:
            raise PeerError(self.src, "receiving from", exc) from None
        self._posted.append((works, tensors))

    def ready(self) -> bool:
        """Whether the oldest posted message has arrived (never blocks)."""
        if not self._posted or not all(work.is_completed() for work in self._posted[0][0]):
            return False
        return self.link_mbps is None or float(self._posted[0][1][-1]) <= time.monotonic()

    def wait(self) -> list[torch.Tensor]:
        """The oldest posted message, waiting for it if needed."""
        assert self._posted, "wait() without post()"
        works, tensors = self._posted.popleft()
        tick = time.perf_counter()
        _wait_all(works, self.src, "receiving from")
        if self.link_mbps is not None:
            _until(float(tensors.pop()))
        tock = time.perf_counter()
        self.wait_s += tock - tick
        if self.on_wait is not None:
            self.on_wait(tick, tock)
        return [t.to(self.device, non_blocking=True) for t in tensors] if self.staging is not None else tensors


class BackgroundInbox:
    """Receives from rank ``src`` on a background thread and queues complete messages.

    For consumers that must never block on their producer (asynchronous DGL): :meth:`take` returns
    what has arrived without waiting. A thread is needed because a gloo receive's
    ``is_completed()`` only turns true inside ``wait()``, although the bytes arrive in the
    background. Every message has the shapes ``specs`` (or ``specs(i)`` for the i-th message,
    counted from 0, when ``specs`` is a function). The thread stops after the message for which
    ``last(message)`` is true.
    """

    def __init__(
        self,
        src: int,
        device: torch.device,
        specs: Sequence[TensorSpec] | Callable[[int], Sequence[TensorSpec]],
        last: Callable[[list[torch.Tensor]], bool],
        *,
        capacity: int,
        timeout_s: float,
        staging: torch.device | None = None,
        link_mbps: float | None = None,
    ) -> None:
        self.src = src
        self.timeout_s = timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._error: BaseException | None = None
        self.wait_s = 0.0
        self.on_wait: WaitHook | None = None

        def specs_of(index: int) -> list[TensorSpec]:
            message = specs(index) if callable(specs) else specs
            return [*message, STAMP] if link_mbps is not None else list(message)

        def receive() -> None:
            try:
                for index in itertools.count():
                    tensors = [
                        torch.empty(shape, dtype=dtype, device=staging or device) for shape, dtype in specs_of(index)
                    ]
                    _wait_all([dist.irecv(t, src) for t in tensors], src, "receiving from")
                    if link_mbps is not None:  # an emulated link: not before its delivery time
                        _until(float(tensors.pop()))
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
            tock = time.perf_counter()
            self.wait_s += tock - tick
            if block and self.on_wait is not None:
                self.on_wait(tick, tock)
        if message is None:
            assert self._error is not None
            raise self._error
        return message

    def join(self) -> None:
        self._thread.join()
