"""Codecs for activations crossing a stage boundary (on the wire) or waiting in a replay buffer.

A codec turns a batch of activations into a short list of tensors that carry its bytes
(:meth:`Codec.encode`, on the sending side) and back (:meth:`Codec.decode`, on the receiving
side, called once per message, in message order). Messages have shapes known in advance
(:meth:`Codec.specs`), so a receiver posts its receive before the message exists.

Receiving is two steps so a replay buffer can store compressed entries: :meth:`Codec.receive`
applies what a message carries for the receiver's state (a codebook update) and returns the
*payload* (what must be kept to decode this batch later); :meth:`Codec.decode_payload` turns a
payload back into activations. ``decode = decode_payload(receive(parts))``.

Codecs (``--codec``/``--buffer-codec`` syntax, validated by :func:`parse_codec`; see docs/codecs.md):

``none``            the activations as they are (today's behaviour, bit for bit)
``bf16`` ``fp16``   a cast, 2 bytes per value
``int8[:sample][:sr]``  affine 8-bit: per channel over the batch (or ``:sample``: per sample and
                    channel) ``q = round((x - lo) / scale)`` in ``uint8``, ``scale = (hi - lo) / 255``;
                    ``:sr`` rounds stochastically (seeded) while training
``vq[:C[:D[:R]]]``  online vector quantization (:mod:`degl.core.codecs.vq`)

The "channel" of an activation is dim 1 of a 4-d ``(n, C, H, W)`` tensor and the last dim otherwise
(features ``(n, D)``, tokens ``(n, T, D)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from degl.core.codecs.base import Codec as Codec  # re-exported: the interface lives beside the codecs' users
from degl.core.codecs.base import TensorSpec, channel_dim, mix
from degl.core.codecs.base import nbytes as nbytes
from degl.errors import UserError

CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CODEC_HELP = "none, bf16, fp16, int8[:sample][:sr] or vq[:CODES[:DIM[:ROWS]]] (see docs/codecs.md)"


class CastCodec(Codec):
    """bf16/fp16 on the wire; decodes to float32."""

    def __init__(self, name: str) -> None:
        super().__init__(CAST_DTYPES[name])
        self.name = name

    def decode_payload(self, payload: Sequence[torch.Tensor]) -> torch.Tensor:
        return payload[0].float()


class Int8Codec(Codec):
    """Affine uint8 quantization per channel (over the batch, or per sample), nearest or stochastic rounding."""

    def __init__(self, *, per_sample: bool = False, stochastic: bool = False, seed: int = 0) -> None:
        super().__init__(torch.uint8)
        self.per_sample, self.stochastic, self.seed = per_sample, stochastic, seed
        self.stateful = stochastic
        self.name = "int8" + (":sample" if per_sample else "") + (":sr" if stochastic else "")
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def _side_shape(self, n: int, shape: Sequence[int]) -> tuple[int, ...]:
        channels = shape[channel_dim(len(shape) + 1) - 1]
        return (n, channels) if self.per_sample else (channels,)

    def specs(self, n: int, shape: Sequence[int], *, train: bool) -> list[TensorSpec]:
        side = self._side_shape(n, shape)
        return [((n, *shape), torch.uint8), (side, torch.float32), (side, torch.float32)]

    def payload_batched(self, *, train: bool = True) -> tuple[bool, ...]:
        return (True, self.per_sample, self.per_sample)

    def _broadcast(self, side: torch.Tensor, ndim: int) -> torch.Tensor:
        """(C,) or (n, C) side values shaped to broadcast against an activation of ``ndim`` dims."""
        cdim = channel_dim(ndim)
        shape = [1] * ndim
        shape[cdim] = side.shape[-1]
        if self.per_sample:
            shape[0] = side.shape[0]
        return side.reshape(shape)

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def encode(self, x: torch.Tensor, *, train: bool) -> list[torch.Tensor]:
        x = x.detach().float()
        cdim = channel_dim(x.dim())
        reduce = [d for d in range(x.dim()) if d != cdim and not (self.per_sample and d == 0)]
        lo, hi = x.amin(dim=reduce), x.amax(dim=reduce)
        scale = (hi - lo) / 255
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant channel: q = 0, exact
        t = (x - self._broadcast(lo, x.dim())) / self._broadcast(scale, x.dim())
        if train and self.stochastic:
            noise = torch.rand(t.shape, generator=self.generator(x.device), device=x.device)
            t = torch.floor(t + noise)
        else:
            t = torch.round(t)
        q = t.clamp_(0, 255).to(torch.uint8)
        return [q, scale, lo]

    def decode_payload(self, payload: Sequence[torch.Tensor]) -> torch.Tensor:
        q, scale, lo = payload
        return q.float() * self._broadcast(scale, q.dim()) + self._broadcast(lo, q.dim())

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()} if self._generator is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._generator = None
            self._pending_state = state["generator"]


@dataclass(frozen=True)
class CodecSpec:
    """A parsed ``--codec`` value."""

    kind: str  # none, bf16, fp16, int8, vq
    per_sample: bool = False
    stochastic: bool = False
    codes: int = 256
    dim: int = 8
    rows: int | None = None

    @property
    def stateful(self) -> bool:
        return self.kind == "vq" or (self.kind == "int8" and self.stochastic)


def parse_codec(text: str, *, flag: str = "--codec") -> CodecSpec:
    """Parse ``none | bf16 | fp16 | int8[:sample][:sr] | vq[:C[:D[:R]]]``; :class:`UserError` otherwise."""
    text = str(text).strip().lower()
    kind, *options = text.split(":")
    bad = f"{flag} {text!r}: expected {CODEC_HELP}"
    if kind in ("none", "bf16", "fp16"):
        if options:
            raise UserError(f"{flag} {text!r}: {kind} takes no options; expected {CODEC_HELP}")
        return CodecSpec(kind)
    if kind == "int8":
        if any(o not in ("sample", "sr") for o in options) or len(set(options)) != len(options):
            raise UserError(f"{flag} {text!r}: int8 options are 'sample' and 'sr', e.g. int8:sample:sr")
        return CodecSpec("int8", per_sample="sample" in options, stochastic="sr" in options)
    if kind == "vq":
        if len(options) > 3:
            raise UserError(bad)
        try:
            values = [int(o) for o in options]
        except ValueError:
            raise UserError(f"{flag} {text!r}: vq takes integers vq:CODES:DIM:ROWS, e.g. vq:256:8") from None
        codes = values[0] if len(values) > 0 else 256
        dim = values[1] if len(values) > 1 else 8
        rows = values[2] if len(values) > 2 else None
        if not 2 <= codes <= 32768:
            raise UserError(f"{flag} {text!r}: the codebook size must be in 2..32768, got {codes}")
        if dim < 1:
            raise UserError(f"{flag} {text!r}: the sub-vector length must be at least 1, got {dim}")
        if rows is not None and not 1 <= rows <= codes:
            raise UserError(f"{flag} {text!r}: rows refreshed per message must be in 1..{codes}, got {rows}")
        return CodecSpec("vq", codes=codes, dim=dim, rows=rows)
    raise UserError(bad)


def build_codec(
    spec: str | CodecSpec, *, seed: int = 0, boundary: int = 0, wire: torch.dtype | None = None, tag: int = 0
) -> Codec:
    """A fresh codec for one boundary (or one buffer). ``wire``: the dtype ``none`` sends.

    ``seed``, ``boundary`` and ``tag`` (0: wire, 1: buffer) seed its random choices, so every
    runtime builds the same codec for the same boundary.
    """
    parsed = parse_codec(spec) if isinstance(spec, str) else spec
    codec_seed = mix(seed, boundary, tag)
    if parsed.kind == "none":
        return Codec(wire)
    if parsed.kind in CAST_DTYPES:
        return CastCodec(parsed.kind)
    if parsed.kind == "int8":
        return Int8Codec(per_sample=parsed.per_sample, stochastic=parsed.stochastic, seed=codec_seed)
    from degl.core.codecs.vq import VQCodec

    return VQCodec(codes=parsed.codes, dim=parsed.dim, rows=parsed.rows, seed=codec_seed)


def buffer_codec(spec: str, seed: int, boundary: int) -> Codec | None:
    """The codec of the replay buffer after stage ``boundary`` (None for ``none``: entries stored as they are)."""
    return (
        None
        if parse_codec(spec, flag="--buffer-codec").kind == "none"
        else build_codec(spec, seed=seed, boundary=boundary, tag=1)
    )


def check_codec(spec: str, shapes: Sequence[Sequence[int]], *, flag: str = "--codec") -> None:
    """:class:`UserError` unless ``spec`` can encode activations of each per-sample shape in ``shapes``."""
    codec = build_codec(parse_codec(spec, flag=flag))
    for shape in shapes:
        codec.check_shape(shape)


def wire_bytes_per_sample(
    spec: str, shapes: Sequence[Sequence[int]], batch_size: int, wire: torch.dtype | None = None
) -> list[float]:
    """Bytes per sample of one training message at each boundary, at batch size ``batch_size``."""
    codec = build_codec(spec, wire=wire)
    return [round(codec.wire_bytes(batch_size, shape) / batch_size, 3) for shape in shapes]


class _RoundTrip(nn.Module):
    """Decode(encode(x)) in front of a block: the receiving side of a boundary, for evaluation."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Outside autocast, as in the pipeline, where the codec runs between steps.
        with torch.autocast(x.device.type, enabled=False):
            return self.codec.roundtrip(x, train=False)


