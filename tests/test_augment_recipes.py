"""Augmentation recipes (data.* overrides), AutoAugment and random erasing through kornia (an optional
extra): the config they load to, the one-line refusal without kornia, seeded determinism that leaves
the global RNG alone, erasing and AutoAugment with checkable effects, and an exact resume."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from lm2vision.data import (RECIPES, DataConfig, apply_autoaugment, augment_batch, check_augment, recipe_overrides,
                            sample_crop_params, seeded_global_rng)
from lm2vision.data import transforms
from lm2vision.errors import Lm2vError
from lm2vision.train import run_stage
from lm2vision.train.distributed import Runtime
from lm2vision.train.loop import ClassificationSteps, DeviceSet
from lm2vision.train.recipe import stage_config

IMAGENET = dict(crop_scale_min=0.08, autoaugment="imagenet", random_erasing=0.25)


def _images(b=8, size=16, seed=0):
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _steps(dcfg: DataConfig, batch_size=8, seed=3) -> ClassificationSteps:
    data = DeviceSet(_images(24, 16, seed=1), torch.arange(24) % 10)
    return ClassificationSteps(data, dcfg, 16, seed, batch_size, 0.0, Runtime(torch.device("cpu"), None))


@pytest.fixture
def no_kornia(monkeypatch):
    """kornia not importable, whether or not it is installed (a None entry makes ``import`` fail)."""
    for name in ("kornia", "kornia.augmentation", "kornia.augmentation.auto"):
        monkeypatch.setitem(sys.modules, name, None)


# -- recipes ------------------------------------------------------------------------------------

def test_imagenet_recipe_loads_and_a_later_user_override_wins():
    cfg = stage_config("bridge", None, recipe_overrides("imagenet")).data
    assert (cfg.augment, cfg.crop_scale_min, cfg.interpolation, cfg.hflip) == ("crop_flip", 0.08, "bicubic", True)
    assert (cfg.autoaugment, cfg.random_erasing) == ("imagenet", 0.25)
    mine = stage_config("bridge", None, recipe_overrides("imagenet") + ["data.random_erasing=0.5",
                                                                       "data.autoaugment=cifar10"]).data
    assert (mine.crop_scale_min, mine.autoaugment, mine.random_erasing) == (0.08, "cifar10", 0.5)


def test_cifar_recipe_is_the_defaults_and_none_turns_everything_off():
    assert stage_config("bridge", None, recipe_overrides("cifar")).data == DataConfig()
    off = stage_config("bridge", None, recipe_overrides("none")).data
    assert (off.augment, off.autoaugment, off.random_erasing) == ("none", "none", 0.0)


def test_unknown_recipe_names_the_known_ones_and_recipes_are_copies():
    with pytest.raises(Lm2vError, match=r"^unknown augmentation recipe 'tiny'; known recipes: cifar, imagenet, none$"):
        recipe_overrides("tiny")
    recipe_overrides("cifar").append("data.hflip=false")
    assert "data.hflip=false" not in RECIPES["cifar"]


@pytest.mark.parametrize("key, value", [("autoaugment", "randaugment"), ("random_erasing", 1.5)])
def test_new_fields_are_validated_by_their_metadata(key, value):
    with pytest.raises(Lm2vError, match=f"data.{key}"):
        stage_config("bridge", None, [f"data.{key}={value}"])


# -- kornia is optional -------------------------------------------------------------------------

def test_without_kornia_asking_for_it_fails_in_one_line(no_kornia):
    hint = 'needs kornia: pip install "lm2vision\\[augment\\]"$'
    with pytest.raises(Lm2vError, match=f"^data.autoaugment=imagenet {hint}"):
        check_augment(DataConfig(autoaugment="imagenet"))
    with pytest.raises(Lm2vError, match=f"^data.random_erasing=0.25 {hint}"):
        check_augment(DataConfig(random_erasing=0.25))
    with pytest.raises(Lm2vError, match="^data.autoaugment=imagenet and data.random_erasing=0.25 need kornia"):
        _steps(DataConfig(**IMAGENET))  # the task refuses when it is built, before any batch


def test_without_kornia_the_default_augmentation_runs(no_kornia):
    check_augment(DataConfig())
    check_augment(stage_config("bridge", None, recipe_overrides("cifar")).data)
    x, y = next(iter(_steps(DataConfig()).batches(0, 1)))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (8,)


def test_autoaugment_draws_a_sub_policy_per_image_and_puts_each_image_back(monkeypatch):
    """Stand-in sub-policies that add k/100 (k: their index) show which one each image went through:
    the k drawn for image i is the i-th of torch.randint(25, (B,)) from the seeded global RNG."""
    fake = tuple((lambda t, k=k: t + k / 100) for k in range(25))
    monkeypatch.setattr(transforms, "_policy_modules", lambda policy: fake)
    x = torch.zeros(40, 3, 4, 4)
    with seeded_global_rng(123, x.device):
        out = apply_autoaugment(x, "imagenet")
    picks = torch.randint(25, (40,), generator=torch.Generator().manual_seed(123))
    assert len(picks.unique()) > 10  # many sub-policies in one batch, not one for all
    assert torch.allclose(out, (picks / 100).view(40, 1, 1, 1).expand_as(x), atol=1e-7)


# -- with kornia --------------------------------------------------------------------------------

def test_batches_are_seeded_and_leave_the_global_rng_alone():
    pytest.importorskip("kornia")
    steps = _steps(DataConfig(**IMAGENET))
    before = torch.get_rng_state()
    a = [x for x, _ in steps.batches(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)
    b = [x for x, _ in steps.batches(1, 2)]
    c = [x for x, _ in steps.batches(2, 2)]
    assert len(a) == 6 and all(x.shape == (4, 3, 16, 16) for x in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not any(torch.equal(p, q) for p, q in zip(a, c))
    # kornia's draws follow the seed: a run seed that differs changes them, same crop plan or not
    d = [x for x, _ in _steps(DataConfig(**IMAGENET), seed=4).batches(1, 2)]
    assert not any(torch.equal(p, q) for p, q in zip(a, d))


def test_random_erasing_erases_one_box_per_image_with_zeros():
    pytest.importorskip("kornia")
    x = _images(16, 32)
    cfg = DataConfig()
    params = sample_crop_params(16, torch.Generator().manual_seed(0), cfg)
    plain = augment_batch(x, params, 32, cfg)
    erased = augment_batch(x, params, 32, DataConfig(random_erasing=1.0), seed=5)
    assert not bool((plain == 0).all(dim=1).any())  # no pixel of the plain batch is 0 in all channels
    for i in range(16):
        zero = (erased[i] == 0).all(dim=0)  # (S, S)
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(zero.sum()) == h * w == len(rows) * len(cols)  # one solid rectangle
        assert 1 <= h * w <= 0.4 * 32 * 32  # area share at most 0.33, plus rounding
        assert torch.equal(erased[i][:, ~zero], plain[i][:, ~zero])  # the rest untouched


def test_autoaugment_changes_images_but_not_shapes_or_range():
    pytest.importorskip("kornia")
    x = _images(64, 32)
    cfg = DataConfig(autoaugment="imagenet")
    params = sample_crop_params(64, torch.Generator().manual_seed(0), cfg)
    plain = augment_batch(x, params, 32, DataConfig())
    auto = augment_batch(x, params, 32, cfg, seed=7)
    assert auto.shape == plain.shape == (64, 3, 32, 32) and auto.dtype == torch.float32
    assert float(auto.min()) >= -1.0 and float(auto.max()) <= 1.0
    changed = (auto != plain).flatten(1).any(dim=1)
    assert int(changed.sum()) >= 48  # most images changed (a sub-policy may draw no operation)
    assert torch.equal(auto, augment_batch(x, params, 32, cfg, seed=7))
    with pytest.raises(ValueError, match="seed"):
        augment_batch(x, params, 32, cfg)


def test_imagenet_recipe_resumes_to_the_same_weights(tmp_path, one_thread):
    pytest.importorskip("kornia")
    over = [*TINY_RUN, *recipe_overrides("imagenet"), "optim.epochs=2", "model.dropout=0.1", "optim.accum_steps=2"]
    run_stage(stage_config("bridge", None, over), tmp_path / "full")
    part = run_stage(stage_config("bridge", None, over + ["runtime.stop_after=1"]), tmp_path / "part")
    assert part == {"stopped": True, "epoch": 1}
    run_stage(stage_config("bridge", None, over), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    init = load_file(str(tmp_path / "full" / "init.safetensors"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], init[k]) for k in a if k in init)  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
