"""SVHN (Street View House Numbers, cropped digits) in its official format: ``train_32x32.mat`` and
``test_32x32.mat`` (MATLAB files: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) with label 10 meaning the
digit 0), read with ``scipy.io.loadmat`` (no unpickling), plus an md5-checked download of the
official files. The ``extra`` split is not read.

md5 values: as listed in torchvision's ``datasets/svhn.py`` for the files at the official URLs.
Layout: ``ROOT/svhn/{train,test}_32x32.mat`` for ``data.dataset=svhn``; a folder holding the two
files is also read as ``data.dataset=PATH`` (format ``svhn``, detected).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import Lm2vError
from .cifar import _fetch, _md5_file
from .files import FileTree
from .types import ImageSet

FOLDER = "svhn"  # under data.root
CLASSES = [str(d) for d in range(10)]
# split -> (file name, official URL, md5)
FILES = {
    "train": ("train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
              "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
             "eb5a983be6a315427106f1b164d9cef3"),
}


def has_svhn(tree: FileTree) -> bool:
    """True when both official files lie at the top of ``tree``."""
    return all(name in tree for name, _, _ in FILES.values())


def parse_mat(blob: bytes, where: str) -> ImageSet:
    """One official ``.mat`` file -> ImageSet (N, 3, 32, 32) uint8, labels 0..9 (10 -> 0)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(io.BytesIO(blob), variable_names=["X", "y"])
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise Lm2vError(f"{where} is not a readable SVHN .mat file: {str(e).splitlines()[0]}") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise Lm2vError(f"{where} is not an SVHN file: it lacks 'X' or 'y'")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
        raise Lm2vError(f"{where} is not an SVHN file: X {x.dtype} {x.shape} with {y.size} labels "
                        "(expected uint8 (H, W, 3, N) and N labels)")
    labels = y.reshape(-1).astype(np.int64)
    bad = labels[(labels < 0) | (labels > 10)]
    if bad.size:
        raise Lm2vError(f"label {int(bad[0])} out of range 0..10 in {where}")
    labels[labels == 10] = 0  # the official files write the digit 0 as class 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (N, 3, H, W)
    return ImageSet(images, torch.from_numpy(labels), list(CLASSES))


def read_svhn_tree(tree: FileTree) -> dict[str, ImageSet]:
    """The train and test splits from the official files at the top of ``tree``."""
    if not has_svhn(tree):
        raise Lm2vError(f"SVHN not found in {tree.root} (expected {FILES['train'][0]} and {FILES['test'][0]})")
    return {split: parse_mat(tree.read(name), f"{tree.root}/{name}") for split, (name, _, _) in FILES.items()}


def read_svhn(root: str | Path, download: bool = False) -> dict[str, ImageSet]:
    """SVHN under ``root/svhn/``; with ``download=True`` missing files are fetched and md5-checked."""
    folder = Path(root).expanduser() / FOLDER
    missing = [name for name, _, _ in FILES.values() if not (folder / name).is_file()]
    if missing and not download:
        raise Lm2vError(f"svhn not found under {folder} (missing {', '.join(missing)}); "
                        "set download=true or point root at the folder holding svhn/")
    if missing:
        download_svhn(folder)
    return read_svhn_tree(FileTree(folder))


def download_svhn(folder: Path) -> None:
    """Fetch each missing official file into ``folder`` and verify its md5 (a mismatch is removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, url, md5 in FILES.values():
        dest = folder / name
        if dest.is_file():
            continue
        _fetch(url, dest)
        got = _md5_file(dest)
        if got != md5:
            dest.unlink()
            raise Lm2vError(f"downloaded {url} has md5 {got}, expected {md5}; removed it")
