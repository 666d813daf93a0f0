"""A read-only view of a dataset root: a directory or a tar archive, read without extraction.

Nothing is dropped silently: whatever the view leaves out (hidden files, unreadable folders, links
to nothing) is recorded in a :class:`Skipped` that the reader reports as one warning.
"""
from __future__ import annotations

import io
import os
import tarfile
import warnings
import zlib
from pathlib import Path, PurePosixPath

from ..errors import Lm2vError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# top-level folder names that are part of a layout, never a wrapper folder to strip
LAYOUT_NAMES = {"train", "test", "val", "cifar-10-batches-bin", "cifar-10-batches-py", "cifar-100-binary",
                "cifar-100-python"}
SHOWN = 3  # names shown per kind of skip in the warning
HIDDEN = "hidden files or folders"
NOT_REGULAR = "entries that are not regular files (broken links, sockets, devices)"
UNREADABLE_DIR = "unreadable folders"


class Skipped:
    """What one dataset read left out, by kind; :meth:`warn` reports it all as ONE warning."""

    def __init__(self) -> None:
        self.kinds: dict[str, list[str]] = {}

    def add(self, kind: str, name: str) -> None:
        """Record that ``name`` was left out because of ``kind`` (a plural noun phrase)."""
        self.kinds.setdefault(kind, []).append(name)

    def extend(self, kind: str, names) -> None:
        """Record several names of one kind."""
        for name in names:
            self.add(kind, name)

    def __len__(self) -> int:
        return sum(len(v) for v in self.kinds.values())

    def message(self, where: str | Path) -> str:
        """One line: the total, then per kind its count and first few names."""
        parts = []
        for kind, names in self.kinds.items():
            names = sorted(names)
            shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
            parts.append(f"{kind} ({len(names)}): {shown}")
        return f"skipped {len(self)} item(s) of dataset {where}: " + "; ".join(parts)

    def warn(self, where: str | Path) -> None:
        """Emit the single warning (nothing when nothing was skipped)."""
        if self.kinds:
            warnings.warn(self.message(where), stacklevel=3)


def is_archive(path: Path) -> bool:
    """True for the archive kinds we read straight from disk (.tar.gz, .tgz, .tar)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden_head(rel: str) -> str | None:
    """``rel`` up to its first hidden part (``.DS_Store``, ``.git``, ``__MACOSX``), else None."""
    parts = PurePosixPath(rel).parts
    for i, p in enumerate(parts):
        if p.startswith(".") or p == "__MACOSX":
            return "/".join(parts[:i + 1])
    return None


class FileTree:
    """Relative POSIX paths of the regular files (and folders) under a root, and their bytes.

    A directory is read lazily from disk (symbolic links followed, each real folder once); a tar
    archive is read in one pass into memory (a gzip stream cannot seek cheaply). A single wrapper
    folder (``mydata/train/...``) is stripped. What is left out is in ``skipped``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise Lm2vError(f"dataset not found: {self.root}")
        self.skipped = Skipped()
        self._hidden: set[str] = set()
        self._blobs: dict[str, bytes] | None = None
        if self.root.is_dir():
            rels, dirs = _walk(self.root, self.skipped)
        elif is_archive(self.root):
            self._blobs, dirs = _read_tar(self.root, self.skipped)
            rels = list(self._blobs)
        else:
            raise Lm2vError(f"dataset must be a folder or a .tar.gz/.tgz/.tar archive: {self.root}")
        rels = sorted(self._visible(rels))
        self.prefix = _wrapper_prefix(rels)
        self.files = [r[len(self.prefix):] for r in rels]
        self.dirs = self._folders(dirs)
        self._set = set(self.files)

    def _folders(self, dirs: list[str]) -> list[str]:
        """Every folder below the stripped root: the listed ones (empty folders too) and files' parents."""
        listed = {d[len(self.prefix):] for d in self._visible(dirs) if d.startswith(self.prefix)}
        parents = {str(p) for f in self.files for p in PurePosixPath(f).parents}
        return sorted((listed | parents) - {"", "."})

    def _visible(self, rels) -> list[str]:
        """``rels`` without hidden entries, which go to ``skipped`` (once per hidden folder)."""
        out = []
        for r in rels:
            head = _hidden_head(r)
            if head is None:
                out.append(r)
            elif head not in self._hidden:
                self._hidden.add(head)
                self.skipped.add(HIDDEN, head)
        return out

    def __contains__(self, rel: str) -> bool:
        return rel in self._set

    def read(self, rel: str) -> bytes:
        """The bytes of the file at ``rel`` (relative to the stripped root); Lm2vError if unreadable."""
        if rel not in self._set:
            raise Lm2vError(f"missing file in dataset {self.root}: {rel}")
        if self._blobs is not None:
            return self._blobs[self.prefix + rel]
        try:
            return (self.root / (self.prefix + rel)).read_bytes()
        except OSError as e:
            raise Lm2vError(f"cannot read {rel} in {self.root}: {e.strerror or e}") from None

    def open(self, rel: str):
        """The file at ``rel`` as an open binary file (read lazily from disk for a folder)."""
        if self._blobs is not None:
            return io.BytesIO(self.read(rel))
        try:
            return (self.root / (self.prefix + rel)).open("rb")
        except OSError as e:
            raise Lm2vError(f"cannot read {rel} in {self.root}: {e.strerror or e}") from None

    @property
    def is_archive(self) -> bool:
        """True when the tree is a tar archive held in memory (it cannot be streamed per file)."""
        return self._blobs is not None

    def under(self, folder: str) -> list[str]:
        """Files below ``folder`` (relative paths, sorted)."""
        head = folder.rstrip("/") + "/"
        return [f for f in self.files if f.startswith(head)]


