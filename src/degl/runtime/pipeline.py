"""The multi-process DGL pipeline: rank k trains stage k, one batch behind rank k-1.

Only activations and labels flow forward (``isend``/``irecv``); nothing flows backwards but control
(the epoch-end gather and the stop decision). Every rank sees the same (input, parameter-version)
sequence as the single-process loop of paper Alg. 1, so with one thread per process and
``--deterministic`` the weights end bit-identical to ``degl train --method dgl`` in one process.

Messages (per-rank shapes are known from the deterministic schedule, so receives are posted early):
    train:  [activations (B, *shape), meta int64 (labels..., control, epoch, step)]
    eval:   [activations (n, *shape), meta, ensemble float32 (n, classes)]
A STOP (``--max-steps`` or Ctrl-C on rank 0) replaces a train message and travels down the line.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from degl import checkpoint
from degl.config import TrainConfig, parse_slowdowns
from degl.control import StopRequest, epoch_bar, step_bar
from degl.core.evaluate import EvalAccumulator, EvalResult
from degl.core.methods import DGL
from degl.runstate import EpochStats, Position, RunState, stage_checkpoint
from degl.runtime.dist import DistEnv, staging_device
from degl.runtime.transport import Inbox, Outbox, TensorSpec
from degl.setup import loaders, make_stages, method_options, optim_settings, prepare_stage

DATA, STOP = 0, 1
WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PipelineInfo:
    """What rank 0 tells every rank at start-up (it alone reads the data)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    num_train_batches: int
    eval_sizes: list[int]
    run_dir: str
    cuts: str | None


def pack(y: torch.Tensor, control: int, epoch: int, step: int) -> torch.Tensor:
    return torch.cat([y, torch.tensor([control, epoch, step], dtype=torch.int64, device=y.device)])


