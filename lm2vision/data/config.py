"""The data config: which dataset, how it is split, stored and augmented."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import bounds, choices
from ..errors import Lm2vError

DATASETS = ("bundled", "cifar10", "cifar100", "svhn")  # or a path to a folder / archive
FORMATS = ("auto", "folder", "cifar10", "cifar100", "svhn", "tiny-imagenet", "imagefolder", "hf")
STORAGES = ("auto", "memory", "stream")
HUB_PREFIX = "hf:"  # dataset=hf:ORG/NAME reads a Hugging Face hub dataset
AUTOAUGMENT_POLICIES = ("none", "imagenet", "cifar10", "svhn")  # kornia's AutoAugment policy names

# The method's authors' augmentation recipes, as overrides of the data section; a command's
# ``--recipe NAME`` puts them before the user's own overrides, so what the user sets wins.
RECIPES: Dict[str, List[str]] = {
    "cifar": ["data.augment=crop_flip", "data.crop_scale_min=0.2", "data.interpolation=bicubic", "data.hflip=true",
              "data.autoaugment=none", "data.random_erasing=0"],
    "imagenet": ["data.augment=crop_flip", "data.crop_scale_min=0.08", "data.interpolation=bicubic",
                 "data.hflip=true", "data.autoaugment=imagenet", "data.random_erasing=0.25"],
    "none": ["data.augment=none", "data.autoaugment=none", "data.random_erasing=0"],
}


def recipe_overrides(name: Optional[str]) -> List[str]:
    """The ``data.KEY=VALUE`` overrides of the augmentation recipe ``name`` (:data:`RECIPES`): cifar
    (CIFAR-10/100), imagenet (Tiny-ImageNet and ImageNet) or none; no name (None), no overrides."""
    if name is None:
        return []
    if name not in RECIPES:
        raise Lm2vError(f"unknown augmentation recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return list(RECIPES[name])


@dataclass
class DataConfig:
    """Where the images come from and how they become batches.

    dataset: "bundled" (the CIFAR-10 subset shipped in the package, offline), "cifar10",
        "cifar100", "svhn" (read from ``root``; SVHN's official ``.mat`` files under ``root/svhn/``), a path to a folder / ``.tar.gz`` / ``.tgz`` / ``.tar``, a
        folder written by Hugging Face ``datasets``' ``save_to_disk`` (format ``hf``, detected), or
        ``hf:ORG/NAME`` for a hub dataset (needs ``pip install "lm2vision[datasets]"`` and network).
    root: directory holding ``cifar-10-batches-bin/``, ``svhn/`` etc. for dataset cifar10/cifar100/svhn; default
        ``$LM2V_DATA`` or ``~/.cache/lm2vision/data``. Must be unset for the other datasets.
    format: auto | folder | cifar10 | cifar100 | svhn | tiny-imagenet | imagefolder | hf (auto: from the layout).
    image_column / label_column: the Hugging Face dataset's image and label columns; None: the one
        ``Image`` feature / the one ``ClassLabel`` feature (none or several: an error listing the columns).
    hf_config: the hub dataset's config name (``datasets.load_dataset(id, hf_config)``), if it has several.
    val_fraction: share of each training class carved out (seeded by ``split_seed``) as the
        validation split, unless the dataset ships a ``val/`` split; the test split is never touched.
    test_fraction: share of each class held out as test, only for a split-less ImageFolder.
    max_train_per_class / max_test_per_class: keep at most this many images per class (a seeded,
        deterministic choice; the train cap applies before the validation split is carved).
    store_size: side of the stored images when a set's images differ in size (shorter side
        resized to it, then centre crop); sets whose images share one size keep it.
    on_corrupt: "skip" (one warning with the count) or "error".
    download: fetch the official CIFAR binary archive or SVHN ``.mat`` files when missing (md5-checked).
    augment: "crop_flip" (RandomResizedCrop scale [crop_scale_min, 1], ratio 3/4..4/3, + flip if
        ``hflip``) or "none" (resize only). The geometric part alone: ``autoaugment`` and
        ``random_erasing`` apply on top of either.
    interpolation: "bicubic" or "bilinear", for the random resized crop.
    autoaugment: "none" or kornia's AutoAugment policy "imagenet" | "cifar10" | "svhn", a sub-policy
        drawn per image, on the cropped [0, 1] pixels before normalisation. Needs kornia
        (``pip install "lm2vision[augment]"``).
    random_erasing: probability in [0, 1] that an image gets one erased box (area share 0.02..0.33,
        aspect 0.3..3.3, filled with 0 after normalisation), as timm's RandomErasing; needs kornia.
        These two are drawn per micro-batch, so unlike the crop they depend on the number of ranks
        and ``optim.accum_steps`` (see :meth:`lm2vision.train.loop.ClassificationSteps.batches`).
    storage: where the decoded training images live. "memory": decoded once, moved to the device
        (the fastest path); "stream": decoded per batch in ``workers`` DataLoader processes from the
        files (folders and Hugging Face datasets, not archives or CIFAR files); "auto": stream when the
        decoded uint8 train + val + test would exceed ``memory_limit_gb`` (the estimate, the threshold
        and the choice are printed). Both paths give the same batches and losses; streamed images are
        brought to one size as in memory (their shared size, else ``store_size``).
    memory_limit_gb: the threshold of ``storage=auto``, in GB (10^9 bytes).
    workers: DataLoader worker processes decoding streamed batches (0: in the training process).
    prefetch: batches each worker decodes ahead (DataLoader's prefetch_factor).
    mean / std: per-channel normalisation of [0, 1] pixels; 0.5/0.5 maps pixels to [-1, 1]
        (the CIFAR-style convention used by the method's authors).
    """

    dataset: str = "bundled"
    root: Optional[str] = None
    format: str = field(default="auto", metadata=choices(*FORMATS))
    val_fraction: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    test_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=1))
    max_train_per_class: Optional[int] = field(default=None, metadata=bounds(ge=1))
    max_test_per_class: Optional[int] = field(default=None, metadata=bounds(ge=1))
    store_size: int = field(default=32, metadata=bounds(ge=1))
    on_corrupt: str = field(default="skip", metadata=choices("skip", "error"))
    download: bool = False
    split_seed: int = 0
    augment: str = field(default="crop_flip", metadata=choices("crop_flip", "none"))
    crop_scale_min: float = field(default=0.2, metadata=bounds(gt=0, le=1))
    hflip: bool = True
    interpolation: str = field(default="bicubic", metadata=choices("bicubic", "bilinear"))
    autoaugment: str = field(default="none", metadata=choices(*AUTOAUGMENT_POLICIES))
    random_erasing: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    storage: str = field(default="auto", metadata=choices(*STORAGES))
    memory_limit_gb: float = field(default=8.0, metadata=bounds(gt=0))
    workers: int = field(default=4, metadata=bounds(ge=0))
    prefetch: int = field(default=2, metadata=bounds(ge=1))
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    hf_config: Optional[str] = None
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
