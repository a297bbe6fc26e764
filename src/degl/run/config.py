"""Training configuration: one dataclass is the single source of truth for CLI flags and YAML keys.

Precedence: built-in defaults < ``--config FILE`` < command-line flags. Every field can be set in a
YAML file under its flag name (``batch-size``) or its field name (``batch_size``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from degl.core.accounting import NONFINITE_POLICIES
from degl.core.codecs import parse_codec
from degl.errors import UserError

METHODS = ("backprop", "dgl", "sgl", "async-dgl", "dni", "cdni", "ddg", "fr")
GRADIENT_METHODS = ("dni", "cdni", "ddg", "fr")
"""The paper's alternatives: their stages learn from gradients sent back by the stage above."""
ASYNC_ORDERS = ("random", "round-robin")
BUFFER_POLICIES = ("priority_lifo", "fifo", "uniform")
DATASETS = ("fashion-mnist", "cifar10", "imagenet", "synthetic")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "step", "milestones", "cosine")
OPTIMIZERS = ("sgd", "adam")
SPLITS = ("auto", "flops", "memory", "blocks", "time")


def _opt(help: str, **extra: Any) -> dict[str, Any]:
    return {"help": help, **extra}


@dataclass
class TrainConfig:
    """Everything a training run needs. Field docstrings live in ``metadata['help']`` (shown by --help)."""

    # what to train
    method: str = field(
        default="dgl",
        metadata=_opt(
            "training method: backprop (end to end), dgl (decoupled greedy), sgl (sequential greedy), "
            "async-dgl (replay buffers), or the paper's alternatives, whose stages learn from gradients "
            "sent back by the stage above: dni / cdni (synthetic gradients, cdni label-conditioned), "
            "ddg (delayed gradients), fr (features replay)",
            choices=METHODS,
        ),
    )
    model: str = field(default="cnn6", metadata=_opt("backbone from the registry (see 'degl models')"))
    width: float = field(default=1.0, metadata=_opt("channel-width multiplier"))
    stages: int = field(
        default=4,
        metadata=_opt(
            "number of stages K (ignored by backprop; with dni, cdni, ddg and fr gradients cross the K-1 "
            "boundaries and only the last stage's head is trained and scored)"
        ),
    )
    dropout: float = field(
        default=0.0,
        metadata=_opt("dropout after the classifier's hidden FC layers (vgg13, vgg19; torchvision's vgg*_bn: 0.5)"),
    )
    aux: str = field(
        default="mlp-sr",
        metadata=_opt(
            "dgl, sgl, async-dgl: aux head of stages 1..K-1: mlp, mlp-sr, cnn, linear (or a model's own, "
            "e.g. dni); unused by backprop, dni, cdni, ddg and fr (they train only the last stage's head)"
        ),
    )
    split: str = field(
        default="auto",
        metadata=_opt(
            "how to cut blocks into stages: auto (the paper's cut if it has one, else flops), "
            "flops, memory (saved activations), blocks (equal block counts) or time (measured training "
            "time per block and head; recorded as --cuts)",
            choices=SPLITS,
        ),
    )
    cuts: tuple[int, ...] | None = field(
        default=None,
        metadata=_opt("explicit cut points: block indices where stages 2..K start, e.g. 1,3,5", metavar="I,J,..."),
    )
    split_at: tuple[str, ...] | None = field(
        default=None,
        metadata=_opt(
            "qualified names of the submodules where stages 2..K start, e.g. layer2,layer4 (see 'degl models "
            "--stats MODEL' for the names)",
            metavar="NAME,NAME,...",
        ),
    )
    codec: str = field(
        default="none",
        metadata=_opt(
            "dgl, async-dgl: how activations cross each stage boundary: none, bf16, fp16, int8[:sample][:sr] "
            "or vq[:CODES[:DIM[:ROWS]]] (one process simulates it; see docs/codecs.md)",
            metavar="CODEC",
        ),
    )
    # asynchronous DGL (replay buffers between stages)
    buffer: int = field(
        default=0, metadata=_opt("async-dgl: replay buffer capacity M in batches between stages (0: synchronous)")
    )
    async_order: str | None = field(
        default=None,
        metadata=_opt(
            "async-dgl simulation with --buffer M > 0: which stage acts next (default random: weight 1/slowdown)",
            choices=ASYNC_ORDERS,
        ),
    )
    slowdown: dict[int, float] | None = field(
        default=None,
        metadata=_opt(
            "make stages slower (simulation: picked with weight 1/FACTOR; with --workers: the rank really "
            "computes FACTOR times longer)",
            metavar="STAGE:FACTOR,...",
        ),
    )
    max_reuse: int | None = field(default=None, metadata=_opt("async-dgl: times a buffered batch may be used"))
    buffer_policy: str = field(
        default="priority_lifo", metadata=_opt("async-dgl: replay sampling policy", choices=BUFFER_POLICIES)
    )
    buffer_compat: str = field(
        default="correct",
        metadata=_opt(
            "async-dgl: 'paper' reproduces the official buffer's quirks (oldest wins ties when full, use "
            "counts start at 1) and its warm-up order",
            choices=("correct", "paper"),
        ),
    )
    buffer_storage: str = field(
        default="device",
        metadata=_opt("async-dgl: keep buffers on the device or in pinned host memory", choices=("device", "pinned")),
    )
    buffer_codec: str = field(
        default="none",
        metadata=_opt(
            "async-dgl: store replay-buffer entries encoded with this codec (as --codec) and decode them when sampled",
            metavar="CODEC",
        ),
    )
    # data
    dataset: str = field(default="fashion-mnist", metadata=_opt("data set", choices=DATASETS))
    data_dir: str | None = field(default=None, metadata=_opt("directory holding the data set files"))
    download: bool = field(default=False, metadata=_opt("cifar10: download it (needs internet) if it is not found"))
    image_size: int = field(
        default=224, metadata=_opt("imagenet: crop side in pixels (evaluation resizes to size*256/224 first)")
    )
    data_workers: int = field(default=4, metadata=_opt("imagenet: loader worker processes (0: none)"))
    feature_cache_gb: float = field(
        default=2.0,
        metadata=_opt(
            "sgl without augmentation: keep the frozen stages' training-set features in memory up to "
            "this many GiB instead of recomputing them every batch (0: always recompute)"
        ),
    )
    augment: bool = field(default=True, metadata=_opt("random crop (+flip where it makes sense) on training batches"))
    train_size: int | None = field(default=None, metadata=_opt("use only the first N training samples"))
    input_shape: tuple[int, int, int] = field(default=(3, 32, 32), metadata=_opt("synthetic data", metavar="C,H,W"))
    num_classes: int = field(default=10, metadata=_opt("synthetic data: number of classes"))
    synthetic_size: int = field(default=2048, metadata=_opt("synthetic data: training samples (test: 1/4)"))
    # optimisation
    epochs: int = field(default=10, metadata=_opt("epochs (per stage for sgl)"))
    batch_size: int = field(default=128, metadata=_opt("training batch size"))
    eval_batch_size: int = field(default=1000, metadata=_opt("evaluation batch size"))
    lr: float = field(default=0.1, metadata=_opt("initial learning rate"))
    optimizer: str = field(default="sgd", metadata=_opt("optimizer of every stage", choices=OPTIMIZERS))
    momentum: float = field(default=0.9, metadata=_opt("SGD momentum"))
    nesterov: bool = field(default=False, metadata=_opt("Nesterov momentum"))
    weight_decay: float = field(default=5e-4, metadata=_opt("weight decay"))
    schedule: str = field(default="cosine", metadata=_opt("learning-rate schedule", choices=SCHEDULES))
    lr_decay_every: int = field(default=15, metadata=_opt("step schedule: epochs between decays"))
    lr_decay_factor: float = field(default=0.2, metadata=_opt("step/milestones schedule: multiply the lr by this"))
    lr_milestones: tuple[int, ...] | None = field(
        default=None,
        metadata=_opt("milestones schedule: epochs at which the lr decays, e.g. 150,225", metavar="E,E,..."),
    )
    reset_at_decay: bool = field(
        default=False,
        metadata=_opt("clear each optimizer's state (momentum) when its lr decays, like re-creating it"),
    )
    # execution
    seed: int = field(default=0, metadata=_opt("random seed (initialisation, shuffling, augmentation)"))
    device: str = field(default="auto", metadata=_opt("cpu, cuda, cuda:N or auto"))
    precision: str = field(default="fp32", metadata=_opt("arithmetic precision", choices=PRECISIONS))
    loss_scale_init: float = field(
        default=2.0**16,
        metadata=_opt("fp16: initial loss scale of each GradScaler (the paper's ImageNet runs: 4294967296 = 2^32)"),
    )
    loss_scale_growth_interval: int = field(
        default=2000,
        metadata=_opt("fp16: overflow-free steps before the loss scale doubles (the paper's ImageNet runs: 1000)"),
    )
    channels_last: bool = field(default=False, metadata=_opt("channels-last memory format for stages and batches"))
    compile: bool = field(default=False, metadata=_opt("torch.compile every stage (slow start, faster steps)"))
    deterministic: bool = field(default=False, metadata=_opt("deterministic algorithms (bit-exact resume on CPU)"))
    workers: int | None = field(
        default=None,
        metadata=_opt("run the K stages in K local processes (one stage each) over torch.distributed"),
    )
    pin_cpus: bool = field(
        default=True,
        metadata=_opt("multi-process on the CPU: bind each local rank to its own cores when they fit"),
    )
    fault_timeout: float = field(
        default=60.0, metadata=_opt("multi-process: seconds a rank waits on a silent peer before giving up")
    )
    max_in_flight: int = field(
        default=2, metadata=_opt("multi-process: activation messages a rank may have in flight (backpressure)")
    )
    threads: int | None = field(
        default=None,
        metadata=_opt("torch intra-op threads per process (default: torch's choice; with --workers K: cores // K)"),
    )
    max_steps: int | None = field(
        default=None, metadata=_opt("stop after N training steps in this invocation (checkpointed)")
    )
    out: str | None = field(default=None, metadata=_opt("run directory (default runs/<method>-<model>-<time>)"))
    progress: bool = field(default=True, metadata=_opt("progress bars on stderr"))
    on_nonfinite: str = field(
        default="stop",
        metadata=_opt(
            "a NaN or infinite loss: stop the run with one error line (its last finite checkpoint kept), or warn "
            "once and go on",
            choices=NONFINITE_POLICIES,
        ),
    )
    trace: bool = field(
        default=False,
        metadata=_opt(
            "multi-process: write RUN/trace.json, every rank's timeline (compute, waits, eval) as a "
            "Chrome/Perfetto trace; see 'degl trace summary'"
        ),
    )
    tensorboard: bool | None = field(
        default=None,
        metadata=_opt("event files in RUN/tensorboard/ (unset: on when the tensorboard package is installed)"),
    )

    def __post_init__(self) -> None:
        # List-valued options arrive as text (flags, old run files) or lists (YAML); parsed once, here.
        for name, parse in LIST_OPTIONS.items():
            setattr(self, name, parse(getattr(self, name)))
        # A model in a file is recorded by its absolute path, so the run resumes from anywhere.
        path, sep, function = self.model.rpartition(":")
        if sep and path.endswith(".py") and Path(path).is_file():
            self.model = f"{Path(path).resolve()}:{function}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), safe for YAML and JSON."""
        values = dataclasses.asdict(self)
        for name in LIST_OPTIONS:
            if isinstance(values[name], tuple):
                values[name] = list(values[name])
        return values


