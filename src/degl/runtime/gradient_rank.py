"""A pipeline rank of dni, cdni, ddg or fr: the synchronous pipeline plus gradients flowing back.

Activations, labels and evaluation travel forward exactly as in :class:`SyncRank`; in addition
rank k > 0 sends rank k-1 the gradient of its loss with respect to the input it received, one
message per training batch, in batch order:

    gradient:  [grad float32 (n, *shape of rank k's input), meta int64 (control, epoch, step)]

A background thread receives them (:class:`BackgroundInbox`), so a rank sending a gradient never
waits for its receiver to post a receive; backpressure (``--max-in-flight``), ``--fault-timeout``
and a dead neighbour's :class:`PeerError` work as for the forward messages. The stage step
(:mod:`degl.core.alternatives.steps`) decides when a gradient is due; the delays are chosen so that
in steady state it has already arrived. At the end of an epoch or at a stop every rank settles
what it still owes (waiting for the ranks above), and at the end of its run rank k sends DONE.
The order of operations on each rank is that of :class:`degl.core.alternatives.GradientMethod`,
so with one thread per process and deterministic algorithms the weights are bit-identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from degl.core.alternatives.steps import GradientStep
from degl.runtime.plan import DATA, DONE, Link, Plan
from degl.runtime.stopping import StopPolicy
from degl.runtime.sync_rank import SyncRank
from degl.runtime.transport import BackgroundInbox, Outbox, TensorSpec


@dataclass
class GradientLink(Link):
    """A rank's connections with gradients going back: from rank + 1 and to rank - 1."""

    grad_outbox: Outbox | None = None
    grad_inbox: BackgroundInbox | None = None
    link_mbps: float | None = None
    """Emulated link speed (both directions), as :meth:`Link.for_rank`'s ``link_mbps``."""
    staging: torch.device | None = None
    """Where a GPU rank on gloo stages its messages (:func:`degl.runtime.dist.staging_device`)."""

    @classmethod
    def for_gradients(cls, rank: int, world: int, device: torch.device, **options: Any) -> GradientLink:
        link = Link.for_rank(rank, world, device, **options)
        staging = options.get("staging")
        max_in_flight = options.get("max_in_flight", 2)
        link_mbps = options.get("link_mbps")
        grad_outbox = Outbox(rank - 1, max_in_flight, staging, link_mbps=link_mbps) if rank > 0 else None
        return cls(link.inbox, link.outbox, grad_outbox, link_mbps=link_mbps, staging=staging)

    def waits(self) -> tuple[float, float]:
        recv, send = super().waits()
        recv += self.grad_inbox.wait_s if self.grad_inbox is not None else 0.0
        send += self.grad_outbox.wait_s if self.grad_outbox is not None else 0.0
        return recv, send


class GradientRank(SyncRank):
    """One rank of the dni / cdni / ddg / fr pipeline.

    Args:
        step: this rank's :class:`~degl.core.alternatives.steps` step (built by
            :func:`degl.core.alternatives.make_gradient_step`).
        link: a :class:`GradientLink`.
        timeout_s: how long to wait for a gradient before calling rank + 1 dead.
        Everything else as :class:`SyncRank`.
    """

    def __init__(
        self, step: GradientStep, link: GradientLink, plan: Plan, *, timeout_s: float = 300.0, **options: Any
    ) -> None:
        super().__init__(step, link, plan, **options)
        self.link: GradientLink = link
        self.gstep = step
        self.timeout_s = timeout_s
        self.scored = self.rank == self.world - 1  # only the last stage has a loss of its own
        self.sent = 0  # gradients sent back in this invocation
        if link.grad_outbox is not None:
            self.watch(link.grad_outbox, "send wait")

    def grad_spec(self, index: int, shape: tuple[int, ...]) -> list[TensorSpec]:
        """The ``index``-th gradient message of this invocation (batches in order from the start)."""
        n = self.plan.train_sizes[(self._first_step + index) % self.plan.steps_per_epoch]
        return [((n, *shape), torch.float32), ((3,), torch.int64)]

    def _open_gradients(self) -> None:
        """Start receiving gradients from rank + 1 (once the starting position is known)."""
        self._first_step = self.position.step
        if self.rank == self.world - 1 or self.link.grad_inbox is not None:
            return
        self.link.grad_inbox = BackgroundInbox(
            self.rank + 1,
            self.device,
            lambda i: self.grad_spec(i, self.out_shape),
            lambda message: int(message[-1][0]) == DONE,
            capacity=self.link.outbox.max_in_flight + 2 * self.world + 2 if self.link.outbox else 4,
            timeout_s=self.timeout_s,
            staging=self.link.staging,
            link_mbps=self.link.link_mbps,
        )
        self.watch(self.link.grad_inbox, "recv wait")

    def _take_gradient(self) -> torch.Tensor:
        assert self.link.grad_inbox is not None
        grad, meta = self.link.grad_inbox.take(block=True)
        assert int(meta[0]) == DATA, "rank above ended while this rank still owed a gradient"
        return grad

    def _send_back(self, grad: torch.Tensor | None, control: int = DATA) -> None:
        outbox = self.link.grad_outbox
        if outbox is None:
            return
        if grad is None:  # a control message in place of the next gradient
            (shape, dtype), _ = self.grad_spec(self.sent, self.in_shape)
            grad = torch.zeros(shape, dtype=dtype, device=self.device)
        else:
            self.sent += 1
        meta = torch.tensor([control, self.position.epoch, self.position.step], dtype=torch.int64, device=self.device)
        outbox.send([grad.contiguous(), meta])

    def _settle_due(self) -> None:
        while self.gstep.needs_gradient():
            self._send_back_if(self.gstep.settle(self._take_gradient()))

    def _send_back_if(self, grad: torch.Tensor | None) -> None:
        if grad is not None:
            self._send_back(grad)

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tick, waited = time.perf_counter(), sum(self.link.waits())
        out, back, result = self.gstep.advance(x, y, input_grad=self.rank > 0)
        self._send_back_if(back)
        self._settle_due()
        for _ in range(self.extra_work.repeats()):
            self.step_obj.rehearse(x, y)
        self._sync()
        self.timing.compute += time.perf_counter() - tick - (sum(self.link.waits()) - waited)
        if result is not None:
            self.stats.add([result])
        return out

    def _finish_epoch(self) -> None:
        """Settle every gradient still owed (they come from the ranks above, which do the same)."""
        tick, waited = time.perf_counter(), sum(self.link.waits())
        while self.gstep.pending:
            self._send_back_if(self.gstep.settle(self._take_gradient()))
        if self.link.grad_outbox is not None:
            self.link.grad_outbox.flush()
        self._sync()
        self.timing.compute += time.perf_counter() - tick - (sum(self.link.waits()) - waited)

    def train_epoch_first(self, epoch: int, first_step: int, policy: StopPolicy) -> bool:
        stopped = super().train_epoch_first(epoch, first_step, policy)
        self._finish_epoch()
        return stopped

    def train_epoch_next(self, epoch: int, first_step: int) -> bool:
        stopped = super().train_epoch_next(epoch, first_step)
        self._finish_epoch()
        return stopped

    def fit(self, policy: StopPolicy | None = None) -> bool:
        self._open_gradients()
        stopped = super().fit(policy)
        self._send_back(None, DONE)
        if self.link.grad_outbox is not None:
            self.link.grad_outbox.flush()
        if self.link.grad_inbox is not None:
            self.link.grad_inbox.join()
        return stopped
