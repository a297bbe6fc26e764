"""Replay buffer between two stages of asynchronous DGL (paper-spec §1.5).

A stage that runs faster than its predecessor must not wait for it: it trains on batches its
predecessor has already produced, each one possibly several times. The buffer holds the last
``capacity`` (activation, label) batches and decides which one to hand out next.

Decisions (kept stable because trainers and tests rely on them):

- **Storage** is preallocated on the first ``put`` (shape and dtype from that batch) and written in
  place, circularly, so a long run never allocates on the hot path.
- **Batch shapes.** The official code silently drops a batch whose size differs from the first one,
  which loses the last, smaller batch of every epoch without a word. Here a batch with *fewer*
  samples but the same per-sample shape and dtype is stored in its slot (the slot records its
  length); anything else (more samples, another per-sample shape or dtype) raises
  :class:`~degl.errors.UserError`. Nothing is ever dropped silently.
- **get() returns views** into the storage for ``storage="device"`` (no copy on the hot path). A view
  stays valid until a later ``put`` overwrites its slot, i.e. the caller must finish with a batch
  (forward, backward, step) before the next ``put`` into the same buffer, which is what every
  trainer loop does. If a view is still saved for backward when its slot is overwritten, autograd's
  version check raises instead of silently using new data. Pass ``copy=True`` to keep a batch longer.
  With ``storage="pinned"`` get() returns fresh tensors on ``device`` (the host-to-device copy).
- **Pinned storage** lives in page-locked host memory, which needs an accelerator. Without one it
  falls back to plain host memory with a warning (like ``DataLoader(pin_memory=True)``): results
  are identical, only transfers are slower. ``pinned`` tells what was actually used.
- ``compat="paper"`` reproduces the official ``Buffer`` class: use counts start at 1 (so
  ``max_reuse=k`` allows k-1 reads), when the buffer is full the slot under the write pointer (the
  *oldest*) wins ties, and with capacity 1 slot 0 is returned every time, ignoring ``max_reuse``.
  Only ``priority_lifo`` exists there, so other policies are refused in paper mode.
- With a ``codec`` (``--buffer-codec``) a batch is encoded when it is put and only the codec's
  payload is stored (int8 values and scales, vq codes; the receiving side's codebook copy is
  counted in :attr:`nbytes`); get() decodes it into fresh tensors. The codec learns from every
  batch put, in put order, as a receiver of messages would.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from degl.core.codecs import Codec, buffer_codec
from degl.data.loader import mix_seed
from degl.errors import UserError

POLICIES = ("priority_lifo", "fifo", "uniform")
STORAGES = ("device", "pinned")
COMPATS = ("correct", "paper")
_COUNTERS = ("puts", "gets", "misses", "overwrites", "evicted_unused")


class SampleInfo(NamedTuple):
    """What a consumer needs for staleness and reuse accounting of one returned batch."""

    slot: int  # storage slot it was read from
    index: int  # 0-based number of the put that wrote it: a unique id of the batch
    step: int | None  # producer's step number given to put(), if any
    uses: int  # times this batch has been returned, this one included


class ReplayBuffer:
    """Bounded store of (activation, label) batches with a sampling policy and a reuse limit."""

    def __init__(
        self,
        capacity: int,
        *,
        policy: str = "priority_lifo",
        max_reuse: int | None = None,
        storage: str = "device",
        device: torch.device | str | None = None,
        compat: str = "correct",
        generator: torch.Generator | None = None,
        codec: Codec | None = None,
    ) -> None:
        """``device``: where storage lives ("device") or where get() delivers ("pinned"); default:
        the device of the first batch. ``generator`` drives ``uniform`` (default: torch's global RNG).
        ``codec``: store batches encoded (see the module docstring); None stores them as they are.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise UserError(f"replay buffer capacity must be an integer >= 1, got {capacity!r}")
        if policy not in POLICIES:
            raise UserError(f"unknown buffer policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if storage not in STORAGES:
            raise UserError(f"unknown buffer storage {storage!r}; choose one of {', '.join(STORAGES)}")
        if compat not in COMPATS:
            raise UserError(f"unknown buffer compat {compat!r}; choose one of {', '.join(COMPATS)}")
        if compat == "paper" and policy != "priority_lifo":
            raise UserError(f"compat='paper' exists only for policy priority_lifo, not {policy!r}")
        if max_reuse is not None and (isinstance(max_reuse, bool) or not isinstance(max_reuse, int)):
            raise UserError(f"max_reuse must be an integer >= 1 or None, got {max_reuse!r}")
        if max_reuse is not None and max_reuse < 1:
            raise UserError(f"max_reuse must be >= 1 (or None for unlimited), got {max_reuse}")
        self.capacity, self.policy, self.max_reuse, self.compat = capacity, policy, max_reuse, compat
        self.device = torch.device(device) if device is not None else None
        self.generator = generator
        self.pinned = storage == "pinned"
        if self.pinned and not (hasattr(torch, "accelerator") and torch.accelerator.is_available()):
            warnings.warn("replay buffer: pinned memory needs an accelerator; using plain host memory", stacklevel=2)
            self.pinned = False
        self.storage = storage
        self._paper = compat == "paper"
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self.codec = codec
        self._parts: list[torch.Tensor] | None = None  # with a codec: the payloads, one tensor per part
        self._x_form: torch.Tensor | None = None  # with a codec: a meta tensor shaped like _x, for checks
        self._ptr = 0  # next slot to write; when full, the oldest slot
        self._size = 0  # valid slots are always the prefix [0, size)
        self._next_index = 0
        self._len = [0] * capacity  # samples in each slot (a last batch may be smaller)
        self._reads = [0] * capacity  # true number of times each slot was returned
        self._count = [0] * capacity  # the policy's use count (paper mode: starts at 1)
        self._index = [0] * capacity
        self._step = [-1] * capacity
        self._events: list[Any] = [None] * capacity  # pending async reads of pinned slots
        self.puts = self.gets = self.misses = self.overwrites = self.evicted_unused = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of storage actually allocated (0 before the first put)."""
        stored = [self._x, self._y, *(self._parts or [])]
        state = self.codec.state_bytes() if self.codec is not None else 0
        return sum(t.numel() * t.element_size() for t in stored if t is not None) + state

    @property
    def use_counts(self) -> list[int]:
        """Times each stored batch has been returned, by slot."""
        return self._reads[: self._size]

    @property
    def counters(self) -> dict[str, int]:
        """puts, gets (batches returned), misses (get() gave None), overwrites, evicted_unused."""
        return {name: getattr(self, name) for name in _COUNTERS}

    def _allocate(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        where = torch.device("cpu") if self.storage == "pinned" else self.device
        assert where is not None
        self._y = torch.zeros((self.capacity, batch, *y.shape[1:]), dtype=y.dtype, device=where)
        if self.codec is not None:
            self._x_form = torch.empty((self.capacity, batch, *x.shape[1:]), dtype=x.dtype, device="meta")
            self._y = self._y.pin_memory() if self.pinned else self._y
            return
        self._x = torch.zeros((self.capacity, batch, *x.shape[1:]), dtype=x.dtype, device=where)
        if self.pinned:
            self._x, self._y = self._x.pin_memory(), self._y.pin_memory()

    def _allocate_parts(self, payload: list[torch.Tensor]) -> None:
        """Storage for the codec's payloads, shaped like the first batch's."""
        where = torch.device("cpu") if self.storage == "pinned" else self.device
        self._parts = [torch.zeros((self.capacity, *p.shape), dtype=p.dtype, device=where) for p in payload]
        if self.pinned:
            self._parts = [p.pin_memory() for p in self._parts]

    def _slot_parts(self, slot: int, n: int) -> list[torch.Tensor]:
        assert self._parts is not None and self.codec is not None
        batched = self.codec.payload_batched()
        return [p[slot, :n] if b else p[slot] for p, b in zip(self._parts, batched)]

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise UserError(
                f"replay buffer: need non-empty batches with as many labels as inputs, "
                f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        stored_x = self._x if self._x is not None else self._x_form
        if stored_x is None or self._y is None:
            return
        for name, new, old in (("x", x, stored_x), ("y", y, self._y)):
            if new.shape[1:] != old.shape[2:] or new.dtype != old.dtype or new.shape[0] > old.shape[1]:
                raise UserError(
                    f"replay buffer: batch {name} {tuple(new.shape)} {new.dtype} does not fit the "
                    f"storage made for {tuple(old.shape[1:])} {old.dtype}; all batches must have the "
                    f"first batch's per-sample shape and dtype and at most its size"
                )

    def put(self, x: torch.Tensor, y: torch.Tensor, step: int | None = None) -> None:
        """Copy one batch in, overwriting the oldest slot when full. ``step``: producer's step."""
        self._check(x, y)
        if step is not None and step < 0:
            raise UserError(f"replay buffer: step must be >= 0 or None, got {step}")
        if self.device is None:
            self.device = x.device
        if self._y is None:
            self._allocate(x, y, x.shape[0])
        assert self._y is not None
        slot, n = self._ptr, x.shape[0]
        if self._size == self.capacity:
            self.overwrites += 1
            self.evicted_unused += self._reads[slot] == 0
        if self._events[slot] is not None:  # an async copy may still read this pinned slot
            self._events[slot].synchronize()
            self._events[slot] = None
        with torch.no_grad():
            if self.codec is not None:
                payload = self.codec.receive(self.codec.encode(x, train=True), train=True)
                if self._parts is None:
                    self._allocate_parts(payload)
                for stored, part in zip(self._slot_parts(slot, n), payload):
                    stored.copy_(part)
            else:
                assert self._x is not None
                self._x[slot, :n].copy_(x)
            self._y[slot, :n].copy_(y)
        self._len[slot], self._reads[slot], self._count[slot] = n, 0, int(self._paper)
        self._index[slot], self._step[slot] = self._next_index, -1 if step is None else int(step)
        self._next_index += 1
        self._ptr = (slot + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)
        self.puts += 1

    def _choose(self) -> int | None:
        if self._paper and self.capacity == 1:  # official quirk: slot 0, count never moves
            return 0 if self._size else None
        limit = self.max_reuse
        eligible = [i for i in range(self._size) if limit is None or self._count[i] < limit]
        if not eligible:
            return None
        if self.policy == "uniform":
            pick = torch.randint(len(eligible), (1,), generator=self.generator)
            return eligible[int(pick)]
        if self.policy == "fifo":
            return min(eligible, key=self._index.__getitem__)
        low = min(self._count[i] for i in eligible)
        ties = [i for i in eligible if self._count[i] == low]
        if self._paper:  # recency as coded officially: `>` where `>=` was meant
            return max(ties, key=lambda i: i - self.capacity if i > self._ptr else i)
        return max(ties, key=self._index.__getitem__)

    def get(self, *, copy: bool = False) -> tuple[torch.Tensor, torch.Tensor, SampleInfo] | None:
        """Sample a batch by the policy, or None when nothing is stored or all is used up.

        Device storage returns views valid until their slot is overwritten (see module docstring);
        ``copy=True`` returns clones.
        """
        slot = self._choose()
        if slot is None:
            self.misses += 1
            return None
        assert self._y is not None and self.device is not None
        if not (self._paper and self.capacity == 1):
            self._count[slot] += 1
        self._reads[slot] += 1
        self.gets += 1
        n = self._len[slot]
        xs = self._slot_parts(slot, n) if self.codec is not None else [self._x[slot, :n]]  # type: ignore[index]
        y = self._y[slot, :n]
        if self.storage == "pinned" and self.device.type != "cpu":  # fresh tensors on the device
            async_copy = self.pinned and self.device.type == "cuda"
            xs = [t.to(self.device, non_blocking=async_copy) for t in xs]
            y = y.to(self.device, non_blocking=async_copy)
            if async_copy:  # put() waits for this before overwriting the slot
                self._events[slot] = torch.cuda.Event()
                self._events[slot].record()
        elif copy and self.codec is None:
            xs, y = [xs[0].clone()], y.clone()
        x = self.codec.decode_payload(xs) if self.codec is not None else xs[0]
        step = self._step[slot]
        return x, y, SampleInfo(slot, self._index[slot], None if step < 0 else step, self._reads[slot])

    def state_dict(self) -> dict[str, Any]:
        """Stored batches and bookkeeping as tensors and ints (loads with weights_only=True).

        Like ``nn.Module.state_dict`` the tensors are views of the live storage: save them before
        the next put.
        """
        for event in self._events:
            if event is not None:
                event.synchronize()
        n = self._size
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "paper": int(self._paper),
            "ptr": self._ptr,
            "size": n,
            "next_index": self._next_index,
            **self.counters,
        }
        for key, values in (("len", self._len), ("reads", self._reads), ("count", self._count)):
            state[key] = torch.tensor(values[:n], dtype=torch.int64)
        state["index"] = torch.tensor(self._index[:n], dtype=torch.int64)
        state["step"] = torch.tensor(self._step[:n], dtype=torch.int64)
        if self._x is not None and self._y is not None:
            state["x"], state["y"] = self._x[:n], self._y[:n]
        if self.codec is not None and self._parts is not None and self._x_form is not None:
            state["y"] = self._y[:n]  # type: ignore[index]
            state["x_parts"] = [p[:n] for p in self._parts]
            state["x_form"] = torch.tensor(list(self._x_form.shape[1:]), dtype=torch.int64)  # batch, *shape
            state["x_dtype"] = str(self._x_form.dtype).removeprefix("torch.")
            state["codec"] = self.codec.state_dict()
        if self.generator is not None:
            state["rng_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() saved into a buffer built with the same capacity and compat."""
        if state["capacity"] != self.capacity or bool(state["paper"]) != self._paper:
            raise UserError(
                f"replay buffer state is for capacity {state['capacity']} compat "
                f"{'paper' if state['paper'] else 'correct'}; this buffer has capacity "
                f"{self.capacity} compat {self.compat}: build it with the same settings"
            )
        n = int(state["size"])
        if ("x_parts" in state) != (self.codec is not None) and ("x" in state or "x_parts" in state):
            raise UserError(
                "replay buffer state was saved with a different --buffer-codec; resume with the run's own setting"
            )
        self._x = self._y = None
        self._parts = self._x_form = None
        if "x_parts" in state:
            assert self.codec is not None
            y, form = state["y"], state["x_form"].tolist()
            if self.device is None:
                self.device = y.device
            self._allocate(torch.empty((1, *form[1:]), dtype=getattr(torch, state["x_dtype"])), y[0], form[0])
            self._allocate_parts([part[0] for part in state["x_parts"]])
            assert self._parts is not None and self._y is not None
            for stored, saved in zip(self._parts, state["x_parts"]):
                stored[:n].copy_(saved)
            self._y[:n].copy_(y)
            self.codec.load_state_dict(state["codec"])
        if "x" in state:
            x, y = state["x"], state["y"]
            if self.device is None:
                self.device = x.device
            self._allocate(x[0], y[0], x.shape[1])  # saved as [size, batch, ...]
            assert self._x is not None and self._y is not None
            self._x[:n].copy_(x)
            self._y[:n].copy_(y)
        pad = [0] * (self.capacity - n)
        self._len = state["len"].tolist() + pad
        self._reads = state["reads"].tolist() + pad
        self._count = state["count"].tolist() + pad
        self._index = state["index"].tolist() + pad
        self._step = state["step"].tolist() + [-1] * (self.capacity - n)
        self._events = [None] * self.capacity
        self._ptr, self._size, self._next_index = int(state["ptr"]), n, int(state["next_index"])
        for name in _COUNTERS:
            setattr(self, name, int(state[name]))
        if self.generator is not None and "rng_state" in state:
            self.generator.set_state(state["rng_state"])


@dataclass(frozen=True)
class BufferOptions:
    """How the replay buffers of one run are built (``--buffer``, ``--buffer-policy`` ... of ``degl train``)."""

    capacity: int
    policy: str = "priority_lifo"
    max_reuse: int | None = None
    storage: str = "device"
    compat: str = "correct"
    codec: str = "none"
    """``--buffer-codec``: entries stored encoded with this codec spec."""


def replay_buffer_for(options: BufferOptions, boundary: int, *, seed: int, device: torch.device) -> ReplayBuffer:
    """The replay buffer after stage ``boundary`` (feeding stage ``boundary + 1``).

    Its sampling generator and its codec are seeded by the run's seed and the boundary index alone,
    so the one-process simulation and the rank that owns the boundary draw the same samples.
    """
    return ReplayBuffer(
        options.capacity,
        policy=options.policy,
        max_reuse=options.max_reuse,
        storage=options.storage,
        device=device,
        compat=options.compat,
        generator=torch.Generator().manual_seed(mix_seed(seed, 0xB0, boundary)),
        codec=buffer_codec(options.codec, seed, boundary),
    )
