"""Keeping the index in step with an upstream PACS (``VIEWER_SOURCE=dicomweb``).

Images are indexed from WADO-RS series metadata (DICOM JSON), never
downloaded at sync time: each instance gets the same index rows as an
imported file, with ``file_hash`` = ``upstream_key(...)`` so that
``PacsStore.path`` can fetch it when it is first shown. Report objects (SR,
Encapsulated PDF) are fetched and imported like ``viewer import`` does, since
their content is the report.

The sync is incremental: a study whose instance count (QIDO-RS
NumberOfStudyRelatedInstances) equals ours is skipped, then so is each series
whose count equals ours, and only missing instances are indexed. It runs
* by ``viewer sync`` (all studies, or one with ``--study``);
* in the background of a serving process, when the last full sync is older than
  ``VIEWER_SOURCE_SYNC_MINUTES`` (one process at a time, a lock file; the
  request that notices it does not wait);
* on demand, before a request with credentials that names a study (or series)
  not in the index: that study is synced first, within the timeout, at most
  once per 30 s per study, one at a time per process.
Instances removed from the PACS are not removed from the index (fetching them
then answers 502). Objects that cannot be indexed (no pixel data, over the
limits) keep their series' counts apart, so its metadata is read again at each
sync (a serving process remembers them and does not parse them again).
"""

from __future__ import annotations

import fcntl
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from pydicom.dataset import Dataset, FileMetaDataset
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from viewer.db import Instance, Report, Series, Study
from viewer.ingest import Importer, Limits, Record, Refused, Source, check, describe, index_instance
from viewer.pacs import UID, PacsClient, PacsError, PacsNotFound, first, uid_of
from viewer.pacscache import upstream_key
from viewer.reports import DICOM_REPORT_CLASSES
from viewer.security import error_response
from viewer.storage import read_chunks

log = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
STUDY_COUNT, SERIES_COUNT = "00201208", "00201209"
DEMAND_RETRY = 30.0  # seconds before an unknown study is asked for again
FAILED_RETRY = 60.0  # seconds before a failed background refresh is tried again


@dataclass
class SyncResult:
    studies: int = 0  # studies the PACS listed
    checked: int = 0  # studies whose counts differed from ours, so were looked into
    added: int = 0  # image instances indexed
    reports: int = 0  # report objects imported
    refused: list[str] = field(default_factory=list)  # "SOP UID: reason"

    def summary(self) -> str:
        return (f"studies {self.studies} (looked into {self.checked}), instances added "
                f"{self.added}, reports added {self.reports}, refused {len(self.refused)}")


def _without_bulk(item: dict[str, Any]) -> dict[str, Any]:
    """Bulk data (pixels) is not fetched at sync time: each BulkDataURI becomes an empty value.

    Done here rather than with pydicom's ``bulk_data_uri_handler``, which costs a
    signature inspection per element.
    """
    out: dict[str, Any] = {}
    for tag, element in item.items():
        if isinstance(element, dict) and "BulkDataURI" in element:
            element = {"vr": element.get("vr", "OB"), "InlineBinary": ""}
        elif isinstance(element, dict) and isinstance(element.get("Value"), list) and \
                element.get("vr") == "SQ":
            element = {**element, "Value": [_without_bulk(child) if isinstance(child, dict)
                                            else child for child in element["Value"]]}
        out[tag] = element
    return out


# The groups ``check`` and ``describe`` read (directory records, identifiers, patient,
# acquisition, geometry, image pixel, procedure step and request attributes, functional
# groups, pixel data): parsing only their public elements takes a third of the time of
# the whole header.
INDEXED_GROUPS = {"0004", "0008", "0010", "0018", "0020", "0028", "0040", "5200", "7FE0"}


def record_from_json(item: dict[str, Any], limits: Limits) -> Record:
    """The index rows of an instance from its DICOM JSON metadata; ``Refused`` says why not."""
    wanted = {tag: value for tag, value in item.items() if tag[:4].upper() in INDEXED_GROUPS}
    try:
        ds = Dataset.from_json(_without_bulk(wanted))
    except Exception as exc:
        raise Refused(f"unreadable metadata ({str(exc)[:200]})") from None
    ds.file_meta = FileMetaDataset()
    check(ds, limits)  # without a transfer syntax: the (absent) pixel data is not measured
    # Some servers name the stored syntax (Orthanc does not: it is recorded at first fetch).
    syntax = uid_of(item, "00020010") or uid_of(item, "00083002")
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    return describe(ds)


