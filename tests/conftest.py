"""Shared fixtures: tiny models and small data on CPU, nothing downloaded."""
from __future__ import annotations

import os

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


@pytest.fixture
def tiny_run():
    return list(TINY_RUN)
