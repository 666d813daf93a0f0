"""Training stages on a tiny model and the bundled data: labels, checkpoints, resume, refusals, and
the test split read once, after training, and never for a choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lm2vision.data import DataConfig, load_imageset_splits, load_labels
from lm2vision.errors import Lm2vError
from lm2vision.train import (ProbeConfig, RunConfig, load_run_model, read_metrics, read_run_config,
                             read_summary, run_stage)
from lm2vision.train.optim import build_optimizer, lr_at
from lm2vision.train.probe import train_linear_grid
from reference import kernel_alignment, normalised, per_sample_ntk, run_test_accuracy
from lm2vision.train.recipe import stage_config
from lm2vision.train.rundir import TIMING_KEYS


def cfg_of(stage: str, overrides: list[str]) -> RunConfig:
    return stage_config(stage, None, overrides)


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
    # the reported figure is the saved final model's accuracy on the 50 test images, recomputed here
    acc = run_test_accuracy(run)
    assert summary["test_acc"] == pytest.approx(acc, abs=1e-6) and test[0]["test_acc"] == pytest.approx(acc, abs=1e-6)
    assert read_summary(run) == summary
    assert read_run_config(run).labels.ratio == 0.5


# -- the test split: read once, after training, never for a choice ---------------------------------
def _png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _write_set(root, test_counts=(2, 2, 2), white_test=True):
    """3 classes x 8 training images (pixels 0..200, seeded: the same in every call) and a test split
    of ``test_counts`` images per class: pure white (255) or random (a different test split)."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate("abc"):
        for i in range(8):
            _png(root / "train" / cls / f"{i}.png", rng.integers(0, 201, (32, 32, 3), dtype=np.uint8))
    rng = np.random.default_rng(1)
    for c, cls in enumerate("abc"):
        for i in range(test_counts[c]):
            img = np.full((32, 32, 3), 255, np.uint8) if white_test else rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            _png(root / "test" / cls / f"{i}.png", img)
    return root


def _small(root) -> list[str]:
    """tiny-gpt2 at 32 px, patch 8: 18 training / 6 validation images, batches of 6, 2 epochs."""
    return ["model.name=tiny-gpt2", "model.pretrained=false", "model.dropout=0.0", "model.image_size=32",
            "model.patch_size=8", f"data.dataset={root}", "data.val_fraction=0.25", "optim.batch_size=6",
            "optim.epochs=2", "probe.linear_epochs=3", "runtime.progress=false", "runtime.tensorboard=false"]


STAGES = {"bridge": ("bridge", ["labels.ratio=1.0"]), "probe-linear": ("probe", ["probe.mode=linear"])}


def _watch_patch_inputs(monkeypatch) -> list[tuple[bool, int, int]]:
    """(training mode, white test images, images) of every batch reaching the stage model's patch
    embedding, the one entrance of every forward pass (training, evaluation, feature extraction)."""
    import lm2vision.train.stages as stages

    seen, real = [], stages.prepare_model

    def prepare(cfg, num_classes):
        model = real(cfg, num_classes)

        def hook(module, args):
            x = args[0]  # (B, 3, S, S) normalised: white is 1.0 everywhere, training pixels stay <= 0.57
            white = (x - 1.0).abs().flatten(1).amax(1) < 1e-4
            seen.append((module.training, int(white.sum()), x.shape[0]))

        model.patch_embed.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(stages, "prepare_model", prepare)
    return seen


