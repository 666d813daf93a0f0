#!/usr/bin/env python
"""Build lm2vision/data/assets/cifar10_subset.tar.gz from the CIFAR-10 JPEG archive.

A class-balanced, seeded choice of images per class and split; the original JPEG bytes are copied
(no re-encoding) into the same ``<split>/<class>/<file>`` layout. The output is byte-reproducible
(sorted members, zero mtimes/owners, gzip header without a timestamp).

    python tools/make_bundled_subset.py --src /work/shared/data/cifar10_jpg.tar.gz
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

SOURCE_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "lm2vision" / "data" / "assets" / "cifar10_subset.tar.gz"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_members(src: Path) -> dict[str, bytes]:
    """Every ``<split>/<class>/<file>.jpg`` of the source archive, name -> bytes."""
    out = {}
    with tarfile.open(src, "r:gz") as tar:
        for m in tar:
            parts = m.name.lstrip("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] in ("train", "test") and parts[2].lower().endswith(".jpg"):
                out["/".join(parts)] = tar.extractfile(m).read()
    return out


def choose(names: list[str], per_class: dict[str, int], seed: int) -> list[str]:
    """A seeded, class-balanced choice: ``per_class[split]`` files of every class of every split."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n in names:
        split, cls, _ = n.split("/")
        groups[(split, cls)].append(n)
    rng = random.Random(seed)
    chosen = []
    for key in sorted(groups):
        pool = sorted(groups[key])
        k = per_class[key[0]]
        if len(pool) < k:
            raise SystemExit(f"{key[0]}/{key[1]} has only {len(pool)} images, need {k}")
        chosen += sorted(rng.sample(pool, k))
    return chosen


def write_tar_gz(out: Path, blobs: dict[str, bytes], names: list[str]) -> None:
    """A reproducible .tar.gz of ``names`` (sorted, zero mtimes and owners)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for n in sorted(names):
                info = tarfile.TarInfo(n)
                info.size, info.mtime, info.mode = len(blobs[n]), 0, 0o644
                tar.addfile(info, io.BytesIO(blobs[n]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/cifar10_jpg.tar.gz"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check of --src")
    args = ap.parse_args(argv)
    if not args.no_verify and sha256_file(args.src) != SOURCE_SHA256:
        print(f"error: {args.src} is not the expected archive (sha256 {SOURCE_SHA256})", file=sys.stderr)
        return 2
    blobs = read_members(args.src)
    names = choose(list(blobs), {"train": args.train_per_class, "test": args.test_per_class}, args.seed)
    write_tar_gz(args.out, blobs, names)
    print(f"wrote {args.out}: {len(names)} images, {args.out.stat().st_size} bytes, sha256 {sha256_file(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
