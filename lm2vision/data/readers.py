"""Readers: every on-disk layout becomes ``ImageSet``s, and :func:`load_imageset_splits` turns a
:class:`DataConfig` into train / val / test.

Layouts: class folders (``train/<class>/*``, ``test/<class>/*``, optional ``val/``), CIFAR-10/100
(binary or pickled python version), Tiny ImageNet, and a split-less ImageFolder (``<class>/*``).
Folders and ``.tar.gz``/``.tgz``/``.tar`` archives are read the same way (archives without extraction).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Lm2vError
from . import cifar
from .config import DATASETS, FORMATS, DataConfig
from .decode import RawSplit, decode_splits, is_image_name
from .files import FileTree
from .types import ImageSet

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass
class DataSplits:
    """The three splits of one dataset; they share ``classes`` and the stored image size."""

    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def bundled_path() -> Path:
    """The CIFAR-10 subset shipped with the package (500 train + 100 test images per class)."""
    return ASSETS / "cifar10_subset.tar.gz"


def default_data_root() -> Path:
    """Where cifar10/cifar100 live when ``root`` is unset: ``$LM2V_DATA`` or ``~/.cache/lm2vision/data``."""
    return Path(os.environ.get("LM2V_DATA", "~/.cache/lm2vision/data")).expanduser()


# ---------------------------------------------------------------- index helpers

def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out round(fraction * n_c) of each class c (seeded). Returns (kept, held) sorted indices."""
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels, sorted=True):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(fraction * len(idx))
        held.append(idx[:k])
        kept.append(idx[k:])
    empty = torch.zeros(0, dtype=torch.long)
    return torch.cat(kept or [empty]).sort().values, torch.cat(held or [empty]).sort().values


def cap_per_class(labels: torch.Tensor, max_per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``max_per_class`` images of each class (a seeded choice)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels, sorted=True):
        idx = (labels == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:max_per_class]])
    return torch.cat(keep or [torch.zeros(0, dtype=torch.long)]).sort().values


# ---------------------------------------------------------------- layouts

def _class_of(path: str, depth: int) -> str:
    return path.split("/")[depth]


