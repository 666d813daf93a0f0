"""Native image models (transformers' ViT, DeiT, Swin, ConvNeXt, ResNet, RegNet, BiT, EfficientNet;
timm when installed) as backbones: same answers as transformers' own forward, named groups, their own
preprocessing, and ``lm2v train`` / ``lm2v phase`` on them. Tiny in-memory configs, random weights."""
import csv
import json
from collections import OrderedDict

import pytest
import torch
from transformers import (AutoModel, DeiTForImageClassification, ResNetForImageClassification,
                          ViTForImageClassification)

from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.models import (IMAGE_ARCH, ImageBackbone, ModelConfig, TrainableSpec, apply_trainable,
                              create_backbone, load_lm_config)
from lm2vision.models.arch import TINY_IMAGE_CONFIGS
from lm2vision.models.image import processor_size
from lm2vision.phase.sides import load_vision
from lm2vision.train.config import RunConfig
from lm2vision.train.rundir import read_predictions
from lm2vision.train.stages import apply_model_preprocessing

K = 5
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # timm's IMAGENET_DEFAULT_MEAN, written out
SMALL_RUN = ["model.pretrained=false", "data.max_train_per_class=6", "data.max_test_per_class=3",
             "data.val_fraction=0.2", "optim.batch_size=16", "optim.epochs=1", "runtime.progress=false",
             "runtime.tensorboard=false"]
PARTITION = ("patch", "pos", "embed", "final_norm", "head")  # with block.<i>: every parameter exactly once


def _backbone(name: str, **kw) -> ImageBackbone:
    return create_backbone(ModelConfig(name=name, pretrained=False, num_classes=K, **kw)).eval()


def _images(model: ImageBackbone, n: int = 3) -> torch.Tensor:
    S = model.cfg.image_size
    return torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(1))


# -- the same numbers as transformers ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-convnext", "tiny-swin", "tiny-regnet", "tiny-bit",
                                  "tiny-efficientnet"])
def test_pooled_output_equals_transformers_pooler(name):
    """pool(forward_features(x)) is the base model's own pooler_output (ResNet: (B, C, 1, 1) flattened;
    ConvNeXt: the final LayerNorm after the spatial mean; Swin: the token mean; EfficientNet: AvgPool2d)."""
    model = _backbone(name)
    ref = AutoModel.from_config(load_lm_config(name)).eval()  # with its pooler
    ref.load_state_dict(model.model.state_dict())
    x = _images(model)
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        theirs = ref(pixel_values=x).pooler_output.flatten(1)
    assert ours.shape == (3, model.width)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, classifier", [("tiny-vit", ViTForImageClassification),
                                              ("tiny-deit", DeiTForImageClassification),
                                              ("tiny-resnet", ResNetForImageClassification)])
def test_logits_equal_for_image_classification(name, classifier):
    """With the same weights, our logits are ``*ForImageClassification``'s: ViT and DeiT classify the
    CLS token of the normalised last_hidden_state, ResNet the flattened pooler output."""
    model = _backbone(name)
    config = load_lm_config(name)
    config.num_labels = K
    ref = classifier(config).eval()
    ref.base_model.load_state_dict(model.model.state_dict())
    linear = ref.classifier if isinstance(ref.classifier, torch.nn.Linear) else ref.classifier[1]  # ResNet: Flatten, Linear
    linear.load_state_dict(model.head.state_dict())
    x = _images(model)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(pixel_values=x).logits, rtol=1e-5, atol=1e-6)
        if name == "tiny-vit":  # the CLS choice, spelled out on ViTModel itself
            cls = ref.base_model(pixel_values=x).last_hidden_state[:, 0]
            assert torch.allclose(model.forward_head(model.forward_features(x), pre_logits=True), cls, atol=1e-6)


def test_vit_at_another_size_interpolates_positions():
    """model.preprocessing=data at 48 px: the same tokens as ViTModel(interpolate_pos_encoding=True)."""
    model = _backbone("tiny-vit", preprocessing="data", image_size=48)
    ref = AutoModel.from_config(load_lm_config("tiny-vit"), add_pooling_layer=False).eval()
    ref.load_state_dict(model.model.state_dict())
    x = _images(model)
    assert x.shape[-1] == 48
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), ref(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state,
                              atol=1e-6)
    with pytest.raises(Lm2vError, match="expected 48px images"):
        model(torch.zeros(1, 3, 32, 32))


# -- every family: builds, runs, groups ------------------------------------------------------------
HF_TINY = sorted(n for n, c in TINY_IMAGE_CONFIGS.items() if "timm" not in c)  # tiny-mixer is timm's


