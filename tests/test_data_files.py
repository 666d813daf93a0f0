"""Nothing a reader leaves out goes unmentioned: one warning per dataset read names every skip;
truncated archives and CIFAR files are one-line errors naming the file."""
from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from lm2vision.data import read_cifar, read_dataset
from lm2vision.data.files import FileTree
from conftest import write_files
from lm2vision.errors import Lm2vError


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _clean() -> dict[str, bytes]:
    return {f"{s}/{c}/{i}.png": _png(10 * k + i) for s in ("train", "test") for k, c in enumerate(("cat", "dog"))
            for i in range(2)}


def _tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _warnings_of(fn, *args, **kw) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, [str(w.message) for w in rec]


def test_clean_folder_reads_without_a_warning(tmp_path):
    sets, msgs = _warnings_of(read_dataset, write_files(tmp_path / "ds", _clean()))
    assert msgs == [] and len(sets["train"]) == 4 and len(sets["test"]) == 4


def test_skipped_kinds_are_counted_and_named_in_one_warning(tmp_path):
    files = _clean()
    files.update({"train/cat/notes.txt": b"x", "train/dog/.DS_Store": b"x", ".git/config": b"x",
                  ".git/HEAD": b"x", "train/stray.png": _png(1), "README.md": b"x", "train/bird/about.txt": b"x"})
    root = write_files(tmp_path / "ds", files)
    (root / "train" / "horse").mkdir()  # an empty class folder
    (root / "test" / "cat" / "gone.png").symlink_to(root / "nowhere.png")  # a broken link
    sets, msgs = _warnings_of(read_dataset, root)
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m.startswith(f"skipped 9 item(s) of dataset {root}: ")
    assert "hidden files or folders (2): .git, train/dog/.DS_Store" in m  # .git once, not per file
    assert "non-image files (2): train/bird/about.txt, train/cat/notes.txt" in m
    assert "files outside a class folder (1): train/stray.png" in m
    assert "class folders with no images (2): train/bird, train/horse" in m
    assert "files outside train/, val/, test/ (1): README.md" in m
    assert "(broken links, sockets, devices) (1): test/cat/gone.png" in m
    assert sets["train"].classes == ["cat", "dog"] and len(sets["train"]) == 4  # nothing else changed


def test_warning_names_at_most_three_per_kind(tmp_path):
    files = _clean()
    files.update({f"train/cat/n{i}.txt": b"x" for i in range(5)})
    _, msgs = _warnings_of(read_dataset, write_files(tmp_path / "ds", files))
    assert msgs == [f"skipped 5 item(s) of dataset {tmp_path / 'ds'}: non-image files (5): "
                    "train/cat/n0.txt, train/cat/n1.txt, train/cat/n2.txt, ..."]


def test_imagefolder_top_level_files_and_unreadable_image(tmp_path, monkeypatch):
    files = {f"{c}/{i}.png": _png(i) for c in ("a", "b") for i in range(5)}
    files["labels.csv"] = b"x"
    root = write_files(tmp_path / "flowers", files)
    real_read = FileTree.read

    def read(self, rel):  # one file vanishes between listing and reading
        if rel == "a/3.png":
            raise Lm2vError(f"cannot read {rel} in {self.root}: No such file or directory")
        return real_read(self, rel)

    monkeypatch.setattr(FileTree, "read", read)
    sets, msgs = _warnings_of(read_dataset, root, test_fraction=0.4)
    assert len(msgs) == 1 and "files outside a class folder (1): labels.csv" in msgs[0]
    assert "corrupt, unreadable or unsupported image files (1): a/3.png" in msgs[0]
    assert len(sets["train"]) + len(sets["test"]) == 9
    with pytest.raises(Lm2vError, match="cannot use image file a/3.png: cannot read a/3.png"), \
            pytest.warns(UserWarning, match="labels.csv"):
        read_dataset(root, test_fraction=0.4, on_corrupt="error")


