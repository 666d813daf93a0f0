"""Training stages on a tiny model and the bundled data: labels, checkpoints, resume, refusals."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from lm2vision.config import load_config
from lm2vision.data import DataConfig, load_imageset_splits, load_labels
from lm2vision.errors import Lm2vError
from lm2vision.train import (STAGE_PRESETS, RunConfig, load_run_model, read_metrics, read_run_config,
                             read_summary, run_stage)
from lm2vision.train.optim import build_optimizer, lr_at


def cfg_of(stage: str, overrides: list[str]) -> RunConfig:
    return load_config(RunConfig, None, overrides, presets=STAGE_PRESETS[stage])


def test_bridge_run_writes_everything_and_keeps_eval_splits(tmp_path, tiny_run):
    cfg = cfg_of("bridge", tiny_run + ["labels.ratio=0.5", "labels.seed=3"])
    summary = run_stage(cfg, tmp_path / "b")
    run = tmp_path / "b"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "init.safetensors",
              "labels.safetensors", "checkpoints/last.safetensors", "checkpoints/last.json"):
        assert (run / f).is_file(), f
    # the labels used: exactly half of the 80 training images changed, each to a wrong class
    splits = load_imageset_splits(DataConfig(max_train_per_class=10, max_test_per_class=5, val_fraction=0.2))
    labels, changed = load_labels(run / "labels.safetensors")
    assert len(labels) == len(splits.train) == 80 and int(changed.sum()) == 40
    assert bool((labels[changed] != splits.train.labels[changed]).all())
    assert torch.equal(labels[~changed], splits.train.labels[~changed])
    # metrics: one record per epoch, then the test record at the final epoch; summary matches it
    recs = read_metrics(run)
    assert [r["epoch"] for r in recs if "train_loss" in r] == [1, 2]
    test = [r for r in recs if r.get("event") == "test"]
    assert len(test) == 1 and test[0]["epoch"] == 2
    assert summary["test_acc"] == pytest.approx(test[0]["test_acc"]) == read_summary(run)["test_acc"]
    assert read_run_config(run).labels.ratio == 0.5


def test_test_split_is_never_changed_by_random_labels(tiny_run):
    """The random labels touch the training split only: val and test labels equal the dataset's."""
    from lm2vision.data import random_labels

    splits = load_imageset_splits(DataConfig(max_train_per_class=10, max_test_per_class=5))
    before = splits.test.labels.clone(), splits.val.labels.clone()
    new, mask = random_labels(splits.train.labels, 10, 1.0, "wrong", seed=0)
    assert int(mask.sum()) == len(splits.train) and bool((new != splits.train.labels).all())
    assert torch.equal(splits.test.labels, before[0]) and torch.equal(splits.val.labels, before[1])


def test_model_roundtrip_through_safetensors(tmp_path, tiny_run):
    run_stage(cfg_of("train", tiny_run + ["optim.epochs=1"]), tmp_path / "t")
    model, cfg = load_run_model(tmp_path / "t")
    saved = load_file(str(tmp_path / "t" / "model.safetensors"))
    state = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    x = torch.randn(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, 10)


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_run):
    over = tiny_run + ["optim.epochs=3", "model.dropout=0.1"]  # dropout on: its RNG must be restored too
    full = run_stage(cfg_of("bridge", over), tmp_path / "full")
    part = run_stage(cfg_of("bridge", over + ["runtime.stop_after=1"]), tmp_path / "part")
    assert part == {"stopped": True, "epoch": 1}
    assert not (tmp_path / "part" / "summary.json").exists()
    resumed = run_stage(cfg_of("bridge", over), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test_acc"] == full["test_acc"]
    ra = [r for r in read_metrics(tmp_path / "full")]
    rb = [r for r in read_metrics(tmp_path / "part")]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("epoch_time_s", "img_per_s")} for r in rs]
    assert strip(ra) == strip(rb)


