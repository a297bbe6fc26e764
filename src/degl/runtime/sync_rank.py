"""The synchronous DGL pipeline's rank loop: rank k trains stage k, one batch behind rank k-1.

Only activations and labels flow forward (``isend``/``irecv``); nothing flows backwards but control
(the epoch-end gather and the stop decision). Every rank sees the same (input, parameter-version)
sequence as the single-process loop of paper Alg. 1, so with one thread per process and
deterministic algorithms the weights end bit-identical to :class:`degl.DGL` in one process.

The loop is built from objects, so the CLI, ``degl bench pipeline`` and a user's script run the
same code: a :class:`~degl.core.step.StageStep`, a :class:`Link` to the neighbours, a
:class:`Plan` every rank agrees on, rank 0's batches, and an optional :class:`Recorder` that
writes checkpoints and metrics (the run directory, for the CLI).

Messages (:mod:`degl.runtime.plan`): a train message is the boundary codec's tensors and the
labels with a control code; a STOP (a step budget or Ctrl-C on rank 0) replaces one and travels
down the line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from degl.core.accounting import EpochStats, Position
from degl.core.codecs import build_codec
from degl.core.evaluate import EvalAccumulator, EvalResult, ensemble_weight
from degl.core.step import StageStep
from degl.runtime.control import ProgressBoard, progress_bar, progress_note, slowest_in_reports
from degl.runtime.hooks import RankHooks, wait_reporter
from degl.runtime.plan import DATA, STOP, BatchSource, ExtraWork, Link, Plan, Recorder, Timing, pack, unpack
from degl.runtime.stopping import StopPolicy
from degl.runtime.transport import TensorSpec


class SyncRank:
    """One rank of the synchronous pipeline.

    Args:
        step: this rank's stage step.
        link: connections to the neighbouring ranks.
        plan: batch sizes, epochs and wire format, the same on every rank.
        rank, world: this rank and the number of ranks (= stages).
        train_batches: rank 0's batches; ignored on the other ranks.
        test_batches: rank 0's test batches (sizes ``plan.eval_sizes``); evaluation runs after every
            epoch when the plan has eval sizes.
        recorder: saves checkpoints and metrics; ``None`` keeps the reports in :attr:`history`.
        slowdown: emulate a slower device: every step's work is done that many times on average
            (the repeats change nothing; see :meth:`StageStep.rehearse`).
        progress: rank 0's progress bar: True, False, or None (drawn when stderr is a terminal).
        board: the local ranks' shared progress figures, shown in rank 0's bar.
        hooks: observers of the loop (:mod:`degl.runtime.hooks`): ``--trace``'s timeline, the
            progress board, a benchmark's marks.
    """

    def __init__(
        self,
        step: StageStep,
        link: Link,
        plan: Plan,
        *,
        rank: int,
        world: int,
        train_batches: BatchSource | None = None,
        test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        recorder: Recorder | None = None,
        slowdown: float = 1.0,
        progress: bool | None = False,
        board: ProgressBoard | None = None,
        hooks: Sequence[RankHooks] = (),
    ) -> None:
        if rank == 0 and train_batches is None:
            raise ValueError("rank 0 needs train_batches")
        self.step_obj, self.link, self.plan = step, link, plan
        self.rank, self.world = rank, world
        self.train_batches, self.test_batches = train_batches, test_batches
        self.recorder = recorder
        self.slowdown = slowdown
        self.extra_work = ExtraWork(slowdown)
        self.progress = progress if rank == 0 else False
        self.device = step.device
        self.wire = plan.wire_dtype
        # The codecs of the boundaries before and after this rank: built as one process builds them,
        # so a rank encodes and decodes exactly what the single-process run simulates.
        self.codec_in = build_codec(plan.codec, seed=plan.codec_seed, boundary=rank - 1, wire=self.wire)
        self.codec_out = build_codec(plan.codec, seed=plan.codec_seed, boundary=rank, wire=self.wire)
        self.codec_s = 0.0  # seconds spent encoding and decoding
        self.stats = EpochStats()
        self.position = Position()
        self.global_step = 0
        self.timing = Timing()
        self._start = time.perf_counter()  # when the current epoch's training began
        self.history: list[dict[str, Any]] = []
        self.scored = True
        """Whether this rank's head is trained and scored (not for the inner stages of dni/ddg/fr)."""
        self.board = board
        self.hooks = tuple(hooks)
        for hook in self.hooks:
            hook.attach(self)
        if link.inbox is not None:
            self.watch(link.inbox, "recv wait")
        if link.outbox is not None:
            self.watch(link.outbox, "send wait")

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.step_obj.stage.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.step_obj.stage.out_shape)

    # ------------------------------------------------------------------ hooks
    def watch(self, transport: Any, name: str) -> None:
        """Tell the hooks of ``transport``'s blocking waits (nothing is installed without hooks)."""
        if self.hooks:
            transport.on_wait = wait_reporter(self.hooks, self, name)

    def _stepped(self, start: float, compute_before: float, *, trained: bool) -> None:
        if self.hooks:
            end = start + self.timing.compute - compute_before
            for hook in self.hooks:
                hook.on_step(self, start, end, trained=trained)

    def _phase(self, name: str, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)``, told to the hooks as phase ``name`` (``eval``, ``epoch end``)."""
        tick = time.perf_counter()
        try:
            return work(*args)
        finally:
            for hook in self.hooks:
                hook.on_phase(self, name, tick, time.perf_counter())

    def _took_data(self, start: float) -> None:
        end = time.perf_counter()
        self.timing.data += end - start
        for hook in self.hooks:
            hook.on_data(self, start, end)

    # ------------------------------------------------------------------ specs
    def train_spec(self, step: int) -> list[TensorSpec]:
        n = self.plan.train_sizes[step]
        return [*self.codec_in.specs(n, self.in_shape, train=True), ((n + 3,), torch.int64)]

    def eval_spec(self, i: int) -> list[TensorSpec]:
        n = self.plan.eval_sizes[i]
        return [
            *self.codec_in.specs(n, self.in_shape, train=False),
            ((n + 3,), torch.int64),
            ((n, self.plan.num_classes), torch.float32),
        ]

    def _encode(self, out: torch.Tensor, *, train: bool) -> list[torch.Tensor]:
        tick = time.perf_counter()
        parts = self.codec_out.encode(out, train=train)
        self._codec_time(time.perf_counter() - tick, train)
        return parts

    def _decode(self, parts: list[torch.Tensor], *, train: bool) -> torch.Tensor:
        tick = time.perf_counter()
        x = self.codec_in.decode(parts, train=train)
        self._codec_time(time.perf_counter() - tick, train)
        return x

    def _codec_time(self, seconds: float, train: bool) -> None:
        self.codec_s += seconds
        if train:  # encoding is this rank's work, not waiting: it counts as busy in the idle fractions
            self.timing.compute += seconds

    # ------------------------------------------------------------------ resume
    def restore(self, stage_state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Continue from a checkpoint: this stage's file and the run's metadata."""
        self.step_obj.load_checkpoint(stage_state)
        saved = meta["epoch_stats"]
        if self.rank in saved["stages"]:
            row = saved["stages"].index(self.rank)
            self.stats.load_state_dict(
                {
                    "stages": [self.rank],
                    "loss_sum": saved["loss_sum"][row : row + 1],
                    "correct": saved["correct"][row : row + 1],
                    "count": saved["count"],
                },
                self.device,
            )
        else:  # a rank with no scored head (dni, ddg, fr) has no row
            self.stats.reset([], self.device)
        self.position = Position(**meta["position"])
        self.global_step = int(meta["global_step"])

    # ------------------------------------------------------------------ training
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step of this rank's stage (the loop's only way to train), told to the hooks."""
        before, tick = self.timing.compute, time.perf_counter()
        out = self._train(x, y)
        self._stepped(tick, before, trained=True)
        return out

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tick = time.perf_counter()
        out, result = self.step_obj.step(x, y)
        for _ in range(self.extra_work.repeats()):
            self.step_obj.rehearse(x, y)
        self._sync()
        self.timing.compute += time.perf_counter() - tick
        self.stats.add([result])
        return out

    def _send_control(self, control: int, n: int) -> None:
        """A control message in place of a train message of ``n`` samples (the size the next rank expects)."""
        if self.link.outbox is not None:
            specs = self.codec_out.specs(n, self.out_shape, train=True)
            zeros = [torch.zeros(shape, dtype=dtype, device=self.device) for shape, dtype in specs]
            labels = torch.zeros(n, dtype=torch.int64, device=self.device)
            self.link.outbox.send([*zeros, pack(labels, control, 0, 0)])
            self.link.outbox.flush()

    def _after_step(self, step: int) -> None:
        self.global_step += 1
        self.position.step = step + 1
        self.timing.mark(self.link.waits())

    def train_epoch_first(self, epoch: int, first_step: int, policy: StopPolicy) -> bool:
        """Rank 0: read batches, train, send. Returns True when it decided to stop mid-epoch."""
        assert self.train_batches is not None
        n = self.plan.steps_per_epoch
        batches = self.train_batches.epoch(epoch, first_step)
        outbox = self.link.outbox
        with progress_bar(n, first_step, f"epoch {epoch + 1}", enabled=self.progress, leave=False) as bar:
            for step in range(first_step, n):
                tick = time.perf_counter()
                x, y = next(batches)
                self._took_data(tick)
                out = self.train_step(x, y)
                if outbox is not None:
                    outbox.send([*self._encode(out, train=True), pack(y, DATA, epoch, step)])
                self._after_step(step)
                policy.stepped()
                bar.update(1)
                if step % 10 == 0:
                    rate = (step + 1 - first_step) * self.plan.train_sizes[0] / (time.perf_counter() - self._start)
                    bar.set_postfix_str(progress_note(rate, self.board, lockstep=True), refresh=False)
                if policy.due and step + 1 < n:
                    self._send_control(STOP, self.plan.train_sizes[step + 1])
                    return True
        return False

    def train_epoch_next(self, epoch: int, first_step: int) -> bool:
        """Ranks 1..K-1: receive, train, pass on. Returns True when a STOP arrived."""
        inbox, outbox = self.link.inbox, self.link.outbox
        assert inbox is not None
        n = self.plan.steps_per_epoch
        if not inbox.pending:
            inbox.post(self.train_spec(first_step))
        for step in range(first_step, n):
            *parts, meta = inbox.wait()
            y, control, sent_epoch, sent_step = unpack(meta)
            if control == STOP:
                self._send_control(STOP, self.plan.train_sizes[step])
                return True
            assert (sent_epoch, sent_step) == (epoch, step), f"pipeline out of step: got {(sent_epoch, sent_step)}"
            x = self._decode(parts, train=True)
            # Post the next receive before computing, so the transfer overlaps with this step.
            if step + 1 < n:
                inbox.post(self.train_spec(step + 1))
            elif self.plan.eval_sizes:
                inbox.post(self.eval_spec(0))
            elif epoch + 1 < self.plan.epochs:
                inbox.post(self.train_spec(0))
            out = self.train_step(x, y)
            if outbox is not None:
                outbox.send([*self._encode(out, train=True), meta])
            self._after_step(step)
        return False

    @torch.no_grad()
    def evaluate(self) -> EvalResult | None:
        """Forward-only pass of the test set through the pipeline; each rank scores its own head."""
        sizes = self.plan.eval_sizes
        if not sizes:
            return None
        inbox, outbox = self.link.inbox, self.link.outbox
        stage = self.step_obj.stage
        stage.eval()
        acc = EvalAccumulator([self.rank])
        weight = ensemble_weight(self.rank)
        if inbox is None:
            assert self.test_batches is not None, "rank 0 needs test_batches when the plan has eval sizes"
            batches = iter(self.test_batches)
        elif not inbox.pending:
            inbox.post(self.eval_spec(0))
        for i in range(len(sizes)):
            if inbox is None:
                x, y = next(batches)
                meta, ensemble = pack(y, DATA, -1, i), None
            else:
                *parts, meta, ensemble = inbox.wait()
                x = self._decode(parts, train=False)
                if i + 1 < len(sizes):
                    inbox.post(self.eval_spec(i + 1))
                y = meta[:-3]
            h = self.step_obj.features(x)
            acc.count += y.numel()
            if self.scored:
                logits = self.step_obj.logits(h)
                weighted = logits.softmax(dim=1) * weight
                ensemble = weighted if ensemble is None else ensemble + weighted
                acc.add(0, logits, y, ensemble)
            elif ensemble is None:  # an untrained head adds nothing to the ensemble
                ensemble = torch.zeros(y.numel(), self.plan.num_classes, device=self.device)
            if outbox is not None:
                outbox.send([*self._encode(h, train=False), meta, ensemble])
        if outbox is not None:
            outbox.flush()
        stage.train()
        return acc.result()

    # ------------------------------------------------------------------ epoch end / stop
    def report(self, evaluation: EvalResult | None) -> dict[str, Any]:
        """This rank's account of the epoch, gathered by rank 0."""
        for hook in self.hooks:
            hook.on_window(self)
        return {
            "rank": self.rank,
            "stats": {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.stats.state_dict().items()},
            "eval": None if evaluation is None or not self.scored else evaluation.by_stage()[self.rank],
            "lr": self.step_obj.lr,
            "timing": self.timing.idle_fraction(*(self.timing.waits or self.link.waits())),
            "elapsed": self.timing.elapsed,
            "steps": self.global_step,
        }

    def save_and_gather(self, evaluation: EvalResult | None) -> list[dict[str, Any]] | None:
        """Every rank saves its stage, then rank 0 gathers the reports (this is also the barrier)."""
        if self.recorder is not None:
            self.recorder.save(self.rank, self.global_step, self.step_obj)
        reports = [None] * self.world if self.rank == 0 else None
        dist.gather_object(self.report(evaluation), reports, dst=0)
        return reports

    def fit(self, policy: StopPolicy | None = None) -> bool:
        """Train from :attr:`position` to the end or to a stop; return True when stopped early.

        ``policy``: when rank 0 stops the line early (its step budget, a
        :class:`~degl.runtime.stopping.StopRequest` the caller has entered); None: never.
        """
        first = self.rank == 0
        policy = policy if policy is not None else StopPolicy()
        start = self.position
        epochs = self.plan.epochs
        with progress_bar(epochs, start.epoch, "dgl pipeline epochs", enabled=self.progress, unit="ep") as bar:
            for epoch in range(start.epoch, epochs):
                first_step = start.resumed_step(0, epoch)
                if first_step == 0:
                    self.stats.reset([self.rank] if self.scored else [], self.device)
                self.position = Position(0, epoch, first_step)
                self.timing = Timing()
                self._start = time.perf_counter()
                waits_before = self.link.waits()
                stopped = (
                    self.train_epoch_first(epoch, first_step, policy)
                    if first
                    else self.train_epoch_next(epoch, first_step)
                )
                self.timing.elapsed = time.perf_counter() - self._start
                self.timing.waits = (
                    self.link.waits()[0] - waits_before[0],
                    self.link.waits()[1] - waits_before[1],
                )
                if stopped:
                    reports = self._phase("epoch end", self.save_and_gather, None)
                    if first and self.recorder is not None:
                        self.recorder.stopped(reports, position=self.position)  # type: ignore[arg-type]
                    return True
                evaluation = self._phase("eval", self.evaluate)
                self.position = self.position.after_epoch(epochs)
                reports = self._phase("epoch end", self.save_and_gather, evaluation)
                decision: list[Any] = [None]
                if first:
                    assert reports is not None
                    finished = self.position.phase == 1
                    self.history.append({"epoch": epoch + 1, "reports": reports})
                    if self.recorder is not None:
                        self.recorder.epoch_end(reports, epoch=epoch, position=self.position, finished=finished)
                    bar.set_postfix_str(slowest_in_reports(reports), refresh=False)
                    bar.update(1)
                    decision = [not finished and policy.due]
                dist.broadcast_object_list(decision, src=0)
                if decision[0]:
                    return True
        return False
