"""Replay buffer: the paper's worked examples, its contracts, and invariants against a reference model.

Every batch carries its id (the number of the put that wrote it) in every element of x and y, so a
test can tell which batch came back and that its inputs and labels belong together.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from degl.core.replay_buffer import ReplayBuffer
from degl.errors import UserError

ANY_ACCELERATOR = hasattr(torch, "accelerator") and torch.accelerator.is_available()


def batch(ident: int, n: int = 2, width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(n, dtype=torch.float32).unsqueeze(1) / 100
    return torch.full((n, width), float(ident)) + rows, torch.full((n,), ident, dtype=torch.int64)


def got_id(buf: ReplayBuffer) -> int | None:
    out = buf.get()
    return None if out is None else int(out[1][0])


def filled(capacity: int, ids: list[int], **kwargs) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, **kwargs)
    for i in ids:
        buf.put(*batch(i))
    return buf


def roundtrip(state: dict) -> dict:
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)


# ---- worked examples of paper-spec §1.5 --------------------------------------------------------


def test_full_buffer_first_get_is_oldest_in_paper_mode_and_newest_in_correct_mode():
    assert got_id(filled(3, [1, 2, 3], compat="paper")) == 1
    assert got_id(filled(3, [1, 2, 3])) == 3


def test_paper_max_reuse_two_allows_one_read_per_batch():
    buf = filled(3, [1, 2, 3], compat="paper", max_reuse=2)
    assert [got_id(buf) for _ in range(5)] == [1, 3, 2, None, None]
    assert buf.use_counts == [1, 1, 1]
    assert buf.counters["misses"] == 2


def test_correct_max_reuse_two_allows_two_reads_freshest_first():
    buf = filled(3, [1, 2, 3], max_reuse=2)
    assert [got_id(buf) for _ in range(7)] == [3, 2, 1, 3, 2, 1, None]


def test_paper_prefers_freshest_while_not_full_and_oldest_once_full():
    assert got_id(filled(3, [1, 2], compat="paper")) == 2
    assert got_id(filled(3, [1, 2, 3, 4], compat="paper")) == 2  # slots [4, 2, 3], pointer on 2


def test_paper_capacity_one_returns_slot_zero_forever():
    buf = ReplayBuffer(1, compat="paper", max_reuse=1)
    assert buf.get() is None
    buf.put(*batch(7))
    assert [got_id(buf) for _ in range(4)] == [7, 7, 7, 7]  # ignores max_reuse, count never moves
    buf.put(*batch(8))
    assert got_id(buf) == 8


def test_correct_capacity_one_honours_max_reuse():
    buf = filled(1, [7], max_reuse=1)
    assert [got_id(buf), got_id(buf)] == [7, None]
    buf.put(*batch(8))
    assert got_id(buf) == 8


def test_fifo_with_max_reuse_one_is_a_queue_and_keeps_the_newest_when_full():
    buf = filled(3, [1, 2, 3, 4], policy="fifo", max_reuse=1)
    assert [got_id(buf) for _ in range(4)] == [2, 3, 4, None]


def test_uniform_is_reproducible_with_a_generator_and_reaches_every_batch():
    def draws(seed: int) -> list[int | None]:
        buf = filled(4, [1, 2, 3, 4], policy="uniform", generator=torch.Generator().manual_seed(seed))
        return [got_id(buf) for _ in range(40)]

    assert draws(0) == draws(0)
    assert set(draws(0)) == {1, 2, 3, 4}
    assert draws(0) != draws(1)


# ---- contracts ---------------------------------------------------------------------------------


def test_nbytes_is_the_preallocated_storage():
    buf = ReplayBuffer(6)
    assert buf.nbytes == 0
    buf.put(torch.zeros(4, 3, 5), torch.zeros(4, dtype=torch.int64))
    expected = 6 * 4 * 3 * 5 * 4 + 6 * 4 * 8
    assert buf.nbytes == expected
    for _ in range(8):
        buf.put(torch.zeros(2, 3, 5), torch.zeros(2, dtype=torch.int64))
    assert buf.nbytes == expected


def test_smaller_batch_is_kept_with_its_own_length():
    buf = filled(2, [1])
    buf.put(*batch(2, n=1))
    x, y, info = buf.get()
    assert x.shape == (1, 3) and y.tolist() == [2] and info.index == 1


@pytest.mark.parametrize(
    "x, y",
    [
        (torch.zeros(3, 3), torch.zeros(3, dtype=torch.int64)),  # more samples than the storage
        (torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)),  # another per-sample shape
        (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)),  # dtype
        (torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.int64)),  # label shape
        (torch.zeros(2, 3), torch.zeros(1, dtype=torch.int64)),  # label count
    ],
)
def test_batch_that_does_not_fit_is_refused_loudly_not_dropped(x, y):
    buf = filled(2, [1])
    with pytest.raises(UserError, match="replay buffer"):
        buf.put(x, y)
    assert len(buf) == 1 and buf.counters["puts"] == 1 and got_id(buf) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": -1},
        {"capacity": 1.5},
        {"capacity": True},
        {"capacity": 2, "policy": "lifo"},
        {"capacity": 2, "storage": "disk"},
        {"capacity": 2, "compat": "official"},
        {"capacity": 2, "compat": "paper", "policy": "fifo"},
        {"capacity": 2, "max_reuse": 0},
        {"capacity": 2, "max_reuse": 1.0},
    ],
)
def test_bad_arguments_raise_user_error(kwargs):
    capacity = kwargs.pop("capacity")
    with pytest.raises(UserError):
        ReplayBuffer(capacity, **kwargs)


def test_put_copies_and_get_returns_views_unless_copy_requested():
    x, y = batch(1)
    buf = ReplayBuffer(1)
    buf.put(x, y)
    x.fill_(-1)
    view, _, _ = buf.get()
    kept, _, _ = buf.get(copy=True)
    assert view.eq(batch(1)[0]).all() and kept.eq(batch(1)[0]).all()
    buf.put(*batch(2))
    assert view.eq(batch(2)[0]).all(), "get() hands out a view of the slot"
    assert kept.eq(batch(1)[0]).all(), "get(copy=True) is independent of the slot"


def test_overwriting_a_batch_still_needed_for_backward_raises_instead_of_corrupting():
    buf = filled(1, [1])
    x, _, _ = buf.get()
    weight = torch.ones(3, requires_grad=True)
    loss = (x * weight).sum()  # saves x for the weight's gradient
    buf.put(*batch(2))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_inputs_that_require_grad_are_stored_detached():
    x, y = batch(1)
    buf = ReplayBuffer(2)
    buf.put(x.requires_grad_(), y)
    assert not buf.get()[0].requires_grad


def test_step_metadata_and_counters():
    buf = ReplayBuffer(2)
    buf.put(*batch(0), step=10)
    buf.put(*batch(1))
    _, _, info = buf.get()
    assert (info.index, info.step, info.uses) == (1, None, 1)
    buf.put(*batch(2), step=12)  # evicts batch 0, never read
    buf.put(*batch(3), step=13)  # evicts batch 1, read once
    _, _, info = buf.get()
    assert (info.index, info.step) == (3, 13)
    assert buf.counters == {"puts": 4, "gets": 2, "misses": 0, "overwrites": 2, "evicted_unused": 1}
    with pytest.raises(UserError):
        buf.put(*batch(4), step=-1)


def test_state_dict_loads_with_weights_only_and_checks_settings():
    empty = ReplayBuffer(3)
    empty.load_state_dict(roundtrip(ReplayBuffer(3).state_dict()))
    assert len(empty) == 0 and empty.get() is None
    state = roundtrip(filled(3, [1, 2], compat="paper").state_dict())
    with pytest.raises(UserError, match="capacity"):
        ReplayBuffer(4, compat="paper").load_state_dict(state)
    with pytest.raises(UserError, match="compat"):
        ReplayBuffer(3).load_state_dict(state)
    twin = ReplayBuffer(3, compat="paper")
    twin.load_state_dict(state)
    assert twin.nbytes == filled(3, [1]).nbytes and got_id(twin) == 2


@pytest.mark.skipif(ANY_ACCELERATOR, reason="the fallback only happens without an accelerator")
def test_pinned_without_accelerator_falls_back_to_host_memory_with_a_warning():
    with pytest.warns(UserWarning, match="pinned"):
        buf = ReplayBuffer(2, storage="pinned")
    assert not buf.pinned
    buf.put(*batch(5))
    assert got_id(buf) == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("storage", ["device", "pinned"])
def test_cuda_storage_returns_batches_on_the_device(storage):
    buf = ReplayBuffer(2, storage=storage, device="cuda")
    for i in range(5):
        x, y = batch(i)
        buf.put(x.cuda(), y.cuda(), step=i)
        x2, y2, _ = buf.get()
        assert x2.is_cuda and torch.equal(x2.cpu(), x) and torch.equal(y2.cpu(), y)
    assert buf.pinned == (storage == "pinned") and (buf._x.is_pinned() if buf.pinned else buf._x.is_cuda)


# ---- invariants against a reference model ------------------------------------------------------


class Model:
    """What the buffer should do, written as plainly as possible: a list of batches, oldest first."""

    def __init__(self, capacity: int, policy: str, max_reuse: int | None, paper: bool) -> None:
        self.capacity, self.policy, self.max_reuse, self.paper = capacity, policy, max_reuse, paper
        self.items: list[dict] = []  # {"id", "reads", "count"}
        self.overwrites = self.evicted_unused = 0

    def put(self, ident: int) -> None:
        self.items.append({"id": ident, "reads": 0, "count": int(self.paper)})
        if len(self.items) > self.capacity:
            self.overwrites += 1
            self.evicted_unused += self.items.pop(0)["reads"] == 0

    def eligible(self) -> list[dict]:
        if self.paper and self.capacity == 1:
            return self.items
        return [b for b in self.items if self.max_reuse is None or b["count"] < self.max_reuse]

    def expected(self) -> list[int]:
        """Ids the policy may return now (one, except for uniform)."""
        candidates = self.eligible()
        if not candidates or self.policy == "uniform":
            return [b["id"] for b in candidates]
        if self.policy == "fifo":
            return [candidates[0]["id"]]
        low = min(b["count"] for b in candidates)
        ties = [b for b in candidates if b["count"] == low]
        if self.paper and len(self.items) == self.capacity and ties[0] is self.items[0]:
            return [ties[0]["id"]]  # the official off-by-one: when full the oldest wins ties
        return [ties[-1]["id"]]

    def took(self, ident: int) -> dict:
        item = next(b for b in self.items if b["id"] == ident)
        item["reads"] += 1
        item["count"] += not (self.paper and self.capacity == 1)
        return item


configs = st.one_of(
    st.tuples(st.just("priority_lifo"), st.just("paper")),
    st.tuples(st.sampled_from(["priority_lifo", "fifo", "uniform"]), st.just("correct")),
)
operations = st.lists(st.one_of(st.just(0), st.integers(1, 4)), max_size=40)  # 0 = get, n = put n


def size(op: int, ident: int, first_n: int) -> int:
    """The first batch sets the storage size; later ones may be smaller (an epoch's last batch)."""
    return first_n if ident == 0 else min(op, first_n)


def apply(buf: ReplayBuffer, ops: list[int], next_id: int, first_n: int) -> tuple[list, int]:
    """Run ops on the buffer; return what each get gave (id, info, x, y) and the next id."""
    trace = []
    for op in ops:
        if op:
            buf.put(*batch(next_id, n=size(op, next_id, first_n)), step=next_id * 10)
            next_id += 1
        else:
            out = buf.get()
            trace.append(None if out is None else (int(out[1][0]), out[2], out[0].clone(), out[1].clone()))
    return trace, next_id


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    capacity=st.integers(1, 5),
    config=configs,
    max_reuse=st.one_of(st.none(), st.integers(1, 4)),
    first_n=st.integers(1, 3),
    ops=operations,
    split=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_buffer_matches_reference_model(capacity, config, max_reuse, first_n, ops, split, seed):
    policy, compat = config
    kwargs = {"policy": policy, "max_reuse": max_reuse, "compat": compat}
    buf = ReplayBuffer(capacity, generator=torch.Generator().manual_seed(seed), **kwargs)
    model = Model(capacity, policy, max_reuse, compat == "paper")
    next_id, gets, misses, sizes = 0, 0, 0, {}
    for op in ops[:split]:
        if op:
            sizes[next_id] = size(op, next_id, first_n)
            buf.put(*batch(next_id, n=sizes[next_id]), step=next_id * 10)
            model.put(next_id)
            next_id += 1
        else:
            allowed = model.expected()
            out = buf.get()
            if not allowed:
                assert out is None, "nothing is eligible, so get() must return None"
                misses += 1
                continue
            assert out is not None, f"get() returned None while {allowed} were eligible"
            x, y, info = out
            ident = int(y[0])
            assert ident in allowed, f"policy {policy} ({compat}) returned {ident}, expected {allowed}"
            n = len(y)
            assert torch.equal(x, batch(ident, n=n)[0]) and torch.equal(y, batch(ident, n=n)[1])
            assert n == sizes[ident], "a batch comes back with the number of samples it was put with"
            item = model.took(ident)
            assert (info.index, info.step, info.uses) == (ident, ident * 10, item["reads"])
            if max_reuse is not None and not (compat == "paper" and capacity == 1):
                assert item["reads"] <= max_reuse - (compat == "paper"), "reuse budget exceeded"
            gets += 1
        assert len(buf) == len(model.items) <= capacity
        assert buf.use_counts == sorted_by_slot(model, buf)
    assert buf.counters == {
        "puts": next_id,
        "gets": gets,
        "misses": misses,
        "overwrites": model.overwrites,
        "evicted_unused": model.evicted_unused,
    }

    # A buffer restored from the state dict behaves exactly like the original from here on.
    twin = ReplayBuffer(capacity, generator=torch.Generator().manual_seed(seed + 1), **kwargs)
    twin.load_state_dict(roundtrip(buf.state_dict()))
    assert twin.counters == buf.counters and twin.use_counts == buf.use_counts and len(twin) == len(buf)
    rest = ops[split:]
    trace_a, _ = apply(buf, rest, next_id, first_n)
    trace_b, _ = apply(twin, rest, next_id, first_n)
    assert len(trace_a) == len(trace_b)
    for a, b in zip(trace_a, trace_b):
        assert (a is None) == (b is None)
        if a is not None:
            assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def sorted_by_slot(model: Model, buf: ReplayBuffer) -> list[int]:
    """The model's read counts in the buffer's slot order (slot of put k is k mod capacity)."""
    reads = [0] * len(model.items)
    for item in model.items:
        reads[item["id"] % buf.capacity] = item["reads"]
    return reads