def test_tar_links_are_read_and_dangling_ones_named(tmp_path):
    members = [(rel, blob) for rel, blob in _clean().items() if rel != "train/dog/1.png"]
    hard = tarfile.TarInfo("train/dog/1.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "train/dog/0.png"
    dangling = tarfile.TarInfo("train/dog/2.png")
    dangling.type, dangling.linkname = tarfile.SYMTYPE, "missing.png"
    path = tmp_path / "ds.tar"
    path.write_bytes(_tar_bytes(members + [hard, dangling]))
    sets, msgs = _warnings_of(read_dataset, path)
    assert len(sets["train"]) == 4  # the hard link is read as a copy of its target
    dog = sets["train"].images[sets["train"].labels == 1][:, 0, 0, 0].tolist()
    assert dog == [10, 10]
    assert len(msgs) == 1 and "links to members missing from the archive (1): train/dog/2.png" in msgs[0]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_archive_is_one_line_error_naming_it(tmp_path, suffix):
    blob = _tar_bytes(list(_clean().items()))
    path = tmp_path / f"ds{suffix}"
    if suffix == ".tar":
        # cut exactly after the 6th member (512-byte header + 512-byte data each): tarfile alone
        # would stop there quietly and return 6 of 8 images
        path.write_bytes(blob[:6 * 1024])
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for rel, b in _clean().items():
                info = tarfile.TarInfo(rel)
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(Lm2vError) as e:
        read_dataset(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_tiny_imagenet_unknown_class_and_unlisted_val_image_are_named(tmp_path):
    files = {"wnids.txt": b"n01\nn02\n"}
    for w in ("n01", "n02", "n99"):
        files[f"train/{w}/images/{w}_0.JPEG"] = _png(1)
        files[f"train/{w}/{w}_boxes.txt"] = b"layout file, not data"
    files["val/images/val_0.JPEG"] = _png(2)
    files["val/images/val_1.JPEG"] = _png(3)
    files["val/val_annotations.txt"] = b"val_0.JPEG\tn01\t0\t0\t4\t4\n\n"
    files["test/images/test_0.JPEG"] = _png(4)  # the official unlabelled test split: never read, not a skip
    root = write_files(tmp_path / "tiny", files)
    sets, msgs = _warnings_of(read_dataset, root)
    assert len(sets["train"]) == 2 and len(sets["test"]) == 1
    assert len(msgs) == 1 and "images of classes missing from wnids.txt (1): train/n99/images/n99_0.JPEG" in msgs[0]
    assert "val files not in val/val_annotations.txt (1): val/images/val_1.JPEG" in msgs[0]
    assert "boxes" not in msgs[0] and "test_0" not in msgs[0]
    (root / "val" / "val_annotations.txt").write_bytes(b"val_0.JPEG n01\n")
    with pytest.raises(Lm2vError, match=r"val/val_annotations.txt line 1 is not"), pytest.warns(UserWarning):
        read_dataset(root)


def test_truncated_cifar_binary_names_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    record = bytes([3]) + bytes(3072)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (d / name).write_bytes(record * 2)
    (d / "data_batch_3.bin").write_bytes(record * 2 + record[:100])
    with pytest.raises(Lm2vError) as e:
        read_cifar(tmp_path, "cifar10")
    msg = str(e.value)
    assert f"{tmp_path}/cifar-10-batches-bin/data_batch_3.bin has 6246 bytes" in msg and "\n" not in msg


def test_unreadable_folder_is_named(tmp_path, monkeypatch):
    root = write_files(tmp_path / "ds", _clean())
    (root / "train" / "cow").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # file permissions do not bind root, so deny the folder here
        if Path(path) == root / "train" / "cow":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _, msgs = _warnings_of(read_dataset, root)
    assert len(msgs) == 1 and "unreadable folders (1): train/cow" in msgs[0]
