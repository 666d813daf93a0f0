"""``lm2v export`` and ``lm2vision.create_model``: a finished run as a self-describing folder that
loads in a fresh process with identical logits, and serves as ``model.name`` and ``--init``; for
language backbones and native Hugging Face image models alike (timm models are refused)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_RUN
from lm2vision.cli.main import main
from lm2vision.data.cifar import CIFAR10_CLASSES
from lm2vision.errors import Lm2vError
from lm2vision.models import (TINY_IMAGE_CONFIGS, HubBackbone, HubImageBackbone, ImageBackbone, ModelConfig,
                              Preprocessing, create_backbone, create_model, preprocessing, to_hub)
from lm2vision.models.arch import IMAGENET_MEAN, IMAGENET_STD
from lm2vision.train.rundir import load_run_model, read_run_config, read_summary

# TINY_RUN without the model: each test names its own (--init refuses a model.name of its own)
DATA = [o for o in TINY_RUN if not o.startswith("model.")] + ["optim.epochs=1"]
BLOCK = {"tiny-gpt2": "lm.h.0.attn.c_attn.weight", "tiny-bert": "lm.encoder.layer.0.attention.self.query.weight",
         "tiny-vit": "model.layers.0.attention.q_proj.weight",
         "tiny-resnet": "model.encoder.stages.0.layers.0.layer.0.convolution.weight"}


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-bert"])
def exported(request, tmp_path_factory):
    """(family, finished run, its export): one epoch of a tiny model on the bundled images."""
    family, root = request.param, tmp_path_factory.mktemp(request.param)
    run, out = root / "run", root / "export"
    assert main(["train", "--out", str(run), f"model.name={family}", "model.pretrained=false", "model.dropout=0.0",
                 *DATA]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    return family, run, out


def fixed_images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


FRESH = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    import lm2vision
    from lm2vision.models import HubBackbone, ImageBackbone
    torch.set_num_threads(1)
    folder, images, result = sys.argv[1:]
    x = load_file(images)["x"]
    a = lm2vision.create_model(folder).eval()
    b = HubBackbone.from_pretrained(folder)  # of either kind, language or image
    assert type(a) is type(b) and isinstance(b, (lm2vision.VisionBackbone, ImageBackbone)) and not b.training
    with torch.no_grad():
        save_file({"create_model": a(x), "from_pretrained": b(x)}, result)
    print(type(b).__name__)
""")


def fresh_process_logits(run, out, tmp_path) -> str:
    """create_model(out) and HubBackbone.from_pretrained(out) in a fresh process give exactly the run's
    logits; returns the class they built."""
    save_file({"x": fixed_images()}, str(tmp_path / "x.safetensors"))
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "x.safetensors"),
                           str(tmp_path / "logits.safetensors")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model, _ = load_run_model(run)
    with torch.no_grad():
        want = model.eval()(fixed_images())
    got = load_file(str(tmp_path / "logits.safetensors"))
    assert want.shape == (3, 10)
    assert torch.equal(got["create_model"], want) and torch.equal(got["from_pretrained"], want)
    return proc.stdout.strip()


def test_round_trip_in_a_fresh_process_gives_identical_logits(exported, tmp_path, one_thread):
    _, run, out = exported
    assert fresh_process_logits(run, out, tmp_path) == "HubBackbone"


def test_the_folder_describes_itself(exported):
    family, run, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["library"] == "lm2vision" and config["lm2vision_version"] == "0.1.0" and config["format"] == 1
    lm = config["lm_config"]
    assert lm["model_type"] == family.removeprefix("tiny-") and "_name_or_path" not in lm
    # the tiny config's width, and the position table cut to the 64 patch tokens (8 x 8 at 32/4)
    assert (lm["n_embd"], lm["n_positions"]) == (32, 64) if family == "tiny-gpt2" else \
        (lm["hidden_size"], lm["max_position_embeddings"]) == (32, 64)
    assert {k: config["model"][k] for k in ("name", "image_size", "patch_size", "num_classes", "dropout")} == \
        {"name": family, "image_size": 32, "patch_size": 4, "num_classes": 10, "dropout": 0.0}
    assert config["preprocessing"] == {"image_size": 32, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    assert config["classes"] == CIFAR10_CLASSES  # the bundled set is a CIFAR-10 subset
    assert config["source"]["run"] == str(run) and config["source"]["stage"] == "train"
    assert config["source"]["test_acc"] == read_summary(run)["test_acc"]
    assert "library_name: lm2vision" in (out / "README.md").read_text()


def test_create_model_pretrained_cfg_new_head_and_fresh_weights(exported):
    family, _, out = exported
    saved = load_file(str(out / "model.safetensors"))
    model = create_model(str(out), num_classes=7)
    assert model.pretrained_cfg == {
        "input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0, "mean": (0.5,) * 3,
        "std": (0.5,) * 3, "num_classes": 10, "classes": CIFAR10_CLASSES, "first_conv": "patch_embed.proj",
        "classifier": "head"}
    state = model.state_dict()
    assert state["head.weight"].shape == (7, 32) and state["head.bias"].abs().sum() == 0
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved if not k.startswith("head."))
    fresh = create_model(str(out), pretrained=False)
    assert fresh.state_dict()[BLOCK[family]].shape == saved[BLOCK[family]].shape
    assert not torch.equal(fresh.state_dict()[BLOCK[family]], saved[BLOCK[family]])


