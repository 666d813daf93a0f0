"""``lm2v export RUN --out DIR [--push-to-hub ORG/NAME] [--private]``: a finished run's backbone as a
self-describing folder (config.json, model.safetensors, README.md), optionally pushed to the hub.
A language backbone and a native Hugging Face image model (ViT, ResNet, ...) export alike; a timm
model does not (its weights belong to timm's own hub format).

The folder is written beside DIR and renamed into place, so DIR is either absent, empty or whole;
an existing non-empty DIR is never touched. A failed push leaves the folder written.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import is_offline_mode
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from ..data.svhn import CLASSES as SVHN_CLASSES
from ..errors import Lm2vError
from ..models import HubMixin, preprocessing, to_hub
from ..models.arch import timm_name
from ..models.factory import TIMM_HUB_FORMAT, hub_unreachable
from ..train.config import RunConfig
from ..train.rundir import is_finished, is_run_dir, load_run_model, read_run_config, read_summary

# datasets whose class names are fixed (the bundled set is a CIFAR-10 subset)
KNOWN_CLASSES = {"bundled": CIFAR10_CLASSES, "cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES,
                 "svhn": SVHN_CLASSES}
HELP = "write a finished run's backbone as a folder (config.json, model.safetensors) for create_model / model.name / --init"


def register(sub) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    p.add_argument("run", metavar="RUN", help="a finished run directory (lm2v bridge | probe | train)")
    p.add_argument("--out", required=True, help="folder to write; must not exist or be empty")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="also upload the folder to this hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--classes", help="comma-separated class names of the head, in label order "
                                     "(default: known for bundled, cifar10, cifar100)")
    p.set_defaults(func=run)


def check_out(out: str) -> Path:
    """DIR may be absent or an empty directory: anything else is refused, never overwritten."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise Lm2vError(f"--out {out} is a file: give a new folder")
    if path.is_dir() and any(path.iterdir()):
        raise Lm2vError(f"--out {out} exists and is not empty: give a new or empty folder (nothing is overwritten)")
    return path


def check_run(run: str) -> Path:
    """A finished run of a backbone that exports (not a timm model)."""
    if not is_run_dir(run):
        raise Lm2vError(f"{run} is not an lm2v run directory (no config.yaml)")
    if not is_finished(run):
        raise Lm2vError(f"{run} is not finished (no summary.json): finish it (lm2v ... --resume) before exporting")
    name = read_run_config(run).model.name
    if timm_name(name) is not None:  # refused before building it: that would need timm
        raise Lm2vError(f"{run} is a run of the timm model {name}, which lm2v export does not write: {TIMM_HUB_FORMAT}")
    return Path(run)


def check_push(args: argparse.Namespace) -> None:
    if args.private and not args.push_to_hub:
        raise Lm2vError("--private needs --push-to-hub")
    if args.push_to_hub:
        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as e:
            raise Lm2vError(f"--push-to-hub {args.push_to_hub!r} is not a repository id ORG/NAME ({e})") from None


def class_names(cfg: RunConfig, given: str | None) -> list[str] | None:
    """The names of the head's classes: ``--classes``, else those of a dataset with fixed names, else None."""
    if given is not None:
        names = [c.strip() for c in given.split(",")]
        if len(names) != cfg.model.num_classes or not all(names):
            raise Lm2vError(f"--classes gives {len(names)} names for the run's {cfg.model.num_classes} classes")
        return names
    names = KNOWN_CLASSES.get(cfg.data.dataset)
    return list(names) if names is not None and len(names) == cfg.model.num_classes else None


def export_run(run: Path, out: Path, classes: str | None = None) -> HubMixin:
    """Write the backbone of the finished ``run`` to ``out`` (absent or empty); returns it."""
    model, cfg = load_run_model(run)
    summary = read_summary(run)
    source = {"run": str(run), "stage": cfg.stage, "mode": cfg.probe.mode if cfg.stage == "probe" else None,
              "model": cfg.model.name, "pretrained": cfg.model.pretrained, "init": cfg.init,
              "dataset": cfg.data.dataset, "test_acc": summary.get("test_acc")}
    prep = preprocessing(cfg.model.image_size, cfg.data.mean, cfg.data.std)
    hub = to_hub(model, prep, class_names(cfg, classes), source).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hub.save_pretrained(tmp)
        _default_permissions(tmp)
        os.rename(tmp, out)  # onto an absent or empty folder only (checked; the OS refuses a non-empty one)
    except BaseException:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        raise
    return hub


def _default_permissions(folder: Path) -> None:
    """What a plain mkdir / open would give (mkdtemp and the weights writer make them owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def push(hub: HubMixin, out: Path, repo_id: str, private: bool) -> str:
    """Upload through the mixin's ``push_to_hub``; no hub is a one-line error (the folder stays)."""
    why = "HF_HUB_OFFLINE=1 is set" if is_offline_mode() else None
    reason = why or hub_unreachable()
    if reason:
        raise Lm2vError(f"{out} is written, but pushing to {repo_id} needs the hub {hub_constants.ENDPOINT}: {reason}")
    try:
        return str(hub.push_to_hub(repo_id, private=private or None))
    except Exception as e:  # noqa: BLE001 - auth, network, permissions: the hub client raises many kinds
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Lm2vError(f"{out} is written, but pushing to {repo_id} failed: {text}") from None


def run(args: argparse.Namespace) -> int:
    """Export, print what was written and how to use it, then push if asked."""
    run_dir, out = check_run(args.run), check_out(args.out)
    check_push(args)
    hub = export_run(run_dir, out, args.classes)
    for name in sorted(os.listdir(out)):
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")
    pre = hub.pretrained_cfg
    print("use it:\n"
          "    import lm2vision\n"
          f"    model = lm2vision.create_model({str(out)!r}, num_classes={pre['num_classes']})\n"
          f"    logits = model(images)  # (B, 3, {pre['input_size'][1]}, {pre['input_size'][2]}) in [0, 1], "
          f"then normalised with mean {list(pre['mean'])}, std {list(pre['std'])}")
    print(f"or as a model: lm2v probe model.name={out} --out RUN ... | lm2v probe --init {out} --out RUN ...")
    if args.push_to_hub:
        url = push(hub, out, args.push_to_hub, args.private)
        print(f"pushed to {args.push_to_hub}: {url}")
    return 0
