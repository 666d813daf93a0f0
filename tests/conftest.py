"""Shared fixtures: tiny models and small data on CPU, nothing downloaded."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

FAMILIES = ["tiny-gpt2", "tiny-bert", "tiny-llama", "tiny-qwen2", "tiny-qwen3"]

# small, fast overrides shared by the stage tests: tiny BERT on 20+10 images per class
TINY_RUN = [
    "model.name=tiny-bert", "model.pretrained=false", "model.dropout=0.0",
    "data.max_train_per_class=10", "data.max_test_per_class=5", "data.val_fraction=0.2",
    "optim.batch_size=16", "optim.epochs=2", "runtime.progress=false", "runtime.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, whatever ran before it (or on which xdist
    worker): draws a test makes without its own generator are then reproducible run to run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_run():
    return list(TINY_RUN)


# the dense training tests: tiny BERT at 32 px, one synthetic set shared by the session
DENSE_COMMON = [
    "model.name=tiny-bert", "model.pretrained=false", "model.image_size=32", "model.patch_size=4",
    "optim.batch_size=32", "optim.lr=0.001", "optim.warmup_epochs=0.5",
    "runtime.progress=false", "runtime.tensorboard=false", "runtime.seed=0",
]


@pytest.fixture(scope="session")
def dense_synth(tmp_path_factory):
    from lm2vision.dense.synthetic import make_synthetic_dense

    return make_synthetic_dense(tmp_path_factory.mktemp("syn"), n_train=256, n_val=64, image_size=32, seed=0)


@pytest.fixture
def one_thread():
    """One torch thread: the CPU is shared, and it keeps the numbers reproducible."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"lm2v_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` under ``root`` (folders made as needed); returns ``root``."""
    for rel, blob in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return root