def test_create_model_refuses_unknown_and_contradicting_arguments(exported):
    _, _, out = exported
    with pytest.raises(Lm2vError, match=r"^create_model got unknown argument\(s\) depth; model arguments: attention"):
        create_model(str(out), depth=3)
    with pytest.raises(Lm2vError, match=r"^model\.patch_size=8 differs from the export's 4 .*drop the override$"):
        create_model(str(out), patch_size=8)


def test_create_model_of_a_language_model_name_is_create_backbone():
    model = create_model("tiny-llama", pretrained=False, num_classes=3, patch_size=8)
    ref = create_backbone(ModelConfig(name="tiny-llama", pretrained=False, num_classes=3, patch_size=8))
    assert model.cfg == ref.cfg and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("how", ["model.name", "--init"])
def test_probe_starts_from_the_export(exported, tmp_path, how):
    family, _, out = exported
    where = [f"model.name={out}"] if how == "model.name" else ["--init", str(out)]
    # probe.mode=reinit freezes the blocks: the probe's final blocks are the weights it started from
    assert main(["probe", "--out", str(tmp_path / "p"), *where, *DATA, "probe.mode=reinit"]) == 0
    saved, probed = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "p" / "model.safetensors"))
    assert torch.equal(probed[BLOCK[family]], saved[BLOCK[family]])
    assert not torch.equal(probed["head.weight"], saved["head.weight"])  # re-drawn and trained
    model, cfg = load_run_model(tmp_path / "p")  # the probe run reads back through the export
    assert (cfg.model.name, cfg.model.patch_size, cfg.init) == ((str(out), 4, None) if how == "model.name"
                                                               else (str(out), 4, str(out)))


def test_override_contradicting_the_export_is_one_line(exported, tmp_path, capsys):
    _, _, out = exported
    assert main(["probe", "--out", str(tmp_path / "p"), f"model.name={out}", "model.image_size=64", *DATA]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lm2v probe: error: model.image_size=64 differs from the export's 32 ({out}): "
                   "its weights fit only its own architecture; drop the override")
    assert not (tmp_path / "p").exists()


