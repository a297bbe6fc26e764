"""The asynchronous DGL pipeline's rank loop (``--method async-dgl --workers K --buffer M``).

Paper Alg. 2 with a budget, as in the one-process simulation (:mod:`degl.run.async_sim`): every
rank performs exactly ``epochs x batches`` updates, so its learning-rate schedule spans exactly its
own training. No rank waits for another while it trains. Rank 0 trains on the data and sends every
output on. Rank k > 0 receives on a background thread, moves every message that has arrived into
its replay buffer without blocking, and trains on a batch sampled from the buffer (policy and max
reuse as configured) whether or not anything new arrived; it blocks only when no buffered batch is
eligible. A rank slowed by ``slowdown`` (extra real work per step) slows only itself.

A rank that has finished its budget is frozen (eval mode, no updates) but keeps serving forward
outputs to the ranks after it until they no longer need them, like a frozen stage of the
simulation. "No longer needed" travels backwards: the last rank, once its budget is done, sends a
*release* to its predecessor; a rank sends its own release once it is done and released. Rank 0,
released, sends DONE down the line; every rank drains its inbox up to DONE, and the test set goes
through the pipeline. A stop (``max_steps`` or Ctrl-C on rank 0) sends DONE at once.

Definitions shared with the simulation: ``staleness`` of an update is how many newer outputs of
the predecessor the rank had already received when it trained on a sample (0: the newest);
``--max-steps N`` stops after N updates of stage 0 in this invocation.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from degl.core.accounting import Position, train_line
from degl.core.evaluate import EvalResult
from degl.core.replay_buffer import ReplayBuffer
from degl.runtime.plan import ALIVE, DATA, DONE, pack, unpack
from degl.runtime.stopping import StopPolicy
from degl.runtime.sync_rank import SyncRank
from degl.runtime.transport import BackgroundInbox, PeerError

RELEASE_TAG = 7  # the backward "release" message; forward messages use tag 0
# A release may come long after the listener starts waiting (a fast rank waits for a slow one). On
# the run's process group a wait that long would hit its timeout, and gloo then closes the pair the
# activations use too; releases travel on a group of their own whose timeout no run reaches. A rank
# that dies still closes the connection, which the listener reports at once.
RELEASE_TIMEOUT = timedelta(days=30)


class ReleaseListener:
    """Waits on a background thread for the successor's release (gloo's ``is_completed`` only turns
    true inside ``wait``, so polling a posted receive would never see it)."""

    def __init__(self, src: int, group: dist.ProcessGroup) -> None:
        self.src = src
        self._arrived = threading.Event()
        self._error: BaseException | None = None
        flag = torch.zeros(1, dtype=torch.int64)

        def listen() -> None:
            try:
                dist.recv(flag, src, group=group, tag=RELEASE_TAG)
            except BaseException as exc:  # the successor died: reported where the flag is read
                self._error = exc
            self._arrived.set()

        self._thread = threading.Thread(target=listen, name=f"degl-release-from-{src}", daemon=True)
        self._thread.start()

    @property
    def released(self) -> bool:
        if not self._arrived.is_set():
            return False
        if self._error is not None:
            raise PeerError(self.src, "waiting for a release from", self._error)
        return True

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise PeerError(self.src, "waiting for a release from", TimeoutError(f"nothing for {timeout_s:.0f}s"))
        _ = self.released


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
        self.budget = self.plan.epochs * self.plan.steps_per_epoch
        self.lines: list[dict[str, Any]] = []  # this rank's train metrics, one per epoch of its own steps
        self.steps = 0
        self.served = 0  # frozen forwards after the budget
        self.budget_s: float | None = None  # seconds until the budget was done
        self.consumed = 0
        self.staleness_sum = 0.0
        self.newest = -1
        self.recv_wait_s = 0.0
        self._last_sent = time.perf_counter()
        self._listener: ReleaseListener | None = None
        self._release: dist.Work | None = None
        self._release_group: Any = None  # the process group of the releases, made in fit()

    @property
    def released(self) -> bool:
        """Whether no later rank needs this rank's outputs any more."""
        return self._listener is None or self._listener.released

    @property
    def finished(self) -> bool:
        return self.steps >= self.budget

    # ------------------------------------------------------------------ one update / one forward
    def _train_and_send(self, x: torch.Tensor, y: torch.Tensor) -> None:
        out = self.train_step(x, y)
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
        if self.finished:
            self.budget_s = time.perf_counter() - self._start
            self.step_obj.stage.eval()  # frozen from now on
        self._send(out, y)

    def _serve(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """A frozen rank's forward for the ranks after it (a slowed rank is slow here too)."""
        before, tick = self.timing.compute, time.perf_counter()
        for _ in range(1 + self.extra_work.repeats()):
            out = self.step_obj.features(x)
        self._sync()
        self.timing.compute += time.perf_counter() - tick
        self._stepped(tick, before, trained=False)
        self.served += 1
        self._send(out, y)

    def _send(self, out: torch.Tensor, y: torch.Tensor) -> None:
        if self.link.outbox is None:
            return
        now = time.perf_counter()
        if not self.released:
            self.link.outbox.send([*self._encode(out, train=True), pack(y, DATA, 0, self.steps)])
            self._last_sent = now
        elif now - self._last_sent > self.timeout_s / 4:
            # Released, this rank sends nothing its successor needs, yet may train for longer than the
            # successor waits on a silent peer (a slowed rank before a fast one): a sign of life.
            self._send_control(ALIVE, self.plan.train_sizes[0])
            self._last_sent = now

    def _send_release(self) -> None:
        """Tell the predecessor its outputs are no longer needed (exactly once per run)."""
        if self.rank > 0 and self._release is None:
            flag = torch.ones(1, dtype=torch.int64)
            self._release = dist.isend(flag, self.rank - 1, group=self._release_group, tag=RELEASE_TAG)

    # ------------------------------------------------------------------ rank 0
    def _produce(self, policy: StopPolicy) -> bool:
        """Train on the data, then serve forward until released; True when stopped early."""
        assert self.train_batches is not None
        epoch, batches, left = 0, None, 0
        while not (self.finished and self.released):
            if policy.requested or (not self.finished and policy.budget_spent):
                return True
            if left == 0:  # past the last epoch a frozen rank 0 keeps reading the data, reshuffled
                batches, left = self.train_batches.epoch(epoch, 0), self.plan.steps_per_epoch
                epoch += 1
            tick = time.perf_counter()
            x, y = next(batches)  # type: ignore[call-overload]
            self._took_data(tick)
            left -= 1
            if self.finished:
                self._serve(x, y)
            else:
                self._train_and_send(x, y)
                policy.stepped()
        return False

    # ------------------------------------------------------------------ ranks 1..K-1
    def _receive(self, receiver: BackgroundInbox, *, block: bool) -> bool:
        """Move arrived messages into the buffer (with ``block``, wait for one); True on DONE."""
        assert self.buffer is not None
        while True:
            message = receiver.take(block=block)
            if message is None:
                return False
            block = False
            *parts, meta = message
            y, control, _, step = unpack(meta)
            if control == DONE:
                return True
            if control == ALIVE:
                continue
            x = self._decode(parts, train=True)  # every message, in order: a vq codebook stays in sync
            self.buffer.put(x, y, step=step)
            self.newest = max(self.newest, step)

    def _consume(self, receiver: BackgroundInbox) -> bool:
        """Train from the buffer, then serve forward until released; True when stopped early."""
        assert self.buffer is not None
        while True:
            if self._receive(receiver, block=False):
                return True  # DONE before this rank was through: the run was stopped
            if self.finished and self.released:
                self._send_release()
                while not self._receive(receiver, block=True):
                    pass  # drain up to DONE; nobody needs the outputs
                return False
            sample = self.buffer.get()
            if sample is None:  # nothing eligible (empty, or every batch used max-reuse times)
                if self._receive(receiver, block=True):
                    return True
                continue
            x, y, info = sample
            if self.finished:
                self._serve(x, y)
                continue
            self.consumed += info.uses == 1
            if info.step is not None:
                self.staleness_sum += self.newest - info.step
            self._train_and_send(x, y)

    # ------------------------------------------------------------------ the run
    def fit(self, policy: StopPolicy | None = None) -> bool:
        """Train every rank's budget (or until stopped); evaluate; return True when stopped early."""
        first = self.rank == 0
        policy = policy if policy is not None else StopPolicy()
        self.stats.reset([self.rank], self.device)
        self._start = time.perf_counter()
        # Collective: every rank creates the group, in the same order. gloo: the flags live on the CPU.
        self._release_group = dist.new_group(backend="gloo", timeout=RELEASE_TIMEOUT)
        if self.rank < self.world - 1:
            self._listener = ReleaseListener(self.rank + 1, self._release_group)
        if first:
            self._produce(policy)
        else:
            receiver = BackgroundInbox(
                self.rank - 1,
                self.device,
                self.train_spec(0),
                lambda message: unpack(message[-1])[1] == DONE,  # meta is last (after the codec's parts)
                capacity=self.queue_depth,
                timeout_s=self.timeout_s,
                staging=self.link.inbox.staging if self.link.inbox is not None else None,
                link_mbps=self.link.inbox.link_mbps if self.link.inbox is not None else None,
            )
            self.watch(receiver, "recv wait")  # --trace: its blocking waits become "recv wait" spans
            self._consume(receiver)
            receiver.join()
            self.recv_wait_s = receiver.wait_s
        self.timing.elapsed = time.perf_counter() - self._start
        self.timing.waits = (self.recv_wait_s, self.link.waits()[1])  # training only: not eval's waits
        self._send_release()  # a stopped rank still answers its predecessor's listener
        self._send_control(DONE, self.plan.train_sizes[0])
        if self._listener is not None:
            self._listener.join(self.timeout_s)
        if self._release is not None:
            self._release.wait()
        dist.destroy_process_group(self._release_group)
        evaluation = self._phase("eval", self.evaluate)
        # Ranks did different numbers of steps; the checkpoint is named after rank 0's.
        shared = [self.steps]
        dist.broadcast_object_list(shared, src=0)
        self.global_step = shared[0]
        reports = self._phase("epoch end", self.save_and_gather, evaluation)
        outcome: list[Any] = [None]
        if first:
            assert reports is not None
            completed = all(r["steps"] >= self.budget for r in reports) and not policy.requested
            self.position = Position(1, 0, 0) if completed else Position(0, self.plan.epochs, 0)
            self.history.append({"epoch": self.plan.epochs, "reports": reports})
            if self.recorder is not None:
                self.recorder.async_end(reports, position=self.position, completed=completed)
            outcome = [completed]
        dist.broadcast_object_list(outcome, src=0)
        return not outcome[0]

    def report(self, evaluation: EvalResult | None) -> dict[str, Any]:
        report = super().report(evaluation)
        budget_s = self.budget_s if self.budget_s is not None else self.timing.elapsed
        report.update(
            {
                "lines": self.lines,
                "steps": self.steps,
                "served": self.served,
                "budget_s": budget_s,
                "steps_per_s": self.steps / max(budget_s, 1e-9),
                "reuse": self.steps / max(self.consumed, 1) if self.buffer is not None else 1.0,
                "staleness": self.staleness_sum / max(self.steps, 1),
                "buffer_bytes": self.buffer.nbytes if self.buffer is not None else 0,
            }
        )
        return report