def unpack(meta: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    control, epoch, step = meta[-3:].tolist()
    return meta[:-3], control, epoch, step


@dataclass
class Timing:
    """Where one rank's training time went during an epoch (seconds)."""

    compute: float = 0.0
    data: float = 0.0
    elapsed: float = 0.0

    def idle_fraction(self, recv_wait: float, send_wait: float) -> dict[str, float]:
        busy = self.compute + self.data
        elapsed = max(self.elapsed, 1e-9)
        return {"idle": 1 - busy / elapsed, "recv_wait": recv_wait / elapsed, "send_wait": send_wait / elapsed}


class PipelineRank:
    """One process of the pipeline. Build with :func:`degl.runtime.worker.start_rank`."""

    def __init__(
        self, cfg: TrainConfig, env: DistEnv, device: torch.device, info: PipelineInfo, data: Any = None
    ) -> None:
        # Only rank 0 shows progress bars.
        self.cfg = replace(cfg, progress=cfg.progress and env.is_first)
        self.env, self.device, self.info = env, device, info
        self.rank, self.world = env.rank, env.world_size
        stages = make_stages(cfg, SimpleNamespace(input_shape=info.input_shape, num_classes=info.num_classes))
        assert len(stages) == self.world
        self.stage = prepare_stage(stages[self.rank], cfg, device)
        self.out_shape = self.stage.out_shape
        del stages
        settings = optim_settings(cfg, info.num_train_batches)
        self.method = DGL([self.stage], **method_options(cfg, settings, device))
        self.wire = WIRE_DTYPES[cfg.precision]
        self.slowdown = parse_slowdowns(cfg.slowdown, self.world).get(self.rank, 1.0)
        self.staging = staging_device(device)
        self.inbox = Inbox(self.rank - 1, device, self.staging) if self.rank > 0 else None
        self.outbox = Outbox(self.rank + 1, cfg.max_in_flight, self.staging) if not env.is_last else None
        self.stats = EpochStats()
        self.position = Position()
        self.global_step = 0
        self.timing = Timing()
        self.run_dir = Path(info.run_dir)
        self.state: RunState | None = None
        # Fault injection for the fault-handling tests: DEGL_TEST_FAIL_AT=RANK:STEP makes that rank raise.
        rank_step = os.environ.get("DEGL_TEST_FAIL_AT", "").split(":")
        self.fail_at = int(rank_step[1]) if len(rank_step) == 2 and int(rank_step[0]) == self.rank else None
        if env.is_first:
            self.train_loader, self.test_loader = loaders(cfg, data, device)
            stage_info = [None] * self.world
            dist.gather_object(RunState.describe_stages([self.stage])[0], stage_info, dst=0)
            self.state = RunState(cfg, self.run_dir, stage_info, str(device), extra={"workers": self.world})
        else:
            dist.gather_object(RunState.describe_stages([self.stage])[0], None, dst=0)

    # ------------------------------------------------------------------ specs
    def train_spec(self) -> list[TensorSpec]:
        batch = self.cfg.batch_size
        return [((batch, *self.stage.in_shape), self.wire), ((batch + 3,), torch.int64)]

    def eval_spec(self, n: int) -> list[TensorSpec]:
        return [
            ((n, *self.stage.in_shape), self.wire),
            ((n + 3,), torch.int64),
            ((n, self.info.num_classes), torch.float32),
        ]

    # ------------------------------------------------------------------ resume
    def restore(self, path: Path, meta: dict[str, Any]) -> None:
        state = checkpoint.load_stage(path, self.rank, self.device)
        self.stage.load_state_dict(state["model"])
        self.method.load_state_dict({"stages": [{k: v for k, v in state.items() if k != "model"}], "shared": {}})
        saved = meta["epoch_stats"]
        row = saved["stages"].index(self.rank) if self.rank in saved["stages"] else None
        if row is not None:
            self.stats.load_state_dict(
                {
                    "stages": [self.rank],
                    "loss_sum": saved["loss_sum"][row : row + 1],
                    "correct": saved["correct"][row : row + 1],
                    "count": saved["count"],
                },
                self.device,
            )
        self.position = Position(**meta["position"])
        self.global_step = int(meta["global_step"])
        if self.state is not None:
            self.state.restore(meta)

    # ------------------------------------------------------------------ training
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fail_at == self.global_step:
            raise RuntimeError(f"injected failure at step {self.global_step} (DEGL_TEST_FAIL_AT)")
        tick = time.perf_counter()
        out, result = self.method.local_step(0, x, y)
        result.stage = self.rank
        self._sync()
        spent = time.perf_counter() - tick
        if self.slowdown > 1:  # emulate a slower device: this rank's step takes FACTOR times as long
            time.sleep((self.slowdown - 1) * spent)
            spent *= self.slowdown
        self.timing.compute += spent
        self.stats.add([result])
        return out

    def _send_stop(self) -> None:
        if self.outbox is not None:
            batch = self.cfg.batch_size
            zeros = torch.zeros(batch, *self.out_shape, dtype=self.wire, device=self.device)
            self.outbox.send([zeros, pack(torch.zeros(batch, dtype=torch.int64, device=self.device), STOP, 0, 0)])
            self.outbox.flush()

    def train_epoch_first(self, seed_epoch: int, first_step: int, stop: StopRequest, budget: list[int]) -> bool:
        """Rank 0: read batches, train, send. Returns True when it decided to stop mid-epoch."""
        n = len(self.train_loader)
        batches = self.train_loader.epoch(seed_epoch, first_step)
        with step_bar(self.cfg, n, first_step, seed_epoch + 1) as bar:
            for step in range(first_step, n):
                tick = time.perf_counter()
                x, y = next(batches)
                self.timing.data += time.perf_counter() - tick
                out = self._step(x, y)
                if self.outbox is not None:
                    self.outbox.send([out.to(self.wire), pack(y, DATA, seed_epoch, step)])
                self.global_step += 1
                self.position.step = step + 1
                budget[0] -= 1
                bar.update(1)
                if (budget[0] == 0 or stop.requested) and step + 1 < n:
                    self._send_stop()
                    return True
        return False

    def train_epoch_next(self, seed_epoch: int, first_step: int) -> bool:
        """Ranks 1..K-1: receive, train, pass on. Returns True when a STOP arrived."""
        assert self.inbox is not None
        n = self.info.num_train_batches
        self.inbox.post(self.train_spec())
        for step in range(first_step, n):
            x, meta = self.inbox.wait()
            y, control, epoch, sent_step = unpack(meta)
            if control == STOP:
                self._send_stop()
                return True
            assert (epoch, sent_step) == (seed_epoch, step), f"pipeline out of step: got {(epoch, sent_step)}"
            # Post the next receive before computing, so the transfer overlaps with this step.
            self.inbox.post(self.train_spec() if step + 1 < n else self.eval_spec(self.info.eval_sizes[0]))
            out = self._step(x, y)
            if self.outbox is not None:
                self.outbox.send([out.to(self.wire), meta])
            self.global_step += 1
            self.position.step = step + 1
        return False

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Forward-only pass of the test set through the pipeline; each rank scores its own head."""
        self.stage.eval()
        acc = EvalAccumulator([self.rank])
        weight = 2.0**self.rank
        sizes = self.info.eval_sizes
        if self.inbox is None:
            batches = iter(self.test_loader)
        elif not self.inbox.pending:
            self.inbox.post(self.eval_spec(sizes[0]))
        for i in range(len(sizes)):
            if self.inbox is None:
                x, y = next(batches)
                meta, ensemble = pack(y, DATA, -1, i), None
            else:
                x, meta, ensemble = self.inbox.wait()
                if i + 1 < len(sizes):
                    self.inbox.post(self.eval_spec(sizes[i + 1]))
                y = meta[:-3]
            with self.method.precision.autocast():
                h = self.stage.block(x)
                logits = self.stage.head(h).float()
            weighted = logits.softmax(dim=1) * weight
            ensemble = weighted if ensemble is None else ensemble + weighted
            acc.count += y.numel()
            acc.add(0, logits, y, ensemble)
            if self.outbox is not None:
                self.outbox.send([h.to(self.wire), meta, ensemble])
        if self.outbox is not None:
            self.outbox.flush()
        self.stage.train()
        return acc.result()

    # ------------------------------------------------------------------ epoch end / stop
    def _report(self, evaluation: EvalResult | None) -> dict[str, Any]:
        waits = (self.inbox.wait_s if self.inbox else 0.0, self.outbox.wait_s if self.outbox else 0.0)
        return {
            "rank": self.rank,
            "stats": {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.stats.state_dict().items()},
            "eval": None if evaluation is None else evaluation.by_stage()[self.rank],
            "lr": self.method.current_lrs()[0],
            "timing": self.timing.idle_fraction(*waits),
            "elapsed": self.timing.elapsed,
        }

    def checkpoint_and_gather(self, evaluation: EvalResult | None) -> list[dict[str, Any]] | None:
        """Every rank saves its stage file, then rank 0 gathers the reports (this is also the barrier)."""
        name = checkpoint.checkpoint_name(self.global_step)
        checkpoint.save_stage(
            self.run_dir, name, self.rank, stage_checkpoint(self.stage, self.method.state_dict()["stages"][0])
        )
        reports = [None] * self.world if self.env.is_first else None
        dist.gather_object(self._report(evaluation), reports, dst=0)
        return reports

    def commit(self, reports: list[dict[str, Any]], merged: EpochStats, *, completed: bool) -> dict[str, Any]:
        assert self.state is not None
        self.state.extra["idle_fraction_per_stage"] = [round(r["timing"]["idle"], 4) for r in reports]
        self.state.extra["recv_wait_fraction_per_stage"] = [round(r["timing"]["recv_wait"], 4) for r in reports]
        self.state.extra["send_wait_fraction_per_stage"] = [round(r["timing"]["send_wait"], 4) for r in reports]
        checkpoint.commit(
            self.run_dir,
            checkpoint.checkpoint_name(self.global_step),
            self.state.meta(merged, {}),
            self.world,
            verify=False,
        )
        return self.state.write_summary(completed=completed)

    def fit(self) -> tuple[dict[str, Any] | None, bool]:
        """Train to the end or to a stop; return (summary on rank 0, stopped by a signal)."""
        cfg, first = self.cfg, self.env.is_first
        start = self.position
        budget = [cfg.max_steps if cfg.max_steps is not None else -1]
        stop = StopRequest("stopping the pipeline after this step and writing a checkpoint")
        summary = None
        with stop if first else IgnoreSignals(), epoch_bar(cfg, cfg.epochs, start.epoch) as bar:
            for epoch in range(start.epoch, cfg.epochs):
                resumed = epoch == start.epoch and start.step > 0
                first_step = start.step if resumed else 0
                if not resumed:
                    self.stats.reset([self.rank], self.device)
                self.position = Position(0, epoch, first_step)
                self.timing = Timing()
                epoch_start = time.perf_counter()
                if first:
                    stopped = self.train_epoch_first(epoch, first_step, stop, budget)
                else:
                    stopped = self.train_epoch_next(epoch, first_step)
                self.timing.elapsed = time.perf_counter() - epoch_start
                if stopped:
                    reports = self.checkpoint_and_gather(None)
                    if first:
                        assert reports is not None
                        summary = self.commit(reports, self._account(reports), completed=False)
                    return summary, stop.requested
                evaluation = self.evaluate()
                self.position = self.position.after_epoch(cfg.epochs)
                reports = self.checkpoint_and_gather(evaluation)
                decision: list[Any] = [None]
                if first:
                    assert reports is not None
                    finished = self.position.phase == 1
                    summary = self._epoch_end(reports, epoch, finished)
                    bar.update(1)
                    decision = [not finished and (budget[0] == 0 or stop.requested)]
                dist.broadcast_object_list(decision, src=0)
                if decision[0]:
                    return summary, stop.requested
        return summary, False

    def _merge(self, reports: list[dict[str, Any]]) -> EpochStats:
        parts = []
        for report in reports:
            part = EpochStats()
            part.load_state_dict(report["stats"], torch.device("cpu"))
            parts.append(part)
        return EpochStats.merge(parts)

    def _account(self, reports: list[dict[str, Any]]) -> EpochStats:
        """Rank 0: fold the ranks' reports into the run state; return the merged epoch stats."""
        assert self.state is not None
        self.state.train_time_s += max(r["elapsed"] for r in reports)
        self.state.position = self.position
        self.state.global_step = self.global_step
        return self._merge(reports)

    def _epoch_end(self, reports: list[dict[str, Any]], epoch: int, finished: bool) -> dict[str, Any]:
        assert self.state is not None
        merged = self._account(reports)
        self.state.write_epoch(
            phase=0,
            epoch=epoch,
            train=merged,
            lrs={r["rank"]: r["lr"] for r in reports},
            evaluation={r["rank"]: r["eval"] for r in reports},
        )
        return self.commit(reports, merged, completed=finished)


class IgnoreSignals:
    """Ranks after the first leave Ctrl-C/SIGTERM to rank 0, which stops the whole line in order."""

    def __enter__(self) -> IgnoreSignals:
        self._previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def log(env: DistEnv, message: str) -> None:
    print(f"degl: rank {env.rank} (stage {env.rank}): {message}", file=sys.stderr, flush=True)
