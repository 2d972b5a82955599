"""Stream mode (data.storage: stream): images decoded batch by batch in DataLoader workers.

An ImageSet in stream mode holds a `LazyImages` where memory mode holds a uint8 tensor:
where each image lives (a source: image files, the rows of a packed HDF5, or a tensor a
loader already holds) and the nominal N×C×H×W shape, no pixels. Indexing it selects rows,
so splits and class filters work unchanged. `StreamDataset` reads one image (an HDF5 file
is opened once per worker, lazily, in the worker) and applies torchvision.transforms.v2:
RandomResizedCrop, flips and colour jitter for training, resize + centre crop for
evaluation. The batch sampler is a `BatchPlan` the training loop fills with the P×K
sampler's batches; each item carries its own seed, keyed by (seed, epoch, step, position),
so batches and crops do not depend on the number of workers (docs/streaming.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from runner.config import ConfigError, DataConfig
from runner.data.augment import AugmentPolicy
from runner.data.image_files import ImageFiles
from runner.data.image_set import ImageSet
from runner.data.paths import one_line

if TYPE_CHECKING:  # imported where used: see eval_transform
    from torchvision.transforms import v2

MEMORY_FRACTION = 0.5
"""auto streams when the decoded set would take more than this fraction of the available memory per process."""
RESIZE_RATIO = 8 / 7
"""Evaluation resizes to round(image_size × this) and centre-crops image_size (256 -> 224, the standard)."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FileSource:
    """Image files: root / paths[row], decoded as RGB."""
    root: str
    paths: np.ndarray


@dataclass(frozen=True)
class PackSource:
    """The `images` rows of a file written by `python -m runner.data pack`."""
    path: str


@dataclass(frozen=True)
class TensorSource:
    """A uint8 N×C×H×W tensor a loader already holds (digits, MNIST, signs, LFW)."""
    images: torch.Tensor


Source = Union[FileSource, PackSource, TensorSource]


class LazyImages:
    """Rows of a source with a nominal uint8 N×C×size×size shape; indexing selects rows, decodes nothing."""

    dtype = torch.uint8

    def __init__(self, source: Source, rows: np.ndarray, channels: int, size: int):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64).reshape(-1)
        self.channels, self.size = channels, size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> "LazyImages":
        idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        return LazyImages(self.source, self.rows[idx], self.channels, self.size)

    def numpy(self) -> np.ndarray:
        """These rows decoded by the evaluation transform, uint8 N×C×size×size (for a few images)."""
        data = StreamDataset(self.source, self.size, AugmentPolicy())
        out = np.zeros(self.shape, dtype=np.uint8)
        for i, row in enumerate(self.rows.tolist()):
            out[i] = data[(row, None, -1)][0].numpy()
        return out


def is_lazy(images) -> bool:
    return isinstance(images, LazyImages)


# ---------------------------------------------------------------- storage decision

def available_memory() -> int:
    """Bytes of memory available now (MemAvailable: free plus reclaimable page cache)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_storage(cfg: DataConfig, n_images: int, channels: int, size: int, ranks: int = 1,
                   available: Optional[int] = None) -> tuple[str, str]:
    """(memory or stream, a log line): data.storage, or for auto the decoded size against the memory per rank."""
    if cfg.storage != "auto":
        return cfg.storage, f"data.storage: {cfg.storage}"
    need = n_images * channels * size * size
    have = available_memory() if available is None else available
    pick = "memory" if need <= MEMORY_FRACTION * have / max(1, ranks) else "stream"
    return pick, (f"data.storage: auto -> {pick} (decoded {need / 2**30:.2f} GiB "
                  f"{'<=' if pick == 'memory' else '>'} {MEMORY_FRACTION:.0%} of {have / 2**30:.2f} GiB "
                  f"available / {ranks} rank(s))")


# ---------------------------------------------------------------- lazy image sets

def lazy_files(files: ImageFiles, size: int) -> ImageSet:
    """The ImageSet decode_files would give, with the files left on disk (RGB at size×size)."""
    paths = np.asarray(files.paths, dtype=str)
    images = LazyImages(FileSource(str(files.root), paths), np.arange(len(paths)), 3, size)
    return ImageSet(images, torch.from_numpy(files.labels.astype(np.int64)), list(files.class_names),
                    torch.from_numpy(files.index.astype(np.int64)), parents=files.parents,
                    meta={**files.meta, "root": str(files.root)}, partition=files.partition, files=paths)


def lazy_tensor(ds: ImageSet, size: Optional[int]) -> ImageSet:
    """A loaded set's tensor as a source: stream transforms on sets that are small anyway."""
    n, c, _, w = ds.images.shape
    ds.images = LazyImages(TensorSource(ds.images), np.arange(n), c, size or w)
    return ds


