"""Paired image / caption data for alignment training: a class-balanced seeded draw of images
(:func:`lm2vision.phase.screen.paired_samples`), each captioned by one of several templates applied
to its class name (template drawn per pair, seeded), and a class-stratified held-out split."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import ImageSet, stratified_split
from ..errors import Lm2vError
from .screen import Pairs, paired_samples

# A subset of CLIP's ImageNet prompt ensemble (Radford et al. 2021, "a photo of a {}." family).
TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a low resolution photo of a {}.", "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
]


def caption_pairs(images: ImageSet, n: int, templates: list[str], seed: int) -> Pairs:
    """``n`` class-balanced images (seeded) with captions ``templates[k].format(class name)``, k drawn
    per pair from a generator seeded by ``seed`` (so the same seed gives the same captions)."""
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise Lm2vError(f"every caption template must contain {{}} for the class name, got {bad[0]!r}"
                        if bad else "give at least one caption template")
    pairs = paired_samples(images, n, "{}", seed)  # captions = bare class names
    k = torch.randint(len(templates), (n,), generator=torch.Generator().manual_seed(seed + 1))
    return Pairs(pairs.images, pairs.labels, [templates[int(i)].format(c) for i, c in zip(k, pairs.captions)])


@dataclass
class PairSplit:
    """Training pairs and held-out pairs (for measuring alignment), disjoint, stratified by class."""

    train: Pairs
    heldout: Pairs


def split_pairs(pairs: Pairs, heldout: float, seed: int) -> PairSplit:
    """Hold out round(heldout * n_c) pairs of each class c (seeded)."""
    kept, held = stratified_split(pairs.labels, heldout, seed)
    if len(held) < 2 or len(kept) < 2:
        raise Lm2vError(f"heldout={heldout} of {len(pairs.labels)} pairs leaves {len(kept)} to train and "
                        f"{len(held)} held out; need at least 2 of each")
    take = lambda idx: Pairs(pairs.images[idx], pairs.labels[idx], [pairs.captions[int(i)] for i in idx])  # noqa: E731
    return PairSplit(take(kept), take(held))
