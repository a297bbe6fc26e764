"""Asynchronous DGL simulated in one process, following the paper's protocol (paper-spec §1.5).

A scheduler picks which stage acts next; stage 0 reads the next real batch, stage k > 0 samples its
predecessor's replay buffer, trains on it and puts its own output into its buffer. A stage with
``--slowdown k:F`` is picked with weight 1/F, so it does fewer updates per unit of "time", as a
slower device would. Each stage counts its own epochs (``len(loader)`` of its own steps); a stage
that has done ``--epochs`` epochs is frozen (eval mode, no gradients) but keeps producing outputs
for the stages after it; training ends when every stage is done. Test accuracy is measured each
time the slowest stage completes an epoch.

With ``--buffer 1``, no slowdown and ``--async-order round-robin`` the sequence of updates is
exactly that of ``--method dgl`` (tested). ``--buffer 0`` means synchronous: round-robin with one
slot, as in the paper's code (``--async-order`` is refused there).

Definitions shared with the real runtime (:mod:`degl.runtime.async_rank`): the staleness of an
update is how many newer outputs of the predecessor were already in its buffer when the stage
trained on a sample; ``--max-steps N`` stops after N updates of stage 0 in this invocation (once
stage 0 has done its budget, the run goes on to the end).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from degl.core.accounting import train_line
from degl.core.codecs import evaluate_coded
from degl.core.replay_buffer import replay_buffer_for
from degl.data.loader import mix_seed
from degl.run import checkpoint
from degl.run.config import check_slowdowns
from degl.run.control import Interrupted, StopPolicy, StopRequest, epoch_bar
from degl.run.runstate import EpochStats, Position, RunState
from degl.run.setup import RunSetup, buffer_options


class AsyncScheduler:
    """Which stage acts next: a warm-up pass that fills every buffer, then random or round-robin."""

    def __init__(self, num_stages: int, *, order: str, slowdowns: dict[int, float], paper: bool, seed: int) -> None:
        self.num_stages = num_stages
        self.random = order == "random"
        self.weights = torch.tensor([1.0 / slowdowns.get(k, 1.0) for k in range(num_stages)])
        # The paper's code picks 0,0,1,1,...; one pass suffices to fill each buffer and keeps the
        # round-robin case identical to synchronous DGL.
        self.warmup_order = [k for k in range(num_stages) for _ in range(2 if paper else 1)]
        self.warmup: deque[int] = deque(self.warmup_order)
        self.generator = torch.Generator().manual_seed(mix_seed(seed, 0xA5))
        self.last = -1

    def next(self) -> int:
        if self.warmup:
            stage = self.warmup.popleft()
        elif self.random:
            stage = int(torch.multinomial(self.weights, 1, generator=self.generator))
        else:
            stage = (self.last + 1) % self.num_stages
        self.last = stage
        return stage

    def restart_warmup(self) -> None:
        self.warmup = deque(self.warmup_order)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "warmup": list(self.warmup), "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.warmup = deque(state["warmup"])
        self.last = int(state["last"])


class AsyncSimTrainer:
    """Runs ``--method async-dgl`` in one process and writes the usual run directory."""

    def __init__(self, setup: RunSetup, run_dir: Path) -> None:
        cfg = setup.cfg
        self.setup, self.cfg, self.method = setup, cfg, setup.method
        self.num_stages = len(setup.stages)
        slowdowns = check_slowdowns(cfg.slowdown, self.num_stages)
        synchronous = cfg.buffer == 0
        self.scheduler = AsyncScheduler(
            self.num_stages,
            order="round-robin" if synchronous else cfg.async_order or "random",
            slowdowns=slowdowns,
            paper=cfg.buffer_compat == "paper",
            seed=cfg.seed,
        )
        options = buffer_options(cfg)
        self.buffers = [
            replay_buffer_for(options, k, seed=cfg.seed, device=setup.device) for k in range(self.num_stages - 1)
        ]
        self.steps = [0] * self.num_stages
        self.misses = [0] * self.num_stages
        self.consumed = [0] * self.num_stages  # distinct batches each stage trained on
        self.staleness_sum = [0.0] * self.num_stages
        self.stats = [EpochStats() for _ in range(self.num_stages)]
        for k, stats in enumerate(self.stats):
            stats.reset([k], setup.device)
        self.data_position = (0, 0)  # stage 0's (data epoch, step) of the next real batch
        self.global_epoch = 0
        self.state = RunState(cfg, run_dir, RunState.describe_stages(setup.stages), str(setup.device))
        self._batches = None

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        loader = self.setup.train_loader
        epoch, step = self.data_position
        if self._batches is None:
            self._batches = loader.epoch(epoch, step)
        try:
            batch = next(self._batches)
        except StopIteration:
            epoch, step = epoch + 1, 0
            self._batches = loader.epoch(epoch, 0)
            batch = next(self._batches)
        self.data_position = (epoch, step + 1)
        return batch

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        cfg, setup = self.cfg, self.setup
        per_epoch = len(setup.train_loader)
        budget = per_epoch * cfg.epochs
        with StopRequest() as request, epoch_bar(cfg, cfg.epochs, self.global_epoch) as bar:
            policy = StopPolicy(cfg.max_steps, request)  # counts stage 0's updates, as in the real runtime
            while min(self.steps) < budget:
                stage = self.scheduler.next()
                tick = time.perf_counter()
                if stage == 0:
                    x, y = self._next_batch()
                else:
                    sample = self.buffers[stage - 1].get()
                    if sample is None:  # every buffered batch used --max-reuse times: wait for new ones
                        self.misses[stage] += 1
                        continue
                    x, y, info = sample
                    if self.steps[stage] < budget:  # reuse and staleness of the batches trained on
                        self.consumed[stage] += info.uses == 1
                        self.staleness_sum[stage] += self.steps[stage - 1] - (info.step or 0)
                if self.steps[stage] < budget:
                    out = self._train(stage, x, y, per_epoch)
                    if stage == 0:
                        policy.stepped()
                else:
                    out = self._frozen_forward(stage, x)
                if stage < self.num_stages - 1:
                    # --codec: the next stage receives the decoded output, as over the wire
                    self.buffers[stage].put(self.method.pass_on(stage, out), y, step=self.steps[stage])
                self.state.train_time_s += time.perf_counter() - tick
                if min(self.steps) // per_epoch > self.global_epoch:
                    self.global_epoch += 1
                    bar.update(1)
                    self._end_of_global_epoch(budget)
                if policy.due and min(self.steps) < budget:
                    self.save_checkpoint(completed=False)
                    if policy.requested:
                        raise Interrupted(self.state.run_dir)
                    return self.state.summary(completed=False)
        return self.state.summary(completed=True)

    def _train(self, stage: int, x: torch.Tensor, y: torch.Tensor, per_epoch: int) -> torch.Tensor:
        if stage == 0:
            self.consumed[0] += 1
        lr_before = self.method.current_lrs()[stage]
        out, result = self.method.local_step(stage, x, y)
        if self.cfg.buffer_compat == "paper" and self.method.current_lrs()[stage] < lr_before:
            self.scheduler.restart_warmup()  # the official code restarts its warm-up after a decay
        self.stats[stage].add([result])
        self.steps[stage] += 1
        if stage == 0:
            self.state.global_step = self.steps[0]
        if self.steps[stage] % per_epoch == 0:
            epoch = self.steps[stage] // per_epoch
            losses, accs = self.stats[stage].means()
            self.state.metrics.write(
                train_line(
                    epoch=epoch,
                    stage=stage,
                    loss=losses[0],
                    acc=accs[0],
                    lr=self.method.current_lrs()[stage],
                    step=self.steps[stage],
                )
            )
            self.stats[stage].reset([stage], self.setup.device)
            if epoch == self.cfg.epochs:
                self.setup.stages[stage].eval()  # frozen from now on
        return out

    @torch.no_grad()
    def _frozen_forward(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        with self.method.precision.autocast():
            return self.setup.stages[stage].block(x)

    def _end_of_global_epoch(self, budget: int) -> None:
        by_stage = evaluate_coded(
            self.setup.stages, self.method.codecs, self.setup.test_loader, autocast=self.method.precision.autocast
        )
        done = min(self.steps) >= budget
        for stage, values in by_stage.items():
            self.state.last_eval[stage] = values
            self.state.metrics.write(
                {"epoch": self.global_epoch, "phase": 0, "stage": stage, "split": "test", **values}
            )
        accs = " ".join(f"s{s}={v['acc']:.2f}" for s, v in sorted(by_stage.items()))
        tqdm.write(
            f"[async-dgl] epoch {self.global_epoch}/{self.cfg.epochs} test acc {accs} (steps per stage {self.steps})",
            file=sys.stderr,
        )
        # Frozen stages stay in eval mode; evaluate() restored the modes it found.
        self.save_checkpoint(completed=done)

    # ------------------------------------------------------------------ state
    def _extra(self) -> dict[str, Any]:
        steps = [max(s, 1) for s in self.steps]
        return {
            "buffer": self.cfg.buffer,
            "steps_per_stage": list(self.steps),
            "misses_per_stage": list(self.misses),
            "reuse_per_stage": [round(s / max(c, 1), 4) for s, c in zip(self.steps, self.consumed)],
            "staleness_per_stage": [round(t / n, 4) for t, n in zip(self.staleness_sum, steps)],
            "buffer_bytes": sum(b.nbytes for b in self.buffers),
        }

    def save_checkpoint(self, *, completed: bool) -> None:
        budget = len(self.setup.train_loader) * self.cfg.epochs
        done = min(self.steps) >= budget
        self.state.position = Position(1, 0, 0) if done else Position(0, self.global_epoch, 0)
        self.state.extra.update(self._extra())
        files = self.method.stage_files()
        for k, state in enumerate(files):
            state["epoch_stats"] = self.stats[k].state_dict()
            if k < len(self.buffers):
                state["buffer"] = self.buffers[k].state_dict()
        shared = {
            "async": {
                "scheduler": self.scheduler.state_dict(),
                "steps": self.steps,
                "misses": self.misses,
                "consumed": self.consumed,
                "staleness_sum": self.staleness_sum,
                "data_position": list(self.data_position),
                "global_epoch": self.global_epoch,
            }
        }
        self.state.save_checkpoint(files, EpochStats(), shared, name=checkpoint.checkpoint_name(sum(self.steps)))
        self.state.write_summary(completed=completed)

    def restore(self, path: Path, meta: dict[str, Any]) -> None:
        device = self.setup.device
        states = [checkpoint.load_stage(path, k, device) for k in range(self.num_stages)]
        with checkpoint.restoring(path, "is not an async-dgl checkpoint of this run"):
            self.method.load_stage_files(states, {})
            saved = meta["method_shared"]["async"]
        for k, state in enumerate(states):
            self.stats[k].load_state_dict(state["epoch_stats"], device)
            if k < len(self.buffers):
                self.buffers[k].load_state_dict(state["buffer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.steps, self.misses = list(saved["steps"]), list(saved["misses"])
        self.consumed, self.staleness_sum = list(saved["consumed"]), list(saved["staleness_sum"])
        self.data_position = tuple(saved["data_position"])
        self.global_epoch = int(saved["global_epoch"])
        self.state.restore(meta)
        budget = len(self.setup.train_loader) * self.cfg.epochs
        for k, stage in enumerate(self.setup.stages):
            if self.steps[k] >= budget:
                stage.eval()
