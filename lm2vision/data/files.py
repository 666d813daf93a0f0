"""A read-only view of a dataset root: a directory or a tar archive, read without extraction."""
from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from ..errors import Lm2vError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# top-level folder names that are part of a layout, never a wrapper folder to strip
LAYOUT_NAMES = {"train", "test", "val", "cifar-10-batches-bin", "cifar-10-batches-py", "cifar-100-binary",
                "cifar-100-python"}


def is_archive(path: Path) -> bool:
    """True for the archive kinds we read straight from disk (.tar.gz, .tgz, .tar)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_junk(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class FileTree:
    """Relative POSIX paths of the regular files under a root, and their bytes.

    A directory is read lazily from disk; a tar archive is read in one pass into memory (a
    gzip stream cannot seek cheaply). A single wrapper folder (``mydata/train/...``) is stripped.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise Lm2vError(f"dataset not found: {self.root}")
        self._blobs: dict[str, bytes] | None = None
        if self.root.is_dir():
            rels = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        elif is_archive(self.root):
            self._blobs = _read_tar(self.root)
            rels = list(self._blobs)
        else:
            raise Lm2vError(f"dataset must be a folder or a .tar.gz/.tgz/.tar archive: {self.root}")
        rels = sorted(r for r in rels if not _is_junk(r))
        self.prefix = _wrapper_prefix(rels)
        self.files = [r[len(self.prefix):] for r in rels]
        self._set = set(self.files)

    def __contains__(self, rel: str) -> bool:
        return rel in self._set

    def read(self, rel: str) -> bytes:
        """The bytes of the file at ``rel`` (relative to the stripped root)."""
        if rel not in self._set:
            raise Lm2vError(f"missing file in dataset {self.root}: {rel}")
        if self._blobs is not None:
            return self._blobs[self.prefix + rel]
        return (self.root / (self.prefix + rel)).read_bytes()

    def under(self, folder: str) -> list[str]:
        """Files below ``folder`` (relative paths, sorted)."""
        head = folder.rstrip("/") + "/"
        return [f for f in self.files if f.startswith(head)]


def _read_tar(path: Path) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise Lm2vError(f"unsafe member path {member.name!r} in {path}")
                f = tar.extractfile(member)
                blobs[str(PurePosixPath(*[p for p in name.parts if p != "."]))] = f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise Lm2vError(f"cannot read archive {path}: {e}") from None
    return blobs


def _wrapper_prefix(rels: list[str]) -> str:
    """The folders every file sits in (``a/b/``), stopping at a layout name or a top-level file."""
    prefix = ""
    while rels:
        heads = {r.split("/", 1)[0] for r in rels}
        if len(heads) != 1 or any("/" not in r for r in rels):
            break
        head = heads.pop()
        if head in LAYOUT_NAMES:
            break
        prefix += head + "/"
        rels = [r.split("/", 1)[1] for r in rels]
    return prefix
