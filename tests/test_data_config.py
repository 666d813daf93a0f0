"""DataConfig through the project's config loader: YAML + key=value overrides, and back."""
from __future__ import annotations

import pytest

from lm2vision.config import load_config, save_config
from lm2vision.data import DataConfig
from lm2vision.errors import Lm2vError


def test_defaults_overrides_and_roundtrip(tmp_path):
    cfg = load_config(DataConfig)
    assert (cfg.dataset, cfg.format, cfg.val_fraction, cfg.store_size, cfg.mean) == ("bundled", "auto", 0.1, 32, [0.5] * 3)
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text("dataset: cifar100\nroot: /data\nmax_train_per_class: 20\n")
    cfg = load_config(DataConfig, yaml_path, ["hflip=false", "mean=[0.4,0.45,0.5]", "crop_scale_min=0.08"])
    assert (cfg.dataset, cfg.root, cfg.max_train_per_class, cfg.hflip) == ("cifar100", "/data", 20, False)
    assert cfg.mean == [0.4, 0.45, 0.5] and cfg.crop_scale_min == 0.08
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(DataConfig, tmp_path / "saved.yaml") == cfg


def test_unknown_key_is_an_error():
    with pytest.raises(Lm2vError):
        load_config(DataConfig, None, ["image_sise=32"])
