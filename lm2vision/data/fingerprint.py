"""What a dataset was when a run started: its source path, file count and a hash of the files'
names and sizes. ``--resume`` compares it with the dataset now, so that a run never continues on
data that changed on disk without the user saying so (``runtime.allow_data_change=true``)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .cifar import BINARY, PICKLED
from .config import DataConfig
from .hf import hub_fingerprint, is_hub_id
from .readers import bundled_path, default_data_root
from .svhn import FOLDER as SVHN_FOLDER


def dataset_source(cfg: DataConfig) -> Path:
    """The file or folder the dataset of ``cfg`` is read from (for a hub id ``hf:ORG/NAME``, that id as
    a path that names no local file: the datasets cache is the library's)."""
    if cfg.dataset == "bundled":
        return bundled_path()
    if cfg.dataset in ("cifar10", "cifar100"):
        root = Path(cfg.root or default_data_root())
        binary, pickled = root / BINARY[cfg.dataset][0], root / PICKLED[cfg.dataset][0]
        return binary if binary.is_dir() or not pickled.is_dir() else pickled
    if cfg.dataset == "svhn":
        return Path(cfg.root or default_data_root()) / SVHN_FOLDER
    return Path(cfg.dataset).expanduser()


def fingerprint_path(path: str | Path) -> dict:
    """``{"source", "files", "sha256"}`` of a file or of every file under a folder (names relative to
    it, in sorted order, with their sizes); contents are not read, so it is cheap on any dataset."""
    path = Path(path)
    h, n = hashlib.sha256(), 0
    if path.is_file():
        entries = [(path.name, path.stat().st_size)]
    else:
        entries = []
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder) / name
                entries.append((full.relative_to(path).as_posix(), full.stat().st_size))
    for name, size in entries:
        h.update(f"{name}\t{size}\n".encode())
        n += 1
    return {"source": str(path.resolve()), "files": n, "sha256": h.hexdigest()}


def fingerprint(cfg: DataConfig) -> dict:
    """The fingerprint of the dataset of ``cfg`` (see :func:`fingerprint_path`); a hub dataset
    (``hf:ORG/NAME``): its id, row count and ``datasets``' own fingerprints (:func:`hf.hub_fingerprint`)."""
    if is_hub_id(cfg.dataset):
        return hub_fingerprint(cfg.dataset, cfg.hf_config)
    return fingerprint_path(dataset_source(cfg))
