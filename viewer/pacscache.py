"""The object store when the images live in an upstream PACS: a bounded local cache.

Everything reads an instance's bytes through ``store.path(instance.file_hash)``.
Locally imported files keep their SHA-256 names in the ``ObjectStore``; an
instance indexed from the PACS has a key instead (``pacs-`` and a digest of its
UIDs, see ``upstream_key``), and ``path`` of such a key answers the cached
copy, fetching it with WADO-RS first when it is not there. The cache holds at
most ``VIEWER_SOURCE_CACHE_MB``: when a new file may take it over, the least
recently used cached files are removed (never a locally imported one). Fetches
go to a temp file that is renamed into place, so threads and processes fetching
the same instance at once never see half a file; within a process only one of
them fetches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from viewer.db import Instance, Series, Study
from viewer.headers import stored_syntax
from viewer.pacs import BROKEN, PacsClient, PacsError
from viewer.storage import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "pacs-"
TOUCH_AFTER = 30.0  # seconds: how stale a hit's time may be before it is refreshed (LRU)
LOCK_STRIPES = 64
RESCAN_SECONDS = 5.0  # the longest a process relies on its own estimate of the cache size


class IndexLink:
    """What the cache needs from the index: where a key comes from, and what was fetched."""

    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions

    def locate(self, key: str) -> tuple[str, str, str] | None:
        """(study, series, SOP instance) UIDs of the instance with ``file_hash`` ``key``."""
        with self.sessions() as db:
            row = db.execute(
                select(Study.study_uid, Series.series_uid, Instance.sop_uid)
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Instance.file_hash == key).limit(1)
            ).first()
        return None if row is None else (row[0], row[1], row[2])

    def fetched(self, key: str, path: Path) -> None:
        """Record the size and transfer syntax, which series metadata does not give.

        Sync indexes them as 0 and ''; readers that need them exact (a WADO-RS
        retrieve's part headers) see the real values from the first fetch on.
        """
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return  # already evicted by another worker: recorded at the next fetch
        syntax = stored_syntax(path)[:64]
        try:
            with self.sessions() as db:
                db.execute(update(Instance).where(
                    Instance.file_hash == key,
                    (Instance.file_size != size) | (Instance.transfer_syntax != syntax),
                ).values(file_size=size, transfer_syntax=syntax))
                db.commit()
        except SQLAlchemyError:
            log.warning("could not record the size of PACS instance %s", key, exc_info=True)


def upstream_key(study: str, series: str, sop: str) -> str:
    """The ``file_hash`` of an instance that lives in the PACS (64 characters, like a SHA-256)."""
    digest = hashlib.sha256(f"{study}/{series}/{sop}".encode()).hexdigest()
    return PREFIX + digest[: 64 - len(PREFIX)]


def is_upstream(key: str) -> bool:
    return key.startswith(PREFIX)


class PacsStore(ObjectStore):
    """Local files as ``ObjectStore``; PACS instances through a size-bounded LRU cache.

    ``index`` turns a key into (study, series, SOP instance) UIDs.
    """

    def __init__(self, root: Path, tmp: Path, cache_dir: Path, limit_bytes: int,
                 client: PacsClient, index: IndexLink) -> None:
        super().__init__(root, tmp)
        self.cache_dir = cache_dir
        self.limit_bytes = limit_bytes
        self.client = client
        self.index = index
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._estimate_lock = threading.Lock()
        self._estimate = 0  # bytes in the cache as this process believes ...
        self._scanned_at = -RESCAN_SECONDS  # ... since its last scan (monotonic seconds)
        cache_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not is_upstream(digest):
            return super().path(digest)
        rest = digest[len(PREFIX):]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in rest):
            raise ValueError("not a PACS instance key")
        cached = self.cache_dir / digest
        if self._hit(cached):
            return cached
        with self._locks[int(rest[:8], 16) % LOCK_STRIPES]:
            if self._hit(cached):
                return cached
            uids = self.index.locate(digest)
            if uids is None:
                return cached  # not indexed (any more): callers treat it as missing
            self._fetch(uids, cached)
            self.index.fetched(digest, cached)
        self._account(cached)
        return cached

    def _account(self, added: Path) -> None:
        """Evict when the cache may be over its limit.

        Scanning the cache folder costs time in proportion to its files, so it
        is skipped while this process's estimate (the last scan plus what it
        fetched since) is within the limit and the scan is under
        ``RESCAN_SECONDS`` old; the rescan bounds what other workers may add
        unseen.
        """
        with contextlib.suppress(FileNotFoundError), self._estimate_lock:
            size = added.stat().st_size
            fresh = time.monotonic() - self._scanned_at < RESCAN_SECONDS
            if fresh and self._estimate + size <= self.limit_bytes:
                self._estimate += size
                return
        self.evict(keep=added)

    def _hit(self, cached: Path) -> bool:
        """Whether ``cached`` is there; marks it used (its mtime is the LRU clock)."""
        try:
            mtime = cached.stat().st_mtime
        except FileNotFoundError:
            return False
        if time.time() - mtime > TOUCH_AFTER:
            with contextlib.suppress(OSError):
                os.utime(cached)
        return True

    def _fetch(self, uids: tuple[str, str, str], cached: Path) -> None:
        fd, name = tempfile.mkstemp(dir=self.cache_dir, suffix=".part")
        part = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                self.client.retrieve(*uids, handle)
            with part.open("rb") as handle:
                if handle.read(132)[128:] != b"DICM":  # never cache what cannot be shown
                    log.warning("PACS instance %s/%s/%s is not a DICOM file", *uids)
                    raise PacsError(BROKEN)
            os.replace(part, cached)
        finally:
            part.unlink(missing_ok=True)

    def cached_bytes(self) -> int:
        """Bytes in the cache now (every process's files)."""
        return sum(size for _mtime, size, _path in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        with os.scandir(self.cache_dir) as found:
            for entry in found:
                if not entry.name.startswith(PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        return entries

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used cached files until within the limit; returns how many.

        ``keep`` (the file just fetched for a caller) stays even when it alone
        is over the limit. One process at a time (a lock file), so two never
        both delete for the same excess.
        """
        removed = 0
        with (self.cache_dir / ".evict.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._entries()
            total = sum(size for _mtime, size, _path in entries)
            for _mtime, size, path in sorted(entries, key=lambda entry: entry[0]):
                if total <= self.limit_bytes:
                    break
                if path == keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
                total -= size
        with self._estimate_lock:
            self._estimate, self._scanned_at = total, time.monotonic()
        if removed:
            log.debug("PACS cache: evicted %d files", removed)
        return removed

    def clean_staging(self, older_than: float = 3600.0) -> int:
        """Also remove temp files of fetches that a crash interrupted."""
        removed = super().clean_staging(older_than)
        cutoff = time.time() - older_than
        for leftover in self.cache_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed
