"""``degl export RUN``: a trained run as one self-contained file (ONNX, ``torch.export`` or a state dict).

The file holds :class:`~degl.run.exit_network.ExitNetwork`: raw ``uint8`` images in (``N x C x H x W``,
0-255, as the data set stores them; the batch dimension is dynamic), normalisation inside the graph,
then the exit(s) asked for. Its metadata (JSON, see :func:`export_metadata`) names the classes, the
input, the run and degl's version, and every exit's test accuracy and MACs per sample.

Before a file is committed (written to a temporary name, renamed) it is loaded back and run on test
images at two batch sizes; a file that does not reproduce the network is refused, never written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import degl
from degl.core.evaluate import evaluate
from degl.errors import UserError
from degl.run.evaluation import LoadedRun, load_run
from degl.run.exit_network import (
    ExitChoice,
    ExitNetwork,
    build_exit_network,
    class_names,
    exit_costs,
    normalisation,
    parse_exit,
)
from degl.run.exported import FILE_FORMAT, METADATA_KEY, first_line, load_exported

FORMATS = ("onnx", "pt2", "state-dict")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "state-dict": ".pt"}
ONNX_OPSET = 18
# How far a reloaded file may stray from the network it was exported from before it is refused
# (the tests hold pt2 to 1e-5 and onnxruntime to 1e-4; this only catches a broken export).
CHECK_TOLERANCE = 1e-3
ONNX_HINT = "pip install 'degl[onnx]' (onnx, onnxruntime, onnxscript)"


@dataclass
class Exportable:
    """A network ready to be written, with its metadata and real input images to trace and check it on."""

    network: ExitNetwork
    metadata: dict[str, Any]
    sample: torch.Tensor
    config: dict[str, Any]


def prepare_export(run_dir: Path, exit_text: str = "last", *, data_dir: str | None = None) -> Exportable:
    """Rebuild ``run_dir`` on the CPU (plain memory format, not compiled) and assemble the exit(s) asked for."""
    run = load_run(Path(run_dir), device="cpu", data_dir=data_dir, channels_last=False, compile=False)
    choice = parse_exit(exit_text, run.evaluated)
    mean, std = normalisation(run.setup.data)
    network = build_exit_network(run.setup.stages, choice, mean, std)
    metadata = export_metadata(run, choice, mean, std)
    network.eval()  # evaluating restored the stages' training flags
    return Exportable(network, metadata, sample_images(run), run.setup.cfg.to_dict())


def sample_images(run: LoadedRun, count: int = 8) -> torch.Tensor:
    """The first test images as stored (uint8); seeded random pixels for data sets decoded on the fly."""
    data = run.setup.data
    stored = getattr(data, "test_images", None)
    if stored is not None:
        return stored[:count].clone()
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, *data.input_shape), generator=generator, dtype=torch.uint8)


def export_metadata(
    run: LoadedRun, choice: ExitChoice, mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[str, Any]:
    """What the file says about itself; the test accuracies are measured now, in fp32, as ``degl eval``."""
    setup, cfg = run.setup, run.setup.cfg
    result = evaluate(setup.stages, setup.test_loader, evaluated=run.evaluated)
    costs = exit_costs(setup.stages, run.evaluated)
    exits = [
        {
            "stage": cost.stage,
            "test_acc": acc,
            "ensemble_test_acc": ens,
            "macs_per_sample": cost.macs,
            "head_macs_per_sample": cost.head_macs,
        }
        for cost, acc, ens in zip(costs, result.acc, result.ensemble_acc)
    ]
    summary_path = run.run_dir / "summary.json"
    completed = json.loads(summary_path.read_text()).get("completed") if summary_path.is_file() else None
    return {
        "format": FILE_FORMAT,
        "degl_version": degl.__version__,
        "torch_version": str(torch.__version__),
        "run": str(run.run_dir.resolve()),
        "checkpoint": run.checkpoint.name,
        "global_step": int(run.meta.get("global_step", 0)),
        "training_completed": completed,
        "method": cfg.method,
        "model": cfg.model,
        "num_stages": len(setup.stages),
        "classes": class_names(setup.data),
        "input": {
            "name": "images",
            "shape": ["batch", *setup.data.input_shape],
            "dtype": "uint8",
            "layout": "NCHW",
            "range": "0-255, as the data set stores them; normalised inside the graph",
            "mean": list(mean),
            "std": list(std),
        },
        "data": {
            "dataset": cfg.dataset,
            "data_dir": cfg.data_dir,
            "input_shape": list(cfg.input_shape),
            "num_classes": cfg.num_classes,
            "synthetic_size": cfg.synthetic_size,
            "image_size": cfg.image_size,
        },
        "exit": choice.label,
        "exit_kind": choice.kind,
        "exit_stages": list(choice.exits),
        "outputs": [
            {"name": name, "stages": list(choice.exits) if choice.kind == "ensemble" else [stage], "kind": kind}
            for name, stage, kind in _outputs(choice)
        ],
        "exits": exits,
        "test_samples": result.count,
    }


def _outputs(choice: ExitChoice) -> list[tuple[str, int, str]]:
    kind = "probabilities" if choice.kind == "ensemble" else "logits"
    stages = choice.exits if choice.kind == "all" else choice.exits[-1:]
    return [(name, stage, kind) for name, stage in zip(choice.output_names(), stages)]


@contextlib.contextmanager
def committed(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed to it when the block succeeds and removed otherwise."""
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix: torch.export.save and load insist on ".pt2".
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a file to share, not mkstemp's private 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trace(item: Exportable) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic batch dimension; a model it cannot capture is refused."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            return torch.export.export(item.network, (item.sample,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise UserError(f"torch.export cannot capture this network: {first_line(exc)}") from None


