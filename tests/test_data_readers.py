"""Readers on tiny fake datasets written with PIL: folder / archive / ImageFolder / Tiny ImageNet."""
from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lm2vision.data import DataConfig, load_imageset_splits, read_dataset
from conftest import write_files
from lm2vision.errors import Lm2vError

CLASSES = ["cat", "dog", "frog"]


def _png(value: int, size=(8, 8), mode="RGB") -> bytes:
    """A constant image whose red channel is ``value`` (so tests can tell images apart)."""
    a = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = value, 7, 200
    im = Image.fromarray(a)
    buf = io.BytesIO()
    (im.convert("L") if mode == "L" else im).save(buf, format="PNG")
    return buf.getvalue()


def _folder_files(n_train=4, n_test=2, splits=("train", "test")) -> dict[str, bytes]:
    """train: red values 0.., test: 100.., val: 200.. (unique per image)."""
    files, base = {}, {"train": 0, "test": 100, "val": 200}
    counts = {"train": n_train, "test": n_test, "val": 1}
    for s in splits:
        for c, cls in enumerate(CLASSES):
            for i in range(counts[s]):
                v = base[s] + c * 10 + i
                files[f"{s}/{cls}/{i:04d}.png"] = _png(v)
    return files


def _tar(path: Path, files: dict[str, bytes], prefix: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for rel, blob in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _reds(s) -> list[int]:
    return s.images[:, 0, 0, 0].tolist()


def test_folder_layout_shapes_classes_counts(tmp_path):
    sets = read_dataset(write_files(tmp_path / "ds", _folder_files()))
    assert set(sets) == {"train", "test"}
    assert sets["train"].images.shape == (12, 3, 8, 8) and sets["test"].images.shape == (6, 3, 8, 8)
    assert sets["train"].classes == CLASSES
    assert torch.bincount(sets["train"].labels).tolist() == [4, 4, 4]
    assert sets["train"].images.dtype == torch.uint8
    assert sorted(_reds(sets["test"])) == [100, 101, 110, 111, 120, 121]
    assert sets["test"].images[0, 1, 0, 0] == 7 and sets["test"].images[0, 2, 0, 0] == 200
    # label follows the class folder: red value // 10 (minus split base) is the class index
    assert [(v % 100) // 10 for v in _reds(sets["train"])] == sets["train"].labels.tolist()


@pytest.mark.parametrize("suffix,mode,prefix", [(".tar.gz", "w:gz", "wrapped/"), (".tgz", "w:gz", ""),
                                                (".tar", "w", "./")])
def test_archive_equals_directory(tmp_path, suffix, mode, prefix):
    files = _folder_files()
    d = read_dataset(write_files(tmp_path / "ds", files))
    a = read_dataset(_tar(tmp_path / f"ds{suffix}", files, prefix, mode))
    for s in ("train", "test"):
        assert torch.equal(d[s].images, a[s].images) and torch.equal(d[s].labels, a[s].labels)
        assert a[s].classes == CLASSES


def test_val_split_stratified_disjoint_and_test_untouched(tmp_path):
    root = write_files(tmp_path / "ds", _folder_files(n_train=8))
    cfg = DataConfig(dataset=str(root), val_fraction=0.25, split_seed=3)
    sp = load_imageset_splits(cfg)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (18, 6, 6)
    assert torch.bincount(sp.val.labels).tolist() == [2, 2, 2]
    assert set(_reds(sp.train)).isdisjoint(_reds(sp.val))
    assert sorted(_reds(sp.train) + _reds(sp.val)) == sorted(c * 10 + i for c in range(3) for i in range(8))
    raw_test = read_dataset(root)["test"]
    assert torch.equal(sp.test.images, raw_test.images) and torch.equal(sp.test.labels, raw_test.labels)
    again = load_imageset_splits(cfg)
    assert _reds(again.val) == _reds(sp.val)
    other = load_imageset_splits(DataConfig(dataset=str(root), val_fraction=0.25, split_seed=4))
    assert _reds(other.val) != _reds(sp.val)


def test_shipped_val_folder_is_used(tmp_path):
    root = write_files(tmp_path / "ds", _folder_files(splits=("train", "val", "test")))
    sp = load_imageset_splits(DataConfig(dataset=str(root)))
    assert len(sp.train) == 12 and sorted(_reds(sp.val)) == [200, 210, 220]


def test_caps_per_class_are_deterministic(tmp_path):
    root = write_files(tmp_path / "ds", _folder_files(n_train=8, n_test=4))
    cfg = DataConfig(dataset=str(root), val_fraction=0.34, max_train_per_class=3, max_test_per_class=1)
    sp = load_imageset_splits(cfg)  # the cap comes first: 3 per class, then round(0.34 * 3) = 1 to val
    assert torch.bincount(sp.train.labels).tolist() == [2, 2, 2] and torch.bincount(sp.val.labels).tolist() == [1, 1, 1]
    assert torch.bincount(sp.test.labels).tolist() == [1, 1, 1]
    assert _reds(load_imageset_splits(cfg).train) == _reds(sp.train)


def test_mixed_sizes_resized_to_store_size_and_gray_to_rgb(tmp_path):
    files = _folder_files(n_train=1, n_test=1)
    files["train/cat/big.png"] = _png(50, size=(12, 6))
    files["test/dog/gray.png"] = _png(90, mode="L")
    sets = read_dataset(write_files(tmp_path / "ds", files), store_size=4)
    assert sets["train"].images.shape == (4, 3, 4, 4) and sets["test"].images.shape == (4, 3, 4, 4)
    gray = sets["test"].images[sets["test"].labels == 1]
    assert any(bool((g[0] == g[1]).all() and (g[1] == g[2]).all()) for g in gray)  # L -> RGB copies


def test_jpeg_images(tmp_path):
    files = {}
    for s, n in (("train", 3), ("test", 1)):
        for cls in CLASSES:
            for i in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, format="JPEG", quality=95)
                files[f"{s}/{cls}/{i}.JPG"] = buf.getvalue()
    sets = read_dataset(write_files(tmp_path / "ds", files))
    assert sets["train"].images.shape == (9, 3, 8, 8)
    assert abs(int(sets["train"].images[0, 0, 4, 4]) - 120) <= 3


def test_corrupt_files_skip_with_one_warning_or_error(tmp_path):
    files = _folder_files()
    rng = np.random.default_rng(0)
    files["train/cat/bad1.png"] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    files["test/dog/bad2.jpg"] = b"\xff\xd8\xff" + rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    root = write_files(tmp_path / "ds", files)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sets = read_dataset(root, on_corrupt="skip")
    msgs = [str(w.message) for w in rec]
    assert msgs == [f"skipped 2 item(s) of dataset {root}: corrupt, unreadable or unsupported image files (2): "
                    "test/dog/bad2.jpg, train/cat/bad1.png"]
    assert len(sets["train"]) == 12 and len(sets["test"]) == 6
    with pytest.raises(Lm2vError, match="bad1.png"):
        read_dataset(root, on_corrupt="error")


def test_missing_empty_and_imageless_datasets(tmp_path):
    with pytest.raises(Lm2vError, match="not found"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Lm2vError, match="empty"):
        read_dataset(tmp_path / "empty")
    write_files(tmp_path / "txt", {"train/cat/a.txt": b"x", "test/cat/b.txt": b"y"})
    with pytest.raises(Lm2vError, match="no images"), pytest.warns(UserWarning, match="non-image files \\(2\\)"):
        read_dataset(tmp_path / "txt")  # the warning says why there are none
    write_files(tmp_path / "flat", {"notes.txt": b"x"})
    with pytest.raises(Lm2vError, match="no images"), pytest.warns(UserWarning, match="notes.txt"):
        read_dataset(tmp_path / "flat")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(Lm2vError, match="folder or a"):
        read_dataset(tmp_path / "x.zip")


def test_bad_config_values(tmp_path):
    root = write_files(tmp_path / "ds", _folder_files())
    for kw in ({"val_fraction": 1.0}, {"on_corrupt": "ignore"}, {"format": "coco"}, {"root": "/tmp"}):
        with pytest.raises(Lm2vError):
            load_imageset_splits(DataConfig(dataset=str(root), **kw))


def test_imagefolder_seeded_stratified_split(tmp_path):
    files = {f"{cls}/{i}.png": _png(c * 10 + i) for c, cls in enumerate(CLASSES[:2]) for i in range(5)}
    root = write_files(tmp_path / "flowers", files)
    a = read_dataset(root, test_fraction=0.4, split_seed=1)
    assert a["train"].classes == ["cat", "dog"]
    assert torch.bincount(a["test"].labels).tolist() == [2, 2] and torch.bincount(a["train"].labels).tolist() == [3, 3]
    assert set(_reds(a["train"])).isdisjoint(_reds(a["test"]))
    b = read_dataset(root, test_fraction=0.4, split_seed=1)
    assert _reds(a["test"]) == _reds(b["test"])
    sp = load_imageset_splits(DataConfig(dataset=str(root), format="imagefolder", test_fraction=0.4, val_fraction=0.34))
    assert (len(sp.train), len(sp.val), len(sp.test)) == (4, 2, 4)


def test_tiny_imagenet_layout(tmp_path):
    wnids = ["n02", "n01"]
    files = {"wnids.txt": "\n".join(wnids).encode(),
             "words.txt": b"n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\nn99\tunused\n"}
    for w, base in (("n01", 0), ("n02", 10)):
        for i in range(3):
            files[f"train/{w}/images/{w}_{i}.JPEG"] = _png(base + i)
        files[f"train/{w}/{w}_boxes.txt"] = b"ignored"
    ann = []
    for j, w in enumerate(["n02", "n01", "n02"]):
        files[f"val/images/val_{j}.JPEG"] = _png(100 + j)
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t8\t8")
    files["val/val_annotations.txt"] = "\n".join(ann).encode()
    files["test/images/test_0.JPEG"] = _png(250)  # unlabelled: never read
    root = _tar(tmp_path / "tiny-imagenet-200.tgz", files, prefix="tiny-imagenet-200/")
    sets = read_dataset(root)
    assert sets["train"].classes == ["goldfish", "tabby"]
    assert torch.bincount(sets["train"].labels).tolist() == [3, 3]
    assert _reds(sets["test"]) == [100, 101, 102] and sets["test"].labels.tolist() == [1, 0, 1]


# ---------------------------------------------------------------- splits that come out unusable

def _splits_error(tmp_path, files, **cfg) -> str:
    root = write_files(tmp_path / "ds", files)
    with pytest.raises(Lm2vError) as e:
        load_imageset_splits(DataConfig(dataset=str(root), **cfg))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_empty_validation_split_names_the_options(tmp_path):
    # round(0.05 * 10) = round(0.5) = 0 per class: before, a run reported "val acc 0.000" on it
    msg = _splits_error(tmp_path, _folder_files(n_train=12), val_fraction=0.05, max_train_per_class=10)
    assert msg == ("the validation split is empty: 10 training images per class with data.val_fraction=0.05 "
                   "leaves 0 per class; raise data.val_fraction or data.max_train_per_class")


def test_zero_val_fraction_is_refused(tmp_path):
    msg = _splits_error(tmp_path, _folder_files(n_train=4), val_fraction=0.0)
    assert msg == ("the validation split is empty: 4 training images per class with data.val_fraction=0.0 "
                   "leaves 0 per class; raise data.val_fraction")


def test_validation_split_with_fewer_images_than_classes(tmp_path):
    files = _folder_files(n_train=6)
    for cls in ("dog", "frog"):  # dog and frog keep one training image each
        for i in range(1, 6):
            del files[f"train/{cls}/{i:04d}.png"]
    msg = _splits_error(tmp_path, files, val_fraction=0.2)  # round(1.2) = 1, round(0.2) = 0
    assert msg == ("the validation split is too small (1 images for 3 classes, fewer than one per class): "
                   "1 to 6 training images per class with data.val_fraction=0.2 leaves 0 to 1 per class; "
                   "raise data.val_fraction")


def test_class_losing_every_training_image_to_validation(tmp_path):
    msg = _splits_error(tmp_path, _folder_files(n_train=1), val_fraction=0.6)  # round(0.6 * 1) = 1
    assert msg == ("the training split has no images of class 'cat': data.val_fraction=0.6 moves all 1 of its "
                   "images to the validation split; lower data.val_fraction")


def test_shipped_val_folder_too_small(tmp_path):
    files = _folder_files(splits=("train", "val", "test"))
    del files["val/dog/0000.png"], files["val/frog/0000.png"]
    msg = _splits_error(tmp_path, files)
    assert msg.startswith("the validation split (the dataset's val/ folder) has 1 readable images for 3 classes")
    assert "add images to val/, or remove val/ so that data.val_fraction of train/ is held out" in msg


def test_imagefolder_empty_test_split(tmp_path):
    files = {f"{cls}/{i}.png": _png(i) for cls in CLASSES for i in range(2)}
    msg = _splits_error(tmp_path, files, format="imagefolder", test_fraction=0.2)  # round(0.4) = 0
    assert msg == ("the test split is empty: 2 images per class with data.test_fraction=0.2 leaves 0 per class; "
                   "raise data.test_fraction")


def test_unreadable_test_split(tmp_path):
    files = _folder_files()
    for rel in [r for r in files if r.startswith("test/")]:
        files[rel] = b"not an image"
    with pytest.warns(UserWarning, match="corrupt, unreadable or unsupported image files \\(6\\)"):
        msg = _splits_error(tmp_path, files)
    assert msg.startswith("the test split is empty: none of the test images of ") and "could be read" in msg
