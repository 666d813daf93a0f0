"""CIFAR-10 / CIFAR-100 on disk: the binary version (parsed from bytes) and the pickled python
version (loaded only after an md5 check, with a restricted unpickler), plus an md5-checked download
of the official binary archive.

md5 values: the python-version files use the list in torchvision's ``datasets/cifar.py``; the binary
archives use the values published on https://www.cs.toronto.edu/~kriz/cifar.html.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import Lm2vError
from .files import FileTree
from .types import ImageSet

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()

# name -> (binary folder, {split: [files]}, bytes of label prefix, label byte index, classes)
BINARY = {
    "cifar10": ("cifar-10-batches-bin", {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                                         "test": ["test_batch.bin"]}, 1, 0, CIFAR10_CLASSES),
    "cifar100": ("cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, 2, 1, CIFAR100_CLASSES),
}
# name -> (archive URL, md5) of the official binary archives
BINARY_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),
}
# name -> (python folder, label key, {split: [(file, md5)]}) as in torchvision's datasets/cifar.py
PICKLED = {
    "cifar10": ("cifar-10-batches-py", "labels", {
        "train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                  ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                  ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                  ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                  ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")]}),
    "cifar100": ("cifar-100-python", "fine_labels", {
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")]}),
}
PIXELS = 3 * 32 * 32


def _classes(name: str) -> list[str]:
    return list(BINARY[name][4])


def has_binary(tree: FileTree, name: str) -> bool:
    """True when every file of the binary version is present."""
    folder, files, *_ = BINARY[name]
    return all(f"{folder}/{f}" in tree for fs in files.values() for f in fs)


def has_pickled(tree: FileTree, name: str) -> bool:
    """True when every file of the pickled python version is present."""
    folder, _, files = PICKLED[name]
    return all(f"{folder}/{f}" in tree for fs in files.values() for f, _ in fs)


def parse_binary(blob: bytes, label_bytes: int, label_index: int,
                 where: str = "CIFAR binary file") -> tuple[torch.Tensor, torch.Tensor]:
    """Records of ``label_bytes`` label bytes + 3072 pixel bytes (R, G, B planes of 32x32).

    Returns images (N, 3, 32, 32) uint8 and labels (N,) int64. ``where`` names the file in errors.
    """
    record = label_bytes + PIXELS
    if len(blob) == 0 or len(blob) % record:
        raise Lm2vError(f"{where} has {len(blob)} bytes, not a multiple of the {record}-byte record "
                        "(truncated, or not a CIFAR binary file)")
    rows = np.frombuffer(blob, dtype=np.uint8).reshape(-1, record)  # (N, record)
    images = torch.from_numpy(rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy())
    labels = torch.from_numpy(rows[:, label_index].astype(np.int64))
    return images, labels


def read_cifar_binary(tree: FileTree, name: str) -> dict[str, ImageSet]:
    """The binary version (``cifar-10-batches-bin/*.bin`` or ``cifar-100-binary/{train,test}.bin``)."""
    folder, files, nbytes, index, classes = BINARY[name]
    out = {}
    for split, fs in files.items():
        parts = [parse_binary(tree.read(f"{folder}/{f}"), nbytes, index, f"{tree.root}/{folder}/{f}") for f in fs]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        _check_labels(labels, len(classes), folder)
        out[split] = ImageSet(images, labels, list(classes))
    return out


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise Lm2vError(f"label {int(labels.max())} out of range for {num_classes} classes in {where}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs (numpy array reconstruction)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _numpy_reconstruct():
    """numpy's array-rebuild function (``numpy._core`` since numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def load_pickled_batch(blob: bytes, expected_md5: str, where: str) -> dict:
    """Verify the md5, then unpickle with :class:`_NumpyOnlyUnpickler`; refuse otherwise."""
    md5 = hashlib.md5(blob).hexdigest()
    if md5 != expected_md5:
        raise Lm2vError(f"refusing to unpickle {where}: md5 {md5} is not the published {expected_md5}")
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise Lm2vError(f"refusing to unpickle {where}: {e}") from None
    if not isinstance(batch, dict):
        raise Lm2vError(f"{where} is not a CIFAR batch (a dict)")
    return batch


def read_cifar_pickled(tree: FileTree, name: str) -> dict[str, ImageSet]:
    """The pickled python version (``cifar-10-batches-py/`` or ``cifar-100-python/``)."""
    folder, key, files = PICKLED[name]
    classes = _classes(name)
    out = {}
    for split, fs in files.items():
        images, labels = [], []
        for f, md5 in fs:
            batch = load_pickled_batch(tree.read(f"{folder}/{f}"), md5, f"{folder}/{f}")
            x, y = _batch_arrays(batch, key, f"{tree.root}/{folder}/{f}")
            images.append(x)
            labels.append(y)
        ys = torch.cat(labels)
        _check_labels(ys, len(classes), folder)
        out[split] = ImageSet(torch.cat(images), ys, classes)
    return out


def _batch_arrays(batch: dict, key: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one unpickled batch, or a one-line error."""
    data, ys = batch.get("data"), batch.get(key)
    if data is None or ys is None:
        raise Lm2vError(f"{where} is not a CIFAR batch: it lacks 'data' or {key!r}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS or len(data) != len(ys):
        raise Lm2vError(f"{where} is not a CIFAR batch: data {data.dtype} {data.shape} with {len(ys)} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.tensor(ys, dtype=torch.long)


def read_cifar(root: str | Path, name: str = "cifar10", download: bool = False) -> dict[str, ImageSet]:
    """CIFAR-10/100 under ``root``: the binary version if present, else the pickled python version.

    With ``download=True`` and neither present, the official binary archive is fetched into ``root``,
    md5-checked and extracted.
    """
    if name not in BINARY:
        raise Lm2vError(f"unknown CIFAR name {name!r}, expected cifar10 or cifar100")
    root = Path(root).expanduser()
    tree = FileTree(root) if root.exists() else None
    if tree is None or not (has_binary(tree, name) or has_pickled(tree, name)):
        if not download:
            raise Lm2vError(f"{name} not found under {root} (expected {BINARY[name][0]}/ or {PICKLED[name][0]}/);"
                            " set download=true or point root at it")
        download_cifar_binary(root, name)
        tree = FileTree(root)
    return read_cifar_tree(tree, name)


def read_cifar_tree(tree: FileTree, name: str) -> dict[str, ImageSet]:
    """CIFAR-10/100 from an opened tree: binary version first, else the pickled python version."""
    if has_binary(tree, name):
        return read_cifar_binary(tree, name)
    if has_pickled(tree, name):
        return read_cifar_pickled(tree, name)
    raise Lm2vError(f"{name} not found in {tree.root} (expected {BINARY[name][0]}/ or {PICKLED[name][0]}/)")


def download_cifar_binary(root: Path, name: str) -> None:
    """Fetch the official binary archive into ``root``, verify its md5, extract it there."""
    url, md5 = BINARY_ARCHIVES[name]
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    if not archive.exists() or _md5_file(archive) != md5:
        _fetch(url, archive)
    got = _md5_file(archive)
    if got != md5:
        archive.unlink()
        raise Lm2vError(f"downloaded {url} has md5 {got}, expected {md5}; removed it")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")


def _fetch(url: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise Lm2vError(f"cannot download {url} ({reason}); fetch it by hand into {dest.parent}") from None
    tmp.replace(dest)


def _md5_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
