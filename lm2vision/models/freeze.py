"""Freezing by named groups: what trains is data (a ``TrainableSpec``), not code.

selection = (parameters of the chosen blocks, restricted to ``parts``) | (parameters of ``groups``)

Examples (the paper's and its peers' settings):
- all blocks (everything): blocks="all",    groups=[patch, pos, final_norm, head]
- partial, first 2:       blocks="first:2", groups=[patch, pos, final_norm, head]
- freeze the first 5:     blocks="last:N-5" (or an explicit list)
- frozen pretrained (FPT): blocks="none",   groups=[patch, pos, norm, head]
- stage 2 reinit:         blocks="none",    groups=[patch, head]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import Lm2vError

GROUPS = ("patch", "pos", "norm", "final_norm", "attn", "mlp", "head")
PARTS = ("all", "attn", "mlp", "norm")


@dataclass
class TrainableSpec:
    """Which parameters train in a stage."""

    blocks: str = "all"  # all | none | first:K | last:K | comma list of indices, e.g. "0,1,5"
    parts: list[str] = field(default_factory=lambda: ["all"])  # within chosen blocks: all | attn | mlp | norm
    groups: list[str] = field(default_factory=lambda: ["patch", "pos", "final_norm", "head"])  # added groups


def parse_blocks(blocks: str, num_blocks: int) -> list[int]:
    """Block selector -> sorted indices; k > num_blocks or a bad index is a one-line error."""
    text = str(blocks).strip().lower()
    if text == "all":
        return list(range(num_blocks))
    if text in ("none", ""):
        return []
    if text.startswith(("first:", "last:")):
        which, _, k = text.partition(":")
        if not k.isdigit():
            raise Lm2vError(f"bad block selector {blocks!r}: expected {which}:K with K an integer")
        k = int(k)
        if k > num_blocks:
            raise Lm2vError(f"{which}:{k} asks for {k} blocks but the model has {num_blocks}")
        return list(range(k)) if which == "first" else list(range(num_blocks - k, num_blocks))
    try:
        idx = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise Lm2vError(f"bad block selector {blocks!r}: use all, none, first:K, last:K or a list like 0,1,5") from None
    bad = [i for i in idx if not 0 <= i < num_blocks]
    if bad:
        raise Lm2vError(f"block index {bad[0]} out of range: the model has {num_blocks} blocks (0..{num_blocks - 1})")
    return idx


def select_parameters(groups: dict[str, list[str]], spec: TrainableSpec, num_blocks: int) -> set[str]:
    """Names of the parameters ``spec`` selects, given a model's ``layer_groups()``."""
    unknown = [g for g in spec.groups if g not in GROUPS] + [p for p in spec.parts if p not in PARTS]
    if unknown:
        raise Lm2vError(f"unknown group {unknown[0]!r}; groups: {', '.join(GROUPS)}; parts: {', '.join(PARTS)}")
    chosen: set[str] = set()
    for i in parse_blocks(spec.blocks, num_blocks):
        block = set(groups[f"block.{i}"])
        if "all" in spec.parts:
            chosen |= block
        else:
            for part in spec.parts:
                chosen |= block & set(groups[part])
    for g in spec.groups:
        chosen |= set(groups[g])
    return chosen


def apply_trainable(model: nn.Module, spec: TrainableSpec) -> set[str]:
    """Set ``requires_grad`` so exactly the selected parameters train; returns their names."""
    chosen = select_parameters(model.layer_groups(), spec, model.num_blocks)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return chosen


def trainable_summary(model: nn.Module) -> str:
    """A short table of trainable parameters by group (printed at the start of each stage)."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    train = sum(p.numel() for p in params.values() if p.requires_grad)
    lines = [f"trainable params: {train:,} / {total:,} ({100 * train / max(total, 1):.2f}%)"]
    for group, names in model.layer_groups().items():
        n_all = sum(params[n].numel() for n in names)
        n_on = sum(params[n].numel() for n in names if params[n].requires_grad)
        if n_all:
            state = "train" if n_on == n_all else ("frozen" if n_on == 0 else "partial")
            lines.append(f"  {group:<10} {n_on:>12,} / {n_all:>12,}  {state}")
    return "\n".join(lines)
