"""Stage 2 does what the method says: the user's model and trainable settings reach it, the fresh
parts are drawn fresh, and every other tensor is the bridged model's, for every family."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lm2vision.config import save_config
from lm2vision.errors import Lm2vError
from lm2vision.models import TINY_CONFIGS
from lm2vision.train import read_run_config, run_stage
from lm2vision.train.checkpoint import save_full_model
from lm2vision.train.distributed import Runtime
from lm2vision.train.recipe import stage_config
from lm2vision.train.stages import prepare_model

FAST = ["model.image_size=32", "model.patch_size=8", "data.max_train_per_class=4", "data.max_test_per_class=2",
        "data.val_fraction=0.25", "optim.batch_size=10", "optim.epochs=1", "probe.linear_epochs=2",
        "runtime.progress=false", "runtime.tensorboard=false"]


def tiny(name: str) -> list[str]:
    return [f"model.name={name}", "model.pretrained=false", *FAST]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """One tiny-bert bridge run, shared (read-only) by the tests below."""
    run = tmp_path_factory.mktemp("b") / "bridge"
    run_stage(stage_config("bridge", None, tiny("tiny-bert") + ["model.positions=learned"]), run)
    return run


def test_probe_keeps_the_users_model_overrides(bridge, tmp_path):
    over = FAST + ["probe.mode=reinit", "model.dropout=0.3", "model.init_seed=7", "model.attn_implementation=eager"]
    cfg = stage_config("probe", None, over, init=str(bridge))
    model = prepare_model(cfg, 10)
    assert model.lm.config.hidden_dropout_prob == 0.3  # was the bridge's 0.1 (its model config replaced ours)
    assert model.lm.config._attn_implementation == "eager"
    run_stage(stage_config("probe", None, over, init=str(bridge)), tmp_path / "p")
    saved = read_run_config(tmp_path / "p")
    assert (saved.model.dropout, saved.model.init_seed, saved.model.attn_implementation) == (0.3, 7, "eager")
    assert (saved.model.name, saved.model.positions) == ("tiny-bert", "learned")  # the init run's architecture


@pytest.mark.parametrize("override", ["model.name=tiny-gpt2", "model.patch_size=4", "model.positions=none"])
def test_init_with_another_architecture_is_refused(bridge, override):
    field = override.split("=")[0]
    with pytest.raises(Lm2vError, match=rf"^{field}=.* differs from the --init run's"):
        stage_config("probe", None, FAST + [override], init=str(bridge))


def test_reinit_draws_fresh_parts_from_the_probes_seed(bridge, tmp_path):
    start = load_file(str(bridge / "init.safetensors"))["patch_embed.proj.weight"]  # the bridge's own start

    def probe_start(seed: int, out: str) -> torch.Tensor:
        run_stage(stage_config("probe", None, FAST + ["probe.mode=reinit", f"runtime.seed={seed}"], init=str(bridge)),
                  tmp_path / out)
        return load_file(str(tmp_path / out / "init.safetensors"))["patch_embed.proj.weight"]

    a, b, a2 = probe_start(0, "a"), probe_start(1, "b"), probe_start(0, "a2")
    assert not torch.equal(a, start)  # was equal: drawn from the bridge's init_seed again
    assert not torch.equal(a, b)  # varies with the seed
    assert torch.equal(a, a2)  # and is reproducible
    assert abs(float(a.std()) - 0.02) < 0.004  # N(0, 0.02)


def test_reinit_keeps_the_bridged_learned_positions(bridge, tmp_path):
    bridged = load_file(str(bridge / "model.safetensors"))
    run_stage(stage_config("probe", None, FAST + ["probe.mode=reinit"], init=str(bridge)), tmp_path / "p")
    after = load_file(str(tmp_path / "p" / "model.safetensors"))
    assert torch.equal(after["pos_embed"], bridged["pos_embed"])  # was re-drawn at random, then frozen


def test_users_trainable_is_honoured_in_stage_2(bridge, tmp_path):
    cfg = stage_config("probe", None, FAST + ["probe.mode=reinit", "trainable.blocks=last:1"], init=str(bridge))
    assert cfg.trainable.blocks == "last:1" and cfg.trainable.groups == ["patch", "head"]
    model = prepare_model(cfg, 10)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "lm.encoder.layer.1.attention.self.query.weight" in trains  # was replaced by blocks=none
    assert "lm.encoder.layer.0.attention.self.query.weight" not in trains
    # the mode's default when the user says nothing
    default = stage_config("probe", None, FAST + ["probe.mode=reinit"], init=str(bridge))
    assert (default.trainable.blocks, default.trainable.groups) == ("none", ["patch", "head"])


@pytest.mark.parametrize("mode, over, message", [
    ("reinit", "trainable.groups=[head]", r"^probe.mode=reinit re-draws .* leaves patch frozen"),
    ("linear", "trainable.blocks=all", r"^probe.mode=linear fits heads on frozen features"),
])
def test_stage_2_trainable_that_contradicts_the_mode_is_refused(bridge, mode, over, message):
    cfg = stage_config("probe", None, FAST + [f"probe.mode={mode}", over], init=str(bridge))
    with pytest.raises(Lm2vError, match=message):
        prepare_model(cfg, 10)


# -- invariants for every family of the architecture table -------------------------------------

def fake_bridge_run(name: str, run) -> dict[str, torch.Tensor]:
    """A run directory holding a randomly initialised tiny model (as a bridge run would), quickly."""
    cfg = stage_config("bridge", None, tiny(name) + ["model.init_seed=3"])
    torch.manual_seed(0)
    model = prepare_model(cfg, 10)
    with torch.no_grad():  # move every tensor away from its init, so "unchanged" is not "re-drawn alike"
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_full_model(run / "model.safetensors", model)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_reinit_redraws_patch_and_head_only(name, tmp_path):
    bridged = fake_bridge_run(name, tmp_path / "b")
    cfg = stage_config("probe", None, FAST + ["probe.mode=reinit"], init=str(tmp_path / "b"))
    after = prepare_model(cfg, 10).state_dict()
    fresh = {k for k in after if k.startswith(("patch_embed.", "head."))}
    assert fresh == {"patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
    for k, v in after.items():
        assert torch.equal(v, bridged[k]) != (k in fresh), k


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_linear_changes_only_the_head_and_finetune_everything_but_fixed(name, tmp_path):
    bridged = fake_bridge_run(name, tmp_path / "b")
    for mode in ("linear", "finetune"):
        run_stage(stage_config("probe", None, FAST + [f"probe.mode={mode}"], init=str(tmp_path / "b")), tmp_path / mode)
        after = load_file(str(tmp_path / mode / "model.safetensors"))
        fixed = prepare_model(stage_config("probe", None, FAST, init=str(tmp_path / "b")), 10).fixed_params
        changed = {k for k, v in after.items() if not torch.equal(v, bridged[k])}
        if mode == "linear":
            assert changed == {"head.weight", "head.bias"}, name
        else:
            assert changed == set(after) - fixed, (name, sorted(set(after) - fixed - changed))


# -- paths that run under torchrun / autocast, checked on one CPU process -----------------------

class FakeRanks(Runtime):
    """Rank ``rank`` of ``world`` in one process: collectives are the identity, barriers are logged."""

    def __init__(self, rank: int, world: int, log: list):
        super().__init__(device=torch.device("cpu"), amp_dtype=None, rank=rank, world_size=world)
        self.log = log

    def barrier(self) -> None:
        self.log.append("barrier")

    def all_reduce_sum(self, t):
        return t


def test_evaluate_runs_the_same_forwards_on_every_rank():
    from lm2vision.data import DataConfig
    from lm2vision.train.loop import DeviceSet, evaluate

    calls = []

    class Count(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return torch.zeros(len(x), 3)

    data = DeviceSet(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1]))
    per_rank = []
    for rank in (0, 1):
        calls.clear()
        out = evaluate(Count(), data, 8, DataConfig(), FakeRanks(rank, 2, []), batch_size=2)
        per_rank.append((len(calls), out))
    # global batches of 4: [0..3] -> 2 + 2, [4] -> 1 + 0; rank 1 still runs a forward on the empty slice
    assert [n for n, _ in per_rank] == [2, 2]  # was [2, 1]: FSDP would hang
    # rank 1 counted its 2 real images only: labels [2, 0] with all-zero logits (argmax 0) -> 1 of 2 right
    assert per_rank[1][1]["acc"] == 0.5


def test_rank_0_downloads_before_the_others_read(monkeypatch):
    from lm2vision.data import DataConfig
    from lm2vision.train import stages

    splits = SimpleNamespace(note=None)
    for rank, expected in ((0, ["load", "barrier"]), (1, ["barrier", "load"])):
        log: list = []
        monkeypatch.setattr(stages, "load_imageset_splits", lambda cfg, stream_ok=False: log.append("load") or splits)
        assert stages.load_splits(DataConfig(download=True), FakeRanks(rank, 2, log)) is splits
        assert log == expected
    log = []
    stages.load_splits(DataConfig(download=False), FakeRanks(1, 2, log))
    assert log == ["load"]  # no download: no barrier needed


def test_phase_penalty_is_computed_outside_autocast():
    """At the first step the weights are the reference weights, so S = 1 and the penalty is exactly
    lambda * |1 - target|; inside bf16 autocast the kernel is not the fp32 reference (S != 1)."""
    from lm2vision.data import DataConfig
    from lm2vision.models import ModelConfig, create_backbone
    from lm2vision.train.phase_hooks import PhaseController
    from lm2vision.train.config import OptimConfig, PhaseConfig
    from lm2vision.train.loop import DeviceSet, Schedule, train_one_epoch
    from lm2vision.train.optim import build_optimizer

    torch.manual_seed(0)
    model = create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=16, patch_size=8, dropout=0.0))
    data = DeviceSet(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) % 10)
    probe = torch.randn(4, 3, 16, 16)
    ctl = PhaseController(PhaseConfig(penalty=0.1, target=0.6, every=1, probe_size=4), model, probe)
    seen = []

    def extra_loss(m, step):
        value = ctl.penalty(m)
        seen.append(float(value.detach()))
        return value

    ocfg = OptimConfig(epochs=1, batch_size=4, lr=0.0, weight_decay=0.0)
    rt = Runtime(device=torch.device("cpu"), amp_dtype=torch.bfloat16)
    train_one_epoch(model, build_optimizer(model, ocfg), data, 0, Schedule.of(ocfg, 2), ocfg,
                    DataConfig(augment="none"), 16, 0, rt, extra_loss=extra_loss, progress=False)
    assert seen[0] == pytest.approx(0.1 * 0.4, abs=1e-6)
