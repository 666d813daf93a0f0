"""The project's shared pieces, each written once: config validation by declared choices and bounds,
one ``unwrap``, one run-directory reader, one feature extractor, one Markdown table writer, and
imports that work whichever package is imported first."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from lm2vision.analysis.run import AnalyzeConfig
from lm2vision.config import bounds, choices, config_from_dict, load_config, validate
from lm2vision.data import DataConfig
from lm2vision.dense.config import DetectConfig, SegmentConfig
from lm2vision.errors import Lm2vError
from lm2vision.models import ModelConfig, create_backbone
from lm2vision.phase.ntk import NTKConfig
from lm2vision.phase.screen import ScreenConfig, to_markdown
from lm2vision.train.config import PROBE_TRAINABLE, STAGE_PRESETS, PhaseConfig, ProbeConfig, RunConfig, check_run_config
from lm2vision.train.distributed import unwrap
from lm2vision.train.loop import extract_features
from lm2vision.train.phase_hooks import PhaseController
from lm2vision.train.rundir import read_metrics
from lm2vision.utils.tables import markdown_table

# -- one way to validate configs ------------------------------------------------------------------
BAD_VALUES = [
    (RunConfig, "probe.mode=x", "probe.mode must be one of reinit, linear, finetune, got 'x'"),
    (RunConfig, "stage=eval", "stage must be one of bridge, probe, train, got 'eval'"),
    (RunConfig, "labels.ratio=1.5", "labels.ratio must be in [0, 1], got 1.5"),
    (RunConfig, "labels.scheme=shuffle", "labels.scheme must be one of wrong, uniform, got 'shuffle'"),
    (RunConfig, "optim.epochs=0", "optim.epochs must be >= 1, got 0"),
    (RunConfig, "model.pooling=max", "model.pooling must be one of auto, last, mean, first, got 'max'"),
    (RunConfig, "model.dropout=1.0", "model.dropout must be in [0, 1), got 1.0"),
    (RunConfig, "runtime.amp=fp8", "runtime.amp must be one of auto, bf16, fp16, off, got 'fp8'"),
    (RunConfig, "runtime.distributed=zero", "runtime.distributed must be one of ddp, fsdp, got 'zero'"),
    (RunConfig, "phase.probe_size=1", "phase.probe_size must be >= 2, got 1"),
    (RunConfig, "data.crop_scale_min=0", "data.crop_scale_min must be in (0, 1], got 0.0"),
    (SegmentConfig, "infer.mode=tile", "infer.mode must be one of resize, slide, got 'tile'"),
    (DetectConfig, "data.layout=voc",
     "data.layout must be one of coco, ade20k, pascal_context, pascal_context60, folder, got 'voc'"),
    (DetectConfig, "eval_every=0", "eval_every must be >= 1, got 0"),
    (ScreenConfig, "ntk.method=exact", "ntk.method must be one of auto, jacobian, vjp, projection, got 'exact'"),
    (ScreenConfig, "ntk.memory_budget=0", "ntk.memory_budget must be > 0, got 0.0"),
    (ScreenConfig, "out_dim=0", "out_dim must be >= 1, got 0"),
    (ScreenConfig, "split=holdout", "split must be one of train, val, test, got 'holdout'"),
    (AnalyzeConfig, "skip=[curves,nonsense]",
     "skip items must be one of curves, weights, landscape, features, alignment, layers, geometry, got 'nonsense'"),
    (AnalyzeConfig, "landscape.grid=1", "landscape.grid must be >= 2, got 1"),
    (AnalyzeConfig, "landscape.directions=pca", "landscape.directions must be one of random, filter, training, got 'pca'"),
]


@pytest.mark.parametrize("cls,override,message", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_values_give_the_dotted_path_in_one_line(cls, override, message):
    with pytest.raises(Lm2vError) as e:
        load_config(cls, None, [override])
    assert str(e.value) == message


@pytest.mark.parametrize("cls", [RunConfig, DetectConfig, SegmentConfig, ScreenConfig, AnalyzeConfig, DataConfig,
                                 NTKConfig, ModelConfig, PhaseConfig])
def test_every_default_passes_its_own_declarations(cls):
    validate(cls())


def test_saved_and_python_built_configs_are_validated_the_same_way():
    torch.manual_seed(0)
    message = "probe.mode must be one of reinit, linear, finetune, got 'x'"
    with pytest.raises(Lm2vError, match=f"^{message}$"):
        config_from_dict(RunConfig, {"probe": {"mode": "x"}})  # a saved run's config.yaml
    with pytest.raises(Lm2vError, match=f"^{message}$"):
        check_run_config(RunConfig(probe=ProbeConfig(mode="x")))  # built in Python, as lm2v demo does
    with pytest.raises(Lm2vError, match=r"^model\.attention must be one of auto, causal, bidirectional, got 'x'$"):
        create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, attention="x"))
    with pytest.raises(Lm2vError, match=r"^phase\.every must be >= 1, got 0$"):
        PhaseController(PhaseConfig(every=0, probe_size=2), nn.Linear(2, 2), torch.zeros(2, 2))


@dataclass
class _Limits:
    closed: float = field(default=0.5, metadata=bounds(ge=0, le=1))
    half_open: float = field(default=0.5, metadata=bounds(gt=0, le=1))
    positive: float = field(default=1.0, metadata=bounds(gt=0))
    at_most: int = field(default=5, metadata=bounds(le=5))
    optional: float | None = field(default=None, metadata=bounds(ge=1))
    tags: list = field(default_factory=lambda: ["a"], metadata=choices("a", "b"))


@dataclass
class _Outer:
    inner: _Limits = field(default_factory=_Limits)


@pytest.mark.parametrize("change,message", [
    ({"closed": -0.1}, "inner.closed must be in [0, 1], got -0.1"),
    ({"half_open": 0.0}, "inner.half_open must be in (0, 1], got 0.0"),
    ({"positive": 0.0}, "inner.positive must be > 0, got 0.0"),
    ({"at_most": 6}, "inner.at_most must be <= 5, got 6"),
    ({"optional": 0.5}, "inner.optional must be >= 1, got 0.5"),
    ({"tags": ["a", "c"]}, "inner.tags items must be one of a, b, got 'c'"),
])
def test_bounds_and_list_choices_are_worded_as_declared(change, message):
    validate(_Outer())  # edges and None pass: closed=0.5, optional=None
    validate(_Outer(_Limits(closed=1.0, half_open=1.0, at_most=5, optional=1.0)))
    with pytest.raises(Lm2vError) as e:
        validate(_Outer(_Limits(**change)))
    assert str(e.value) == message


def test_declared_choices_match_the_tables_that_use_them():
    declared = {f.name: f.metadata.get("choices") for f in dataclasses.fields(RunConfig)}
    assert set(declared["stage"]) == set(STAGE_PRESETS)
    mode = next(f for f in dataclasses.fields(ProbeConfig) if f.name == "mode")
    assert set(mode.metadata["choices"]) == set(PROBE_TRAINABLE)


# -- one unwrap -----------------------------------------------------------------------------------
def test_unwrap_sees_through_compile_and_ddp_in_any_nesting(tmp_path):
    torch.manual_seed(0)
    m = nn.Linear(2, 2)
    assert unwrap(m) is m  # FSDP2 shards in place: a plain module is its own inside
    assert unwrap(torch.compile(m, backend="eager")) is m
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp_of_compiled = nn.parallel.DistributedDataParallel(torch.compile(m, backend="eager"))
        compiled_ddp = torch.compile(nn.parallel.DistributedDataParallel(m), backend="eager")
        assert unwrap(ddp_of_compiled) is m and unwrap(compiled_ddp) is m
    finally:
        dist.destroy_process_group()


def _tiny_vision():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(name="tiny-gpt2", pretrained=False, image_size=32, patch_size=8))


def test_phase_penalty_under_torch_compile():
    """runtime.compile=true: the loop hands the compiled module to a controller built on the plain
    one; the kernel must be over the same parameters (no ``_orig_mod`` names, head left out) and
    give the same penalty, with a gradient reaching the underlying model."""
    model = _tiny_vision()
    probe = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = PhaseConfig(penalty=0.1, target=0.6, every=1, probe_size=4)
    compiled = torch.compile(model, backend="eager")
    ctl = PhaseController(cfg, compiled, probe)
    expected_names = [f"backbone.{n}" for n, _ in model.named_parameters()
                      if not n.startswith("head.") and n not in model.fixed_params]
    assert ctl.names == expected_names
    assert ctl.penalty(compiled).item() == pytest.approx(0.1 * (1.0 - 0.6), abs=1e-5)  # S = 1 at the start
    plain = PhaseController(cfg, model, probe)
    with torch.no_grad():  # move the kernel: S = 1 is a maximum, where the penalty's gradient is 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    loss = ctl.penalty(compiled)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert loss.item() == pytest.approx(plain.penalty(model).item(), rel=1e-5)
    assert plain.penalty(compiled).item() == pytest.approx(loss.item(), rel=1e-5)  # built plain, called compiled
    model.zero_grad()
    loss.backward()
    grad = model.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


# -- one run-directory reader ---------------------------------------------------------------------
def test_read_metrics_in_order_and_a_bad_line_is_one_line_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.5}\n\n{"event": "test", "test_acc": 0.5}\n')
    assert read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 2.5}, {"event": "test", "test_acc": 0.5}]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "train_lo\n')
    with pytest.raises(Lm2vError) as e:
        read_metrics(tmp_path)
    assert f"{tmp_path / 'metrics.jsonl'} line 2 is not JSON" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Lm2vError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "missing")


# -- one feature extractor ------------------------------------------------------------------------
class _LastPixel(nn.Module):
    def forward_features(self, x):
        return x.flatten(2).transpose(1, 2)  # (B, T=H*W, C=3)

    def pool(self, tokens):
        return tokens[:, -1]


def test_extract_features_prepares_batches_and_restores_the_mode():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2)
    model = _LastPixel().train()
    feats = extract_features(model, images, batch_size=2, prepare=lambda x: x.float() * 2)  # batches 2, 2, 1
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, images[:, :, 1, 1].float() * 2)
    assert model.training


def test_extract_features_of_a_backbone_are_its_pre_logits():
    model = _tiny_vision()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(extract_features(model, x, batch_size=2), expected)


# -- one Markdown table writer --------------------------------------------------------------------
def test_markdown_table_known_text():
    rows = [{"run": "a", "acc": 0.123456, "n": 3}, {"run": "b|c", "acc": None, "extra": float("nan")}]
    assert markdown_table(rows) == ("| run | acc | n | extra |\n"
                                    "|---|---|---|---|\n"
                                    "| a | 0.1235 | 3 | - |\n"
                                    "| b\\|c | - | - | nan |")
    assert markdown_table(rows, ["n", "run"]) == "| n | run |\n|---|---|\n| 3 | a |\n| - | b\\|c |"


def test_phase_screen_table_goes_through_the_shared_writer():
    from lm2vision.phase.screen import COLUMNS

    row = dict.fromkeys(COLUMNS, 0.5) | {"vision": "v", "language": "l", "S_v": 12345.678}
    lines = to_markdown([row]).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[2] == "| v | l | 1.235e+04 | " + " | ".join(["0.5"] * (len(COLUMNS) - 3)) + " |"


# -- imports --------------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["lm2vision.phase", "lm2vision.train", "lm2vision.phase.sides"])
def test_packages_import_whichever_comes_first(first):
    """phase's screening reads run directories (train.rundir) and train's phase hooks use phase's
    NTK: every module-level import must resolve whichever package a program imports first."""
    code = f"import {first}; import lm2vision.train, lm2vision.phase, lm2vision.analysis.run, lm2vision.cli.main"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
