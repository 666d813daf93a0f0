"""Model lists of published screens, as hub ids (``lm2v phase --preset NAME``).

``seed2``: the phase paper's 12 ImageNet-pretrained vision models x 12 language models (its datasets:
CIFAR-10, CIFAR-100, SVHN, one screen each). Vision ids are transformers models, or ``timm:NAME``
for the one family transformers lacks (MLP-Mixer). :func:`check_available` loads only each model's
configuration, before anything is computed, so an unreachable hub stops the screen at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Lm2vError
from ..models import TINY_CONFIGS
from ..models.factory import DEFAULT_MODEL, _hub_kwargs, resolve_source
from ..train.rundir import is_run_dir


@dataclass(frozen=True)
class Preset:
    vision: tuple[str, ...]
    language: tuple[str, ...]
    datasets: tuple[str, ...]


PRESETS: dict[str, Preset] = {
    "seed2": Preset(
        vision=("microsoft/resnet-34", "microsoft/resnet-50", "google/vit-base-patch16-224",
                "WinKawaks/vit-small-patch16-224", "facebook/deit-base-patch16-224", "facebook/convnext-small-224",
                "facebook/convnext-base-224", "google/efficientnet-b1", "google/efficientnet-b2",
                "timm:mixer_b16_224.goog_in21k_ft_in1k", "microsoft/swin-small-patch4-window7-224",
                "microsoft/swin-base-patch4-window7-224"),
        language=("bert-base-uncased", "distilbert-base-uncased", "roberta-base", "roberta-large", "gpt2-medium",
                  "gpt2-large", "albert-base-v2", "albert-large-v2", "xlnet-base-cased", "xlnet-large-cased",
                  "distilroberta-base", "microsoft/DialoGPT-medium"),
        datasets=("cifar10", "cifar100", "svhn"),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name``; an unknown one is a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise Lm2vError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def _load_config(name: str) -> None:
    """The model's configuration file only (``config.json``): from the hub, its cache or a folder
    (built-in names and lm2vision run directories need no hub)."""
    if name in TINY_CONFIGS or name == DEFAULT_MODEL or is_run_dir(name):
        return
    if name.startswith("timm:"):
        from huggingface_hub import hf_hub_download

        repo = f"timm/{name[len('timm:'):]}"
        hf_hub_download(repo, "config.json", **_hub_kwargs(repo))
        return
    from transformers import AutoConfig

    source = resolve_source(name)
    AutoConfig.from_pretrained(source, **_hub_kwargs(source))


def check_available(vision: list[str], language: list[str], preset: str) -> None:
    """Stop with one line naming the first model whose configuration cannot be loaded, and how to
    point at local folders instead."""
    for side, names in (("vision", vision), ("language", language)):
        for name in names:
            try:
                _load_config(name)
            except (OSError, ValueError) as e:  # hub / cache / folder errors, unknown model types
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise Lm2vError(
                    f"preset {preset}: cannot load {side} model {name!r} ({first[:160]}); offline, download the "
                    f"models elsewhere and point at local folders: lm2v phase --vision PATH ... --language PATH ..."
                ) from None
