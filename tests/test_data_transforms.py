"""Batched transforms: shapes, normalisation, seeded determinism, flips and crops with known answers."""
from __future__ import annotations

import pytest
import torch

from lm2vision.data import (DataConfig, apply_crop_params, augment_batch, eval_transform, normalize, preprocess_eval,
                            sample_crop_params, seeded_global_rng, train_transform)
from lm2vision.errors import Lm2vError


def _images(b=6, h=16, w=16, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_normalize_known_values():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(x, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 2.0, 0.0]), atol=1e-6)


def test_train_transform_shape_dtype_range_and_determinism():
    cfg = DataConfig()
    x = _images()
    a = train_transform(x, 24, torch.Generator().manual_seed(3), cfg)
    b = train_transform(x, 24, torch.Generator().manual_seed(3), cfg)
    c = train_transform(x, 24, torch.Generator().manual_seed(4), cfg)
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0


def test_crop_params_ranges():
    cfg = DataConfig(crop_scale_min=0.2)
    p = sample_crop_params(4000, torch.Generator().manual_seed(0), cfg)
    sx, sy, tx, ty, flip = p.unbind(1)
    area = sx * sy
    assert float(area.min()) >= 0.2 - 1e-6 and float(area.max()) <= 1.0 + 1e-6
    ratio = sx / sy
    assert float(ratio.min()) >= 0.75 - 1e-5 and float(ratio.max()) <= 4 / 3 + 1e-5
    assert bool(((tx.abs() <= 1 - sx + 1e-6) & (ty.abs() <= 1 - sy + 1e-6)).all())  # crop inside image
    assert set(flip.tolist()) == {-1.0, 1.0} and 0.45 < float((flip < 0).float().mean()) < 0.55
    no_flip = sample_crop_params(100, torch.Generator().manual_seed(0), DataConfig(hflip=False))
    assert bool((no_flip[:, 4] == 1).all())


def test_flip_actually_flips_and_identity_keeps():
    cfg = DataConfig()
    x = _images(4, 8, 8)
    ident = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]]).repeat(4, 1)
    flipped = ident.clone()
    flipped[:, 4] = -1
    assert torch.allclose(apply_crop_params(x, ident, 8, cfg), normalize(x), atol=1e-5)
    assert torch.allclose(apply_crop_params(x, flipped, 8, cfg), normalize(x.flip(-1)), atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_crop_of_top_left_quadrant(mode):
    x = _images(2, 4, 4)
    quadrant = torch.tensor([[0.5, 0.5, -0.5, -0.5, 1.0]]).repeat(2, 1)  # the top-left 2x2 block
    out = apply_crop_params(x, quadrant, 2, DataConfig(interpolation=mode))
    assert torch.allclose(out, normalize(x[:, :, :2, :2]), atol=1e-5)


def test_parameters_for_a_global_batch_apply_to_slices():
    cfg = DataConfig()
    x = _images(8)
    params = sample_crop_params(8, torch.Generator().manual_seed(9), cfg)
    whole = apply_crop_params(x, params, 12, cfg)
    parts = torch.cat([apply_crop_params(x[i:i + 4], params[i:i + 4], 12, cfg) for i in (0, 4)])
    assert torch.allclose(whole, parts, atol=1e-6)
    same = train_transform(x, 12, torch.Generator().manual_seed(9), cfg)
    assert torch.allclose(whole, same, atol=1e-6)


def test_eval_transform_constant_stays_constant_and_sizes():
    x = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    expected = (77 / 255 - 0.5) / 0.5
    for size in (4, 10, 23):
        out = eval_transform(x, size)
        assert out.shape == (2, 3, size, size)
        assert torch.allclose(out, torch.full_like(out, expected), atol=1e-4)
    y = _images(2, 8, 8)
    assert torch.allclose(preprocess_eval(y, 8), normalize(y), atol=1e-6)


def test_augment_none_is_eval_and_bad_values():
    x = _images(2)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(train_transform(x, 12, g, DataConfig(augment="none")), eval_transform(x, 12), atol=1e-6)
    with pytest.raises(Lm2vError):
        train_transform(x, 12, g, DataConfig(augment="autoaugment"))
    with pytest.raises(Lm2vError):
        train_transform(x, 12, g, DataConfig(interpolation="nearest"))
    with pytest.raises(Lm2vError):
        sample_crop_params(2, g, DataConfig(crop_scale_min=0.0))


def test_augment_batch_without_kornia_settings_is_the_crop_or_the_resize():
    cfg = DataConfig()
    x = _images(4)
    params = sample_crop_params(4, torch.Generator().manual_seed(2), cfg)
    assert torch.equal(augment_batch(x, params, 12, cfg), apply_crop_params(x, params, 12, cfg))
    assert torch.equal(augment_batch(x, None, 12, cfg), eval_transform(x, 12, cfg))


def test_seeded_global_rng_seeds_the_block_and_restores_the_state():
    before = torch.get_rng_state()
    with seeded_global_rng(42, torch.device("cpu")):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(42)))
    assert torch.equal(torch.get_rng_state(), before)