def format_option(value: Any) -> str:
    """A value as it would be typed on the command line (``3,32,32``, ``1:1.5``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


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


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) for ``T`` or ``T | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def coerce(name: str, value: Any, *, source: str) -> Any:
    """Check ``value`` against the declared type of field ``name``; ints are accepted for floats."""
    kind, optional = _base_type(_field_types()[name])
    flag = "--" + name.replace("_", "-")
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: {flag} cannot be empty")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise UserError(f"{source}: {flag} must be an integer, got {value!r}")
    if name in LIST_OPTIONS:
        return LIST_OPTIONS[name](value)
    if not isinstance(value, kind):
        raise UserError(f"{source}: {flag} must be of type {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into validated field values (unknown keys and wrong types are errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        first = (getattr(exc, "problem", None) or str(exc).splitlines()[0])[:120]
        raise UserError(f"config file {path} is not valid YAML{where}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of option: value, got {type(data).__name__}")
    names = {f.name for f in config_fields()}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"config file {path}: unknown option {key!r}; see 'degl train --help' for the options")
        values[name] = coerce(name, value, source=f"config file {path}")
    return values


def make_config(values: dict[str, Any], *, check_applicable: bool = True) -> TrainConfig:
    """Build and validate a config from field values (missing fields take their defaults).

    ``--split-at`` names K-1 cuts, so it sets ``--stages`` when that is not given. With
    ``check_applicable``, an option set that the chosen method, optimizer or runtime would ignore
    is an error (``degl compare`` checks per method instead).
    """
    if values.get("split_at") is not None and "stages" not in values:
        names = parse_names(values["split_at"]) or ()
        values = {**values, "stages": len(names) + 1}
    cfg = TrainConfig(**values)
    validate(cfg)
    if check_applicable:
        refuse_inapplicable(cfg)
    return cfg


def _items(value: Any) -> list[str]:
    """Comma-separated text, a number or a list, as a list of stripped item strings."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [p for p in str(value).replace(" ", "").split(",") if p != ""]