def write_pt2(item: Exportable, path: Path) -> None:
    program = trace(item)
    with committed(path) as tmp:
        torch.export.save(program, tmp, extra_files={f"{METADATA_KEY}.json": json.dumps(item.metadata)})
        check_file(item, tmp, "pt2")


def write_onnx(item: Exportable, path: Path) -> None:
    require_onnx()
    import onnx

    program = trace(item)
    try:
        # The exporter reports its progress on stderr; degl's output stays its own.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            onnx_program = torch.onnx.export(
                program,
                (item.sample,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=item.network.choice.output_names(),
                verbose=False,
            )
    except Exception as exc:
        raise UserError(f"the ONNX exporter cannot translate this network: {first_line(exc)}") from None
    proto = onnx_program.model_proto
    metadata = {**item.metadata, "onnx_opset": ONNX_OPSET}
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    proto.doc_string = f"degl export of {metadata['run']} ({metadata['model']}, exit {metadata['exit']})"
    data = proto.SerializeToString()
    with committed(path) as tmp:
        tmp.write_bytes(data)
        check_file(item, tmp, "onnx")


def write_state_dict(item: Exportable, path: Path) -> None:
    from degl.run.checkpoint import atomic_save

    state = {
        "format": FILE_FORMAT,
        "metadata": {**item.metadata, "build": "degl.run.exported.load_network(PATH)"},
        "config": item.config,
        "state_dict": item.network.state_dict(),
    }
    with committed(path) as tmp:
        atomic_save(state, tmp)
        check_file(item, tmp, "state-dict")


WRITERS = {"onnx": write_onnx, "pt2": write_pt2, "state-dict": write_state_dict}


def require_onnx() -> None:
    """A one-line error unless the onnx extra (exporter and runtime) is installed."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--format onnx needs the {module} package: {ONNX_HINT}") from None


def check_file(item: Exportable, path: Path, fmt: str) -> None:
    """Load the written file as a user would and compare it with the network at two batch sizes."""
    exported = load_exported(path, fmt=fmt)
    for images in (item.sample[:3], item.sample[:1]):
        with torch.no_grad():
            expected = item.network(images)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        got = exported.run(images)
        worst = max((a - b).abs().max().item() for a, b in zip(got, expected))
        if len(got) != len(expected) or not worst <= CHECK_TOLERANCE:
            raise UserError(f"the exported {fmt} file does not reproduce the network (max difference {worst:.3g})")


def export_run(
    run_dir: Path, *, fmt: str = "onnx", exit_text: str = "last", out: Path | None = None, data_dir: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write ``run_dir``'s network as ``fmt``; return the file and its metadata."""
    if fmt not in FORMATS:
        raise UserError(f"unsupported --format {fmt!r}; use {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()  # before minutes of work
    item = prepare_export(run_dir, exit_text, data_dir=data_dir)
    path = Path(out) if out is not None else Path(run_dir) / f"model-{item.network.choice.label}{SUFFIXES[fmt]}"
    WRITERS[fmt](item, path)
    metadata = {**item.metadata, **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {})}
    return path, metadata


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory written by 'degl train'")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help=f"onnx (opset {ONNX_OPSET}; needs {ONNX_HINT}), pt2 (torch.export, load with torch.export.load) "
        "or state-dict (the assembled network's weights, rebuilt by degl.run.exported.load_network) (default: onnx)",
    )
    parser.add_argument(
        "--exit",
        default="last",
        metavar="K|last|all|ensemble",
        help="stage K's head (0-based, as 'degl eval' numbers stages), the last, every trained head's logits "
        "at once (one output per exit), or the ensemble of the heads 'degl eval' scores (default: last)",
    )
    parser.add_argument("--out", metavar="FILE", help="file to write (default: RUN/model-EXIT.onnx|.pt2|.pt)")
    parser.add_argument("--data-dir", default=None, help="override the run's data directory")


def export_command(args: argparse.Namespace) -> int:
    path, metadata = export_run(
        Path(args.run), fmt=args.format, exit_text=args.exit, out=Path(args.out) if args.out else None,
        data_dir=args.data_dir,
    )  # fmt: skip
    if metadata.get("training_completed") is False:
        print(f"degl: note: {args.run} stopped before the end of its training; exported its last checkpoint")
    opset = f", opset {ONNX_OPSET}" if args.format == "onnx" else ""
    print(f"wrote {path} ({args.format}{opset}, {metadata['exit']}, {path.stat().st_size:,} bytes)")
    for row in metadata["exits"]:
        print(f"  exit {row['stage']}: test acc {row['test_acc']:.2f}%, {row['macs_per_sample']:,} MACs/sample")
    print(json.dumps({"file": str(path), "format": args.format, "metadata": metadata}))
    return 0