class PacsSync:
    """Indexes what the PACS holds; see the module docstring for when."""

    def __init__(self, client: PacsClient, sessions: sessionmaker, importer: Importer,
                 limits: Limits, state_dir: Path, minutes: int) -> None:
        self.client = client
        self.sessions = sessions
        self.importer = importer
        self.limits = limits
        self.lock_path = state_dir / "pacs-sync.lock"
        self.stamp_path = state_dir / "pacs-sync.stamp"
        self.minutes = minutes
        self._refused: set[str] = set()  # SOP UIDs not indexable: not parsed again
        self._demand_lock = threading.Lock()
        self._demanded: dict[tuple[str, str], float] = {}
        self._seen: set[tuple[str, str]] = set()  # (study, series) known to be indexed
        self._thread: threading.Thread | None = None
        self._next_check = 0.0

    # --- the sync itself ------------------------------------------------------------------

    def sync_all(self) -> SyncResult:
        """Every study the PACS lists; records the time for the background refresh."""
        result = SyncResult()
        remote: dict[str, Any] = {}
        for item in self.client.search("/studies", {"includefield": STUDY_COUNT}):
            uid = uid_of(item, STUDY_UID)
            if uid:
                remote[uid] = first(item, STUDY_COUNT)
        result.studies = len(remote)
        local = self._study_counts(list(remote))
        for uid, count in remote.items():
            if not isinstance(count, int) or count != local.get(uid, 0):
                result.checked += 1
                self.sync_study(uid, result)
        self.stamp_path.touch()
        return result

    def sync_study(self, study_uid: str, result: SyncResult | None = None) -> SyncResult:
        """One study: each series whose count differs from ours, then its missing instances."""
        result = result or SyncResult(studies=1, checked=1)
        try:
            found = list(self.client.search(f"/studies/{study_uid}/series",
                                            {"includefield": SERIES_COUNT}))
        except PacsNotFound:
            return result  # some servers answer a search under an unknown study with 404
        for item in found:
            series_uid = uid_of(item, SERIES_UID)
            if not series_uid:
                continue
            count = first(item, SERIES_COUNT)
            if isinstance(count, int) and count == self._series_count(series_uid):
                continue
            self._sync_series(study_uid, series_uid, result)
        return result

    def _sync_series(self, study_uid: str, series_uid: str, result: SyncResult) -> None:
        """The series' metadata names every instance; index (or import) those we lack.

        Straight to the metadata, not a QIDO-RS instance search first: Orthanc
        answers that search no faster than the metadata itself.
        """
        base = f"/studies/{study_uid}/series/{series_uid}"
        listed = {uid_of(item, SOP_UID): item for item in self.client.get_json(base + "/metadata")}
        listed.pop("", None)
        known = self._known(list(listed)) | self._refused
        records: list[tuple[Record, str]] = []
        documents = []
        for sop, item in listed.items():
            if sop in known:
                continue
            if str(first(item, SOP_CLASS) or "") in DICOM_REPORT_CLASSES:
                documents.append(sop)
                continue
            try:
                record = record_from_json(item, self.limits)
            except Refused as exc:
                self._refuse(result, sop, str(exc))
                continue
            if (record.study_key["study_uid"], record.series_key["series_uid"]) != (
                    study_uid, series_uid):
                self._refuse(result, sop, "its metadata names another study or series")
                continue
            records.append((record, upstream_key(study_uid, series_uid, sop)))
        result.added += self._index(records)
        for sop in sorted(documents):
            self._import_report(study_uid, series_uid, sop, result)

    def _refuse(self, result: SyncResult, sop: str, reason: str) -> None:
        self._refused.add(sop)
        result.refused.append(f"{sop}: {reason}")
        log.warning("PACS instance %s not indexed: %s", sop, reason)

    def _index(self, records: list[tuple[Record, str]]) -> int:
        """Index rows for new instances: in one transaction, else one by one (races)."""
        if not records:
            return 0
        try:
            with self.sessions() as session:
                cache: dict = {}
                for record, key in records:
                    index_instance(session, record, key, 0, cache)
                session.commit()
            return len(records)
        except IntegrityError:
            log.debug("batch indexing raced with another sync; indexing one by one")
        added = 0
        for record, key in records:
            try:
                with self.sessions() as session:
                    index_instance(session, record, key, 0)
                    session.commit()
                added += 1
            except IntegrityError:
                pass  # indexed meanwhile by another process
        return added

    def _import_report(self, study: str, series: str, sop: str, result: SyncResult) -> None:
        """A report object is imported whole: its content is what the patient reads."""
        with tempfile.TemporaryFile(dir=self.importer.store.tmp) as handle:
            try:
                self.client.retrieve(study, series, sop, handle)
            except PacsNotFound as exc:  # deleted since it was listed
                self._refuse(result, sop, str(exc))
                return

            def chunks() -> Iterator[bytes]:
                handle.seek(0)
                yield from read_chunks(handle)

            outcome = self.importer.import_source(Source(f"PACS {sop}", chunks))
        if outcome.status == "imported":
            result.reports += 1
        elif outcome.status == "refused":
            self._refuse(result, sop, outcome.reason)

    def _study_counts(self, uids: list[str]) -> dict[str, int]:
        """Instances plus report objects we hold per study."""
        counts: dict[str, int] = {}
        with self.sessions() as session:
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                rows = session.execute(
                    select(Study.study_uid, func.count(Instance.id))
                    .join(Series, Series.study_pk == Study.id)
                    .join(Instance, Instance.series_pk == Series.id)
                    .where(Study.study_uid.in_(chunk)).group_by(Study.study_uid)
                ).all()
                rows += session.execute(
                    select(Report.study_uid, func.count(Report.id))
                    .where(Report.study_uid.in_(chunk), Report.sop_uid.is_not(None))
                    .group_by(Report.study_uid)
                ).all()
                for uid, count in rows:
                    counts[uid] = counts.get(uid, 0) + count
        return counts

    def _series_count(self, series_uid: str) -> int:
        with self.sessions() as session:
            return session.scalar(
                select(func.count(Instance.id)).join(Series, Series.id == Instance.series_pk)
                .where(Series.series_uid == series_uid)
            ) or 0

    def _known(self, sops: list[str]) -> set[str]:
        known: set[str] = set()
        with self.sessions() as session:
            for start in range(0, len(sops), 500):
                chunk = sops[start:start + 500]
                for model in (Instance, Report):
                    known.update(session.scalars(
                        select(model.sop_uid).where(model.sop_uid.in_(chunk))))
        return known

    # --- when it runs -----------------------------------------------------------------------

    def sync_all_locked(self, wait: bool = True) -> SyncResult | None:
        """``sync_all`` under the lock file; ``None`` when another process holds it (no wait)."""
        with self.lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return None
            return self.sync_all()

    def _last_sync(self) -> float:
        try:
            return self.stamp_path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def refresh_if_due(self) -> None:
        """Start a background full sync when the last one is too old (never waits)."""
        now = time.time()
        if self.minutes <= 0 or now < self._next_check:
            return
        self._next_check = now + 5.0  # look at the stamp file at most every 5 s
        if now - self._last_sync() < self.minutes * 60:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._background, name="pacs-sync", daemon=True)
        self._thread.start()

    def _background(self) -> None:
        try:
            result = self.sync_all_locked(wait=False)
            if result is not None:
                log.info("PACS sync: %s", result.summary())
        except PacsError as exc:
            log.warning("PACS sync failed: %s", exc)
            self._next_check = time.time() + FAILED_RETRY
        except Exception:
            log.exception("PACS sync failed")
            self._next_check = time.time() + FAILED_RETRY

    def ensure(self, study_uid: str, series_uid: str = "") -> None:
        """Sync a study the request names when it (or the series) is not indexed yet.

        A ``PacsError`` reaches the caller (502/504): without the PACS we cannot
        know whether the study exists. The whole sync gets one timeout.
        """
        if not UID.match(study_uid) or len(study_uid) > 64 or (
                series_uid and (not UID.match(series_uid) or len(series_uid) > 64)):
            return
        key = (study_uid, series_uid)
        if key in self._seen:
            return
        if self._indexed(study_uid, series_uid):
            if len(self._seen) > 100000:
                self._seen.clear()
            self._seen.add(key)  # index rows are never removed: no query next time
            return
        if time.monotonic() - self._demanded.get(key, -DEMAND_RETRY) < DEMAND_RETRY:
            return
        if not self._demand_lock.acquire(timeout=self.client.timeout):
            return
        try:
            if not self._indexed(study_uid, series_uid):
                # All of it within one timeout, as the request waits; each series is
                # committed as it comes, so a slow PACS still makes progress.
                with self.client.budget(self.client.timeout):
                    self.sync_study(study_uid)
            if len(self._demanded) > 10000:
                self._demanded.clear()
            self._demanded[key] = time.monotonic()
        finally:
            self._demand_lock.release()

    def _indexed(self, study_uid: str, series_uid: str) -> bool:
        with self.sessions() as session:
            if series_uid:
                return session.scalar(
                    select(Series.id).where(Series.series_uid == series_uid)) is not None
            return session.scalar(
                select(Study.id).where(Study.study_uid == study_uid)) is not None


def init_app(app: Flask, sync: PacsSync) -> None:
    """Sync before requests (see the module docstring); PACS failures answer 502/504."""

    @app.before_request
    def _follow_pacs() -> None:
        sync.refresh_if_due()
        args = request.view_args or {}
        # Only for callers with some credential (checked by the route itself later):
        # anonymous requests must not be able to make us query the PACS.
        credentials = (request.headers.get("Authorization") or request.cookies
                       or request.headers.get("X-Viewer-Session"))
        if (request.method in ("GET", "HEAD") and credentials
                and isinstance(args.get("study_uid"), str)):
            sync.ensure(args["study_uid"], str(args.get("series_uid") or ""))

    @app.errorhandler(PacsError)
    def _pacs_error(exc: PacsError) -> Response:
        response = error_response(exc.status, str(exc))
        response.headers["Retry-After"] = "10"
        return response