def test_export_refuses_a_non_empty_out_and_an_unfinished_run(exported, tmp_path, capsys):
    _, run, _ = exported
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    assert main(["export", str(run), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "summary.json").unlink()
    assert main(["export", str(unfinished), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lm2v export: error: {unfinished} is not finished (no summary.json): finish it "
                   "(lm2v ... --resume) before exporting"]
    assert not (tmp_path / "e").exists()

    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert main(["export", str(run), "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_push_offline_is_one_line_and_keeps_the_folder(exported, tmp_path, capsys, monkeypatch):
    _, run, _ = exported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--push-to-hub", "someone/tiny", "--private"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pushing to someone/tiny" in err[0] and "HF_HUB_OFFLINE=1" in err[0]
    assert (tmp_path / "e" / "config.json").is_file() and (tmp_path / "e" / "model.safetensors").is_file()


def test_a_config_without_the_marker_is_an_ordinary_hugging_face_folder(exported, tmp_path):
    family, _, out = exported
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    config = json.loads((edited / "config.json").read_text())
    del config["library"]
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(Lm2vError, match=rf"^cannot load model '{edited}'"):  # no model_type: not a transformers config
        create_backbone(ModelConfig(name=str(edited)))

    # a transformers folder with a "library" key of its own loads its weights as any language model
    from transformers import AutoModel

    lm = AutoModel.from_config(create_backbone(ModelConfig(name=family, pretrained=False)).lm.config)
    lm.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "library": "someone-else"}))
    model = create_backbone(ModelConfig(name=str(tmp_path / "hf")))
    key = BLOCK[family].removeprefix("lm.")
    assert torch.equal(model.lm.state_dict()[key], lm.state_dict()[key])


# -- native image models (ViT, ResNet, ...): the same folder, the same uses ------------------------------
IMAGE_PREP = {"tiny-vit": ((0.5,) * 3, (0.5,) * 3), "tiny-resnet": (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))}
STEM = {"tiny-vit": "model.embeddings.patch_embeddings.projection", "tiny-resnet": "model.embedder.embedder.convolution"}


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-resnet"])
def image_exported(request, tmp_path_factory):
    """(family, finished run, its export) of an image model: tiny-vit at its native 32 px, tiny-resnet
    (any size) at the data's 32 px, each with its own preprocessing (ViT 0.5, ResNet ImageNet's)."""
    family, root = request.param, tmp_path_factory.mktemp(request.param)
    run, out = root / "run", root / "export"
    assert main(["train", "--out", str(run), f"model.name={family}", "model.pretrained=false", *DATA]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    return family, run, out


def test_image_export_round_trips_in_a_fresh_process(image_exported, tmp_path, one_thread):
    _, run, out = image_exported
    assert fresh_process_logits(run, out, tmp_path) == "HubImageBackbone"


def test_image_export_describes_itself(image_exported):
    family, run, out = image_exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config, cfg = json.loads((out / "config.json").read_text()), read_run_config(run)
    assert (config["library"], config["format"], config["architecture"]) == ("lm2vision", 1, "ImageBackbone")
    hf = config["lm_config"]  # the image model's whole Hugging Face config: it builds offline
    assert {k: hf[k] for k in TINY_IMAGE_CONFIGS[family]} == TINY_IMAGE_CONFIGS[family] and "_name_or_path" not in hf
    assert config["preprocessing"] == {"image_size": 32, "interpolation": "bicubic", "mean": cfg.data.mean,
                                       "std": cfg.data.std}
    assert tuple(cfg.data.mean) == IMAGE_PREP[family][0]  # the run trained with the model's own
    assert {k: config["model"][k] for k in ("name", "image_size", "num_classes", "preprocessing")} == \
        {"name": family, "image_size": 32, "num_classes": 10, "preprocessing": "auto"}
    assert config["classes"] == CIFAR10_CLASSES and config["source"]["model"] == family
    assert "# An image model as a vision backbone" in (out / "README.md").read_text()


def test_image_create_model_prep_new_head_and_fresh_weights(image_exported):
    family, run, out = image_exported
    mean, std = IMAGE_PREP[family]
    trained, _ = load_run_model(run)
    model = create_model(str(out)).eval()
    assert isinstance(model, HubImageBackbone) and model.prep == Preprocessing(32, mean, std, "lm2vision export")
    assert model.pretrained_cfg == {
        "input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0, "mean": mean, "std": std,
        "num_classes": 10, "classes": CIFAR10_CLASSES, "first_conv": STEM[family], "classifier": "head"}
    assert isinstance(model.get_submodule(STEM[family]), torch.nn.Conv2d)
    x = fixed_images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x), rtol=0, atol=0)
        three = create_model(str(out), num_classes=3).eval()
        assert three(x).shape == (3, 3) and three.head.bias.abs().sum() == 0
        feats = lambda m: m.forward_head(m.forward_features(x), pre_logits=True)  # noqa: E731
        assert torch.equal(feats(three), feats(trained))
    saved = load_file(str(out / "model.safetensors"))
    fresh = create_model(str(out), pretrained=False).state_dict()
    assert set(fresh) == set(saved) and fresh[BLOCK[family]].shape == saved[BLOCK[family]].shape
    assert not torch.equal(fresh[BLOCK[family]], saved[BLOCK[family]])


@pytest.mark.parametrize("how", ["model.name", "--init"])
def test_probe_starts_from_the_image_export(image_exported, tmp_path, capsys, how):
    family, _, out = image_exported
    where = [f"model.name={out}"] if how == "model.name" else ["--init", str(out)]
    # probe.mode=linear: heads on the frozen features, so the probe's blocks and stem are the export's
    assert main(["probe", "--out", str(tmp_path / "p"), *where, *DATA, "probe.mode=linear"]) == 0
    mean, std = IMAGE_PREP[family]  # the export's preprocessing, not data.mean/std's defaults
    assert f"preprocessing: the model's own, 32px, mean ({', '.join(f'{v:g}' for v in mean)})" in capsys.readouterr().out
    saved, probed = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "p" / "model.safetensors"))
    for key in (BLOCK[family], STEM[family] + ".weight"):
        assert torch.equal(probed[key], saved[key])
    assert not torch.equal(probed["head.weight"], saved["head.weight"])  # re-drawn and trained
    model, cfg = load_run_model(tmp_path / "p")
    assert isinstance(model, ImageBackbone) and (tuple(cfg.data.mean), tuple(cfg.data.std)) == (mean, std)
    assert (cfg.model.name, cfg.init) == ((str(out), None) if how == "model.name" else (str(out), str(out)))