def _walk(root: Path, skipped: Skipped) -> tuple[list[str], list[str]]:
    """(files, folders) under ``root`` as relative POSIX paths; each real folder is entered once."""
    files, dirs, seen = [], [], set()

    def rel(p: str) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    def unreadable(e: OSError) -> None:
        skipped.add(UNREADABLE_DIR, rel(e.filename))

    for top, dnames, fnames in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link loop or a second link to one folder: read it once
            skipped.add("folders linked more than once", rel(top))
            dnames[:] = []
            continue
        seen.add(real)
        dirs.extend(rel(os.path.join(top, d)) for d in dnames)
        dnames[:] = [d for d in dnames if _hidden_head(d) is None]  # listed above, not entered
        for name in fnames:
            path = os.path.join(top, name)
            if os.path.isfile(path):
                files.append(rel(path))
            else:
                skipped.add(NOT_REGULAR, rel(path))
    return files, dirs


def _read_tar(path: Path, skipped: Skipped) -> tuple[dict[str, bytes], list[str]]:
    """({member path: bytes}, [folder paths]) of a tar archive; a truncated archive is an error."""
    blobs: dict[str, bytes] = {}
    dirs: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = _safe_name(member.name, path)
                if member.isdir():
                    dirs.append(name)
                elif not (member.isfile() or member.islnk() or member.issym()):
                    skipped.add(NOT_REGULAR, name)
                elif (blob := _extract(tar, member)) is None:
                    skipped.add("links to members missing from the archive", name)
                else:
                    if name in blobs:
                        skipped.add("earlier copies of members stored twice (the last copy is read)", name)
                    blobs[name] = blob
            _check_end(tar, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise Lm2vError(f"cannot read archive {path}: {e}") from None
    return blobs, dirs


def _safe_name(raw: str, path: Path) -> str:
    name = PurePosixPath(raw)
    if name.is_absolute() or ".." in name.parts:
        raise Lm2vError(f"unsafe member path {raw!r} in {path}")
    return str(PurePosixPath(*[p for p in name.parts if p != "."]))


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    """The member's bytes (a link: its target's, found inside the archive), None for a dangling link."""
    try:
        f = tar.extractfile(member)
    except KeyError:
        return None
    return f.read() if f else None


def _check_end(tar: tarfile.TarFile, path: Path) -> None:
    """tarfile stops quietly at a truncated or garbled header; a whole archive ends in a zero block."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        last = tar.members[-1].name if tar.members else "(none)"
        raise Lm2vError(f"archive {path} is truncated or corrupt after member {last}")


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
