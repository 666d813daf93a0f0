"""Streamed image sets: images decoded on demand, per batch, in DataLoader worker processes.

A :class:`LazyImageSet` holds names, labels and a reader instead of pixels. It answers the same
questions as :class:`~lm2vision.data.types.ImageSet` (``len``, ``labels``, ``classes``, ``subset``,
``with_labels``), so caps, validation carving and random labels work on it unchanged, and
:meth:`LazyImageSet.load` decodes any rows to the same uint8 tensor the in-memory path would hold:
the same decoder (:func:`~lm2vision.data.decode.decode_stored`), the same size rule (the images'
shared size, else every image brought to ``store_size``: shorter side, then centre crop).

Every file's header is read when the set is built (Pillow reads headers only), so an unreadable file
is skipped and counted in the dataset's one warning, as in memory; a file that fails to decode later,
mid-epoch, is a one-line :class:`Lm2vError` naming it (a batch never silently shrinks).

:func:`stream_batches` decodes given index batches in ``workers`` processes, in order, pinned when
asked; the order itself comes from :func:`lm2vision.data.loader.epoch_batches` (sharded per rank),
so a streamed epoch is the same pure function of (seed, epoch) as an in-memory one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import Lm2vError
from .decode import DECODE_ERRORS, Reader, _why, decode_stored

GB = 1e9


@dataclass
class LazyImageSet:
    """An image set decoded on demand: ``names[i]`` is read by ``reader`` and decoded to (3, H, W)
    uint8 with ``shape`` = (H, W) (``resize``: short side + centre crop to it; else checked)."""

    names: list[str]
    labels: torch.Tensor
    classes: list[str]
    reader: Reader
    shape: tuple[int, int]
    resize: bool

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.names),):
            raise ValueError(f"labels must be ({len(self.names)},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the decoded uint8 images would take in memory."""
        return len(self) * 3 * self.shape[0] * self.shape[1]

    def subset(self, index: torch.Tensor) -> "LazyImageSet":
        """A new set with the rows at ``index``."""
        names = [self.names[i] for i in index.tolist()]
        return LazyImageSet(names, self.labels[index], list(self.classes), self.reader, self.shape, self.resize)

    def with_labels(self, labels: torch.Tensor) -> "LazyImageSet":
        """The same images with other labels (random labels for stage 1)."""
        return LazyImageSet(self.names, labels, list(self.classes), self.reader, self.shape, self.resize)

    def load(self, rows: Sequence[int]) -> torch.Tensor:
        """The images at ``rows``, decoded: (m, 3, H, W) uint8; a file that fails is a one-line error."""
        arrs = []
        for i in rows:
            try:
                arrs.append(decode_stored(self.reader.read(self.names[i]), self.shape, self.resize))
            except (Lm2vError, *DECODE_ERRORS) as e:
                raise Lm2vError(f"cannot decode streamed image {self.names[i]}: {_why(e)} (it read at load; "
                                "replace or remove it, then resume)") from None
        if not arrs:
            return torch.zeros((0, 3, *self.shape), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()  # (m, 3, H, W)


class _Batches(Dataset):
    """Item ``rows`` (a list of indices) -> the decoded batch, or the one-line error text (a worker's
    exception would reach the training process as a multi-line traceback)."""

    def __init__(self, data: LazyImageSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, rows: list[int]) -> torch.Tensor | str:
        try:
            return self.data.load(rows)
        except Lm2vError as e:
            return str(e)


def stream_batches(data: LazyImageSet, rows: list[list[int]], workers: int = 0, prefetch: int = 2,
                   pin: bool = False) -> Iterator[torch.Tensor]:
    """The decoded uint8 batches (m, 3, H, W) of ``rows`` (lists of indices), in order, decoded by
    ``workers`` DataLoader processes (0: here), ``prefetch`` batches ahead each, pinned if ``pin``."""
    extra = {"prefetch_factor": prefetch} if workers > 0 else {}
    # its own generator: the workers' base seed is otherwise drawn from torch's global RNG, which would
    # shift the training's dropout draws away from the in-memory path's (decoding draws nothing)
    loader = DataLoader(_Batches(data), sampler=rows, batch_size=None, num_workers=workers, pin_memory=pin,
                        generator=torch.Generator().manual_seed(0), **extra)
    for batch in loader:
        if isinstance(batch, str):
            raise Lm2vError(batch)
        yield batch


def storage_choice(storage: str, nbytes: int, limit_gb: float) -> tuple[bool, str]:
    """(stream?, the line to print) for ``data.storage``: auto streams when the decoded images'
    ``nbytes`` exceed ``limit_gb``."""
    est = f"decoded uint8 train+val+test {nbytes / GB:.3g} GB"
    if storage == "stream":
        return True, f"data: streamed (data.storage=stream; {est})"
    stream = nbytes > limit_gb * GB
    sign = ">" if stream else "<="
    return stream, (f"data: storage auto -> {'stream' if stream else 'memory'}: {est} {sign} "
                    f"data.memory_limit_gb={limit_gb:g}")