def test_image_export_loads_strictly(image_exported, tmp_path):
    """Every tensor accounted for: a buffer missing from the file (a BatchNorm statistic, or ViT's
    position table) is a one-line error, never a silent fresh value."""
    family, _, out = image_exported
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    weights = load_file(str(broken / "model.safetensors"))
    gone = sorted(k for k in weights if "running_mean" in k or "position_embeddings" in k)[0]
    del weights[gone]
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(Lm2vError, match=rf"^weights of export '{re.escape(str(broken))}' do not match its "
                                        rf"architecture: missing \['{re.escape(gone)}'\], unexpected \[\]$"):
        create_model(str(broken))


@pytest.mark.parametrize("name", sorted(n for n, c in TINY_IMAGE_CONFIGS.items() if "timm" not in c))
def test_every_image_family_saves_and_loads_exactly(name, tmp_path):
    model = create_model(name, pretrained=False, num_classes=4).eval()
    assert isinstance(model, HubImageBackbone) and model.pretrained_cfg["mean"] == model.prep.mean
    assert isinstance(model.get_submodule(model.pretrained_cfg["first_conv"]), torch.nn.Conv2d)
    with torch.no_grad():  # buffers too (BatchNorm statistics): move them off their init
        for n, b in model.named_buffers():
            if b.is_floating_point():
                b.add_(0.1)
    to_hub(model, preprocessing(32, model.prep.mean, model.prep.std)).save_pretrained(tmp_path / "e")
    loaded = HubImageBackbone.from_pretrained(str(tmp_path / "e"))  # the mixin passes config.json's "model": dropped
    with torch.no_grad():
        torch.testing.assert_close(loaded(fixed_images()), model(fixed_images()), rtol=0, atol=0)
    assert loaded.prep == Preprocessing(32, model.prep.mean, model.prep.std, "lm2vision export")


# -- timm models have no export ---------------------------------------------------------------------------
TIMM_WHY = ("lm2vision exports hold Hugging Face transformers models only; timm weights belong to timm's own hub "
            "format (timm.models.push_to_hf_hub, loaded by timm.create_model('hf-hub:ORG/NAME'))")


def test_export_of_a_timm_run_is_one_line(image_exported, tmp_path, capsys):
    """A run of timm:resnet18 (a finished run with its model renamed: timm is not needed to refuse it)."""
    _, run, _ = image_exported
    timm_run = tmp_path / "timm-run"
    shutil.copytree(run, timm_run)
    config = (timm_run / "config.yaml").read_text()
    (timm_run / "config.yaml").write_text(config.replace("\n  name: tiny-", "\n  name: timm:resnet18 #", 1))
    assert read_run_config(timm_run).model.name == "timm:resnet18"
    assert main(["export", str(timm_run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lm2v export: error: {timm_run} is a run of the timm model timm:resnet18, which lm2v export "
                   f"does not write: {TIMM_WHY}"]
    assert not (tmp_path / "e").exists()


class _TimmLike(torch.nn.Module):
    """The interface TimmBackbone reads from a timm model (timm itself is not needed)."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))

    def group_matcher(self, coarse=False):
        return dict(stem=r"^conv1", blocks=r"^layer(\d+)")

    def forward_features(self, x):
        return self.layer1(self.conv1(x))

    def forward_head(self, x, pre_logits=False):
        return x.mean(dim=(-2, -1))


def test_a_timm_backbone_has_no_export(monkeypatch):
    from lm2vision.models.image import TimmBackbone

    monkeypatch.setattr("lm2vision.models.image.import_timm", lambda: pytest.fail("timm was imported"))
    fake = TimmBackbone(_TimmLike(), ModelConfig(name="timm:like", pretrained=False, num_classes=3),
                        Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "timm pretrained_cfg"), "like")
    with pytest.raises(Lm2vError, match=rf"^timm:like is a timm model, which HubBackbone does not wrap: {re.escape(TIMM_WHY)}$"):
        to_hub(fake, preprocessing(32))
    with pytest.raises(Lm2vError, match=r"^timm:resnet18 is a timm model, which HubBackbone does not wrap: lm2vision"):
        create_model("timm:resnet18", pretrained=False)
    with pytest.raises(Lm2vError, match=r"^tiny-mixer is a timm model, which HubBackbone does not wrap"):
        create_backbone(ModelConfig(name="tiny-mixer", pretrained=False), cls=HubBackbone)
