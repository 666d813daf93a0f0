"""The one trainer: gradient accumulation gives the step a full batch would."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from lm2vision.train import read_metrics, run_stage
from lm2vision.train.recipe import stage_config


def test_accumulating_two_half_batches_is_one_full_batch_step(tmp_path, one_thread):
    """batch 16 as 2 micro-batches of 8 reaches the weights of batch 16 in one go (dropout off, same data
    order and augmentation): the loss of each micro-batch is scaled by 1/2 and the optimizer steps once."""
    base = [*TINY_RUN, "optim.epochs=1", "labels.ratio=0", "optim.lr=0.005", "optim.warmup_epochs=0"]
    run_stage(stage_config("train", None, base), tmp_path / "full")
    run_stage(stage_config("train", None, base + ["optim.accum_steps=2"]), tmp_path / "accum")
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "accum" / "model.safetensors"))
    moved = max(float((a[k] - load_file(str(tmp_path / "full" / "init.safetensors")).get(k, a[k])).abs().max()) for k in a)
    assert moved > 1e-3  # the run did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    la, lb = read_metrics(tmp_path / "full")[0], read_metrics(tmp_path / "accum")[0]
    assert abs(la["train_loss"] - lb["train_loss"]) < 1e-4


def test_accumulating_with_a_micro_batch_that_does_not_divide_is_refused(tmp_path):
    import pytest

    from lm2vision.errors import Lm2vError

    with pytest.raises(Lm2vError, match="accum_steps"):
        run_stage(stage_config("train", None, [*TINY_RUN, "optim.accum_steps=3"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()
