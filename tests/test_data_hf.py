"""Hugging Face datasets as a source: save_to_disk folders read into the same images and labels as the
arrays they were built from, columns found by feature type, splits, the one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from lm2vision.data import DataConfig, LazyImageSet, load_imageset_splits, read_dataset
from lm2vision.errors import Lm2vError

datasets = pytest.importorskip("datasets")
NAMES = ["cat", "dog", "fox"]


def arrays(n: int, seed: int) -> np.ndarray:
    """n random 12x12 RGB images (uint8): stored as PNG, so they come back exactly."""
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def split(a: np.ndarray, labels: list[int], features=None, **extra):
    feats = features or datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=NAMES), **{
        k: datasets.Value("int64") for k in extra}})
    return datasets.Dataset.from_dict({"img": [PILImage.fromarray(x) for x in a], "label": labels, **extra},
                                      features=feats)


@pytest.fixture
def saved(tmp_path):
    """train (12: 4 per class, labels 0,1,2,0,1,2,...), validation (6) and test (3), saved to disk."""
    parts = {"train": (arrays(12, 0), [i % 3 for i in range(12)]), "validation": (arrays(6, 1), [0, 1, 2] * 2),
             "test": (arrays(3, 2), [2, 1, 0])}
    dd = datasets.DatasetDict({k: split(a, y) for k, (a, y) in parts.items()})
    dd.save_to_disk(str(tmp_path / "hfset"))
    return tmp_path / "hfset", parts


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def test_save_to_disk_reads_into_the_source_arrays_and_class_names(saved):
    path, parts = saved
    sets = read_dataset(path)  # format detected from dataset_dict.json
    assert set(sets) == {"train", "val", "test"}
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        assert torch.equal(sets[ours].images, as_tensor(parts[theirs][0])), ours
        assert sets[ours].labels.tolist() == parts[theirs][1]
        assert sets[ours].classes == NAMES
    splits = load_imageset_splits(DataConfig(dataset=str(path)))
    assert len(splits.val) == 6 and torch.equal(splits.val.images, as_tensor(parts["validation"][0]))


def test_streamed_hf_rows_equal_the_in_memory_images(saved):
    path, parts = saved
    lazy = load_imageset_splits(DataConfig(dataset=str(path), storage="stream", workers=0), stream_ok=True)
    assert isinstance(lazy.train, LazyImageSet) and lazy.train.names[:2] == ["train/0", "train/1"]
    assert torch.equal(lazy.train.load(range(12)), as_tensor(parts["train"][0]))
    assert torch.equal(lazy.test.load([2, 0]), as_tensor(parts["test"][0][[2, 0]]))


def test_one_dataset_without_splits_gets_a_carved_test_split(tmp_path):
    a = arrays(20, 3)
    split(a, [i % 2 for i in range(20)]).save_to_disk(str(tmp_path / "one"))  # state.json + dataset_info.json
    sets = read_dataset(tmp_path / "one", test_fraction=0.2)
    assert (len(sets["train"]), len(sets["test"])) == (16, 4)  # 2 of each class's 10
    assert sorted(sets["test"].labels.tolist()) == [0, 0, 1, 1]


def test_label_column_by_name_gives_sorted_value_classes(tmp_path):
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    dd = datasets.DatasetDict({"train": split(arrays(4, 0), [7, 3, 7, 3], feats),
                               "test": split(arrays(2, 1), [3, 7], feats)})
    dd.save_to_disk(str(tmp_path / "v"))
    with pytest.raises(Lm2vError, match=r"has no ClassLabel columns \(columns: img \(Image\), label \(Value\)\); "
                                        r"set data.label_column$"):
        read_dataset(tmp_path / "v")
    sets = read_dataset(tmp_path / "v", label_column="label")
    assert sets["train"].classes == ["3", "7"] and sets["train"].labels.tolist() == [1, 0, 1, 0]


def test_two_image_columns_and_a_missing_column_are_one_line_errors(tmp_path):
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                               "mask": datasets.Image()})
    ds = datasets.Dataset.from_dict({"img": [PILImage.fromarray(x) for x in arrays(3, 0)], "label": [0, 1, 2],
                                     "mask": [PILImage.fromarray(x) for x in arrays(3, 1)]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(Lm2vError, match=r"has 2 Image columns \(columns: img \(Image\), label \(ClassLabel\), "
                                        r"mask \(Image\)\); set data.image_column$"):
        read_dataset(tmp_path / "two")
    assert torch.equal(read_dataset(tmp_path / "two", image_column="mask")["train"].images, as_tensor(arrays(3, 1)))
    with pytest.raises(Lm2vError, match=r"^data.label_column='y' is not a column of .*two \(columns: img"):
        read_dataset(tmp_path / "two", image_column="img", label_column="y")


def test_a_hub_id_offline_says_to_use_save_to_disk(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(Lm2vError, match=r"^cannot load hub dataset someorg/nosuchset \(.*\); on a machine with "
                                        r"network run datasets.load_dataset\(...\).save_to_disk\(DIR\)") as e:
        load_imageset_splits(DataConfig(dataset="hf:someorg/nosuchset"))
    assert "\n" not in str(e.value)
