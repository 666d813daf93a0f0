"""SVHN's official .mat format: written here with scipy.io.savemat, read back with known answers."""
import numpy as np
import pytest
import torch
from scipy.io import savemat

from lm2vision.data import DataConfig, load_imageset_splits, read_dataset
from lm2vision.data import cifar, svhn
from lm2vision.data.fingerprint import dataset_source
from lm2vision.errors import Lm2vError


def _write(path, labels, seed=0):
    """An official-layout file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    x = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    savemat(path, {"X": x, "y": np.array(labels, dtype=np.uint8).reshape(-1, 1)})
    return x


@pytest.fixture
def svhn_root(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    xs = {"train": _write(folder / "train_32x32.mat", [10, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2, seed=1),
          "test": _write(folder / "test_32x32.mat", [10, 3, 7], seed=2)}
    return tmp_path, xs


def test_label_10_is_zero_and_pixels_transposed(svhn_root):
    root, xs = svhn_root
    sets = svhn.read_svhn(root)
    assert sets["test"].labels.tolist() == [0, 3, 7]
    assert sets["train"].labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2
    assert sets["train"].images.shape == (20, 3, 32, 32) and sets["train"].classes == [str(d) for d in range(10)]
    # pixel (row 5, column 7, channel 2) of image 1 of the file = images[1, 2, 5, 7]
    assert int(sets["test"].images[1, 2, 5, 7]) == int(xs["test"][5, 7, 2, 1])
    assert torch.equal(sets["test"].images[2].permute(1, 2, 0), torch.from_numpy(xs["test"][..., 2]))


def test_wired_into_data_config(svhn_root):
    root, _ = svhn_root
    splits = load_imageset_splits(DataConfig(dataset="svhn", root=str(root), val_fraction=0.5))
    assert len(splits.test) == 3 and len(splits.train) + len(splits.val) == 20
    assert dataset_source(DataConfig(dataset="svhn", root=str(root))) == root / "svhn"
    assert read_dataset(root / "svhn")["test"].labels.tolist() == [0, 3, 7]  # a folder: format detected


def test_missing_without_download_is_one_line(tmp_path):
    with pytest.raises(Lm2vError, match="svhn not found.*download=true"):
        svhn.read_svhn(tmp_path)
    with pytest.raises(Lm2vError, match="format=cifar10"):
        load_imageset_splits(DataConfig(dataset="svhn", root=str(tmp_path), format="cifar10"))


def test_damaged_download_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(svhn, "_fetch", lambda url, dest: dest.write_bytes(b"not the published file"))
    with pytest.raises(Lm2vError, match="md5 .* expected e26dedcc434d2e4c54c9b2d4a06d8373; removed it"):
        svhn.read_svhn(tmp_path, download=True)
    assert not (tmp_path / "svhn" / "train_32x32.mat").exists()


def test_good_download_is_read(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "train_32x32.mat", [10, 1])
    _write(src / "test_32x32.mat", [2])
    monkeypatch.setattr(svhn, "_fetch", lambda url, dest: dest.write_bytes((src / dest.name).read_bytes()))
    monkeypatch.setattr(svhn, "FILES", {s: (n, u, cifar._md5_file(src / n)) for s, (n, u, _) in svhn.FILES.items()})
    assert svhn.read_svhn(tmp_path / "root", download=True)["train"].labels.tolist() == [0, 1]


def test_bad_files_are_one_line(tmp_path):
    savemat(tmp_path / "x.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])})
    with pytest.raises(Lm2vError, match="label 11 out of range"):
        svhn.parse_mat((tmp_path / "x.mat").read_bytes(), "x.mat")
    savemat(tmp_path / "y.mat", {"X": np.zeros((32, 32, 3, 2), np.float32), "y": np.array([[1], [2]])})
    with pytest.raises(Lm2vError, match="not an SVHN file"):
        svhn.parse_mat((tmp_path / "y.mat").read_bytes(), "y.mat")
    with pytest.raises(Lm2vError, match="not a readable SVHN"):
        svhn.parse_mat(b"garbage", "z.mat")
