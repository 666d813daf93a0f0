"""Batch order: pure function of (seed, epoch), full coverage, rank slices that add up."""
from __future__ import annotations

import pytest
import torch

from lm2vision.data import epoch_batches, eval_batches, num_batches
from lm2vision.errors import Lm2vError


def test_deterministic_and_changes_with_epoch_and_seed():
    a = list(epoch_batches(103, 10, epoch=3, seed=5))
    b = list(epoch_batches(103, 10, epoch=3, seed=5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(list(epoch_batches(103, 10, epoch=4, seed=5))))
    assert not torch.equal(torch.cat(a), torch.cat(list(epoch_batches(103, 10, epoch=3, seed=6))))
    assert a[0].dtype == torch.long


def test_coverage_with_and_without_drop_last():
    full = list(epoch_batches(103, 10, epoch=0, seed=0))
    assert len(full) == 10 == num_batches(103, 10) and all(len(b) == 10 for b in full)
    assert len(set(torch.cat(full).tolist())) == 100
    keep = list(epoch_batches(103, 10, epoch=0, seed=0, drop_last=False))
    assert len(keep) == 11 == num_batches(103, 10, drop_last=False) and len(keep[-1]) == 3
    assert sorted(torch.cat(keep).tolist()) == list(range(103))
    ordered = torch.cat(list(epoch_batches(20, 5, epoch=0, seed=0, shuffle=False)))
    assert ordered.tolist() == list(range(20))


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_slices_union_equals_single_process(drop_last):
    single = list(epoch_batches(50, 8, epoch=2, seed=1, drop_last=drop_last))
    per_rank = [list(epoch_batches(50, 8, epoch=2, seed=1, drop_last=drop_last, rank=r, world_size=4))
                for r in range(4)]
    assert all(len(p) == len(single) for p in per_rank)
    for i, batch in enumerate(single):
        assert torch.equal(torch.cat([per_rank[r][i] for r in range(4)]), batch)
    assert [len(b) for b in per_rank[1][:2]] == [2, 2]


def test_eval_batches_cover_every_index_once_in_order():
    assert torch.cat(list(eval_batches(23, 6))).tolist() == list(range(23))
    per_rank = [list(eval_batches(23, 6, rank=r, world_size=3)) for r in range(3)]
    merged = [torch.cat([per_rank[r][i] for r in range(3)]) for i in range(len(per_rank[0]))]
    assert torch.cat(merged).tolist() == list(range(23))


def test_bad_arguments():
    with pytest.raises(Lm2vError, match="divisible"):
        list(epoch_batches(10, 6, 0, 0, world_size=4))
    with pytest.raises(Lm2vError, match="rank"):
        list(epoch_batches(10, 4, 0, 0, rank=2, world_size=2))