def _folder_raw(tree: FileTree) -> tuple[dict[str, RawSplit], list[str]]:
    """``train/<class>/*``, ``test/<class>/*`` and optional ``val/<class>/*`` (any depth below class)."""
    images = {s: [f for f in tree.under(s) if f.count("/") >= 2 and is_image_name(f)] for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if not images[s]:
            raise Lm2vError(f"no images under {s}/<class>/ in {tree.root}")
    classes = sorted({_class_of(f, 1) for f in images["train"]})
    index = {c: i for i, c in enumerate(classes)}
    raw = {}
    for s, files in images.items():
        if not files:
            continue
        unknown = sorted({_class_of(f, 1) for f in files} - set(classes))
        if unknown:
            raise Lm2vError(f"{s}/ has classes missing from train/: {', '.join(unknown[:5])}")
        raw[s] = RawSplit()
        for f in files:
            raw[s].add(f, tree.read(f), index[_class_of(f, 1)])
    return raw, classes


def _tiny_names(tree: FileTree, wnids: list[str]) -> list[str]:
    """Readable class names from ``words.txt`` (first synonym), else the wnids."""
    if "words.txt" not in tree:
        return list(wnids)
    words = {}
    for line in tree.read("words.txt").decode("utf-8", "replace").splitlines():
        wnid, _, text = line.partition("\t")
        words[wnid.strip()] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{n} ({w})" if n in dup else n for n, w in zip(names, wnids)]


def _tiny_imagenet_raw(tree: FileTree) -> tuple[dict[str, RawSplit], list[str]]:
    """Tiny ImageNet: ``train/<wnid>/images/*``; its labelled ``val/`` becomes the test split (the
    official test split has no labels). Class order: sorted wnids."""
    wnids = sorted({w.strip() for w in tree.read("wnids.txt").decode().split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    train = RawSplit()
    for f in tree.under("train"):
        parts = f.split("/")
        if len(parts) == 4 and parts[2] == "images" and is_image_name(f) and parts[1] in index:
            train.add(f, tree.read(f), index[parts[1]])
    test = RawSplit()
    if "val/val_annotations.txt" not in tree:
        raise Lm2vError(f"tiny-imagenet layout needs val/val_annotations.txt in {tree.root}")
    for line in tree.read("val/val_annotations.txt").decode().splitlines():
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        if cols[1] not in index:
            raise Lm2vError(f"val/val_annotations.txt names unknown class {cols[1]!r}")
        test.add(f"val/images/{cols[0]}", tree.read(f"val/images/{cols[0]}"), index[cols[1]])
    if not train.names:
        raise Lm2vError(f"no images under train/<wnid>/images/ in {tree.root}")
    return {"train": train, "test": test}, _tiny_names(tree, wnids)


def _imagefolder_raw(tree: FileTree, test_fraction: float, seed: int) -> tuple[dict[str, RawSplit], list[str]]:
    """``<class>/*`` with no split folders: a seeded, stratified train/test split."""
    files = [f for f in tree.files if "/" in f and is_image_name(f)]
    if not files:
        raise Lm2vError(f"no images found in {tree.root} (expected <class>/<image> files)")
    classes = sorted({_class_of(f, 0) for f in files})
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[_class_of(f, 0)] for f in files])
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    raw = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        raw[split] = RawSplit()
        for i in idx.tolist():
            raw[split].add(files[i], tree.read(files[i]), int(labels[i]))
    return raw, classes


def detect_format(tree: FileTree) -> str:
    """The layout of ``tree``: tiny-imagenet, cifar10, cifar100, folder or imagefolder."""
    if "wnids.txt" in tree:
        return "tiny-imagenet"
    for name in ("cifar10", "cifar100"):
        if cifar.has_binary(tree, name) or cifar.has_pickled(tree, name):
            return name
    if tree.under("train") or tree.under("test"):
        return "folder"
    return "imagefolder"


def read_dataset(path: str | Path, format: str = "auto", store_size: int = 32, on_corrupt: str = "skip",
                 test_fraction: float = 0.2, split_seed: int = 0) -> dict[str, ImageSet]:
    """Read the folder or archive at ``path`` into ``{"train", "test"[, "val"]}`` image sets."""
    if format not in FORMATS:
        raise Lm2vError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    tree = FileTree(path)
    if not tree.files:
        raise Lm2vError(f"dataset is empty: {tree.root}")
    fmt = detect_format(tree) if format == "auto" else format
    if fmt in ("cifar10", "cifar100"):
        return cifar.read_cifar_tree(tree, fmt)
    if fmt == "tiny-imagenet":
        raw, classes = _tiny_imagenet_raw(tree)
    elif fmt == "folder":
        raw, classes = _folder_raw(tree)
    else:
        raw, classes = _imagefolder_raw(tree, test_fraction, split_seed)
    return decode_splits(raw, classes, store_size, on_corrupt)


# ---------------------------------------------------------------- the dispatcher

def _check_config(cfg: DataConfig) -> None:
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise Lm2vError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise Lm2vError(f"test_fraction must be in (0, 1), got {cfg.test_fraction}")
    if cfg.store_size < 1:
        raise Lm2vError(f"store_size must be positive, got {cfg.store_size}")
    for key in ("max_train_per_class", "max_test_per_class"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise Lm2vError(f"{key} must be >= 1 or null, got {getattr(cfg, key)}")
    if cfg.dataset not in DATASETS and cfg.root is not None:
        raise Lm2vError("root is only for dataset=cifar10/cifar100; put the dataset path in `dataset`")


@functools.lru_cache(maxsize=2)
def _read_bundled(store_size: int, on_corrupt: str) -> dict[str, ImageSet]:
    # The packaged asset never changes: decode it once per process (the demo runs six stages on it).
    # Callers only index into these sets (copies), never write into them.
    return read_dataset(bundled_path(), "folder", store_size, on_corrupt)


def _read_source(cfg: DataConfig) -> dict[str, ImageSet]:
    if cfg.dataset == "bundled":
        if cfg.format not in ("auto", "folder"):
            raise Lm2vError(f"the bundled dataset is in folder format, not {cfg.format!r}")
        return _read_bundled(cfg.store_size, cfg.on_corrupt)
    if cfg.dataset in ("cifar10", "cifar100"):
        if cfg.format not in ("auto", cfg.dataset):
            raise Lm2vError(f"dataset={cfg.dataset} cannot be read with format={cfg.format}")
        return cifar.read_cifar(cfg.root or default_data_root(), cfg.dataset, cfg.download)
    return read_dataset(cfg.dataset, cfg.format, cfg.store_size, cfg.on_corrupt, cfg.test_fraction, cfg.split_seed)


def load_imageset_splits(cfg: DataConfig) -> DataSplits:
    """Read the dataset of ``cfg`` and return train / val / test.

    The caps (``max_*_per_class``) are applied first; then, unless the dataset ships a ``val/`` split,
    ``val_fraction`` of each training class is carved out as validation (seeded by ``split_seed``).
    The test split is never used for anything else.
    """
    _check_config(cfg)
    sets = _read_source(cfg)
    train, test = sets["train"], sets["test"]
    if cfg.max_train_per_class is not None:
        train = train.subset(cap_per_class(train.labels, cfg.max_train_per_class, cfg.split_seed))
    if cfg.max_test_per_class is not None:
        test = test.subset(cap_per_class(test.labels, cfg.max_test_per_class, cfg.split_seed))
    if "val" in sets:
        val = sets["val"]
    else:
        kept, held = stratified_split(train.labels, cfg.val_fraction, cfg.split_seed)
        train, val = train.subset(kept), train.subset(held)
    if len(train) == 0 or len(test) == 0:
        raise Lm2vError(f"dataset {cfg.dataset} has an empty train or test split")
    return DataSplits(train, val, test)
