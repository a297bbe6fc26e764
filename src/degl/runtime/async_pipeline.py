"""Real asynchronous DGL across processes (``--method async-dgl --workers K``).

No rank waits for another. Rank 0 trains on the data and sends every output on. Rank k > 0
receives on a background thread (up to ``--max-in-flight`` messages queued), moves every message
that has arrived into its replay buffer without blocking, and trains on a batch sampled from the
buffer at every step whether or not anything new arrived (honouring ``--max-reuse``), then sends
its output on. It blocks only when no buffered batch is eligible. A rank that ``--slowdown k:F``
makes F times slower therefore slows only itself: the ranks before it keep their pace and the
buffer absorbs the difference.

The run ends when rank 0 has used ``--epochs`` epochs of data: it sends DONE, every rank finishes
the batches it has not used yet, passes DONE on, and the test set goes through the pipeline.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from degl.config import TrainConfig
from degl.control import StopRequest
from degl.core.evaluate import EvalResult
from degl.data.loader import mix_seed
from degl.runstate import EpochStats, Position
from degl.runtime.dist import DistEnv
from degl.runtime.pipeline import DATA, IgnoreSignals, PipelineInfo, PipelineRank, pack, unpack
from degl.runtime.replay_buffer import ReplayBuffer
from degl.runtime.transport import BackgroundInbox

DONE = 2


class AsyncPipelineRank(PipelineRank):
    def __init__(
        self, cfg: TrainConfig, env: DistEnv, device: torch.device, info: PipelineInfo, data: Any = None
    ) -> None:
        super().__init__(cfg, env, device, info, data)
        self.depth = cfg.max_in_flight
        self.buffer = None
        if not env.is_first:
            self.buffer = ReplayBuffer(
                max(cfg.buffer, 1),
                policy=cfg.buffer_policy,
                max_reuse=cfg.max_reuse,
                storage=cfg.buffer_storage,
                device=device,
                compat=cfg.buffer_compat,
                generator=torch.Generator().manual_seed(mix_seed(cfg.seed, 0xB0, self.rank)),
            )
        self.lines: list[dict[str, Any]] = []  # this rank's train metrics, one per epoch of its own steps
        self.steps = 0
        self.consumed = 0
        self.staleness_sum = 0.0
        self.newest = -1
        self.upstream_done = False

    # ------------------------------------------------------------------ one update
    def _train(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self._step(x, y)
        self.steps += 1
        self.global_step = self.steps
        per_epoch = self.info.num_train_batches
        if self.steps % per_epoch == 0:
            losses, accs = self.stats.means()
            self.lines.append(
                {
                    "epoch": self.steps // per_epoch,
                    "phase": 0,
                    "stage": self.rank,
                    "split": "train",
                    "loss": losses[0],
                    "acc": accs[0],
                    "lr": self.method.current_lrs()[0],
                    "step": self.steps,
                }
            )
            self.stats.reset([self.rank], self.device)
        if self.outbox is not None:
            self.outbox.send([out.to(self.wire), pack(y, DATA, 0, self.steps)])
        return out

    # ------------------------------------------------------------------ rank 0
    def _produce(self, stop: StopRequest) -> None:
        budget = [self.cfg.max_steps] if self.cfg.max_steps is not None else [-1]
        for epoch in range(self.cfg.epochs):
            batches = self.train_loader.epoch(epoch)
            for _ in range(len(self.train_loader)):
                tick = time.perf_counter()
                x, y = next(batches)
                self.timing.data += time.perf_counter() - tick
                self._train(x, y)
                budget[0] -= 1
                if budget[0] == 0 or stop.requested:
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
            self.train_spec(),
            lambda message: unpack(message[1])[1] == DONE,
            capacity=self.depth,
            timeout_s=self.cfg.fault_timeout,
            staging=self.staging,
        )
        while True:
            self._receive(receiver, block=False)
            if self.upstream_done and 0 not in self.buffer.use_counts:
                break  # nothing more will come and every batch received has been used
            sample = self.buffer.get()
            if sample is None:  # nothing eligible (empty, or every batch used --max-reuse times)
                if self.upstream_done:
                    break
                self._receive(receiver, block=True)
                continue
            x, y, info = sample
            if info.uses == 1:
                self.consumed += 1
            if info.step is not None:
                self.staleness_sum += self.newest - info.step
            self._train(x, y)
        receiver.join()
        self.recv_wait_s = receiver.wait_s

    def _send_done(self) -> None:
        if self.outbox is None:
            return
        batch = self.cfg.batch_size
        zeros = torch.zeros(batch, *self.out_shape, dtype=self.wire, device=self.device)
        labels = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.outbox.send([zeros, pack(labels, DONE, 0, 0)])
        self.outbox.flush()

    # ------------------------------------------------------------------ the run
    def fit(self) -> tuple[dict[str, Any] | None, bool]:
        first = self.env.is_first
        stop = StopRequest("stopping: rank 0 sends no more data; the pipeline finishes and evaluates")
        self.stats.reset([self.rank], self.device)
        start = time.perf_counter()
        with stop if first else IgnoreSignals():
            if first:
                self._produce(stop)
            else:
                self._consume()
            self.timing.elapsed = time.perf_counter() - start
            self._send_done()
            evaluation = self.evaluate()
        completed = not stop.requested and self.cfg.max_steps is None
        self.position = Position(1, 0, 0) if completed else Position(0, self.cfg.epochs, 0)
        # Ranks did different numbers of steps; the checkpoint is named after rank 0's.
        shared = [self.steps]
        dist.broadcast_object_list(shared, src=0)
        self.global_step = shared[0]
        reports = self.checkpoint_and_gather(evaluation)
        if not first:
            return None, False
        assert reports is not None
        return self._finish(reports, completed), stop.requested

    def _report(self, evaluation: EvalResult | None) -> dict[str, Any]:
        report = super()._report(evaluation)
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

    def _finish(self, reports: list[dict[str, Any]], completed: bool) -> dict[str, Any]:
        assert self.state is not None
        self.state.train_time_s = max(r["elapsed"] for r in reports)
        self.state.position = self.position
        self.state.global_step = reports[0]["steps"]
        lines = sorted((line for r in reports for line in r["lines"]), key=lambda line: (line["epoch"], line["stage"]))
        for line in lines:
            self.state.metrics.write(line)
        for r in reports:
            self.state.last_eval[r["rank"]] = r["eval"]
            self.state.metrics.write(
                {"epoch": self.cfg.epochs, "phase": 0, "stage": r["rank"], "split": "test", **r["eval"]}
            )
        self.state.extra.update(
            {
                "buffer": self.cfg.buffer,
                "steps_per_stage": [r["steps"] for r in reports],
                "steps_per_s_per_stage": [round(r["steps_per_s"], 3) for r in reports],
                "reuse_per_stage": [round(r["reuse"], 4) for r in reports],
                "staleness_per_stage": [round(r["staleness"], 4) for r in reports],
                "buffer_bytes": sum(r["buffer_bytes"] for r in reports),
            }
        )
        accs = " ".join(f"s{r['rank']}={r['eval']['acc']:.2f}" for r in reports)
        print(f"[async-dgl] test acc {accs}; steps per stage {[r['steps'] for r in reports]}", file=sys.stderr)
        return self.commit(
            reports, EpochStats.merge([self._empty_stats(r["rank"]) for r in reports]), completed=completed
        )

    def _empty_stats(self, rank: int) -> EpochStats:
        stats = EpochStats()
        stats.reset([rank], torch.device("cpu"))
        return stats
