"""The bundled offline CIFAR-10 subset: 10 classes, 5000 train (before the val split), 1000 test."""
from __future__ import annotations

import pytest
import torch

from lm2vision.data import DataConfig, bundled_path, load_imageset_splits, read_dataset

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def raw():
    return read_dataset(bundled_path())


def test_bundled_asset_is_small_and_present():
    assert bundled_path().is_file() and bundled_path().stat().st_size < 8 * 2**20


def test_bundled_counts_and_classes(raw):
    assert raw["train"].classes == CIFAR10
    assert raw["train"].images.shape == (5000, 3, 32, 32) and raw["test"].images.shape == (1000, 3, 32, 32)
    assert torch.bincount(raw["train"].labels).tolist() == [500] * 10
    assert torch.bincount(raw["test"].labels).tolist() == [100] * 10
    assert 60 < raw["train"].images.float().mean() < 180  # real photos, not blank


def test_bundled_default_splits(raw):
    sp = load_imageset_splits(DataConfig())
    assert (len(sp.train), len(sp.val), len(sp.test)) == (4500, 500, 1000)
    assert torch.bincount(sp.val.labels).tolist() == [50] * 10
    assert torch.equal(sp.test.images, raw["test"].images)