def test_probe_modes_train_the_right_parts(tmp_path, tiny_run):
    run_stage(cfg_of("bridge", tiny_run + ["optim.epochs=1"]), tmp_path / "b")
    bridged = load_file(str(tmp_path / "b" / "model.safetensors"))
    for mode in ("reinit", "linear", "finetune"):
        s = run_stage(cfg_of("probe", tiny_run + [f"probe.mode={mode}", "optim.epochs=1", "probe.linear_epochs=5",
                                                   f"init={tmp_path / 'b'}"]), tmp_path / mode)
        after = load_file(str(tmp_path / mode / "model.safetensors"))
        block = "lm.encoder.layer.0.attention.self.query.weight"
        same_block = torch.equal(after[block], bridged[block])
        same_patch = torch.equal(after["patch_embed.proj.weight"], bridged["patch_embed.proj.weight"])
        assert same_block == (mode != "finetune"), mode
        assert same_patch == (mode == "linear"), mode  # reinit re-draws it, finetune trains it
        assert 0.0 <= s["test_acc"] <= 1.0


def test_linear_probe_grid_selects_on_validation(tmp_path, tiny_run):
    s = run_stage(cfg_of("probe", tiny_run + ["probe.mode=linear", "probe.linear_epochs=20"]), tmp_path / "p")
    val = {k: v for r in read_metrics(tmp_path / "p") for k, v in r.items() if k.startswith("val_acc_lr")}
    assert len(val) == 4  # the default grid of learning rates
    assert s["best_lr"] in (1e-3, 3e-3, 1e-2, 3e-2)


def test_existing_run_directory_is_refused(tmp_path, tiny_run):
    cfg = cfg_of("train", tiny_run + ["optim.epochs=1"])
    run_stage(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(Lm2vError, match="already exists"):
        run_stage(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before  # nothing lost
    with pytest.raises(Lm2vError, match="nothing to resume"):
        run_stage(cfg, tmp_path / "fresh", resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(Lm2vError, match="does not look like an lm2v run"):
        run_stage(cfg, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("override,match", [
    ("labels.ratio=1.5", r"labels.ratio must be in \[0, 1\]"),
    ("labels.ratio=-0.1", r"labels.ratio must be in \[0, 1\]"),
    ("trainable.blocks=first:9", "asks for 9 blocks but the model has 2"),
    ("model.patch_size=5", "not divisible"),
    ("data.dataset=/no/such/dataset", "not found|does not exist|no such"),
    ("labels.scheme=shuffle", "scheme"),
    ("optim.batch_size=1000", "exceeds"),
])
def test_bad_inputs_fail_before_writing_results(tmp_path, tiny_run, override, match):
    with pytest.raises(Lm2vError, match=match):
        run_stage(cfg_of("bridge", tiny_run + [override]), tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_empty_dataset_is_refused(tmp_path, tiny_run):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(Lm2vError):
        run_stage(cfg_of("train", tiny_run + [f"data.dataset={tmp_path / 'empty'}"]), tmp_path / "x")


def test_weight_decay_only_on_trainable_matrices():
    from lm2vision.models import ModelConfig, TrainableSpec, apply_trainable, create_backbone
    from lm2vision.train.config import OptimConfig

    m = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False))
    apply_trainable(m, TrainableSpec(blocks="first:1", groups=["head"]))
    opt = build_optimizer(m, OptimConfig(weight_decay=0.05))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 and p.requires_grad for p in decay["params"])
    assert all(p.dim() < 2 and p.requires_grad for p in no_decay["params"])
    n_train = sum(1 for p in m.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_train


def test_warmup_cosine_schedule_known_values():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_at(100, 100, 10, 1.0, 1e-6) == pytest.approx(1e-6)


def test_phase_aware_bridge_scales_the_lr_by_measured_stability(tmp_path, tiny_run):
    over = tiny_run + ["optim.epochs=1", "phase.every=2", "phase.probe_size=4"]
    run_stage(cfg_of("bridge", over), tmp_path / "plain")
    run_stage(cfg_of("bridge", over + ["phase.adaptive_lr=true"]), tmp_path / "phase")
    rec = [r for r in read_metrics(tmp_path / "phase") if "train_loss" in r][0]
    assert 0.0 < rec["phase_S"] <= 1.0 + 1e-6 and rec["phase_lr_scale"] == rec["phase_S"]
    assert rec["phase_measured_at"] == 4  # 5 steps per epoch (80 images / 16), measured at 0, 2, 4
    assert (tmp_path / "phase" / "phase_theta0.safetensors").is_file()
    a = load_file(str(tmp_path / "plain" / "model.safetensors"))
    b = load_file(str(tmp_path / "phase" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the scaled lr changed the updates
    with pytest.raises(Lm2vError, match="stage 1"):
        run_stage(cfg_of("probe", tiny_run + ["phase.adaptive_lr=true"]), tmp_path / "bad")