def parse_shape(value: Any, *, what: str = "--input-shape") -> tuple[int, int, int]:
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value):
        return value  # type: ignore[return-value]
    try:
        shape = tuple(int(p) for p in _items(value))
    except ValueError:
        raise UserError(f"{what} must be three integers C,H,W, got {format_option(value)!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"{what} must be three positive integers C,H,W, got {format_option(value)!r}")
    return shape  # type: ignore[return-value]


def parse_cuts(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(p) for p in _items(value))
    except ValueError:
        raise UserError(f"--cuts must be comma-separated block indices, got {format_option(value)!r}") from None


def parse_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(_items(value))
    if not names or any(not n for n in names):
        raise UserError(f"--split-at must be comma-separated submodule names, got {format_option(value)!r}")
    return names


def parse_slowdowns(value: Any) -> dict[int, float] | None:
    """``"1:1.5,2:2"`` (or a mapping) -> ``{1: 1.5, 2: 2.0}``; factors must be >= 1."""
    if value is None or (isinstance(value, str) and value.strip() == "") or value == {}:
        return None
    pairs = list(value.items()) if isinstance(value, dict) else [p.split(":") for p in _items(value)]
    slowdowns: dict[int, float] = {}
    for pair in pairs:
        try:
            stage_text, factor_text = pair
            stage, factor = int(stage_text), float(factor_text)
        except ValueError:
            raise UserError(
                f"--slowdown must be STAGE:FACTOR[,STAGE:FACTOR...], got {format_option(value)!r}"
            ) from None
        if factor < 1 or stage < 0:
            raise UserError(f"--slowdown {stage}:{factor}: the stage must be >= 0 and the factor >= 1")
        slowdowns[stage] = factor
    return slowdowns


def check_slowdowns(slowdowns: dict[int, float] | None, num_stages: int) -> dict[int, float]:
    """The slowdowns of a run with ``num_stages`` stages (every stage named must exist)."""
    for stage in slowdowns or {}:
        if stage >= num_stages:
            raise UserError(f"--slowdown {stage}:...: the stage must be in 0..{num_stages - 1}")
    return dict(slowdowns or {})


def parse_milestones(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        milestones = tuple(int(p) for p in _items(value))
    except ValueError:
        raise UserError(f"--lr-milestones must be comma-separated epochs, got {format_option(value)!r}") from None
    if any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise UserError(f"--lr-milestones must be increasing positive epochs, got {format_option(value)!r}")
    return milestones


LIST_OPTIONS = {
    "cuts": parse_cuts,
    "split_at": parse_names,
    "slowdown": parse_slowdowns,
    "input_shape": parse_shape,
    "lr_milestones": parse_milestones,
}


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks that do not need the model or the data."""
    for f in config_fields():
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            flag = "--" + f.name.replace("_", "-")
            raise UserError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")
    if cfg.tensorboard:
        from degl.run.tensorboard import resolve

        resolve(cfg.tensorboard)  # asked for explicitly: fail now, before the run directory exists
    positive_ints = ["stages", "epochs", "batch_size", "eval_batch_size", "num_classes", "synthetic_size", "image_size"]
    for name in positive_ints:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("train_size", "threads", "max_steps", "lr_decay_every"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("width", "lr"):
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise UserError(f"--{name.replace('_', '-')} must be a positive finite number, got {getattr(cfg, name)}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {cfg.momentum} (at 1 or above SGD diverges)")
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cores:
        _note_once(f"--threads {cfg.threads} is more than this machine's {cores} cores; the threads will share them")
    if not 0 < cfg.lr_decay_factor <= 1:
        raise UserError(f"--lr-decay-factor must be in (0, 1], got {cfg.lr_decay_factor}")
    if cfg.buffer < 0:
        raise UserError(f"--buffer must be 0 or more, got {cfg.buffer}")
    if cfg.max_reuse is not None and cfg.max_reuse < 1:
        raise UserError(f"--max-reuse must be a positive integer, got {cfg.max_reuse}")
    if cfg.buffer_compat == "paper" and cfg.buffer_policy != "priority_lifo":
        raise UserError("--buffer-compat paper only exists for --buffer-policy priority_lifo")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers must be a positive integer, got {cfg.workers}")
    if not cfg.fault_timeout > 0:
        raise UserError(f"--fault-timeout must be positive, got {cfg.fault_timeout}")
    if cfg.max_in_flight < 1:
        raise UserError(f"--max-in-flight must be a positive integer, got {cfg.max_in_flight}")
    if cfg.data_workers < 0:
        raise UserError(f"--data-workers must be 0 or more, got {cfg.data_workers}")
    if cfg.loss_scale_init <= 0 or cfg.loss_scale_growth_interval < 1:
        raise UserError("--loss-scale-init must be positive and --loss-scale-growth-interval at least 1")
    if cfg.feature_cache_gb < 0:
        raise UserError(f"--feature-cache-gb must be 0 or more, got {cfg.feature_cache_gb}")
    if cfg.weight_decay < 0:
        raise UserError("--weight-decay must not be negative")
    if cfg.method in GRADIENT_METHODS and cfg.precision == "fp16":
        raise UserError(
            f"--method {cfg.method} runs in fp32 or bf16: fp16's loss scale would scale the gradients it sends"
        )
    if cfg.nesterov and cfg.momentum == 0:
        raise UserError("--nesterov needs momentum: give --momentum > 0 (or drop --nesterov)")
    if cfg.cuts is not None and cfg.split_at is not None:
        raise UserError("--cuts and --split-at both choose the cut; give one of them")
    if cfg.split_at is not None and cfg.method != "backprop" and cfg.stages != len(cfg.split_at) + 1:
        raise UserError(
            f"--split-at names {len(cfg.split_at)} cut(s), which make {len(cfg.split_at) + 1} stages, "
            f"but --stages is {cfg.stages}; drop --stages"
        )
    if cfg.schedule == "milestones" and not cfg.lr_milestones:
        raise UserError("--schedule milestones needs --lr-milestones, e.g. --lr-milestones 150,225")
    if cfg.reset_at_decay and cfg.schedule not in ("step", "milestones"):
        raise UserError("--reset-at-decay needs a decaying schedule: --schedule step or milestones")
    if cfg.num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {cfg.num_classes}")
    parse_codec(cfg.codec, flag="--codec")
    parse_codec(cfg.buffer_codec, flag="--buffer-codec")


@functools.cache
def _note_once(message: str) -> None:
    print(f"degl: note: {message}", file=sys.stderr)


def inapplicable_options(cfg: TrainConfig, *, processes: int | None = None) -> dict[str, str]:
    """Options whose value differs from the default although this run would ignore them, each with
    what it applies to. ``processes``: the number of pipeline processes (default ``--workers``)."""
    processes = processes or cfg.workers or 1
    reasons: dict[str, str] = {}

    def needs(names: tuple[str, ...], condition: bool, what: str) -> None:
        for name in names:
            if not condition:
                reasons.setdefault(name, what)

    asynchronous = cfg.method == "async-dgl"
    buffer_options = ("buffer_policy", "buffer_compat", "buffer_storage", "max_reuse", "buffer_codec")
    needs(("buffer", *buffer_options), asynchronous, "applies to --method async-dgl")
    needs(("codec",), cfg.method in ("dgl", "async-dgl"), "applies to --method dgl and async-dgl (stage boundaries)")
    needs(buffer_options, cfg.buffer > 0, "applies to replay buffers (--buffer M > 0)")
    needs(("async_order",), asynchronous and cfg.buffer > 0, "applies to the async-dgl simulation with --buffer M > 0")
    needs(
        ("async_order",),
        processes == 1,
        "applies to the one-process simulation (with --workers every rank runs at its own pace)",
    )
    needs(("momentum", "nesterov"), cfg.optimizer == "sgd", "applies to --optimizer sgd")
    needs(("lr_decay_every",), cfg.schedule == "step", "applies to --schedule step")
    needs(("lr_milestones",), cfg.schedule == "milestones", "applies to --schedule milestones")
    needs(
        ("split", "cuts", "split_at"),
        cfg.method != "backprop",
        "applies to methods that cut the network into stages (backprop trains it end to end)",
    )
    needs(("data_dir",), cfg.dataset != "synthetic", "applies to data sets read from disk (not --dataset synthetic)")
    needs(("data_workers",), cfg.dataset == "imagenet", "applies to --dataset imagenet (decoded while training)")
    needs(("buffer_storage",), cfg.device != "cpu", "applies to a GPU device, not --device cpu")
    needs(("lr_decay_factor",), cfg.schedule in ("step", "milestones"), "applies to --schedule step or milestones")
    needs(("loss_scale_init", "loss_scale_growth_interval"), cfg.precision == "fp16", "applies to --precision fp16")
    needs(("feature_cache_gb",), cfg.method == "sgl", "applies to --method sgl")
    needs(
        ("aux",),
        cfg.method in ("dgl", "async-dgl", "sgl"),
        "applies to methods that train aux heads (dgl, async-dgl, sgl); the others train only the last head",
    )
    needs(("synthetic_size", "num_classes"), cfg.dataset == "synthetic", "applies to --dataset synthetic")
    needs(("image_size",), cfg.dataset == "imagenet", "applies to --dataset imagenet")
    needs(("download",), cfg.dataset == "cifar10", "applies to --dataset cifar10")
    # torchrun's ranks parse the command line with --workers unset; WORLD_SIZE is torchrun's variable.
    multi_process = processes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    needs(("trace",), multi_process, "applies to multi-process runs (--workers K with K >= 2, or torchrun)")
    needs(("max_in_flight",), multi_process, "applies to multi-process runs (--workers K with K >= 2, or torchrun)")
    defaults = TrainConfig()
    return {name: what for name, what in reasons.items() if getattr(cfg, name) != getattr(defaults, name)}


def _refusal(cfg: TrainConfig, name: str, what: str) -> UserError:
    flag = "--" + name.replace("_", "-")
    value = getattr(cfg, name)
    given = flag if value is True else f"{flag} {format_option(value)}"
    return UserError(f"{given} {what}; drop it (this run would ignore it)")


def refuse_inapplicable(cfg: TrainConfig, *, processes: int | None = None) -> None:
    """One-line error for the first option this run would ignore."""
    for name, what in inapplicable_options(cfg, processes=processes).items():
        raise _refusal(cfg, name, what)


def settle_inapplicable(cfg: TrainConfig, typed: set[str], *, processes: int | None = None) -> TrainConfig:
    """Refuse an option typed on the command line that this run would ignore; one that came from a
    ``--config`` file (a recipe made for a GPU, run with ``--precision fp32``) is dropped with a note."""
    if {"cuts", "split"} <= typed:
        raise UserError("--cuts and --split both choose the cut (--cuts names it, --split searches for one); give one")
    ignored = inapplicable_options(cfg, processes=processes)
    for name, what in ignored.items():
        if name in typed:
            raise _refusal(cfg, name, what)
    for name, what in ignored.items():
        print(f"degl: note: --{name.replace('_', '-')} from the config file {what}; left out", file=sys.stderr)
    return without_inapplicable(cfg)


def without_inapplicable(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option it would ignore put back to its default (``degl compare`` per method)."""
    defaults = TrainConfig()
    reset = {name: getattr(defaults, name) for name in inapplicable_options(cfg)}
    return dataclasses.replace(cfg, **reset) if reset else cfg


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config in today's terms: runs saved before ``--async-order`` defaulted to
    "not given" recorded ``random`` for every method."""
    saved = dict(saved)
    buffered = saved.get("method") == "async-dgl" and (saved.get("buffer") or 0) > 0
    if saved.get("async_order") == "random" and not buffered:
        saved["async_order"] = None
    return saved