@pytest.mark.parametrize("name", HF_TINY)
def test_every_tiny_family_builds_runs_and_partitions(name):
    model = _backbone(name)
    assert IMAGE_ARCH[model.model.config.model_type] is model.spec  # dispatched through the table
    y = model(_images(model, 2))
    assert y.shape == (2, K) and torch.isfinite(y).all()
    assert model.forward_features(_images(model, 2)).std() > 0  # random activations did not vanish
    groups = model.layer_groups()
    names = [n for n, _ in model.named_parameters()]
    primary = [n for g in (*PARTITION, *(f"block.{i}" for i in range(model.num_blocks))) for n in groups[g]]
    assert sorted(primary) == sorted(names)  # every parameter in exactly one group
    assert set(groups["norm"]) <= set(names) and not set(groups["attn"]) & set(groups["mlp"])
    assert groups["head"] == ["head.weight", "head.bias"]
    assert all(n.startswith(f"model.{model.spec.blocks}.{i}.") for i in range(model.num_blocks)
               for n in groups[f"block.{i}"])


@pytest.mark.parametrize("name", HF_TINY)
def test_reinit_redraws_exactly_the_stem(name):
    """Stage 2's reinit on an image model: the stem's weights are drawn again (seeded), nothing else moves."""
    model = _backbone(name)
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.reset_patch_embed(seed=7)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    stem = {n for n in before if n[len("model."):].startswith(model.spec.stem)}
    assert changed and changed <= stem and any(n.endswith("weight") and before[n].dim() == 4 for n in changed)


def test_vit_groups_by_name():
    """The ViT row places its tables by name: positions, CLS token, stem, final LayerNorm."""
    groups = _backbone("tiny-vit").layer_groups()
    assert groups["pos"] == ["model.embeddings.position_embeddings"]
    assert groups["embed"] == ["model.embeddings.cls_token"]
    assert sorted(groups["patch"]) == ["model.embeddings.patch_embeddings.projection.bias",
                                       "model.embeddings.patch_embeddings.projection.weight"]
    assert sorted(groups["final_norm"]) == ["model.layernorm.bias", "model.layernorm.weight"]
    assert "model.layers.0.mlp.fc1.weight" in groups["mlp"] and "model.layers.1.attention.q_proj.weight" in groups["attn"]
    assert "model.layers.0.layernorm_before.weight" in groups["norm"]


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit"])
def test_first_block_trains_exactly_its_parameters(name):
    """trainable.blocks=first:1 with no groups: exactly the parameters under the first block (stage),
    and after a backward pass exactly those have gradients."""
    model = _backbone(name).train()
    apply_trainable(model, TrainableSpec(blocks="first:1", groups=[]))
    first = f"model.{model.spec.blocks}.0."
    expected = {n for n, _ in model.named_parameters() if n.startswith(first)}
    assert expected and {n for n, p in model.named_parameters() if p.requires_grad} == expected
    model(_images(model, 2)).sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected


def test_reset_classifier_keeps_mode_and_is_seeded():
    model = _backbone("tiny-resnet")
    model.reset_classifier(7, seed=3)
    g = torch.Generator().manual_seed(3)
    assert model.head.weight.shape == (7, 16) and not model.head.training
    assert torch.equal(model.head.weight, torch.randn(7, 16, generator=g) * 0.02)


