"""Reading back what ``degl export`` wrote: run an exported file on raw images, read its metadata.

The ONNX and ``.pt2`` files need no degl to run (onnxruntime, or ``torch.export.load``); this module
is what ``degl eval`` uses on them, and what rebuilds a ``--format state-dict`` file for fine-tuning.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError
from degl.run.exit_network import ExitChoice, ExitNetwork, build_exit_network

METADATA_KEY = "degl"  # ONNX metadata_props key; "degl.json" in a .pt2 archive's extra files
FILE_FORMAT = "degl-export-1"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


@dataclass
class Exported:
    """An exported file: its format, metadata and a function from ``uint8`` images to its outputs."""

    path: Path
    fmt: str
    metadata: dict[str, Any]
    forward: Callable[[torch.Tensor], list[torch.Tensor]]

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The file's outputs (float tensors, one per output name) for a ``uint8`` batch ``N x C x H x W``."""
        shape = tuple(self.metadata["input"]["shape"][1:])
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
            raise UserError(
                f"{self.path} takes uint8 images of shape {'x'.join(map(str, shape))}, "
                f"not {images.dtype} {'x'.join(map(str, images.shape[1:]))}"
            )
        return self.forward(images.contiguous())


def guess_format(path: Path) -> str:
    """``onnx``, ``pt2`` or ``state-dict``, by the file's suffix, else by its contents."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "pt2"
    if suffix in (".pt", ".pth"):
        return "state-dict"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return "pt2" if any(name.endswith(f"extra/{METADATA_KEY}.json") for name in names) else "state-dict"
    return "onnx"


def load_exported(path: Path | str, *, fmt: str | None = None) -> Exported:
    """Open a file written by ``degl export``; :class:`UserError` when it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"exported file {path} does not exist")
    fmt = fmt or guess_format(path)
    loader = {"onnx": _load_onnx, "pt2": _load_pt2, "state-dict": _load_state_dict}[fmt]
    try:
        metadata, forward = loader(path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is corrupt or not a degl {fmt} export ({first_line(exc)})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FILE_FORMAT:
        raise UserError(f"{path} is not a file written by 'degl export' (no degl metadata)")
    return Exported(path, fmt, metadata, forward)


def _load_onnx(path: Path) -> tuple[dict[str, Any], Callable[[torch.Tensor], list[torch.Tensor]]]:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running an ONNX file needs onnxruntime: pip install 'degl[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
    name = session.get_inputs()[0].name

    def forward(images: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(out) for out in session.run(None, {name: images.cpu().numpy()})]

    return metadata, forward


def _load_pt2(path: Path) -> tuple[dict[str, Any], Callable[[torch.Tensor], list[torch.Tensor]]]:
    extra = {f"{METADATA_KEY}.json": ""}
    module = torch.export.load(path, extra_files=extra).module()
    metadata = json.loads(extra[f"{METADATA_KEY}.json"] or "{}")
    return metadata, _torch_forward(module)


def _load_state_dict(path: Path) -> tuple[dict[str, Any], Callable[[torch.Tensor], list[torch.Tensor]]]:
    network = load_network(path)
    return read_state_dict(path)["metadata"], _torch_forward(network)


def _torch_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    @torch.no_grad()
    def forward(images: torch.Tensor) -> list[torch.Tensor]:
        out = module(images)
        return [t.float() for t in out] if isinstance(out, (tuple, list)) else [out.float()]

    return forward


def read_state_dict(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} is corrupt or not a degl state-dict export ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FILE_FORMAT or "state_dict" not in state:
        raise UserError(f"{path} is not a state dict written by 'degl export --format state-dict'")
    return state


@dataclass(frozen=True)
class _Shapes:
    """The two facts of a data set that building a model needs (see :func:`degl.run.setup.make_stages`)."""

    input_shape: tuple[int, ...]
    num_classes: int


def load_network(path: Path | str) -> ExitNetwork:
    """Rebuild a ``--format state-dict`` file as a trainable :class:`ExitNetwork` (eval mode; call
    ``.train()`` to fine-tune). Needs degl and, for a model from a file, that file."""
    from degl.run.config import make_config
    from degl.run.setup import make_stages

    state = read_state_dict(Path(path))
    metadata = state["metadata"]
    cfg = make_config(dict(state["config"]))
    shapes = _Shapes(tuple(metadata["input"]["shape"][1:]), len(metadata["classes"]))
    with torch.random.fork_rng():  # building draws initial weights; leave the caller's generator alone
        stages = make_stages(cfg, shapes)  # type: ignore[arg-type]
    choice = ExitChoice(metadata["exit_kind"], tuple(metadata["exit_stages"]))
    network = build_exit_network(stages, choice, metadata["input"]["mean"], metadata["input"]["std"])
    try:
        network.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise UserError(
            f"{path} does not match the network its config builds: {str(exc).splitlines()[0][:160]}"
        ) from None
    return network
