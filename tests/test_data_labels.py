"""Random labels: exact counts, the "wrong" scheme never keeps the truth, seeding, save/load."""
from __future__ import annotations

import pytest
import torch

from lm2vision.data import load_labels, random_labels, save_labels
from lm2vision.errors import Lm2vError


def _truth(n=1000, c=10, seed=0):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.15, 150), (0.3, 300), (1.0, 1000), (0.0005, 0), (0.0015, 2)])
def test_exact_number_changed(ratio, expected):
    y = _truth()
    new, mask = random_labels(y, 10, ratio, "wrong", seed=1)
    assert int(mask.sum()) == expected
    assert int((new != y).sum()) == expected  # "wrong" always changes a chosen label
    assert torch.equal(new[~mask], y[~mask])
    assert new.dtype == torch.int64 and mask.dtype == torch.bool


def test_wrong_never_equals_truth_over_many_seeds():
    y = _truth(200, 3)
    for seed in range(50):
        new, mask = random_labels(y, 3, 1.0, "wrong", seed=seed)
        assert bool(mask.all()) and not bool((new == y).any())
        assert int(new.min()) >= 0 and int(new.max()) <= 2


def test_wrong_is_uniform_over_the_other_classes():
    y = torch.zeros(30000, dtype=torch.long)
    new, _ = random_labels(y, 4, 1.0, "wrong", seed=0)
    counts = torch.bincount(new, minlength=4).tolist()
    assert counts[0] == 0 and all(abs(c - 10000) < 400 for c in counts[1:])


def test_uniform_sometimes_keeps_the_truth():
    y = _truth(2000, 10)
    new, mask = random_labels(y, 10, 1.0, "uniform", seed=0)
    same = int((new == y).sum())
    assert bool(mask.all()) and 120 < same < 290  # about N / C = 200


def test_same_seed_same_labels_other_seed_differs():
    y = _truth()
    a = random_labels(y, 10, 0.3, seed=7)
    b = random_labels(y, 10, 0.3, seed=7)
    c = random_labels(y, 10, 0.3, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kw", [{"ratio": -0.1}, {"ratio": 1.5}, {"ratio": 0.5, "scheme": "shuffle"},
                                {"ratio": 0.5, "num_classes": 1}, {"ratio": 0.5, "num_classes": 5}])
def test_bad_arguments(kw):
    args = {"labels": _truth(), "num_classes": 10, **kw}
    with pytest.raises(Lm2vError):
        random_labels(**args)


def test_save_and_load_roundtrip(tmp_path):
    y = _truth()
    new, mask = random_labels(y, 10, 0.3, seed=2)
    save_labels(tmp_path / "labels.safetensors", new, mask)
    got, got_mask = load_labels(tmp_path / "labels.safetensors")
    assert torch.equal(got, new) and torch.equal(got_mask, mask) and got_mask.dtype == torch.bool
    with pytest.raises(Lm2vError, match="not found"):
        load_labels(tmp_path / "missing.safetensors")
