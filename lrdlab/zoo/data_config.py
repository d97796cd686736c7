"""How :func:`lrdlab.zoo.data.get_loaders` shapes the images (:class:`Images`) and runs its DataLoaders
(:class:`LoaderOptions`): frozen dataclasses, checked when made."""

from __future__ import annotations

from dataclasses import dataclass

from lrdlab.finetune.fit_config import check_count, check_type


@dataclass(frozen=True)
class Images:
    """How :func:`get_loaders` shapes the images: ``size`` pixels a side (None: the set's own, 32 for mnist5k
    and CIFAR-10, 8 for digits, 224 for ImageNet); ``channels`` of the in-memory sets (None: 3 for mnist5k, 1 for
    digits); ``augment``: CIFAR/ImageNet's random crop + flip for training; ``shift``: the in-memory sets' training
    images randomly translated by up to that many pixels (0: off).

    ``get_loaders("digits", 64, Images(size=16, channels=3))``
    """

    size: int | None = None
    channels: int | None = None
    augment: bool = True
    shift: int = 0

    def __post_init__(self) -> None:
        check_count("Images", "size", self.size, 1, optional=True)
        check_count("Images", "channels", self.channels, 1, optional=True)
        check_type("Images", "augment", self.augment, bool, False)
        check_count("Images", "shift", self.shift, 0)


@dataclass(frozen=True)
class LoaderOptions:
    """The DataLoaders' mechanics: ``test_batch_size`` (None: the training batch per process, at least 256
    images over all processes), ``num_workers``, ``drop_last`` (the training loader's last partial batch) and
    ``pin_memory``."""

    test_batch_size: int | None = None
    num_workers: int = 0
    drop_last: bool = False
    pin_memory: bool = False

    def __post_init__(self) -> None:
        check_count("LoaderOptions", "test_batch_size", self.test_batch_size, 1, optional=True)
        check_count("LoaderOptions", "num_workers", self.num_workers, 0)
        check_type("LoaderOptions", "drop_last", self.drop_last, bool, True)
        check_type("LoaderOptions", "pin_memory", self.pin_memory, bool, True)
