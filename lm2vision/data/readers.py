"""Readers: every on-disk layout becomes ``ImageSet``s, and :func:`load_imageset_splits` turns a
:class:`DataConfig` into train / val / test.

Layouts: class folders (``train/<class>/*``, ``test/<class>/*``, optional ``val/``), CIFAR-10/100
(binary or pickled python version), Tiny ImageNet, and a split-less ImageFolder (``<class>/*``).
Folders and ``.tar.gz``/``.tgz``/``.tar`` archives are read the same way (archives without extraction);
Hugging Face datasets (:mod:`lm2vision.data.hf`) become the same raw files; folders and Hugging Face
datasets can also be streamed (:mod:`lm2vision.data.stream`).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Lm2vError
from . import cifar, hf, svhn
from .config import DATASETS, FORMATS, DataConfig
from .decode import RawSplit, Source, decode_splits, is_image_name, scan_headers, store_shape
from .files import FileTree, Skipped
from .stream import LazyImageSet, storage_choice
from .types import ImageSet

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass
class DataSplits:
    """The three splits of one dataset; they share ``classes`` and the stored image size. The splits are
    :class:`ImageSet` (in memory) or, streamed, :class:`LazyImageSet`; ``note`` says which and why."""

    train: ImageSet | LazyImageSet
    val: ImageSet | LazyImageSet
    test: ImageSet | LazyImageSet
    note: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded uint8 images of the three splits."""
        return self.train.nbytes + self.val.nbytes + self.test.nbytes

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
    """Where cifar10/cifar100/svhn live when ``root`` is unset: ``$LM2V_DATA`` or ``~/.cache/lm2vision/data``."""
    return Path(os.environ.get("LM2V_DATA", "~/.cache/lm2vision/data")).expanduser()


# ---------------------------------------------------------------- index helpers

