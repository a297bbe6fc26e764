"""ImageNet (ILSVRC-2012) from ``train/`` and ``val/`` class folders, decoded by worker processes.

Too large to hold in memory, so unlike the small data sets it is read from disk every epoch with
torchvision's ``ImageFolder`` listing and a torch ``DataLoader``. Workers decode JPEGs, augment,
and hand over uint8 tensors (a quarter of the bytes of float ones); normalisation happens on the
training device. Training order *and* augmentation are functions of ``(seed, epoch, position)``
only: every sample's transform runs under its own seed, so a run resumed mid-epoch sees exactly
the batches it would have seen, whichever worker decodes them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from degl.data.loader import mix_seed
from degl.errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HINT = "pass --data-dir DIR holding ImageNet's train/ and val/, each with one folder per class"
Sample = tuple[int, "int | None"]  # (index into the split, seed of its augmentation or None)
Transform = Callable[[object], torch.Tensor]  # PIL image -> uint8 tensor [3, H, W]


@dataclass(frozen=True)
class BadImage:
    """A sample that could not be decoded; carried back to the main process to be reported there."""

    path: str
    reason: str


def _collate(samples: list) -> object:
    bad = next((s for s in samples if isinstance(s, BadImage)), None)
    return bad if bad is not None else default_collate(samples)


class FolderImages(torch.utils.data.Dataset):
    """The images of one split: decode, transform under a per-sample seed, return uint8 CHW."""

    def __init__(self, samples: list[tuple[str, int]], transform: Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Sample) -> tuple[torch.Tensor, int] | BadImage:
        from PIL import Image

        index, seed = item
        path, label = self.samples[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return BadImage(path, f"{type(exc).__name__}: {exc}")
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class FolderLoader:
    """A :class:`~degl.data.base.BatchLoader` over a :class:`FolderImages` split.

    Args:
        indices: the samples of the split to use (training subsets use fewer).
        train: shuffle by ``(seed, epoch)``, seed each sample's augmentation and drop the last
            partial batch; otherwise every sample in order.
    """

    def __init__(
        self,
        images: FolderImages,
        indices: list[int],
        *,
        train: bool,
        batch_size: int,
        device: torch.device,
        workers: int,
        seed: int = 0,
    ) -> None:
        self.images = images
        self.indices = indices
        self.train = train
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.workers = workers
        self.seed = seed
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(MEAN, device=self.device).view(shape)
        self.std = torch.tensor(STD, device=self.device).view(shape)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def batch_sizes(self) -> list[int]:
        n = len(self.indices)
        return [min(self.batch_size, n - i * self.batch_size) for i in range(len(self))]

    def batches(self, epoch: int) -> list[list[Sample]]:
        """The samples of every batch of ``epoch``: decided here, before any image is read."""
        if not self.train:
            order = [(index, None) for index in self.indices]
        else:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            perm = torch.randperm(len(self.indices), generator=generator).tolist()
            order = [(self.indices[i], mix_seed(self.seed, epoch, pos, 2)) for pos, i in enumerate(perm)]
        size = self.batch_size
        return [order[step * size : (step + 1) * size] for step in range(len(self))]

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``epoch`` from ``start_step`` on; skipped batches are never read from disk."""
        todo = self.batches(epoch)[start_step:]
        if not todo:
            return
        loader = DataLoader(
            self.images,
            batch_sampler=todo,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        iterator = iter(loader)
        try:
            for batch in iterator:
                if isinstance(batch, BadImage):
                    raise UserError(
                        f"cannot decode image {batch.path} ({batch.reason}); replace or delete the file and start again"
                    )
                images, labels = batch
                images = images.to(self.device, non_blocking=True).float().div_(255)
                yield (images - self.mean) / self.std, labels.to(self.device, non_blocking=True)
        finally:
            # Dropping the last reference stops the worker processes now, even when the consumer
            # abandons the epoch early (--max-steps, an error).
            del iterator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def _list_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{root} has no {split}/ folder; {HINT}")
    try:
        listing = ImageFolder(str(folder))
    except FileNotFoundError as exc:
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        if loose:
            raise UserError(
                f"{folder} holds images directly ({loose[0]}, ...); sort them into one folder per class "
                "named like the train/ folders"
            ) from None
        raise UserError(f"{folder}: {str(exc).splitlines()[0]}; {HINT}") from None
    return listing.classes, listing.samples


class ImageNetData:
    """ImageNet as a :class:`~degl.data.base.Dataset`: the file listing plus loader settings.

    Args:
        image_size: side of the square crops (224 in the paper); evaluation resizes the short side
            to ``image_size * 256 / 224`` first, as the paper's 256 to 224.
        workers: decoding processes per loader (0 decodes in the training process).
    """

    name = "imagenet"

    def __init__(self, root: str | Path, *, image_size: int = 224, workers: int = 4) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"--data-dir {self.root} does not exist or is not a directory; {HINT}")
        self.image_size = image_size
        self.workers = workers
        self.classes, self.train_samples = _list_split(self.root, "train")
        val_classes, self.val_samples = _list_split(self.root, "val")
        if val_classes != self.classes:
            only_train = sorted(set(self.classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(self.classes))
            raise UserError(
                f"the class folders of {self.root}/train and {self.root}/val differ "
                f"(only in train: {', '.join(only_train[:3]) or '-'}; only in val: "
                f"{', '.join(only_val[:3]) or '-'}); both need the same class folders"
            )
        self.num_classes = len(self.classes)
        self.train_indices = list(range(len(self.train_samples)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_train(self) -> int:
        return len(self.train_indices)

    def subset(self, train_size: int | None) -> ImageNetData:
        """``train_size`` training images drawn by a fixed shuffle.

        The listing is sorted by class, so its first N images would cover only the first classes.
        """
        if train_size is None or train_size >= len(self.train_indices):
            return self
        generator = torch.Generator().manual_seed(mix_seed(len(self.train_indices), 3))
        chosen = torch.randperm(len(self.train_indices), generator=generator)[:train_size]
        other = copy.copy(self)
        other.train_indices = sorted(self.train_indices[i] for i in chosen.tolist())
        return other

    def transforms(self, augment: bool) -> Transform:
        from torchvision import transforms

        if augment:
            steps = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            resize = round(self.image_size * 256 / 224)
            steps = [transforms.Resize(resize), transforms.CenterCrop(self.image_size)]
        return transforms.Compose([*steps, transforms.PILToTensor()])

    def loaders(
        self, *, batch_size: int, eval_batch_size: int, device: torch.device, augment: bool, seed: int
    ) -> tuple[FolderLoader, FolderLoader]:
        """Training loader (shuffled, augmented if ``augment``) and in-order validation loader."""
        train_images = FolderImages(self.train_samples, self.transforms(augment))
        val_images = FolderImages(self.val_samples, self.transforms(False))
        common = {"device": device, "workers": self.workers}
        train = FolderLoader(train_images, self.train_indices, train=True, batch_size=batch_size, seed=seed, **common)
        val = FolderLoader(
            val_images, list(range(len(self.val_samples))), train=False, batch_size=eval_batch_size, **common
        )
        return train, val


def candidate_dirs() -> list[Path]:
    """Where to look without --data-dir, in order."""
    dirs = []
    if os.environ.get("DEGL_DATA_DIR"):
        dirs.append(Path(os.environ["DEGL_DATA_DIR"]) / "imagenet")
    return [*dirs, Path("data/imagenet"), Path.home() / ".cache/degl/imagenet"]


def load_imagenet(data_dir: str | Path | None, *, image_size: int = 224, workers: int = 4) -> ImageNetData:
    """List ImageNet's folders under ``data_dir`` and check they agree; no image is decoded yet."""
    if data_dir is None:
        found = [path for path in candidate_dirs() if (path / "train").is_dir()]
        if not found:
            raise UserError(f"ImageNet not found in {', '.join(map(str, candidate_dirs()))}; {HINT}")
        data_dir = found[0]
    return ImageNetData(data_dir, image_size=image_size, workers=workers)
