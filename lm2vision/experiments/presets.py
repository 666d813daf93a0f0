"""The paper's experiments as named presets (``lm2v reproduce NAME``), and the scales they run at.

Each preset is a sweep (axes, fixed overrides, stage 2 as the paper's ``reinit``, one direct arm per
initialisation) and the paper's claims it tests, each as a paired comparison of two arms. A scale
sets epochs, resolution and data size; ``--model``, ``--data``, ``--seeds`` and ``key=value``
overrides go on top, in that order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Lm2vError
from .design import Claim, Comparison
from .sweep import cell_name, direct_name


@dataclass
class Scale:
    """Epochs, resolution and data size of a preset's runs."""

    overrides: list[str]  # for every cell (both stages)
    stage2_epochs: int
    seeds: str  # default --seeds
    note: str


SCALES = {
    "smoke": Scale(["model.image_size=32", "model.patch_size=8", "data.max_train_per_class=40",
                    "data.max_test_per_class=50", "optim.epochs=2", "optim.batch_size=40", "optim.warmup_epochs=0.5"],
                   stage2_epochs=2, seeds="0,1,2", note="minutes on 2 CPU cores: 360 training and 500 test images, 2+2 epochs"),
    "small": Scale(["model.image_size=32", "model.patch_size=4", "optim.epochs=30", "optim.batch_size=128",
                    "optim.warmup_epochs=2"],
                   stage2_epochs=30, seeds="0,1,2", note="one GPU: the whole dataset at 32 px / 4 px patches, 30+30 epochs"),
    "paper": Scale(["model.image_size=224", "model.patch_size=16", "optim.epochs=200", "optim.batch_size=64",
                    "optim.warmup_epochs=5", "runtime.test_each_epoch=true"],
                   stage2_epochs=200, seeds="0,1,2", note="the paper's 224/16, 200+200 epochs (GPU days)"),
}


@dataclass
class Preset:
    """One of the paper's experiments."""

    description: str
    axes: dict[str, list]
    overrides: list[str] = field(default_factory=list)
    claims: list[tuple[str, dict, dict | str, str]] = field(default_factory=list)  # text, a point, b point or "direct", kind
    paper_table: tuple[str, str] | None = None  # (row axis, column axis) of the paper-style table
    x_axis: str | None = None  # the figure's x axis
    task: str | None = None  # "segment" | "detect": stage 2 is that dense task instead of a probe


# stage 2 of the dense presets, per scale (the dense run's own optimiser and data settings)
DENSE_SCALES = {"smoke": ["optim.epochs=2", "optim.batch_size=8"],
                "small": ["optim.epochs=30", "optim.batch_size=16"],
                "paper": ["optim.epochs=64", "optim.batch_size=8"]}


RATIOS = [0.0, 0.15, 0.3, 1.0]

PRESETS = {
    "label-ratio": Preset(
        "the label-ratio table: random-label ratio r x pretrained/scratch, all blocks bridged, stage 2 reinit",
        {"labels.ratio": RATIOS, "model.pretrained": [True, False]}, ["trainable.blocks=all"],
        [(f"pretrained + bridge beats scratch + bridge (r={r})", {"labels.ratio": r, "model.pretrained": True},
          {"labels.ratio": r, "model.pretrained": False}, "better") for r in RATIOS]
        + [("random-label bridging (r=1) beats no bridging (pretrained)", {"labels.ratio": 1.0, "model.pretrained": True},
            "direct", "better")],
        paper_table=("model.pretrained", "labels.ratio"), x_axis="labels.ratio"),
    "partial": Preset(
        "partial bridge training, first k blocks trained (r=1, pretrained), stage 2 reinit",
        {"trainable.blocks": ["first:2", "first:5", "all"]}, ["labels.ratio=1.0", "model.pretrained=true"],
        [("the first 2 blocks match all blocks", {"trainable.blocks": "first:2"}, {"trainable.blocks": "all"}, "match"),
         ("the first 5 blocks beat all blocks", {"trainable.blocks": "first:5"}, {"trainable.blocks": "all"}, "better")]),
    "partial-frozen": Preset(
        "partial bridge training the other way (the authors' older code): the first 5 blocks, the token and "
        "position embeddings frozen, the rest trained (r=1, pretrained), against all blocks with the same groups",
        {"trainable.blocks": ["from:5", "all"]},
        ["labels.ratio=1.0", "model.pretrained=true", "trainable.groups=[patch,final_norm,head]"],
        [("freezing the first 5 blocks matches training all", {"trainable.blocks": "from:5"}, {"trainable.blocks": "all"},
          "match")]),
    "labels": Preset(
        "correct-label vs random-label bridging (pretrained, all blocks), stage 2 reinit",
        {"labels.ratio": [0.0, 1.0]}, ["model.pretrained=true", "trainable.blocks=all"],
        [("random-label bridging matches correct-label bridging", {"labels.ratio": 1.0}, {"labels.ratio": 0.0}, "match"),
         ("correct-label bridging beats no bridging", {"labels.ratio": 0.0}, "direct", "better"),
         ("random-label bridging beats no bridging", {"labels.ratio": 1.0}, "direct", "better")]),
}
for _task, _what in (("segment", "Segmenter semantic segmentation (mIoU)"), ("detect", "DETR detection (box mAP)")):
    PRESETS[f"dense-{_task}"] = Preset(
        f"the dense comparison: {_what} on the bridged (r=1, first 2 blocks) pretrained and scratch backbones "
        "and on their unbridged twins; synthetic data offline, or --data",
        {"model.pretrained": [True, False]}, ["labels.ratio=1.0", "trainable.blocks=first:2"],
        [("pretrained + bridge beats scratch + bridge", {"model.pretrained": True}, {"model.pretrained": False}, "better"),
         ("bridging beats no bridging (pretrained)", {"model.pretrained": True}, "direct", "better")],
        task=_task)


def preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in PRESETS:
        raise Lm2vError(f"unknown experiment {name!r}: one of {', '.join(PRESETS)}")
    return PRESETS[name]


def scale(name: str) -> Scale:
    """The scale called ``name`` (smoke | small | paper)."""
    if name not in SCALES:
        raise Lm2vError(f"unknown --scale {name!r}: one of {', '.join(SCALES)}")
    return SCALES[name]


def claims_of(p: Preset, margin: float) -> list[Claim]:
    """The preset's claims as paired comparisons between its arms (``margin`` for "match" claims)."""
    out = []
    for text, a, b, kind in p.claims:
        b_name = direct_name(a) if b == "direct" else cell_name(b)
        out.append(Claim(text, Comparison(text, cell_name(a), b_name), kind, margin))
    return out