@pytest.mark.parametrize("stage", list(STAGES))
def test_test_split_goes_through_the_model_once_after_training(tmp_path, monkeypatch, stage):
    name, extra = STAGES[stage]
    seen = _watch_patch_inputs(monkeypatch)
    summary = run_stage(cfg_of(name, _small(_write_set(tmp_path / "ds")) + extra), tmp_path / "run")
    with_test = [i for i, (_, n, _) in enumerate(seen) if n]
    assert sum(seen[i][1] for i in with_test) == 6  # each of the 6 test images exactly once
    assert all(not seen[i][0] and seen[i][1] == seen[i][2] for i in with_test)  # eval mode, never mixed
    if name == "bridge":
        steps = [i for i, (training, _, _) in enumerate(seen) if training]
        val = [i for i, (training, n, _) in enumerate(seen) if not training and not n]
        assert len(steps) == 2 * 3 and sum(seen[i][2] for i in val) == 2 * 6  # 3 steps and 6 val images per epoch
        assert max(steps + val) < min(with_test)  # the test pass comes after every step and every val pass
    else:  # one frozen forward pass over train, val and test features
        assert sum(b for _, _, b in seen) == 18 + 6 + 6 and not any(training for training, _, _ in seen)
    # identical test images get one prediction: 2 right out of 6 (2 per class), whatever the model
    assert summary["test_acc"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("stage", list(STAGES))
def test_another_test_split_changes_no_weight_and_no_choice(tmp_path, stage):
    """Swap the test split for other images in other counts: the weights, every training and validation
    record and the chosen lr stay bit-identical; only the test figures move."""
    name, extra = STAGES[stage]
    a = run_stage(cfg_of(name, _small(_write_set(tmp_path / "white")) + extra), tmp_path / "a")
    b = run_stage(cfg_of(name, _small(_write_set(tmp_path / "noise", (1, 3, 2), white_test=False)) + extra),
                  tmp_path / "b")
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    untimed = lambda run: [{k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
                           for r in read_metrics(run) if r.get("event") != "test"]
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")
    assert {k: v for k, v in a.items() if not k.startswith("test_")} == {k: v for k, v in b.items() if not k.startswith("test_")}
    assert b["test_acc"] == pytest.approx(run_test_accuracy(tmp_path / "b"), abs=1e-6)


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
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
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
        assert s["test_acc"] == pytest.approx(run_test_accuracy(tmp_path / mode), abs=1e-6), mode


def test_linear_probe_picks_the_best_validation_lr_and_reports_its_saved_head(tmp_path, tiny_run):
    run = tmp_path / "p"
    s = run_stage(cfg_of("probe", tiny_run + ["probe.mode=linear", "probe.linear_epochs=20"]), run)
    lrs = read_run_config(run).probe.linear_lrs
    final = [r for r in read_metrics(run) if r.get("epoch") == 20 and "event" not in r][-1]
    val = [final[f"val_acc_lr{lr:g}"] for lr in lrs]  # the logged final validation accuracy per lr
    assert s["best_lr"] == lrs[val.index(max(val))]  # the first of the best, in grid order
    assert s["val_acc"] == max(val)
    # the head saved in model.safetensors, run over the test split, gives the reported test accuracy
    assert s["test_acc"] == pytest.approx(run_test_accuracy(run), abs=1e-6)


def _clusters(n: int, g: torch.Generator, K: int = 10, C: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k sits at 4 e_k with noise 0.1: linearly separable by a wide margin."""
    y = torch.arange(n) % K
    return 4.0 * torch.eye(K, C)[y] + 0.1 * torch.randn(n, C, generator=g), y


def test_linear_grid_keeps_the_lr_that_fits_validation():
    """Separable features: lr 0.1 reaches 100% validation accuracy in 10 epochs, lr 1e-6 stays near its
    random start (far below), in either grid order. With validation labels shifted by one class the
    head that learned the training labels scores 0 on validation, and the grid keeps the other one."""
    g = torch.Generator().manual_seed(0)
    tx, ty = _clusters(200, g)
    vx, vy = _clusters(50, g)
    for lrs in ([1e-6, 0.1], [0.1, 1e-6]):
        res = train_linear_grid(tx, ty, vx, vy, 10, ProbeConfig(linear_lrs=lrs, linear_epochs=10, linear_weight_decay=0.0))
        assert res.best_lr == 0.1 and res.val_acc[0.1] == 1.0 and res.val_acc[1e-6] < 0.5
        assert bool((res.predict(vx) == vy).all())  # the returned head acts on the raw, unstandardised features
    shifted = (vy + 1) % 10
    res = train_linear_grid(tx, ty, vx, shifted, 10, ProbeConfig(linear_lrs=[0.1, 1e-6], linear_epochs=10,
                                                                 linear_weight_decay=0.0))
    assert res.val_acc[0.1] == 0.0 and res.val_acc[1e-6] > 0.0 and res.best_lr == 1e-6


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
    with pytest.raises(Lm2vError, match="has no .lm2v-run marker \\(not an lm2v run\\)"):
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


def _ntk_by_hand(model, probe: torch.Tensor) -> torch.Tensor:
    """The controller's kernel from its definition: NTK of the pooled embedding times a fixed
    projection to 8 dims, over the trainable parameters outside the head, per-sample autograd."""
    from lm2vision.phase.encoders import VisionEmbedder

    net = VisionEmbedder(model, out_dim=8)
    params = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("backbone.head.")]
    was_training = model.training
    model.eval()
    try:
        return per_sample_ntk(net, [(x[None],) for x in probe], params)
    finally:
        model.train(was_training)


def test_phase_aware_bridge_scales_each_step_lr_by_the_measured_stability(tmp_path, tiny_run, monkeypatch):
    """eta(t) = eta_0(t) * S(t): the lr each step hands the optimizer, divided by the plain run's, is S
    measured by hand (per-sample NTK on the first 4 training images) at the last step 0, 2, 4 before it."""
    import lm2vision.train.loop as loop
    import lm2vision.train.stages as stages

    # a large constant lr, so that four steps move the kernel well away from S = 1
    over = tiny_run + ["optim.epochs=1", "optim.lr=0.01", "optim.warmup_epochs=0", "phase.every=2", "phase.probe_size=4"]
    probe = normalised(load_imageset_splits(read_cfg_data(over)).train.images[:4], [0.5] * 3, [0.5] * 3)
    models, applied, kernels = [], [], {}
    real_prepare, real_set_lr = stages.prepare_model, loop.set_lr
    monkeypatch.setattr(stages, "prepare_model", lambda *a: models.append(real_prepare(*a)) or models[-1])

    def set_lr(optimizer, lr):  # called once per step, before the step's forward pass
        if measuring and len(applied) % 2 == 0:
            kernels[len(applied)] = _ntk_by_hand(models[-1], probe)
        applied.append(lr)
        real_set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", set_lr)
    measuring = False
    run_stage(cfg_of("bridge", over), tmp_path / "plain")
    plain, applied = applied, []
    measuring = True
    run_stage(cfg_of("bridge", over + ["phase.adaptive_lr=true"]), tmp_path / "phase")
    assert len(plain) == len(applied) == 5  # 80 images / 16
    s = {t: kernel_alignment(kernels[t], kernels[0]) for t in (0, 2, 4)}
    assert s[0] == pytest.approx(1.0, abs=1e-12) and s[2] < 0.95 and s[4] < 0.95  # the kernel did move
    for t in range(5):
        assert applied[t] == pytest.approx(plain[t] * s[t - t % 2], rel=1e-5), t
    rec = [r for r in read_metrics(tmp_path / "phase") if "train_loss" in r][0]
    assert rec["phase_S"] == pytest.approx(s[4], rel=1e-5) and rec["phase_measured_at"] == 4
    assert (tmp_path / "phase" / "phase_theta0.safetensors").is_file()
    with pytest.raises(Lm2vError, match="stage 1"):
        run_stage(cfg_of("probe", tiny_run + ["phase.adaptive_lr=true"]), tmp_path / "bad")


def read_cfg_data(overrides: list[str]) -> DataConfig:
    return cfg_of("bridge", overrides).data
