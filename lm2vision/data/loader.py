"""Batch order: index batches that are a pure function of (seed, epoch), sliced per rank."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import Lm2vError


def _check(n: int, batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1 or n < 0:
        raise Lm2vError(f"need batch_size >= 1 and n >= 0, got batch_size={batch_size}, n={n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise Lm2vError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise Lm2vError(f"global batch size {batch_size} must be divisible by world_size {world_size}")


def epoch_permutation(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: depends on (seed, epoch) only, so resumes repeat it."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=g)


def _rank_slice(batch: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of one global batch (a short last batch is split as evenly as possible)."""
    if len(batch) == batch_size:
        local = batch_size // world_size
        return batch[rank * local:(rank + 1) * local]
    return torch.tensor_split(batch, world_size)[rank]


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True, drop_last: bool = True,
                  rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Yield this rank's LongTensor of indices for every global batch of ``batch_size`` in the epoch.

    Every rank computes the same global order; rank r takes the r-th contiguous slice of each global
    batch, so the union over ranks is exactly the single-process batch. With ``drop_last=False`` a
    short last batch may give some ranks an empty slice (they should still step together).
    """
    _check(n, batch_size, rank, world_size)
    order = epoch_permutation(n, epoch, seed) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield _rank_slice(order[start:start + batch_size], batch_size, rank, world_size)


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Indices 0..n-1 in order, in global batches of ``batch_size`` sliced per rank; over all ranks
    every index appears exactly once (the last slices may be short or empty)."""
    return epoch_batches(n, batch_size, epoch=0, seed=0, shuffle=False, drop_last=False, rank=rank,
                         world_size=world_size)


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many global batches :func:`epoch_batches` yields per epoch."""
    return n // batch_size if drop_last else -(-n // batch_size)
