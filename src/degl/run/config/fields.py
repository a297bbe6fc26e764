"""The training configuration: one dataclass whose fields are every ``degl train`` flag and every
key of a ``--config`` YAML file.

Each field's metadata holds its ``help`` (shown by ``--help``), its ``group`` (one of
:data:`GROUPS`: the argument group ``--help`` lists it under, and what :meth:`TrainConfig.group`
reads), and optionally ``choices`` and ``metavar``. Stages are numbered from 0 in every help text.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from degl.core.accounting import NONFINITE_POLICIES
from degl.run.config.options import (
    ASYNC_ORDERS,
    BUFFER_POLICIES,
    DATASETS,
    LIST_OPTIONS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SPLITS,
)

GROUPS = {
    "method": "how the stages learn (and, for async-dgl, the replay buffers between them)",
    "model": "the backbone",
    "pipeline": "how the network is cut into stages and how the stages run (one process or several)",
    "data": "the data set and its loading",
    "optimisation": "optimizer, learning rate and its schedule, epochs and batches",
    "run": "this invocation: device, precision, seed, run directory, logs",
}
"""The groups of options, in the order ``--help`` lists them, each with what it holds."""


def _group(group: str) -> Callable[..., Any]:
    """A maker of the fields of ``group``: ``(default, help, **choices_or_metavar) -> field``."""
    assert group in GROUPS, group

    def option(default: Any, help: str, **extra: Any) -> Any:
        return field(default=default, metadata={"group": group, "help": help, **extra})

    return option


_method, _model, _pipeline, _data, _optimisation, _run = (_group(name) for name in GROUPS)
# 'degl models' and 'degl bench' share these options, where every model reads them; training does not.
_SYNTHETIC_ONLY = " (in training: --dataset synthetic only; the other data sets have their own)"


@dataclass
class TrainConfig:
    """Everything a training run needs; ``cfg.lr`` reads one option, ``cfg.group("optimisation")`` a group."""

    # ---- method
    method: str = _method(
        "dgl",
        "training method: backprop (end to end), dgl (decoupled greedy), sgl (sequential greedy), "
        "async-dgl (replay buffers), or the paper's alternatives, whose stages learn from gradients "
        "sent back by the stage above: dni / cdni (synthetic gradients, cdni label-conditioned), "
        "ddg (delayed gradients), fr (features replay)",
        choices=METHODS,
    )
    aux: str = _method(
        "mlp-sr",
        "dgl, sgl, async-dgl: aux head of stages 0..K-2 (every stage but the last): mlp, mlp-sr, cnn, linear "
        "(or a model's own, e.g. dni); unused by backprop, dni, cdni, ddg and fr (they train only the last "
        "stage's head)",
    )
    objective: str = _method(
        "aux",
        "dgl, sgl, async-dgl: what stages 0..K-2 minimise: aux (the --aux head, cross-entropy), predsim "
        "(prediction + similarity matching), sim (similarity matching alone), or path/to/file.py:FUNCTION "
        "(a function (in_shape, num_classes) returning your own objective module)",
    )
    predsim_beta: float | None = _method(
        None, "--objective predsim: weight of similarity matching, strictly between 0 and 1 (default 0.99)"
    )
    buffer: int = _method(0, "async-dgl: replay buffer capacity M in batches between stages (0: synchronous)")
    async_order: str | None = _method(
        None,
        "async-dgl simulation with --buffer M > 0: which stage acts next (default random: weight 1/slowdown)",
        choices=ASYNC_ORDERS,
    )
    max_reuse: int | None = _method(None, "async-dgl: times a buffered batch may be used")
    buffer_policy: str = _method("priority_lifo", "async-dgl: replay sampling policy", choices=BUFFER_POLICIES)
    buffer_compat: str = _method(
        "correct",
        "async-dgl: 'paper' reproduces the official buffer's quirks (oldest wins ties when full, use "
        "counts start at 1) and its warm-up order",
        choices=("correct", "paper"),
    )
    buffer_storage: str = _method(
        "device", "async-dgl: keep buffers on the device or in pinned host memory", choices=("device", "pinned")
    )
    buffer_codec: str = _method(
        "none",
        "async-dgl: store replay-buffer entries encoded with this codec (as --codec) and decode them when sampled",
        metavar="CODEC",
    )
    # ---- model
    model: str = _model("cnn6", "backbone from the registry (see 'degl models')")
    width: float = _model(1.0, "channel-width multiplier")
    dropout: float = _model(
        0.0, "dropout after the classifier's hidden FC layers (vgg13, vgg19; torchvision's vgg*_bn: 0.5)"
    )
    # ---- pipeline
    stages: int = _pipeline(
        4,
        "number of stages K, numbered 0..K-1 (ignored by backprop; with dni, cdni, ddg and fr gradients cross "
        "the K-1 boundaries and only the last stage's head is trained and scored)",
        metavar="K",
    )
    split: str = _pipeline(
        "auto",
        "how to cut blocks into stages: auto (the paper's cut if it has one, else flops), "
        "flops, memory (saved activations), blocks (equal block counts) or time (measured training "
        "time per block and head; recorded as --cuts)",
        choices=SPLITS,
    )
    cuts: tuple[int, ...] | None = _pipeline(
        None,
        "explicit cut points: the 0-based block indices where stages 1..K-1 start, e.g. 1,3,5",
        metavar="I,J,...",
    )
    split_at: tuple[str, ...] | None = _pipeline(
        None,
        "qualified names of the submodules where stages 1..K-1 start, e.g. layer2,layer4 (see 'degl models "
        "--stats MODEL' for the names)",
        metavar="NAME,NAME,...",
    )
    codec: str = _pipeline(
        "none",
        "dgl, async-dgl: how activations cross each stage boundary: none, bf16, fp16, int8[:sample][:sr] "
        "or vq[:CODES[:DIM[:ROWS]]] (one process simulates it; see docs/codecs.md)",
        metavar="CODEC",
    )
    slowdown: dict[int, float] | None = _pipeline(  # noqa: RUF009 (a field(), not a shared default)
        None,
        "make stages slower, STAGE 0-based (0..K-1) (simulation: picked with weight 1/FACTOR; with --workers: "
        "the rank really computes FACTOR times longer)",
        metavar="STAGE:FACTOR,...",
    )
    workers: int | None = _pipeline(
        None, "run the K stages in K local processes (one stage each) over torch.distributed"
    )
    pin_cpus: bool = _pipeline(True, "multi-process on the CPU: bind each local rank to its own cores when they fit")
    fault_timeout: float = _pipeline(60.0, "multi-process: seconds a rank waits on a silent peer before giving up")
    max_in_flight: int = _pipeline(2, "multi-process: activation messages a rank may have in flight (backpressure)")
    trace: bool = _pipeline(
        False,
        "multi-process: write RUN/trace.json, every rank's timeline (compute, waits, eval) as a "
        "Chrome/Perfetto trace; see 'degl trace summary'",
    )
    # ---- data
    dataset: str = _data("fashion-mnist", "data set", choices=DATASETS)
    data_dir: str | None = _data(None, "directory holding the data set files")
    download: bool = _data(False, "cifar10: download it (needs internet) if it is not found")
    image_size: int = _data(224, "imagenet: crop side in pixels (evaluation resizes to size*256/224 first)")
    data_workers: int = _data(4, "imagenet: loader worker processes (0: none)")
    feature_cache_gb: float = _data(
        2.0,
        "sgl without augmentation: keep the frozen stages' training-set features in memory up to "
        "this many GiB instead of recomputing them every batch (0: always recompute)",
    )
    augment: bool = _data(True, "random crop (+flip where it makes sense) on training batches")
    train_size: int | None = _data(None, "use only the first N training samples")
    input_shape: tuple[int, int, int] = _data(
        (3, 32, 32), f"shape of one input sample{_SYNTHETIC_ONLY}", metavar="C,H,W"
    )
    num_classes: int = _data(10, f"number of classes{_SYNTHETIC_ONLY}", metavar="N")
    synthetic_size: int = _data(2048, "synthetic data: training samples (test: 1/4)")
    # ---- optimisation
    epochs: int = _optimisation(10, "epochs (per stage for sgl)")
    batch_size: int = _optimisation(128, "training batch size")
    eval_batch_size: int = _optimisation(1000, "evaluation batch size")
    lr: float = _optimisation(0.1, "initial learning rate")
    optimizer: str = _optimisation("sgd", "optimizer of every stage", choices=OPTIMIZERS)
    momentum: float = _optimisation(0.9, "SGD momentum")
    nesterov: bool = _optimisation(False, "Nesterov momentum")
    weight_decay: float = _optimisation(5e-4, "weight decay")
    schedule: str = _optimisation("cosine", "learning-rate schedule", choices=SCHEDULES)
    lr_decay_every: int = _optimisation(15, "step schedule: epochs between decays")
    lr_decay_factor: float = _optimisation(0.2, "step/milestones schedule: multiply the lr by this")
    lr_milestones: tuple[int, ...] | None = _optimisation(
        None, "milestones schedule: epochs at which the lr decays, e.g. 150,225", metavar="E,E,..."
    )
    reset_at_decay: bool = _optimisation(
        False, "clear each optimizer's state (momentum) when its lr decays, like re-creating it"
    )
    # ---- run
    seed: int = _run(0, "random seed (initialisation, shuffling, augmentation)")
    device: str = _run("auto", "cpu, cuda, cuda:N or auto")
    precision: str = _run("fp32", "arithmetic precision", choices=PRECISIONS)
    loss_scale_init: float = _run(
        2.0**16, "fp16: initial loss scale of each GradScaler (the paper's ImageNet runs: 4294967296 = 2^32)"
    )
    loss_scale_growth_interval: int = _run(
        2000, "fp16: overflow-free steps before the loss scale doubles (the paper's ImageNet runs: 1000)"
    )
    channels_last: bool = _run(False, "channels-last memory format for stages and batches")
    compile: bool = _run(False, "torch.compile every stage (slow start, faster steps)")
    deterministic: bool = _run(False, "deterministic algorithms (bit-exact resume on CPU)")
    threads: int | None = _run(
        None, "torch intra-op threads per process (default: torch's choice; with --workers K: cores // K)"
    )
    max_steps: int | None = _run(None, "stop after N training steps in this invocation (checkpointed)")
    out: str | None = _run(None, "run directory (default runs/<method>-<model>-<time>)")
    progress: bool | None = _run(None, "progress bars on stderr (unset: drawn when stderr is a terminal)")
    on_nonfinite: str = _run(
        "stop",
        "a NaN or infinite loss: stop the run with one error line (its last finite checkpoint kept), or warn "
        "once and go on",
        choices=NONFINITE_POLICIES,
    )
    tensorboard: bool | None = _run(
        None, "event files in RUN/tensorboard/ (unset: on when the tensorboard package is installed)"
    )

    def __post_init__(self) -> None:
        # List-valued options arrive as text (flags, old run files) or lists (YAML); parsed once, here.
        for name, parse in LIST_OPTIONS.items():
            setattr(self, name, parse(getattr(self, name)))
        # A model in a file is recorded by its absolute path, so the run resumes from anywhere.
        path, sep, function = self.model.rpartition(":")
        if sep and path.endswith(".py") and Path(path).is_file():
            self.model = f"{Path(path).resolve()}:{function}"

    def group(self, name: str) -> dict[str, Any]:
        """The options of one group of :data:`GROUPS` (e.g. ``"optimisation"``), by field name."""
        return {f.name: getattr(self, f.name) for f in group_fields(name)}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), safe for YAML and JSON."""
        values = dataclasses.asdict(self)
        for name in LIST_OPTIONS:
            if isinstance(values[name], tuple):
                values[name] = list(values[name])
        return values


def config_fields() -> list[dataclasses.Field]:
    """Every field of :class:`TrainConfig`, in declaration order (grouped)."""
    return list(dataclasses.fields(TrainConfig))


def group_fields(name: str) -> list[dataclasses.Field]:
    """The fields of one group of :data:`GROUPS`."""
    if name not in GROUPS:
        raise ValueError(f"unknown option group {name!r}; choose one of: {', '.join(GROUPS)}")
    return [f for f in config_fields() if f.metadata["group"] == name]


def field_types() -> dict[str, Any]:
    """Each field's declared type (the annotations resolved)."""
    return typing.get_type_hints(TrainConfig)


def base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) for ``T`` or ``T | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


# Options that describe the invocation, not the run: they may change when resuming.
INVOCATION_KEYS = frozenset(
    {
        "max_steps",
        "on_nonfinite",
        "threads",
        "progress",
        "trace",
        "tensorboard",
        "device",
        "out",
        "data_workers",
        "feature_cache_gb",
        "download",
        "workers",
        "fault_timeout",
        "max_in_flight",
        "compile",
        "pin_cpus",
    }
)
