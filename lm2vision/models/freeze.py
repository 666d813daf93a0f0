"""Freezing by named groups: what trains is data (a ``TrainableSpec``), not code.

selection = ((parameters of the chosen blocks, restricted to ``parts``) | (parameters of ``groups``)
             | (names matching ``include``)) - (names matching ``exclude``); fixed tables never train.

Examples (the paper's and its peers' settings):
- all blocks (everything): blocks="all",    groups=[patch, pos, embed, final_norm, head]
- partial, first 2:       blocks="first:2", groups=[patch, pos, embed, final_norm, head]
- freeze the first 5:     blocks="from:5" (every block after the first 5; "last:N-5" says the same)
- frozen pretrained (FPT): blocks="none",   groups=[patch, pos, norm, head]
- stage 2 reinit:         blocks="none",    groups=[patch, head]
- only the query/key/value of GPT-2 (peft's target_modules): blocks="none", groups=[], include="attn\\.c_attn\\."
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch.nn as nn

from ..errors import Lm2vError

GROUPS = ("patch", "pos", "embed", "norm", "final_norm", "attn", "mlp", "head")
PARTS = ("all", "attn", "mlp", "norm")


@dataclass
class TrainableSpec:
    """Which parameters train in a stage."""

    blocks: str = "all"  # all | none | first:K | last:K | from:K (all but the first K) | comma list, e.g. "0,1,5"
    parts: list[str] = field(default_factory=lambda: ["all"])  # within chosen blocks: all | attn | mlp | norm
    groups: list[str] = field(default_factory=lambda: ["patch", "pos", "embed", "final_norm", "head"])  # added groups
    include: Optional[str] = None  # regex (re.search on parameter names): these train too
    exclude: Optional[str] = None  # regex: these never train, whatever selected them


def parse_blocks(blocks: str, num_blocks: int) -> list[int]:
    """Block selector -> sorted indices; k > num_blocks or a bad index is a one-line error."""
    text = str(blocks).strip().lower()
    if text == "all":
        return list(range(num_blocks))
    if text in ("none", ""):
        return []
    if text.startswith(("first:", "last:", "from:")):
        which, _, k = text.partition(":")
        if not k.isdigit():
            raise Lm2vError(f"bad block selector {blocks!r}: expected {which}:K with K an integer")
        k = int(k)
        if k > num_blocks or (which == "from" and k >= num_blocks):
            raise Lm2vError(f"{which}:{k} asks for {'blocks after the first ' if which == 'from' else ''}{k} "
                            f"blocks but the model has {num_blocks}")
        return {"first": list(range(k)), "last": list(range(num_blocks - k, num_blocks)),
                "from": list(range(k, num_blocks))}[which]
    try:
        idx = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise Lm2vError(f"bad block selector {blocks!r}: use all, none, first:K, last:K, from:K or a list like 0,1,5") from None
    bad = [i for i in idx if not 0 <= i < num_blocks]
    if bad:
        raise Lm2vError(f"block index {bad[0]} out of range: the model has {num_blocks} blocks (0..{num_blocks - 1})")
    return idx


def _regex(spec: TrainableSpec, key: str) -> re.Pattern | None:
    text = getattr(spec, key)
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise Lm2vError(f"trainable.{key} {text!r} is not a valid regex: {e}") from None


def select_parameters(groups: dict[str, list[str]], spec: TrainableSpec, num_blocks: int,
                      names: Iterable[str] | None = None) -> set[str]:
    """Names of the parameters ``spec`` selects, given a model's ``layer_groups()``.

    ``names`` are the parameters ``include`` may pick (default: every name in ``groups``); leave the
    fixed tables out of them, so that no regex can train them.
    """
    unknown = [g for g in spec.groups if g not in GROUPS] + [p for p in spec.parts if p not in PARTS]
    if unknown:
        raise Lm2vError(f"unknown group {unknown[0]!r}; groups: {', '.join(GROUPS)}; parts: {', '.join(PARTS)}")
    include, exclude = _regex(spec, "include"), _regex(spec, "exclude")
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
    if include is not None:
        pool = set(names) if names is not None else {n for group in groups.values() for n in group}
        chosen |= {n for n in pool if include.search(n)}
    if exclude is not None:
        chosen = {n for n in chosen if not exclude.search(n)}
    return chosen


def apply_trainable(model: nn.Module, spec: TrainableSpec) -> set[str]:
    """Set ``requires_grad`` so exactly the selected parameters train; returns their names.

    The spec is kept as ``model.trainable_spec`` so that ``trainable_summary`` can show its regexes.
    """
    fixed = getattr(model, "fixed_params", set())
    names = [n for n, _ in model.named_parameters() if n not in fixed]
    chosen = select_parameters(model.layer_groups(), spec, model.num_blocks, names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    model.trainable_spec = spec
    return chosen


def trainable_summary(model: nn.Module) -> str:
    """A short table of trainable parameters by group (printed at the start of each stage)."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    train = sum(p.numel() for p in params.values() if p.requires_grad)
    lines = [f"trainable params: {train:,} / {total:,} ({100 * train / max(total, 1):.2f}%)"]
    spec = getattr(model, "trainable_spec", None)
    for key in ("include", "exclude"):
        if spec is not None and getattr(spec, key) is not None:
            lines.append(f"  {key:<10} /{getattr(spec, key)}/")
    for group, names in model.layer_groups().items():
        n_all = sum(params[n].numel() for n in names)
        n_on = sum(params[n].numel() for n in names if params[n].requires_grad)
        if n_all:
            state = "train" if n_on == n_all else ("frozen" if n_on == 0 else "partial")
            lines.append(f"  {group:<10} {n_on:>12,} / {n_all:>12,}  {state}")
    return "\n".join(lines)