def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out round(fraction * n_c) of each class c (seeded). Returns (kept, held) sorted indices.

    Python's round (half to even): a class of 1 image holds out nothing below fraction 0.5 and its
    only image above it; :func:`load_imageset_splits` refuses splits that leave a class or split empty.
    """
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


def _per_class(labels: torch.Tensor, present: torch.Tensor) -> str:
    """Images per class over the ``present`` classes: "10", or "3 to 10" when they differ."""
    counts = torch.bincount(labels, minlength=int(present.max()) + 1)[present].tolist() if len(present) else [0]
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo} to {hi}"


def _check_no_lost_class(labels: torch.Tensor, kept: torch.Tensor, classes: list[str], split: str,
                         option: str) -> None:
    """Refuse a carve-out that moves every image of some class out of training."""
    for c in torch.unique(labels).tolist():
        if not bool((labels[kept] == c).any()):
            n = int((labels == c).sum())
            raise Lm2vError(f"the training split has no images of class {classes[c]!r}: {option} moves all {n} of "
                            f"its images to the {split} split; lower {option.split('=')[0]}")


def _check_held_size(labels: torch.Tensor, held: torch.Tensor, split: str, pool: str, option: str, fix: str,
                     per_class: bool) -> None:
    """Refuse a held-out split that is empty, or (``per_class``) smaller than the number of classes."""
    present = torch.unique(labels)
    need = len(present) if per_class else 1
    if len(held) >= need:
        return
    what = "empty" if len(held) == 0 else \
        f"too small ({len(held)} images for {len(present)} classes, fewer than one per class)"
    raise Lm2vError(f"the {split} split is {what}: {_per_class(labels, present)} {pool} per class with {option} "
                    f"leaves {_per_class(labels[held], present)} per class; {fix}")


def cap_per_class(labels: torch.Tensor, max_per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``max_per_class`` images of each class (a seeded choice)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels, sorted=True):
        idx = (labels == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:max_per_class]])
    return torch.cat(keep or [torch.zeros(0, dtype=torch.long)]).sort().values


# ---------------------------------------------------------------- layouts
# kinds of files a layout leaves out (each counted and named in the dataset's one warning)
NON_IMAGE = "non-image files"
NO_CLASS = "files outside a class folder"
NO_IMAGES = "class folders with no images"
OUTSIDE = "files outside train/, val/, test/"
SPLITS = ("train", "val", "test")


def _class_files(tree: FileTree, top: str, skipped: Skipped) -> dict[str, list[str]]:
    """{class: image files} of ``top/<class>/`` (any depth below the class; ``top`` "" for the root).

    Files directly in ``top``, non-image files and class folders without images go to ``skipped``.
    """
    head = top + "/" if top else ""
    by_class: dict[str, list[str]] = {d[len(head):]: [] for d in tree.dirs
                                      if d.startswith(head) and "/" not in d[len(head):]}
    for f in (tree.under(top) if top else tree.files):
        rest = f[len(head):]
        if "/" not in rest:
            skipped.add(NO_CLASS, f)
        elif not is_image_name(f):
            skipped.add(NON_IMAGE, f)
        else:
            by_class.setdefault(rest.split("/", 1)[0], []).append(f)
    skipped.extend(NO_IMAGES, [head + c for c, fs in sorted(by_class.items()) if not fs])
    return {c: fs for c, fs in sorted(by_class.items()) if fs}


def _folder_raw(tree: FileTree, skipped: Skipped) -> tuple[dict[str, RawSplit], list[str]]:
    """``train/<class>/*``, ``test/<class>/*`` and optional ``val/<class>/*`` (any depth below class)."""
    found = {s: _class_files(tree, s, skipped) for s in SPLITS}
    skipped.extend(OUTSIDE, [f for f in tree.files if f.split("/", 1)[0] not in SPLITS])
    for s in ("train", "test"):
        if not found[s]:
            raise Lm2vError(f"no images under {s}/<class>/ in {tree.root}")
    classes = sorted(found["train"])
    index = {c: i for i, c in enumerate(classes)}
    raw = {}
    for s, by_class in found.items():
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise Lm2vError(f"{s}/ has classes missing from train/: {', '.join(unknown[:5])}")
        if by_class:
            raw[s] = RawSplit()
            for c, files in by_class.items():
                for f in files:
                    raw[s].add(f, index[c])
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


def _tiny_train(tree: FileTree, index: dict[str, int], skipped: Skipped) -> RawSplit:
    """``train/<wnid>/images/*``; the ``<wnid>_boxes.txt`` files are the layout's, not data."""
    train = RawSplit()
    for f in tree.under("train"):
        parts = f.split("/")
        if len(parts) == 3 and parts[2] == f"{parts[1]}_boxes.txt":
            continue
        if len(parts) != 4 or parts[2] != "images":
            skipped.add("files outside the tiny-imagenet layout", f)
        elif not is_image_name(f):
            skipped.add(NON_IMAGE, f)
        elif parts[1] not in index:
            skipped.add("images of classes missing from wnids.txt", f)
        else:
            train.add(f, index[parts[1]])
    if not train.names:
        raise Lm2vError(f"no images under train/<wnid>/images/ in {tree.root}")
    return train


def _tiny_val(tree: FileTree, index: dict[str, int], skipped: Skipped) -> RawSplit:
    """The labelled ``val/`` split from ``val/val_annotations.txt``; a bad line or missing file is an error."""
    ann = "val/val_annotations.txt"
    if ann not in tree:
        raise Lm2vError(f"tiny-imagenet layout needs {ann} in {tree.root}")
    test = RawSplit()
    for n, line in enumerate(tree.read(ann).decode().splitlines(), 1):
        cols = line.split("\t")
        if not line.strip():
            continue
        if len(cols) < 2:
            raise Lm2vError(f"{ann} line {n} is not '<file>\\t<wnid>...': {line[:60]!r}")
        if cols[1] not in index:
            raise Lm2vError(f"{ann} names unknown class {cols[1]!r}")
        if f"val/images/{cols[0]}" not in tree:
            raise Lm2vError(f"{ann} line {n} names val/images/{cols[0]}, which is not in {tree.root}")
        test.add(f"val/images/{cols[0]}", index[cols[1]])
    listed = set(test.names) | {ann}
    skipped.extend("val files not in val/val_annotations.txt", [f for f in tree.under("val") if f not in listed])
    return test


def _tiny_imagenet_raw(tree: FileTree, skipped: Skipped) -> tuple[dict[str, RawSplit], list[str]]:
    """Tiny ImageNet: ``train/<wnid>/images/*``; its labelled ``val/`` becomes the test split (the
    official ``test/`` has no labels and is never read). Class order: sorted wnids."""
    wnids = sorted({w.strip() for w in tree.read("wnids.txt").decode().split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    raw = {"train": _tiny_train(tree, index, skipped), "test": _tiny_val(tree, index, skipped)}
    known = ("wnids.txt", "words.txt")
    skipped.extend("files outside the tiny-imagenet layout",
                   [f for f in tree.files if f.split("/", 1)[0] not in ("train", "val", "test") and f not in known])
    return raw, _tiny_names(tree, wnids)


def _imagefolder_raw(tree: FileTree, test_fraction: float, seed: int,
                     skipped: Skipped) -> tuple[dict[str, RawSplit], list[str]]:
    """``<class>/*`` with no split folders: a seeded, stratified train/test split."""
    by_class = _class_files(tree, "", skipped)
    if not by_class:
        raise Lm2vError(f"no images found in {tree.root} (expected <class>/<image> files)")
    classes = sorted(by_class)
    train = RawSplit()
    for i, c in enumerate(classes):
        for f in by_class[c]:
            train.add(f, i)
    return _carve_test(train, classes, test_fraction, seed), classes


def _carve_test(train: RawSplit, classes: list[str], test_fraction: float, seed: int) -> dict[str, RawSplit]:
    """A split-less set's seeded, stratified train/test split (``test_fraction`` of each class)."""
    labels = torch.tensor(train.labels, dtype=torch.long)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    option = f"data.test_fraction={test_fraction}"
    _check_no_lost_class(labels, train_idx, classes, "test", option)
    _check_held_size(labels, test_idx, "test", "images", option, "raise data.test_fraction", per_class=False)
    raw = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        raw[split] = RawSplit()
        for i in idx.tolist():
            raw[split].add(train.names[i], train.labels[i])
    return raw


def detect_format(tree: FileTree) -> str:
    """The layout of ``tree``: tiny-imagenet, cifar10, cifar100, svhn, folder or imagefolder."""
    if "wnids.txt" in tree:
        return "tiny-imagenet"
    if svhn.has_svhn(tree):
        return "svhn"
    for name in ("cifar10", "cifar100"):
        if cifar.has_binary(tree, name) or cifar.has_pickled(tree, name):
            return name
    if tree.under("train") or tree.under("test"):
        return "folder"
    return "imagefolder"


def _layout(path: str | Path, format: str) -> tuple[str, FileTree | None]:
    """The format of the dataset at ``path`` and its file tree (None for a Hugging Face dataset)."""
    if format not in FORMATS:
        raise Lm2vError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "hf" or (format == "auto" and (hf.is_hub_id(str(path)) or hf.is_saved_dataset(path))):
        return "hf", None
    tree = FileTree(path)
    return (detect_format(tree) if format == "auto" else format), tree


def _file_source(path: str | Path, fmt: str, tree: FileTree | None, test_fraction: float, split_seed: int,
                 hf_options: dict) -> Source:
    """The files of a one-file-per-image dataset (any layout but CIFAR's), not yet read; when building
    it fails, what was left out so far is still reported (it may say why)."""
    if fmt == "hf":
        src = hf.hf_source(str(path), **hf_options)
        if "test" not in src.raw:
            src.raw = {**src.raw, **_carve_test(src.raw["train"], src.classes, test_fraction, split_seed)}
        return src
    try:
        if not tree.files:
            raise Lm2vError(f"dataset is empty: {tree.root}")
        if fmt == "tiny-imagenet":
            raw, classes = _tiny_imagenet_raw(tree, tree.skipped)
        elif fmt == "folder":
            raw, classes = _folder_raw(tree, tree.skipped)
        else:
            raw, classes = _imagefolder_raw(tree, test_fraction, split_seed, tree.skipped)
    except Lm2vError:
        tree.skipped.warn(tree.root)
        raise
    return Source(raw, classes, tree, str(tree.root), tree.skipped)


def read_dataset(path: str | Path, format: str = "auto", store_size: int = 32, on_corrupt: str = "skip",
                 test_fraction: float = 0.2, split_seed: int = 0, image_column: str | None = None,
                 label_column: str | None = None, hf_config: str | None = None) -> dict[str, ImageSet]:
    """Read the folder, archive or Hugging Face dataset (a ``save_to_disk`` folder or ``hf:ORG/NAME``;
    see :mod:`lm2vision.data.hf` for the column options) at ``path`` into ``{"train", "test"[, "val"]}``.

    Every file or folder left out (hidden, non-image, outside the layout, corrupt, ...) is counted and
    named in ONE warning; CIFAR layouts read a fixed list of files and ignore the rest of the folder.
    """
    fmt, tree = _layout(path, format)
    if fmt in ("cifar10", "cifar100"):
        return cifar.read_cifar_tree(tree, fmt)
    if fmt == "svhn":
        return svhn.read_svhn_tree(tree)
    src = _file_source(path, fmt, tree, test_fraction, split_seed,
                       {"image_column": image_column, "label_column": label_column, "hf_config": hf_config})
    try:  # the warning comes even when the read fails: it may say why (e.g. every file was a .tif)
        return decode_splits(src.raw, src.classes, src.reader.read, store_size, on_corrupt, src.skipped)
    finally:
        src.skipped.warn(src.where)


def _stream_sets(cfg: DataConfig) -> tuple[dict[str, LazyImageSet] | None, Source | str]:
    """The lazily decoded splits of ``cfg``'s dataset and its source (whose warning the caller emits
    once it streams), or (None, why it cannot stream)."""
    if cfg.dataset == "bundled":
        return None, "the bundled set is a .tar.gz archive"
    batch_files = lambda name: "SVHN .mat" if name == "svhn" else "CIFAR batch"  # noqa: E731
    if cfg.dataset in ("cifar10", "cifar100", "svhn"):
        return None, f"{cfg.dataset} is read from {batch_files(cfg.dataset)} files, not one file per image"
    fmt, tree = _layout(cfg.dataset, cfg.format)
    if fmt in ("cifar10", "cifar100", "svhn"):
        return None, f"{cfg.dataset} is in {batch_files(fmt)} files, not one file per image"
    if tree is not None and tree.is_archive:
        return None, f"{cfg.dataset} is an archive, read whole into memory; extract it and pass the folder"
    src = _file_source(cfg.dataset, fmt, tree, cfg.test_fraction, cfg.split_seed, _hf_options(cfg))
    try:
        raw, sizes = scan_headers(src.raw, src.reader, cfg.on_corrupt, src.skipped)
        shape, resize = store_shape(sizes, cfg.store_size)
    except Lm2vError:
        src.skipped.warn(src.where)
        raise
    sets = {s: LazyImageSet(rs.names, torch.tensor(rs.labels, dtype=torch.long), list(src.classes), src.reader,
                            shape, resize) for s, rs in raw.items()}
    return sets, src


def _hf_options(cfg: DataConfig) -> dict:
    return {"image_column": cfg.image_column, "label_column": cfg.label_column, "hf_config": cfg.hf_config}


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
        raise Lm2vError("root is only for dataset=cifar10/cifar100/svhn; put the dataset path in `dataset`")


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
    if cfg.dataset == "svhn":
        if cfg.format not in ("auto", "svhn"):
            raise Lm2vError(f"dataset=svhn cannot be read with format={cfg.format}")
        return svhn.read_svhn(cfg.root or default_data_root(), cfg.download)
    return read_dataset(cfg.dataset, cfg.format, cfg.store_size, cfg.on_corrupt, cfg.test_fraction, cfg.split_seed,
                        **_hf_options(cfg))


def load_imageset_splits(cfg: DataConfig, stream_ok: bool = False) -> DataSplits:
    """Read the dataset of ``cfg`` and return train / val / test.

    The caps (``max_*_per_class``) are applied first; then, unless the dataset ships a ``val/`` split,
    ``val_fraction`` of each training class is carved out as validation (seeded by ``split_seed``).
    The test split is never used for anything else. An empty split, a validation split with fewer
    images than classes, or a class left with no training image is an Lm2vError naming the option
    that fixes it (choices such as the probe's learning rate are made on the validation split).

    ``stream_ok`` (training): ``data.storage`` may give :class:`LazyImageSet` splits decoded per batch
    (stream, or auto above ``data.memory_limit_gb``); the choice is the returned splits' ``note``.
    Without it (analysis, screening) the splits are always decoded in memory.
    """
    _check_config(cfg)
    if not stream_ok or cfg.storage == "memory":
        return _split(cfg, _read_source(cfg))
    sets, src = _stream_sets(cfg)
    if sets is None:
        if cfg.storage == "stream":
            raise Lm2vError(f"data.storage=stream cannot stream {cfg.dataset}: {src}; or use data.storage=memory")
        splits = _split(cfg, _read_source(cfg))
        stream, note = storage_choice("auto", splits.nbytes, cfg.memory_limit_gb)
        splits.note = note + (f", but {src}: kept in memory" if stream else "")
        return splits
    splits = _split(cfg, sets)
    stream, note = storage_choice(cfg.storage, splits.nbytes, cfg.memory_limit_gb)
    if not stream:
        splits = _split(cfg, _read_source(cfg))
        splits.note = note
        return splits
    src.skipped.warn(src.where)
    (h, w), resize = splits.train.shape, splits.train.resize
    splits.note = (f"{note}; decoded per batch by {cfg.workers} DataLoader worker(s), every image "
                   + (f"brought to {h}x{w} (shorter side, centre crop)" if resize else f"{h}x{w} as stored"))
    return splits


def _split(cfg: DataConfig, sets: dict) -> DataSplits:
    """Caps, then the validation split (the dataset's own, or carved): the splits of ``sets``."""
    train, test = sets["train"], sets["test"]
    for name, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise Lm2vError(f"the {name} split is empty: none of the {name} images of {cfg.dataset} could be read "
                            "(the warning above names the skipped files)")
    if cfg.max_train_per_class is not None:
        train = train.subset(cap_per_class(train.labels, cfg.max_train_per_class, cfg.split_seed))
    if cfg.max_test_per_class is not None:
        test = test.subset(cap_per_class(test.labels, cfg.max_test_per_class, cfg.split_seed))
    if "val" in sets:
        val = sets["val"]
        _check_shipped_val(val, train)
    else:
        train, val = _carve_val(train, cfg)
    return DataSplits(train, val, test)


def _carve_val(train: ImageSet, cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """(train, val): ``val_fraction`` of each class held out, refused when it leaves a split unusable."""
    kept, held = stratified_split(train.labels, cfg.val_fraction, cfg.split_seed)
    option = f"data.val_fraction={cfg.val_fraction}"
    fix = "raise data.val_fraction" + (" or data.max_train_per_class" if cfg.max_train_per_class is not None else "")
    _check_no_lost_class(train.labels, kept, train.classes, "validation", option)
    _check_held_size(train.labels, held, "validation", "training images", option, fix, per_class=True)
    return train.subset(kept), train.subset(held)


def _check_shipped_val(val: ImageSet, train: ImageSet) -> None:
    """The dataset's own val/ split needs at least as many readable images as training classes."""
    classes = len(torch.unique(train.labels))
    if len(val) < classes:
        raise Lm2vError(f"the validation split (the dataset's val/ folder) has {len(val)} readable images for "
                        f"{classes} classes, fewer than one per class; add images to val/, or remove val/ so "
                        "that data.val_fraction of train/ is held out instead")
