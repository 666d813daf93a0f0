"""Hugging Face ``datasets`` as a source: a folder written by ``save_to_disk`` (offline) or a hub id
(``data.dataset=hf:ORG/NAME``), with image and label columns named or found by feature type.

A dataset becomes the same :class:`~lm2vision.data.decode.Source` as a folder of files: one name per
row (``train/17``), the row's encoded image bytes read on demand, so the images decode through
:mod:`lm2vision.data.decode` exactly as files do (RGB conversion, store size, corrupt images skipped
and counted), in memory or streamed. ``datasets`` is an optional extra, imported only here.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

from ..errors import Lm2vError
from .config import HUB_PREFIX
from .decode import RawSplit, Source
from .files import Skipped

HINT = 'pip install "lm2vision[datasets]"'
# the dataset's split names that become our train / val / test
SPLIT_NAMES = {"train": "train", "test": "test", "validation": "val", "val": "val", "valid": "val"}
UNUSED = "splits other than train, validation and test"
UNLABELLED = "splits without labels (every label -1)"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise Lm2vError(f"reading a Hugging Face dataset needs the datasets library: {HINT}") from None
    return datasets


def is_saved_dataset(path: str | Path) -> bool:
    """True for a folder written by ``save_to_disk``: a DatasetDict (``dataset_dict.json``) or one
    Dataset (``state.json`` + ``dataset_info.json``)."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "dataset_dict.json").is_file()
                           or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def is_hub_id(dataset: str) -> bool:
    """True for ``hf:ORG/NAME``."""
    return dataset.startswith(HUB_PREFIX)


def load_hf(dataset: str, hf_config: str | None = None) -> dict:
    """``{split name: datasets.Dataset}`` of a save_to_disk folder or of ``hf:ORG/NAME`` (one Dataset
    without splits comes back as ``{"": dataset}``)."""
    ds = _datasets()
    try:
        if is_hub_id(dataset):
            loaded = ds.load_dataset(dataset[len(HUB_PREFIX):], hf_config)
        else:
            loaded = ds.load_from_disk(str(Path(dataset).expanduser()))
    except (OSError, ValueError) as e:  # ConnectionError (offline), DatasetNotFoundError, bad folder
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if is_hub_id(dataset):
            raise Lm2vError(f"cannot load hub dataset {dataset[len(HUB_PREFIX):]} ({first}); on a machine with "
                            "network run datasets.load_dataset(...).save_to_disk(DIR) and pass data.dataset=DIR") from None
        raise Lm2vError(f"cannot load the saved Hugging Face dataset {dataset}: {first}") from None
    return dict(loaded) if isinstance(loaded, ds.DatasetDict) else {"": loaded}


def _pick(features: dict, kind: type, given: str | None, option: str, where: str) -> str:
    """The column named ``given``, else the one column whose feature is a ``kind``; else one line."""
    cols = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
    if given is not None:
        if given not in features:
            raise Lm2vError(f"{option}={given!r} is not a column of {where} (columns: {cols})")
        return given
    found = [k for k, v in features.items() if isinstance(v, kind)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise Lm2vError(f"{where} has {what} {kind.__name__} columns (columns: {cols}); set {option}")
    return found[0]


def _classes(feature, values: list) -> tuple[list[str], dict]:
    """Class names and {label value: index}: the ClassLabel's names, else the sorted distinct values."""
    if type(feature).__name__ == "ClassLabel":
        return list(feature.names), {i: i for i in range(len(feature.names))}
    distinct = sorted(set(values))
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


class HFReader:
    """The encoded bytes of row ``split/row`` of a dataset's image column (picklable, for workers)."""

    def __init__(self, splits: dict, column: str):
        ds = _datasets()
        self.splits = {s: d.select_columns([column]).cast_column(column, ds.Image(decode=False))
                       for s, d in splits.items()}
        self.column = column

    def read(self, name: str) -> bytes:
        split, _, row = name.rpartition("/")
        try:
            cell = self.splits[split][int(row)][self.column]
        except (IndexError, KeyError, ValueError):
            raise Lm2vError(f"missing row {name} in the Hugging Face dataset") from None
        if cell is None:
            raise ValueError("empty image cell")
        if cell.get("bytes") is not None:
            return cell["bytes"]
        return Path(cell["path"]).read_bytes()  # a dataset that stores paths to local files

    def open(self, name: str) -> BinaryIO:
        return io.BytesIO(self.read(name))


def hf_source(dataset: str, image_column: str | None = None, label_column: str | None = None,
              hf_config: str | None = None) -> Source:
    """The dataset as a :class:`Source`: splits train, test and validation/val/valid (as ``val``);
    other splits, and splits with no labels (every label -1, as hub test splits often are), are named
    in the one warning. One Dataset saved without splits is ``train``; the reader carves the test split.
    Class names: the ClassLabel's, else the sorted distinct label values as strings."""
    loaded = load_hf(dataset, hf_config)
    skipped = Skipped()
    splits = {SPLIT_NAMES.get(k, "train" if k == "" else None): v for k, v in loaded.items()}
    skipped.extend(UNUSED, [k for k, v in loaded.items() if k and k not in SPLIT_NAMES])
    splits.pop(None, None)
    if "train" not in splits:
        raise Lm2vError(f"the Hugging Face dataset {dataset} has no train split (splits: {', '.join(loaded)})")
    ds = _datasets()
    features = dict(splits["train"].features)
    image = _pick(features, ds.Image, image_column, "data.image_column", dataset)
    label = _pick(features, ds.ClassLabel, label_column, "data.label_column", dataset)
    values = {s: list(d[label]) for s, d in splits.items()}
    for s in [s for s, vs in values.items() if s != "train" and vs and all(v == -1 for v in vs)]:
        skipped.add(UNLABELLED, s)
        del values[s], splits[s]
    classes, index = _classes(features[label], [v for vs in values.values() for v in vs])
    raw = {}
    for s, vs in values.items():
        raw[s] = RawSplit()
        for row, v in enumerate(vs):
            if v not in index:
                raise Lm2vError(f"row {s}/{row} of {dataset} has label {v!r}, not one of the train split's classes")
            raw[s].add(f"{s}/{row}", index[v])
    return Source(raw, classes, HFReader(splits, image), dataset, skipped)


def hub_fingerprint(dataset: str, hf_config: str | None = None) -> dict:
    """``{"source", "files", "sha256"}`` of a hub dataset: its id, its row count, and a hash of the
    ``datasets`` fingerprints of its splits (which change with the revision)."""
    loaded = load_hf(dataset, hf_config)
    h = hashlib.sha256()
    for name in sorted(loaded):
        h.update(f"{name}\t{loaded[name]._fingerprint}\n".encode())
    return {"source": dataset + (f" ({hf_config})" if hf_config else ""),
            "files": sum(len(d) for d in loaded.values()), "sha256": h.hexdigest()}