def lazy_pack(ds: ImageSet, path: str, channels: int, side: int, size: Optional[int]) -> ImageSet:
    """A pack's ImageSet (read without its images) reading its rows on demand."""
    ds.images = LazyImages(PackSource(path), np.arange(len(ds.labels)), channels, size or side)
    return ds


# ---------------------------------------------------------------- reading and transforms

class StreamDataset(Dataset):
    """Items (row, seed or None, label) -> (uint8 C×size×size image, label); None: evaluation transform."""

    def __init__(self, source: Source, size: int, policy: AugmentPolicy):
        self.source, self.size = source, size
        self.train_tf, self.eval_tf = train_transform(size, policy), eval_transform(size)
        self._h5: Optional[h5py.File] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None}  # an open HDF5 handle never crosses into a worker

    def read(self, row: int) -> torch.Tensor:
        """The stored image of `row` as uint8 C×H×W (files: drafted near the resize size, as RGB)."""
        src = self.source
        if isinstance(src, TensorSource):
            return src.images[row]
        if isinstance(src, PackSource):
            if self._h5 is None:  # once per worker, in the worker: h5py handles do not survive a fork
                self._h5 = h5py.File(src.path, "r")
            return torch.from_numpy(self._h5["images"][row])
        path = Path(src.root) / str(src.paths[row])
        load = round(self.size * RESIZE_RATIO)
        try:
            with Image.open(path) as img:
                img.draft("RGB", (load, load))  # JPEG: decode at 1/2..1/8 scale when still >= load
                a = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:
            raise ConfigError("data.root", str(path), f"a readable image file ({one_line(err)})") from None
        return torch.from_numpy(a.copy()).permute(2, 0, 1)

    def __getitem__(self, item: tuple) -> tuple[torch.Tensor, int]:
        row, seed, label = item
        image = self.read(int(row))
        if seed is None:
            return self.eval_tf(image), label
        with torch.random.fork_rng(devices=[]):  # the sample's own stream: any worker draws the same crop
            torch.manual_seed(seed)
            return self.train_tf(image), label


def eval_transform(size: int) -> v2.Compose:
    """Resize the short side to round(size × 8/7), then the centre size×size crop."""
    from torchvision.transforms import v2  # here, not at the top: every command imports this module (via the
    # data registry) and torchvision costs ~1 s; only a streaming run builds transforms
    return v2.Compose([v2.Resize(round(size * RESIZE_RATIO), antialias=True), v2.CenterCrop(size)])


def train_transform(size: int, policy: AugmentPolicy) -> v2.Compose:
    """RandomResizedCrop (area from policy.crop_scale), flips per policy, brightness/contrast jitter."""
    if not policy.active:
        return eval_transform(size)
    from torchvision.transforms import v2  # lazily, as in eval_transform
    steps = [v2.RandomResizedCrop(size, scale=(policy.crop_scale, 1.0), antialias=True)]
    if policy.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if policy.jitter:
        steps.append(v2.ColorJitter(brightness=policy.jitter, contrast=policy.jitter))
    return v2.Compose(steps)


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of one training sample: a function of where it is in the run, not of the worker."""
    return int(np.random.SeedSequence([seed, epoch, step, position]).generate_state(1, np.uint64)[0] >> 1)


class BatchPlan:
    """The DataLoader's batch sampler: the batches of items the loop sets before each pass."""

    def __init__(self):
        self.batches: list[list[tuple]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: StreamDataset, plan: BatchPlan, num_workers: int, pin_memory: bool) -> DataLoader:
    """Persistent workers (spawned once per run), pinned batches on CUDA, the plan as batch sampler."""
    return DataLoader(dataset, batch_sampler=plan, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)


def sample_stats(images: LazyImages, pretrained: bool, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std for the model's input: ImageNet's for pretrained RGB trunks, else of n sampled images."""
    if pretrained and images.channels == 3:
        return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    x = torch.from_numpy(images[rows].numpy()).float().div(255.0)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3)
