#!/usr/bin/env python
"""Does the streamed data path keep the training step fed? img/s of a training epoch with the images
decoded from JPEG files on disk by DataLoader workers (``data.storage=stream``) against the same
epoch from device memory (``data.storage=memory``): same model, batch, recipe and batches.

Data: the first ``--images`` training images of the CIFAR-10 JPEG copy (``--source``, a .tar.gz with
``train/<class>/*.jpg``) upscaled (bicubic) to ``--side`` px and written as JPEG (quality 90) to a
temporary folder, so each streamed image costs a realistic decode. Both paths store ``--side`` px
(the files' shared size) and crop-resize to the model's input on the device.
Model (default): 224/16 on the GPT-2-medium shape (24 blocks, width 1024, 16 heads, random weights),
bf16 autocast on CUDA, all parameters trained (stage 1), as in ``benchmarks/throughput.py``.
Every path: one warm-up epoch (DataLoader start, autotuning), then ``--epochs`` timed epochs with the
device synchronised around them.

    img/s = timed images / timed seconds;  ratio = img/s / img/s of memory (goal: stream >= 0.9)

GPU:       python benchmarks/streaming.py --workers 12
CPU check: python benchmarks/streaming.py --quick
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # run from a checkout without installing
sys.path.insert(0, str(BENCH))

from throughput import Setting, build_model, sync, write_gpt2_config  # noqa: E402

from lm2vision.data import DataConfig, load_imageset_splits  # noqa: E402
from lm2vision.errors import Lm2vError  # noqa: E402
from lm2vision.train.config import OptimConfig  # noqa: E402
from lm2vision.train.distributed import Runtime  # noqa: E402
from lm2vision.train.loop import Schedule, device_set, train_one_epoch  # noqa: E402
from lm2vision.train.optim import build_optimizer  # noqa: E402
from lm2vision.utils.tables import markdown_table  # noqa: E402

SOURCE = Path("/work/shared/data/cifar10_jpg.tar.gz")
QUICK = dict(images=64, side=64, size="32/8", layers=2, width=64, heads=2, batch=16, workers=2, epochs=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--source", type=Path, default=SOURCE, help="CIFAR-10 JPEG archive (train/<class>/*.jpg)")
    ap.add_argument("--images", type=int, default=8192, help="training images written to disk")
    ap.add_argument("--side", type=int, default=256, help="side of the JPEG files written (upscaled)")
    ap.add_argument("--size", default="224/16", help="image_size/patch_size of the model")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=12, help="DataLoader workers of the streamed path")
    ap.add_argument("--prefetch", type=int, default=4, help="batches each worker decodes ahead")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--json", type=Path, default=Path("streaming.json"), help="where the results go")
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()))
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def write_jpegs(source: Path, n: int, side: int, root: Path) -> Path:
    """The first ``n`` ``train/<class>/*.jpg`` of ``source`` (every class taken in turn), upscaled to
    ``side`` and written under ``root/train``; one image per class under ``root/test`` (the layout
    needs a test split; the benchmark never reads it)."""
    if not source.is_file():
        raise Lm2vError(f"benchmark data not found: {source} (pass --source)")
    by_class: dict[str, list] = {}
    with tarfile.open(source) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "train":
                by_class.setdefault(parts[1], []).append(m)
        members = [ms[i] for i in range(max(map(len, by_class.values()))) for ms in by_class.values() if i < len(ms)]
        for k, m in enumerate(members[:n + len(by_class)]):
            split = "test" if k < len(by_class) else "train"
            out = root / split / m.name.split("/")[1] / f"{k:06d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(tar.extractfile(m)) as im:
                im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(out, quality=90)
    return root


def time_path(args: argparse.Namespace, name: str, storage: str, root: Path, rt: Runtime) -> dict:
    """One path's warm-up epoch, then ``--epochs`` timed epochs."""
    s = Setting(*map(int, args.size.split("/")))
    dcfg = DataConfig(dataset=str(root), storage=storage, workers=args.workers, prefetch=args.prefetch,
                      store_size=args.side, val_fraction=0.1)  # val: required, unused
    splits = load_imageset_splits(dcfg, stream_ok=True)
    data = device_set(splits.train, rt.device, dcfg)
    torch.manual_seed(0)
    model = build_model(name, s, "sdpa", False, None, rt.device)
    ocfg = OptimConfig(epochs=1 + args.epochs, batch_size=args.batch, warmup_epochs=1.0)
    optimizer = build_optimizer(model, ocfg)
    sched = Schedule.of(ocfg, len(data) // args.batch)

    def epoch(e: int) -> dict:
        return train_one_epoch(model, optimizer, data, e, sched, ocfg, dcfg, s.image_size, seed=0, rt=rt, progress=False)

    first = epoch(0)
    sync(rt.device)
    t0 = time.perf_counter()
    losses = [epoch(e)["train_loss"] for e in range(1, 1 + args.epochs)]
    sync(rt.device)
    seconds = time.perf_counter() - t0
    images = args.epochs * (len(data) // args.batch) * args.batch
    return {"path": storage, "workers": args.workers if storage == "stream" else 0, "images": images,
            "seconds": seconds, "img_per_s": images / seconds, "first_loss": first["train_loss"], "losses": losses,
            "note": splits.note}


def table(rows: list[dict]) -> str:
    base = rows[0]["img_per_s"]
    return markdown_table([{"path": r["path"], "workers": r["workers"], "img/s": f"{r['img_per_s']:.1f}",
                            "ratio": f"{r['img_per_s'] / base:.3f}"} for r in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    rt = Runtime(torch.device(args.device), torch.bfloat16 if cuda else None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            name = write_gpt2_config(argparse.Namespace(layers=args.layers, width=args.width, heads=args.heads),
                                     str(Path(tmp) / "gpt2"))
            root = write_jpegs(args.source, args.images, args.side, Path(tmp) / "jpg")
            rows = [time_path(args, name, storage, root, rt) for storage in ("memory", "stream")]
    except Lm2vError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(rt.device) if cuda else "cpu"
    print(f"{args.images} JPEG {args.side}px, model {args.size} L{args.layers} C{args.width}, batch {args.batch}, "
          f"{device}\n\n{table(rows)}")
    same = rows[0]["losses"] == rows[1]["losses"] and rows[0]["first_loss"] == rows[1]["first_loss"]
    print(f"\nsame losses on both paths: {same}")
    args.json.write_text(json.dumps({"device": device, "args": {k: str(v) for k, v in vars(args).items()},
                                     "rows": rows, "same_losses": same}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
