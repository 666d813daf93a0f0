"""CIFAR readers on fake files written with the documented byte layouts; no network."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from lm2vision.data import DataConfig, load_imageset_splits, read_cifar, read_dataset
from lm2vision.data import cifar
from lm2vision.errors import Lm2vError


def _records(labels, label_bytes=1, coarse=None):
    """Binary records: label byte(s) then R, G, B planes; pixel value = (10 * image index + channel)."""
    rows = []
    for i, y in enumerate(labels):
        head = bytes([coarse[i], y]) if label_bytes == 2 else bytes([y])
        planes = b"".join(bytes([(10 * i + ch) % 256]) * 1024 for ch in range(3))
        rows.append(head + planes)
    return b"".join(rows)


def _fake_cifar10_bin(root, per_file=4):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for b in range(1, 6):
        (d / f"data_batch_{b}.bin").write_bytes(_records([(b + i) % 10 for i in range(per_file)]))
    (d / "test_batch.bin").write_bytes(_records([9, 0, 3]))
    (d / "batches.meta.txt").write_text("airplane\n")
    return root


def test_cifar10_binary_layout(tmp_path):
    sets = read_cifar(_fake_cifar10_bin(tmp_path), "cifar10")
    assert sets["train"].images.shape == (20, 3, 32, 32) and sets["test"].images.shape == (3, 3, 32, 32)
    assert sets["train"].labels[:4].tolist() == [1, 2, 3, 4] and sets["test"].labels.tolist() == [9, 0, 3]
    assert sets["train"].classes[0] == "airplane" and sets["train"].classes[9] == "truck"
    img = sets["test"].images[1]  # second record: R plane 10, G 11, B 12
    assert img[0].unique().tolist() == [10] and img[1].unique().tolist() == [11] and img[2].unique().tolist() == [12]


def test_cifar_binary_pixel_order_is_row_major():
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, 3072, dtype=np.uint8)
    images, labels = cifar.parse_binary(bytes([7]) + pix.tobytes(), 1, 0)
    assert labels.tolist() == [7]
    assert images[0, 1, 2, 5] == pix[1024 + 2 * 32 + 5]  # channel G, row 2, column 5
    with pytest.raises(Lm2vError, match="multiple"):
        cifar.parse_binary(b"\x00" * 100, 1, 0)


def test_cifar100_binary_uses_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    (d / "train.bin").write_bytes(_records([5, 99, 42], label_bytes=2, coarse=[1, 2, 3]))
    (d / "test.bin").write_bytes(_records([0], label_bytes=2, coarse=[19]))
    sets = cifar.read_cifar(tmp_path, "cifar100")  # 3 images of 100 classes: too few for a validation split
    assert sets["train"].labels.tolist() == [5, 99, 42] and sets["test"].labels.tolist() == [0]
    classes = sets["train"].classes
    assert len(classes) == 100 and classes[99] == "worm" and classes[42] == "leopard"


def test_cifar_detected_in_archive_and_dispatch(tmp_path):
    root = _fake_cifar10_bin(tmp_path / "c")
    tgz = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    sets = read_dataset(tgz)
    assert len(sets["train"]) == 20 and sets["train"].image_size == 32
    sp = load_imageset_splits(DataConfig(dataset="cifar10", root=str(root), val_fraction=0.5))
    assert len(sp.train) + len(sp.val) == 20 and len(sp.test) == 3


def _pickled_batch(n=5, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {"batch_label": "fake", "labels": [int(v) for v in rng.integers(0, 10, n)],
             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
    return pickle.dumps(batch, protocol=4)  # protocol 4: ndarray via _reconstruct + raw bytes


def _fake_cifar10_py(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    blobs = {f: _pickled_batch(seed=i) for i, f in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"])}
    for f, b in blobs.items():
        (d / f).write_bytes(b)
    return blobs


def test_pickled_version_refused_on_md5_mismatch(tmp_path):
    _fake_cifar10_py(tmp_path)
    with pytest.raises(Lm2vError, match="refusing to unpickle cifar-10-batches-py/data_batch_1: md5"):
        read_cifar(tmp_path, "cifar10")


def test_pickled_version_loads_when_md5_matches(tmp_path, monkeypatch):
    blobs = _fake_cifar10_py(tmp_path)
    folder, key, files = cifar.PICKLED["cifar10"]
    patched = {s: [(f, hashlib.md5(blobs[f]).hexdigest()) for f, _ in fs] for s, fs in files.items()}
    monkeypatch.setitem(cifar.PICKLED, "cifar10", (folder, key, patched))
    sets = read_cifar(tmp_path, "cifar10")
    assert sets["train"].images.shape == (25, 3, 32, 32)
    ref = pickle.loads(blobs["test_batch"])
    assert sets["test"].labels.tolist() == ref["labels"]
    assert torch.equal(sets["test"].images.reshape(5, -1), torch.from_numpy(ref["data"]))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_foreign_globals():
    blob = pickle.dumps({"data": _Evil(), "labels": [0]}, protocol=2)
    with pytest.raises(Lm2vError, match="not allowed"):
        cifar.load_pickled_batch(blob, hashlib.md5(blob).hexdigest(), "evil")


def test_missing_cifar_without_download(tmp_path):
    with pytest.raises(Lm2vError, match="not found"):
        read_cifar(tmp_path, "cifar10")


def test_download_offline_fails_with_one_clear_line(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(Lm2vError) as e:
        read_cifar(tmp_path, "cifar10", download=True)
    msg = str(e.value)
    assert "\n" not in msg and "cannot download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg
    assert "no route to host" in msg and not list(tmp_path.glob("*.part"))


def test_download_verifies_md5_and_extracts(tmp_path, monkeypatch):
    src = _fake_cifar10_bin(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    payload = buf.getvalue()

    class Resp(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Resp(payload))
    root = tmp_path / "dl"
    with pytest.raises(Lm2vError, match="md5"):  # the real published md5 does not match the fake
        read_cifar(root, "cifar10", download=True)
    assert not (root / "cifar-10-binary.tar.gz").exists()
    url, _ = cifar.BINARY_ARCHIVES["cifar10"]
    monkeypatch.setitem(cifar.BINARY_ARCHIVES, "cifar10", (url, hashlib.md5(payload).hexdigest()))
    sets = read_cifar(root, "cifar10", download=True)
    assert len(sets["train"]) == 20 and (root / "cifar-10-batches-bin" / "test_batch.bin").is_file()


class _Py2StylePickler(pickle.Pickler):
    """Writes ndarrays the way Python 2 did: the raw data and type code as (latin-1) strings."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            f, args, state = obj.__reduce__()
            return f, (args[0], args[1], args[2].decode("latin1")), state[:4] + (state[4].decode("latin1"),)
        return NotImplemented


def test_restricted_unpickler_reads_python2_style_batch():
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump({"data": data, "labels": [3, 4]})
    blob = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # the py2 module name
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    batch = cifar.load_pickled_batch(blob, hashlib.md5(blob).hexdigest(), "py2")
    assert batch["labels"] == [3, 4] and batch["data"].dtype == np.uint8 and (batch["data"] == data).all()
