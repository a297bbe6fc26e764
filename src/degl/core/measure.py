"""Exact measurements of one module's cost: FLOPs and bytes saved for backward."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def train_time(module: nn.Module, x: torch.Tensor, *, repeats: int = 3, loss: str = "mean") -> float:
    """Median seconds of one forward + backward of ``module`` on ``x`` (after one warm-up pass).

    ``loss="mean"`` back-propagates the output's mean (a block); ``"ce"`` a cross-entropy against
    class 0 (a head). Runs on a copy's parameters as they are: callers pass throw-away copies.
    """
    import statistics
    import time

    times = []
    for i in range(repeats + 1):
        for p in module.parameters():
            p.grad = None
        tick = time.perf_counter()
        out = module(x)
        if loss == "ce":
            target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
            value = torch.nn.functional.cross_entropy(out.float(), target)
        else:
            value = out.float().mean()
        value.backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if i > 0:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``x`` (matmul/conv FLOPs = 2 x MACs).

    Attention is counted through its unfused form: the eval-mode fast path of
    ``nn.MultiheadAttention`` and the flash kernel behind ``scaled_dot_product_attention`` on CPU
    are single ops the counter has no formula for, so a ViT's attention would count as free.
    """
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
            module(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return int(counter.get_total_flops())


class SavedActivationMeter:
    """Live and peak bytes of tensors that autograd saves for backward, parameters excluded.

    Each storage is counted once however many nodes save it, and is released when the last graph
    node holding it is freed, so ``peak_bytes`` is the exact high-water mark of activation memory.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[tuple[torch.device, int], list[int]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def __enter__(self) -> SavedActivationMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._excluded or ptr == 0:
            return tensor
        return _Saved(tensor, self, (tensor.device, ptr), storage.nbytes())

    @staticmethod
    def _unpack(packed: object) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Saved) else packed  # type: ignore[return-value]

    def _acquire(self, key: tuple[torch.device, int], nbytes: int) -> None:
        entry = self._refs.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[0] += 1

    def _release(self, key: tuple[torch.device, int]) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._refs[key]


class _Saved:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, meter: SavedActivationMeter, key, nbytes: int) -> None:
        self.tensor = tensor
        self.meter = meter
        self.key = key
        meter._acquire(key, nbytes)

    def __del__(self) -> None:
        self.meter._release(self.key)


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes saved for backward by one training-mode forward of ``module`` on ``x``."""
    with SavedActivationMeter(exclude=list(module.parameters())) as meter:
        out = module(x.detach().requires_grad_(False))
        del out
    return meter.peak_bytes