class CodedStage(nn.Module):
    """A stage whose block first receives its input through ``codec`` (evaluation of a coded pipeline)."""

    def __init__(self, stage: nn.Module, codec: Codec) -> None:
        super().__init__()
        self.block = nn.Sequential(_RoundTrip(codec), stage.block)
        self.head = stage.head
        self.training = stage.training  # keep a frozen stage frozen when evaluate() restores modes


def coded_stages(stages: Sequence[nn.Module], codecs: Sequence[Codec | None]) -> list[nn.Module]:
    """``stages`` with stage k+1 reading stage k's output through ``codecs[k]`` (None: exact)."""
    views = []
    for index, stage in enumerate(stages):
        codec = codecs[index - 1] if 0 < index <= len(codecs) else None
        views.append(stage if codec is None else CodedStage(stage, codec))
    return views


def evaluate_coded(
    stages: Sequence[nn.Module], codecs: Sequence[Codec | None], batches: Any, **options: Any
) -> dict[int, dict[str, float]]:
    """Per-stage test results (:func:`degl.core.evaluate.evaluate`'s options) with each stage reading
    its predecessor's output through the boundary's codec, as the pipeline does; with a codec,
    ``exact_acc`` adds the accuracy of the exact forward pass."""
    from degl.core.evaluate import evaluate

    if all(codec is None for codec in codecs):
        return evaluate(stages, batches, **options).by_stage()
    result = evaluate(coded_stages(stages, codecs), batches, **options).by_stage()
    exact = evaluate(stages, batches, **options).by_stage()
    for stage, values in result.items():
        values["exact_acc"] = exact[stage]["acc"]
    return result
