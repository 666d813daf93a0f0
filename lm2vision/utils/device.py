"""Device names -> torch devices, one rule for every command."""
from __future__ import annotations

import torch

from ..errors import Lm2vError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU; ``cuda`` -> the local
    rank's GPU; a CUDA name on a machine without CUDA is an error, never a silent CPU run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Lm2vError(f"device {name} asked for but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise Lm2vError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
