"""``degl eval --run RUN|FILE --images PATH...``: the class of each of a user's own pictures.

Images are read as stored (8-bit grayscale or RGB), at the model's size: the network normalises
them itself (:class:`~degl.run.exit_network.ExitNetwork`), exactly as its exported files do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError
from degl.run.exported import Exported

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pnm", ".tif", ".tiff"}
CHUNK = 64


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, and the image files directly inside the directories named (sorted)."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise UserError(f"--images {item}: no such file or directory")
    if not found:
        raise UserError(f"--images {' '.join(map(str, paths))}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def read_image(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """One image as ``uint8`` ``C x H x W``; :class:`UserError` unless it has the model's channels and size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as opened:
            image = opened.convert({"1": "L", "P": "RGB"}.get(opened.mode, opened.mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read {path} as an image ({str(exc)[:120]})") from None
    if image.mode not in ("L", "RGB"):
        raise UserError(f"{path}: {image.mode} images are not supported; save it as 8-bit grayscale or RGB")
    have = 1 if image.mode == "L" else 3
    if have != channels:
        kind = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")
        raise UserError(f"{path}: {have} channel(s) ({image.mode}); the model takes {kind} images ({channels})")
    if image.size != (width, height):
        raise UserError(
            f"{path}: {image.size[0]}x{image.size[1]} pixels; the model takes {width}x{height} (resize it first)"
        )
    array = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def predict(forward: Any, images: torch.Tensor, *, probabilities: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its probability for every image; ``forward`` maps uint8 images to outputs
    (the last output is used: the last exit of an ``--exit all`` network)."""
    classes, confidence = [], []
    with torch.no_grad():
        for start in range(0, len(images), CHUNK):
            out = forward(images[start : start + CHUNK])
            out = out[-1] if isinstance(out, (list, tuple)) else out
            probs = out.float() if probabilities else out.float().softmax(dim=1)
            value, index = probs.max(dim=1)
            classes.append(index)
            confidence.append(value)
    return torch.cat(classes), torch.cat(confidence)


def predict_images(source: str, paths: Sequence[str], *, exit_text: str | None, data_dir: str | None) -> dict[str, Any]:
    """Classify the images under ``paths`` (on the CPU) with a run directory's network or an exported file."""
    from degl.run.exit_network import build_exit_network, class_names, normalisation, parse_exit

    files = collect_images(paths)
    exported = source_file(source)
    if exported is not None:
        if exit_text is not None:
            raise UserError("--exit chooses among a run's heads; an exported file has the exits it was exported with")
        meta = exported.metadata
        shape, names, forward = meta["input"]["shape"][1:], meta["classes"], exported.run
        probabilities, label = meta["exit_kind"] == "ensemble", meta["exit"]
    else:
        from degl.run.evaluation import load_run

        run = load_run(Path(source), device="cpu", data_dir=data_dir, channels_last=False, compile=False)
        choice = parse_exit(exit_text or "last", run.evaluated)
        network = build_exit_network(run.setup.stages, choice, *normalisation(run.setup.data))
        shape, names, forward = list(run.setup.data.input_shape), class_names(run.setup.data), network
        probabilities, label = choice.kind == "ensemble", choice.label
    images = torch.stack([read_image(path, shape) for path in files])
    predicted, confidence = predict(forward, images, probabilities=probabilities)
    rows = [
        {"image": str(path), "class": int(c), "name": names[int(c)], "confidence": float(p)}
        for path, c, p in zip(files, predicted, confidence)
    ]
    return {"source": source, "exit": label, "predictions": rows}


def source_file(source: str) -> Exported | None:
    """The exported file ``source`` names, or None for a run directory."""
    from degl.run.exported import load_exported

    return load_exported(Path(source)) if Path(source).is_file() else None
