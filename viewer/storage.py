"""Content-addressed storage of original DICOM files.

A file's name is the SHA-256 of its bytes, never a value from the DICOM header,
so a hostile header cannot choose a path. Files arrive through temp files that
are flushed to disk (``sync``) before they are renamed into place, and the
renames are flushed before the index is told, so a crash never leaves half a
file under a final name. One ``sync`` covers a whole batch of files: a single
filesystem flush instead of two fsyncs per file is what makes import fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
_LIBC = ctypes.CDLL(None, use_errno=True) if hasattr(ctypes.CDLL(None), "syncfs") else None


class TooLarge(ValueError):
    """The incoming file is over the configured size limit."""


class ObjectStore:
    """Stored files under ``root/ab/cd/<sha256>``; staging under ``tmp``."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ValueError("not a SHA-256 digest")
        return self.root / digest[:2] / digest[2:4] / digest

    def stage(self, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
        """Write ``chunks`` to a temp file under ``tmp``: see ``stage_file``."""
        return stage_file(self.tmp, chunks, limit)

    def commit(self, staged: Path, digest: str) -> Path:
        """Move a staged file to its final name (a no-op if the bytes are already there).

        Call ``sync`` before (for the data) and after (for the rename).
        """
        final = self.path(digest)
        if final.exists():
            staged.unlink(missing_ok=True)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final

    def sync(self) -> None:
        """Flush every file and rename under the data folder to disk (Linux ``syncfs``)."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _LIBC is not None and _LIBC.syncfs(fd) == 0:
                return
            os.sync()
        finally:
            os.close(fd)

    def discard(self, digest: str) -> None:
        """Remove a stored file whose index row could not be written."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.path(digest).unlink()

    def clean_staging(self, older_than: float = 3600.0) -> int:
        """Remove temp files a crashed import left behind; returns how many.

        Only old ones: a young temp file may belong to an import still running.
        """
        removed = 0
        cutoff = time.time() - older_than
        for leftover in self.tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed


def stage_file(tmp: Path, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
    """Write ``chunks`` to a temp file in ``tmp``, returning (path, sha256, size).

    Stops with ``TooLarge`` as soon as ``limit`` bytes are passed, so a huge or
    endless input never fills the disk. A function, not only a method, so that
    import's worker processes can stage files without the (unpicklable) store.
    """
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=tmp, suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"larger than the {limit // (1 << 20)} MiB limit")
                digest.update(chunk)
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest(), size


def read_chunks(handle: BinaryIO) -> Iterable[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk
