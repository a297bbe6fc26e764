"""The asynchronous DGL pipeline's rank loop (``--method async-dgl --workers K``).

No rank waits for another. Rank 0 trains on the data and sends every output on. Rank k > 0
receives on a background thread (up to ``max_in_flight`` messages queued), moves every message
that has arrived into its replay buffer without blocking, and trains on a batch sampled from the
buffer at every step whether or not anything new arrived (honouring the buffer's max reuse), then
sends its output on. It blocks only when no buffered batch is eligible. A rank slowed by
``slowdown`` therefore slows only itself: the ranks before it keep their pace and the buffer
absorbs the difference.

The run ends when rank 0 has used ``plan.epochs`` epochs of data: it sends DONE, every rank
finishes the batches it has not used yet, passes DONE on, and the test set goes through the
pipeline. Built from the same objects as :class:`~degl.runtime.sync_rank.SyncRank`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from degl.core.accounting import Position, train_line
from degl.core.evaluate import EvalResult
from degl.core.replay_buffer import ReplayBuffer
from degl.runtime.sync_rank import DATA, DONE, NeverStop, SyncRank, pack, unpack
from degl.runtime.transport import BackgroundInbox


class AsyncRank(SyncRank):
    """One rank of the asynchronous pipeline; ranks > 0 need a ``buffer``.

    Extra args (see :class:`SyncRank` for the rest):
        buffer: the replay buffer between the previous rank and this one.
        queue_depth: messages the background receiver may hold before the sender blocks.
        timeout_s: how long to wait for a silent predecessor before reporting it failed.
    """

    def __init__(
        self,
        *args: Any,
        buffer: ReplayBuffer | None = None,
        queue_depth: int = 2,
        timeout_s: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if len(set(self.plan.train_sizes)) != 1:
            raise ValueError("the asynchronous pipeline needs training batches of one size (drop the last one)")
        if self.rank > 0 and buffer is None:
            raise ValueError("ranks after the first need a replay buffer")
        self.buffer = buffer if self.rank > 0 else None
        self.queue_depth, self.timeout_s = queue_depth, timeout_s
        self.lines: list[dict[str, Any]] = []  # this rank's train metrics, one per epoch of its own steps
        self.steps = 0
        self.consumed = 0
        self.staleness_sum = 0.0
        self.newest = -1
        self.upstream_done = False
        self.recv_wait_s = 0.0

    # ------------------------------------------------------------------ one update
    def _train_and_send(self, x: torch.Tensor, y: torch.Tensor) -> None:
        out = self._train(x, y)
        self.steps += 1
        self.global_step = self.steps
        self.timing.mark((self.recv_wait_s, self.link.waits()[1]))
        per_epoch = self.plan.steps_per_epoch
        if self.steps % per_epoch == 0:
            losses, accs = self.stats.means()
            self.lines.append(
                train_line(
                    epoch=self.steps // per_epoch,
                    stage=self.rank,
                    loss=losses[0],
                    acc=accs[0],
                    lr=self.step_obj.lr,
                    step=self.steps,
                )
            )
            self.stats.reset([self.rank], self.device)
        if self.link.outbox is not None:
            self.link.outbox.send([out.to(self.wire), pack(y, DATA, 0, self.steps)])

    # ------------------------------------------------------------------ rank 0
    def _produce(self, stop: Any, max_steps: int | None) -> None:
        assert self.train_batches is not None
        budget = max_steps if max_steps is not None else -1
        for epoch in range(self.plan.epochs):
            batches = self.train_batches.epoch(epoch, 0)
            for _ in range(self.plan.steps_per_epoch):
                tick = time.perf_counter()
                x, y = next(batches)
                self.timing.data += time.perf_counter() - tick
                self._train_and_send(x, y)
                budget -= 1
                if budget == 0 or stop.requested:
                    return

    # ------------------------------------------------------------------ ranks 1..K-1
    def _receive(self, receiver: BackgroundInbox, *, block: bool) -> None:
        """Move arrived messages into the buffer; with ``block`` wait for at least one."""
        assert self.buffer is not None
        while not self.upstream_done:
            message = receiver.take(block=block)
            if message is None:
                return
            block = False
            x, meta = message
            y, control, _, step = unpack(meta)
            if control == DONE:
                self.upstream_done = True
                return
            self.buffer.put(x, y, step=step)
            self.newest = max(self.newest, step)

    def _consume(self) -> None:
        assert self.buffer is not None
        receiver = BackgroundInbox(
            self.rank - 1,
            self.device,
            self.train_spec(0),
            lambda message: unpack(message[1])[1] == DONE,
            capacity=self.queue_depth,
            timeout_s=self.timeout_s,
            staging=self.link.inbox.staging if self.link.inbox is not None else None,
        )
        while True:
            self._receive(receiver, block=False)
            if self.upstream_done and 0 not in self.buffer.use_counts:
                break  # nothing more will come and every batch received has been used
            sample = self.buffer.get()
            if sample is None:  # nothing eligible (empty, or every batch used max-reuse times)
                if self.upstream_done:
                    break
                self._receive(receiver, block=True)
                continue
            x, y, info = sample
            if info.uses == 1:
                self.consumed += 1
            if info.step is not None:
                self.staleness_sum += self.newest - info.step
            self._train_and_send(x, y)
        receiver.join()
        self.recv_wait_s = receiver.wait_s

    # ------------------------------------------------------------------ the run
    def fit(self, *, max_steps: int | None = None, stop: Any = None) -> bool:
        """Train until rank 0 has used its data (or stopped); evaluate; return True when stopped early."""
        first = self.rank == 0
        stop = stop if stop is not None else NeverStop()
        self.stats.reset([self.rank], self.device)
        start = self._start = time.perf_counter()
        if first:
            self._produce(stop, max_steps)
        else:
            self._consume()
        self.timing.elapsed = time.perf_counter() - start
        self._send_control(DONE, self.plan.train_sizes[0])
        evaluation = self.evaluate()
        completed = not stop.requested and max_steps is None
        self.position = Position(1, 0, 0) if completed else Position(0, self.plan.epochs, 0)
        # Ranks did different numbers of steps; the checkpoint is named after rank 0's.
        shared = [self.steps]
        dist.broadcast_object_list(shared, src=0)
        self.global_step = shared[0]
        reports = self.save_and_gather(evaluation)
        if first:
            assert reports is not None
            self.history.append({"epoch": self.plan.epochs, "reports": reports})
            if self.recorder is not None:
                self.recorder.async_end(reports, position=self.position, completed=completed)
        return not completed

    def report(self, evaluation: EvalResult | None) -> dict[str, Any]:
        report = super().report(evaluation)
        elapsed = max(self.timing.elapsed, 1e-9)
        report.update(
            {
                "lines": self.lines,
                "steps": self.steps,
                "steps_per_s": self.steps / elapsed,
                "reuse": self.steps / max(self.consumed, 1) if self.buffer is not None else 1.0,
                "staleness": self.staleness_sum / max(self.steps, 1),
                "buffer_bytes": self.buffer.nbytes if self.buffer is not None else 0,
            }
        )
        return report