# -- preprocessing -----------------------------------------------------------------------------------
def _vit_folder(tmp_path, processor: dict | None):
    folder = tmp_path / "vit"
    torch.manual_seed(0)
    AutoModel.from_config(load_lm_config("tiny-vit")).save_pretrained(folder)  # with its (unused) pooler
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_preprocessing_read_from_preprocessor_config(tmp_path):
    """A folder's preprocessor_config.json sets the image size and mean/std; the stage takes them and
    says so; model.preprocessing=data keeps the configured ones."""
    proc = {"image_processor_type": "ViTImageProcessor", "size": {"height": 48, "width": 48},
            "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    folder = _vit_folder(tmp_path, proc)
    model = create_backbone(ModelConfig(name=str(folder), num_classes=K))  # pretrained: the pooler is dropped on purpose
    assert (model.cfg.image_size, model.prep.mean, model.prep.std) == (48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert model.prep.source == "preprocessor_config.json"
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, K)
    cfg = RunConfig(model=ModelConfig(name=str(folder)))
    note = apply_model_preprocessing(cfg)
    assert (cfg.model.image_size, cfg.data.mean, cfg.data.std) == (48, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert "48px" in note and "preprocessor_config.json" in note
    kept = RunConfig(model=ModelConfig(name=str(folder), preprocessing="data"))
    assert "model.preprocessing=data" in apply_model_preprocessing(kept)
    assert (kept.model.image_size, kept.data.mean) == (32, [0.5, 0.5, 0.5])


def test_preprocessing_defaults_and_sizes(tmp_path):
    """Without a processor config: the config's image_size and the family's mean/std (ViT 0.5, ResNet
    ImageNet's); a CNN without either keeps model.image_size; a language backbone has none."""
    folder = _vit_folder(tmp_path, None)
    vit = create_backbone(ModelConfig(name=str(folder)))
    assert (vit.cfg.image_size, vit.prep.mean, vit.prep.source) == (32, (0.5, 0.5, 0.5), "vit defaults")
    cfg = RunConfig(model=ModelConfig(name="tiny-resnet", image_size=40))
    apply_model_preprocessing(cfg)
    assert (cfg.model.image_size, cfg.data.mean) == (40, IMAGENET_MEAN)
    lm = RunConfig(model=ModelConfig(name="tiny-bert"))
    assert apply_model_preprocessing(lm) is None and lm.data.mean == [0.5, 0.5, 0.5]
    assert processor_size({"size": {"shortest_edge": 224}}) == 224
    assert processor_size({"do_center_crop": True, "crop_size": {"height": 40, "width": 40},
                           "size": {"shortest_edge": 48}}) == 40


# -- commands ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_lm2v_train_on_bundled_data(name, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model.name={name}", *SMALL_RUN, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    pred, label = read_predictions(out)
    assert summary["model"] == name and len(label) == 30  # 3 test images x 10 classes
    assert summary["test_acc"] == pytest.approx(float((pred == label).float().mean()))
    assert "preprocessing: the model's own, 32px" in capsys.readouterr().out
    saved = (out / "config.yaml").read_text()
    assert ("0.485" in saved) == (name == "tiny-resnet")  # ResNet normalises as ImageNet, ViT with 0.5


def test_lm2v_analyze_on_a_vision_run_names_the_part_it_skips(tmp_path, capsys):
    """The covariance alignment is about a linear patch embedding, which an image model's stem is not:
    on a tiny-vit run it is skipped with one warning naming it; the other parts run."""
    run, out = tmp_path / "run", tmp_path / "report"
    assert main(["train", "model.name=tiny-vit", *SMALL_RUN, "--out", str(run)]) == 0
    with pytest.warns(Lm2vWarning, match=r"alignment: skipped ImageBackbone: the model has no linear patch embedding"):
        assert main(["analyze", str(run), "--out", str(out), "--samples", "60",
                     "--skip", "landscape,features,curves"]) == 0
    report = (out / "report.md").read_text()
    assert "Covariance alignment" not in report and "Layer geometry" in report


@pytest.mark.parametrize("vision", [["tiny-vit", "tiny-resnet"], ["tiny-mixer"]])
def test_lm2v_phase_image_models_against_a_language_model(tmp_path, vision):
    if "tiny-mixer" in vision:
        pytest.importorskip("timm")
    out = tmp_path / "phase"
    argv = ["phase", "--vision", *vision, "--language", "tiny-bert", "--samples", "20",
            "--ntk-samples", "4", "--agop-samples", "2", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["vision"], r["language"]) for r in rows] == [(v, "tiny-bert") for v in vision]
    # a tiny config is its own initialisation (same seed): the kernel did not move, S_v = 1
    assert all(float(r["S_v"]) == pytest.approx(1.0) for r in rows)


def test_phase_side_uses_the_models_preprocessing():
    side = load_vision("tiny-resnet", image_size=40)
    assert (side.image_size, list(side.mean)) == (40, IMAGENET_MEAN)
    assert load_vision("tiny-vit").patch_size == 8  # the ViT's own patches for the input AGOP


def test_compare_model_takes_an_image_model():
    from lm2vision.analysis.models import load_image_model

    loaded = load_image_model("tiny-resnet@scratch", RunConfig(model=ModelConfig(name="tiny-bert")))
    assert isinstance(loaded.model, ImageBackbone) and loaded.data.mean == IMAGENET_MEAN


# -- timm: our adapter on a module with timm's model interface (runs without timm) ----------------------
class _TimmLike(torch.nn.Module):
    """What TimmBackbone reads from a timm model: ``group_matcher``, ``num_features``,
    ``forward_features`` and ``forward_head(pre_logits=True)``; laid out as timm's ResNet."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.layer1 = torch.nn.Sequential(OrderedDict(conv1=torch.nn.Conv2d(4, 4, 3, padding=1), bn1=torch.nn.BatchNorm2d(4)))
        self.layer2 = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1))

    def group_matcher(self, coarse=False):
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def forward_features(self, x):
        return self.layer2(self.layer1(self.bn1(self.conv1(x))))

    def forward_head(self, x, pre_logits=False):
        return x.mean(dim=(-2, -1))


def _timm_like() -> "ImageBackbone":
    from lm2vision.models.image import Preprocessing, TimmBackbone

    torch.manual_seed(0)
    prep = Preprocessing(16, (0.5,) * 3, (0.5,) * 3, "timm pretrained_cfg")
    return TimmBackbone(_TimmLike(), ModelConfig(name="timm:like", pretrained=False, num_classes=K), prep, "like").eval()


def test_timm_adapter_groups_and_pools_as_its_group_matcher_says():
    model = _timm_like()
    assert model.block_names == ["layer1", "layer2"] and model.num_blocks == 2 and model.cfg.image_size == 16
    g = model.layer_groups()
    assert g["patch"] == ["model.conv1.weight", "model.conv1.bias"]
    assert g["final_norm"] == ["model.bn1.weight", "model.bn1.bias"]  # norms outside the blocks, as for every family
    assert g["block.0"] == ["model.layer1.conv1.weight", "model.layer1.conv1.bias", "model.layer1.bn1.weight",
                            "model.layer1.bn1.bias"]
    assert g["block.1"] == ["model.layer2.0.weight", "model.layer2.0.bias"]
    x = _images(model)
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                               model.model.forward_features(x).mean(dim=(-2, -1)))
    assert model(x).shape == (3, K)


def test_timm_adapter_first_block_trains_exactly_its_parameters():
    model = _timm_like()
    apply_trainable(model, TrainableSpec(blocks="first:1", groups=["head"]))
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == sorted(["head.weight", "head.bias", "model.layer1.conv1.weight", "model.layer1.conv1.bias",
                              "model.layer1.bn1.weight", "model.layer1.bn1.bias"])


def test_timm_adapter_reinit_redraws_the_stem_only():
    model = _timm_like()
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.reset_patch_embed(seed=7)
    changed = sorted(n for n, p in model.named_parameters() if not torch.equal(p, before[n]))
    assert changed == ["model.conv1.bias", "model.conv1.weight"]  # not layer1's conv1 / bn1


def test_timm_block_names_follow_captured_indices_and_skip_join_previous_patterns():
    from lm2vision.models.image import timm_block_names

    net = torch.nn.Module()
    net.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(11))
    net.norm = torch.nn.LayerNorm(2)
    names = timm_block_names(net, [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))], "vit-like")
    assert names == [f"blocks.{i}" for i in range(11)]  # 10 after 9, not after 1
    with pytest.raises(Lm2vError, match=r"^timm model 'x': its group_matcher names no blocks$"):
        timm_block_names(net, r"^stages\.(\d+)", "x")


# -- timm itself, optional (CI has no timm: these skip) -----------------------------------------------
def test_timm_model(monkeypatch):
    pytest.importorskip("timm")
    model = create_backbone(ModelConfig(name="timm:resnet10t", pretrained=False, num_classes=K, image_size=32)).eval()
    y = model(torch.zeros(2, 3, model.cfg.image_size, model.cfg.image_size))
    assert y.shape == (2, K) and model.block_names == ["layer1", "layer2", "layer3", "layer4"]
    assert model.prep.source == "timm pretrained_cfg" and model.prep.mean == tuple(IMAGENET_MEAN)


def test_timm_mixer_at_the_data_size_and_its_groups():
    pytest.importorskip("timm")
    model = create_backbone(ModelConfig(name="timm:mixer_s16_224", pretrained=False, num_classes=K, image_size=32,
                                        preprocessing="data")).eval()
    assert model.cfg.image_size == 32 and model(torch.zeros(1, 3, 32, 32)).shape == (1, K)
    g = model.layer_groups()
    assert model.num_blocks == 8 and g["patch"] == ["model.stem.proj.weight", "model.stem.proj.bias"]
    assert g["final_norm"] == ["model.norm.weight", "model.norm.bias"]


def test_tiny_mixer_builds_at_32px_and_partitions():
    pytest.importorskip("timm")
    model = _backbone("tiny-mixer")
    assert model.block_names == ["blocks.0", "blocks.1"] and model.width == 32 and model.cfg.image_size == 32
    assert model.prep.image_size == 32 and model(_images(model, 2)).shape == (2, K)
    groups = model.layer_groups()
    primary = [n for g in (*PARTITION, "block.0", "block.1") for n in groups[g]]
    assert sorted(primary) == sorted(n for n, _ in model.named_parameters())
    with pytest.raises(Lm2vError, match="^tiny-mixer is an in-memory test config with no weights"):
        create_backbone(ModelConfig(name="tiny-mixer", pretrained=True))


def test_timm_pretrained_weights_offline_is_one_line(monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    monkeypatch.setattr("lm2vision.models.factory._hub_offline", lambda source: "the hub is offline (test)")
    with pytest.raises(Lm2vError, match=r"^timm model 'resnet10t': its weights \(timm/resnet10t\.c3_in1k\) are not in "
                                        r"the local cache and the hub is offline \(test\); model\.pretrained=false"):
        create_backbone(ModelConfig(name="timm:resnet10t", pretrained=True))


def test_timm_absent_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(Lm2vError, match=r"pip install timm"):
        create_backbone(ModelConfig(name="timm:mixer_b16_224", pretrained=False))
