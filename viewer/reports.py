"""Radiology reports: receiving them (API and DICOM import), releasing them, showing them.

Reports are keyed by StudyInstanceUID (they may arrive before the images) and are
never edited: a new version or an amendment adds a row that supersedes the current
one, and an addendum adds a row of kind "addendum" shown after the report. PDFs are
kept byte for byte in the object store by their SHA-256 (``Report.pdf_hash``).

Who sees what is decided by ``viewer.release`` (pure rules) over the study's rows;
the study itself is always found through ``viewer.access`` first.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, request, url_for
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from viewer import audit, notify, release
from viewer.access import ROLES, Principal, find_study, require_principal, visible_studies
from viewer.db import AuditEvent, Hold, Patient, Report, Study, StudyView, utcnow
from viewer.pdf import text_pdf
from viewer.storage import ObjectStore

bp = Blueprint("reports", __name__, url_prefix="/api")

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SENDERS = ("admin", "uploader")  # who may send reports
MAX_TEXT = 1 << 20
MAX_REASON = 2000
# SOP classes imported as reports instead of being refused as "not an image".
DICOM_REPORT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "dicom-pdf",  # Encapsulated PDF Storage
    "1.2.840.10008.5.1.4.1.1.88.11": "dicom-sr",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "dicom-sr",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": "dicom-sr",  # Comprehensive SR
}
_DT = re.compile(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,6})?([+-]\d{4})?$")


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def is_staff(principal: Principal) -> bool:
    return principal.role in ROLES


# ------------------------------------------------------------------ DICOM objects


def _person_name(value: str) -> str:
    parts = [p for p in value.split("=")[0].split("^") if p]
    return f"{parts[0]}, {' '.join(parts[1:])}" if len(parts) > 1 else "".join(parts)


def dicom_datetime(value: str) -> datetime | None:
    """A DICOM DT (or DA + TM run together) as naive UTC; None if unreadable."""
    match = _DT.match(value.strip())
    if not match:
        return None
    day, hour, minute, second, offset = match.groups()
    try:
        at = datetime.strptime(day, "%Y%m%d").replace(
            hour=int(hour or 0), minute=int(minute or 0), second=int(second or 0))
    except ValueError:
        return None
    if offset:
        sign = -1 if offset[0] == "-" else 1
        at -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return at


def _meaning(item: Dataset, keyword: str) -> str:
    codes = item.get(keyword)
    return str(codes[0].get("CodeMeaning", "")).strip() if codes else ""


def flatten_sr(ds: Dataset) -> str:
    """The TEXT, CODE and NUM items of an SR's content tree, in document order, each
    under its concept name as a heading (walked without recursion)."""
    lines: list[str] = []
    heading = None
    pending = list(reversed(ds.get("ContentSequence") or []))
    while pending:
        item = pending.pop()
        kind = str(item.get("ValueType", "")).upper()
        value = ""
        if kind == "TEXT":
            value = str(item.get("TextValue", "")).replace("\r\n", "\n").strip()
        elif kind == "CODE":
            value = _meaning(item, "ConceptCodeSequence")
        elif kind == "NUM" and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            units = measured.get("MeasurementUnitsCodeSequence")
            unit = str(units[0].get("CodeValue", "")) if units else ""
            value = f"{measured.get('NumericValue', '')} {'' if unit == '1' else unit}".strip()
        if value:
            name = _meaning(item, "ConceptNameCodeSequence")
            if name and name != heading:
                lines += ["", name]
                heading = name
            lines.append(value)
        pending.extend(reversed(item.get("ContentSequence") or []))
    return "\n".join(lines).strip()


def from_dicom(ds: Dataset) -> tuple[dict[str, Any], bytes | None]:
    """The Report fields of an SR or Encapsulated PDF object, and the PDF's bytes.

    Raises ValueError with the reason when the object cannot be a report.
    """
    source = DICOM_REPORT_CLASSES[str(ds.get("SOPClassUID", ""))]
    complete = str(ds.get("CompletionFlag", "")).upper() == "COMPLETE"
    verified = str(ds.get("VerificationFlag", "")).upper() == "VERIFIED"
    status = "final" if complete and verified else "preliminary"
    if status == "final" and ds.get("PredecessorDocumentsSequence"):
        status = "amended"
    observers = ds.get("VerifyingObserverSequence") or []
    observer = observers[0] if observers else Dataset()
    signed_at = dicom_datetime(str(observer.get("VerificationDateTime", ""))) or dicom_datetime(
        str(ds.get("ContentDate", "")) + str(ds.get("ContentTime", "")).split(".")[0])
    pdf = None
    text = ""
    if source == "dicom-pdf":
        pdf = bytes(ds.get("EncapsulatedDocument") or b"")
        length = ds.get("EncapsulatedDocumentLength")
        if isinstance(length, int) and 0 < length <= len(pdf):
            pdf = pdf[:length]
        elif pdf.endswith(b"\x00"):
            pdf = pdf[:-1]  # the pad byte of an odd length
        if not pdf.startswith(b"%PDF-"):
            raise ValueError("the encapsulated document is not a PDF")
    else:
        text = flatten_sr(ds)
    fields = {
        "status": status,
        "text": text,
        "radiologist": _person_name(str(observer.get("VerifyingObserverName", "")))[:324],
        "signed_at": signed_at,
        "source": source,
    }
    return fields, pdf


def store_bytes(store: ObjectStore, data: bytes, limit: int) -> str:
    """Keep ``data`` in the store by its SHA-256 (atomically, flushed); returns the digest."""
    path, digest, _size = store.stage([data], limit)
    try:
        store.sync()
        store.commit(path, digest)
        store.sync()
    finally:
        path.unlink(missing_ok=True)
    return digest


# ---------------------------------------------------------------- rows and rules


def study_rows(db: Session, study_uid: str) -> tuple[list[Report], list[Hold]]:
    reports = list(db.scalars(select(Report).where(Report.study_uid == study_uid)
                              .order_by(Report.id)))
    holds = list(db.scalars(select(Hold).where(Hold.study_uid == study_uid).order_by(Hold.id)))
    return reports, holds


def visible_report(db: Session, principal: Principal, study_uid: str) -> Report | None:
    """The current report ``principal`` may see: staff the newest version of any status,
    anyone else the newest final or amended one unless a hold is active. None when the
    study is not theirs or nothing is released."""
    if db.scalars(visible_studies(principal).where(Study.study_uid == study_uid)).first() is None:
        return None
    reports, holds = study_rows(db, study_uid)
    return release.current_for(is_staff(principal), reports, holds, utcnow())


def visible_rows(db: Session, principal: Principal, study_uid: str) -> list[Report]:
    """Every version ``principal`` may open (staff: all; others: the current report and
    its addenda)."""
    reports, holds = study_rows(db, study_uid)
    if is_staff(principal):
        return reports
    now = utcnow()
    current = release.current_for(False, reports, holds, now)
    return ([current] if current else []) + release.addenda_for(False, reports, holds, now)


def report_pdf(services: Any, report: Report) -> bytes:
    """The original PDF if there is one, else one made from the report's text."""
    if report.pdf_hash:
        return services.store.path(report.pdf_hash).read_bytes()
    facts = [f"Status: {report.status}"]
    if report.radiologist:
        facts.append(f"Radiologist: {report.radiologist}")
    if report.signed_at:
        facts.append(f"Signed: {report.signed_at:%Y-%m-%d %H:%M} UTC")
    title = "Radiology report" if report.kind == "report" else "Addendum to the radiology report"
    return text_pdf("\n".join(facts) + "\n\n" + (report.text or ""), title)


def _patient_of(db: Session, study_uid: str) -> tuple[str, str]:
    row = db.execute(select(Patient.patient_id, Patient.issuer).join(
        Study, Study.patient_pk == Patient.id).where(Study.study_uid == study_uid)).first()
    return (row[0], row[1]) if row else ("", "")


def _audit(sessions: sessionmaker, db: Session, event: str, study_uid: str, *,
           actor: str = "", user_pk: int | None = None, detail: dict | None = None,
           outcome: str = "success") -> None:
    patient_id, issuer = _patient_of(db, study_uid)
    audit.record(sessions, event, outcome, user_pk=user_pk, actor=actor, patient_id=patient_id,
                 issuer=issuer, study_uid=study_uid, detail=detail)


def note_release(sessions: sessionmaker, study_uid: str, actor: str = "") -> list[int]:
    """Audit "report-released" once for each version the patient can now see.

    Called whenever something may have released a report (received, hold lifted,
    study reviewed, and when a patient looks: a hold that simply ran out).
    """
    with sessions() as db:
        reports, holds = study_rows(db, study_uid)
        now = utcnow()
        current = release.current_for(False, reports, holds, now)
        shown = ([current] if current else []) + release.addenda_for(False, reports, holds, now)
        if not shown:
            return []
        done = {
            (detail or {}).get("report_id")
            for detail in db.scalars(select(AuditEvent.detail).where(
                AuditEvent.event == "report-released", AuditEvent.study_uid == study_uid))
        }
        fresh = [r for r in shown if r.id not in done]
        for row in fresh:
            at = release.released_at(row, holds, now)
            _audit(sessions, db, "report-released", study_uid, actor=actor, detail={
                "report_id": row.id, "kind": row.kind, "status": row.status,
                "released_at": at.isoformat() + "Z" if at else None})
    return [r.id for r in fresh]


def note_received(sessions: sessionmaker, report: Report, actor: str,
                  user_pk: int | None = None) -> list[int]:
    """Audit "report-received", then any release; the ids released now (see note_release)."""
    with sessions() as db:
        _audit(sessions, db, "report-received", report.study_uid, actor=actor, user_pk=user_pk,
               detail={"report_id": report.id, "kind": report.kind, "status": report.status,
                       "source": report.source})
    return note_release(sessions, report.study_uid, actor)


def add_report(db: Session, study_uid: str, kind: str, **fields: Any) -> Report:
    """A new version (superseding the current report) or an addendum; never an edit."""
    current = release.newest(study_rows(db, study_uid)[0])
    row = Report(study_uid=study_uid, kind=kind,
                 supersedes_pk=current.id if current and kind == "report" else None, **fields)
    db.add(row)
    db.flush()
    return row


def mark_viewed(db: Session, principal: Principal, study_uid: str) -> None:
    """A patient opened the study: the "new" badge goes."""
    if principal.role != "patient" or principal.user_pk is None:
        return
    exists = db.scalars(select(StudyView.id).where(
        StudyView.user_pk == principal.user_pk, StudyView.study_uid == study_uid)).first()
    if exists is None:
        db.add(StudyView(user_pk=principal.user_pk, study_uid=study_uid))
        try:
            db.commit()
        except IntegrityError:  # two tabs at once
            db.rollback()


def list_annotations(db: Session, principal: Principal,
                     study_uids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per study of the list: report status as the caller may see it, and "new"."""
    uids = list(study_uids)
    reports: dict[str, list[Report]] = {}
    holds: dict[str, list[Hold]] = {}
    for row in db.scalars(select(Report).where(Report.study_uid.in_(uids))):
        reports.setdefault(row.study_uid, []).append(row)
    for hold in db.scalars(select(Hold).where(Hold.study_uid.in_(uids))):
        holds.setdefault(hold.study_uid, []).append(hold)
    viewed: set[str] = set()
    patient = principal.role == "patient" and principal.user_pk is not None
    if patient:
        viewed = set(db.scalars(select(StudyView.study_uid).where(
            StudyView.user_pk == principal.user_pk, StudyView.study_uid.in_(uids))))
    now = utcnow()
    staff = is_staff(principal)
    answer = {}
    for uid in uids:
        current = release.current_for(staff, reports.get(uid, []), holds.get(uid, []), now)
        active = release.active_holds(holds.get(uid, []), now)
        answer[uid] = {
            "report_status": current.status if current else "pending",
            "report_held": any(h.kind == "patient" for h in active) if not staff else bool(active),
            "new": patient and uid not in viewed,
        }
    return answer


# ------------------------------------------------------------------- presenting


def day(value: datetime, now: datetime | None = None) -> str:
    now = now or utcnow()
    return f"{value.day} {value:%b}" + (f" {value.year}" if value.year != now.year else "")


def moment(value: datetime) -> str:
    return f"{day(value)} {value:%H:%M}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def hold_words(hold: Hold, staff: bool) -> str:
    until = [f"until {day(hold.until)}"] if hold.until else []
    if hold.until_reviewed:
        until.append("until your doctor has reviewed it" if not staff
                     else "until the study is marked reviewed")
    if hold.kind == "patient":
        who = "On hold at your request" if not staff else "On hold at the patient's request"
    else:
        who = f"Held by {hold.created_by or 'a clinician'} (preventing harm)"
    return f"{who} {' or '.join(until)}".strip()


def hold_json(hold: Hold, staff: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": hold.id, "kind": hold.kind, "until": _iso(hold.until),
        "until_reviewed": hold.until_reviewed, "created_at": _iso(hold.created_at),
        "text": hold_words(hold, staff),
    }
    if staff:
        answer.update(reason=hold.reason, created_by=hold.created_by)
    return answer


def _version(row: Report, study_uid: str, holds: list[Hold], now: datetime) -> dict[str, Any]:
    pdf_url = url_for("reports.report_file", study_uid=study_uid, id=row.id)
    return {
        "id": row.id, "kind": row.kind, "status": row.status, "text": row.text,
        "radiologist": row.radiologist, "signed_at": _iso(row.signed_at),
        "received_at": _iso(row.received_at), "source": row.source,
        "released_at": _iso(release.released_at(row, holds, now)),
        "supersedes": row.supersedes_pk, "has_pdf": bool(row.pdf_hash), "pdf_url": pdf_url,
        "download_url": pdf_url + "&download=1",
        "signed_text": f"Signed {moment(row.signed_at)}" if row.signed_at else "",
    }


def payload(db: Session, principal: Principal, study: Study) -> dict[str, Any]:
    """What ``GET /api/studies/<uid>/report`` answers (and the study page shows)."""
    staff = is_staff(principal)
    reports, holds = study_rows(db, study.study_uid)
    now = utcnow()
    current = release.current_for(staff, reports, holds, now)
    active = release.active_holds(holds, now)
    shown_holds = active if staff else [h for h in active if h.kind == "patient"]
    hold = hold_json(shown_holds[-1], staff) if shown_holds else None
    timeline = []
    if len(study.study_date) == 8 and study.study_date.isdigit():
        scanned = datetime.strptime(study.study_date, "%Y%m%d")
        timeline.append({"event": "scanned", "at": scanned.date().isoformat(),
                         "text": f"Scanned {day(scanned, now)}"})
    answer: dict[str, Any] = {"status": "pending", "hold": hold, "timeline": timeline}
    if staff:
        answer["versions"] = [_version(r, study.study_uid, holds, now) for r in reversed(reports)]
        answer["holds"] = [hold_json(h, True) for h in active]
    if current is None:
        if hold:
            timeline.append({"event": "held", "at": None, "text": hold["text"]})
        return answer
    version = _version(current, study.study_uid, holds, now)
    if current.signed_at:
        timeline.append({"event": "signed", "at": version["signed_at"],
                         "text": f"Report signed {moment(current.signed_at)}"})
    released = release.released_at(current, holds, now)
    if released and not (staff and active):
        who = "the patient" if staff else "you"
        timeline.append({"event": "released", "at": _iso(released),
                         "text": f"Available to {who} {moment(released)}"})
    elif hold:
        timeline.append({"event": "held", "at": None, "text": hold["text"]})
    elif staff:
        timeline.append({"event": "not-released", "at": None,
                         "text": "Not released to the patient (preliminary)"})
    addenda = release.addenda_for(staff, reports, holds, now)
    answer.update({k: version[k] for k in (
        "status", "kind", "text", "radiologist", "signed_at", "released_at", "has_pdf",
        "pdf_url", "download_url", "signed_text")})
    answer["id"] = current.id
    answer["addenda"] = [_version(a, study.study_uid, holds, now) for a in addenda]
    return answer


# ------------------------------------------------------------------------ routes


def _bad(message: str) -> None:
    abort(400, description=message)


def _body() -> tuple[dict[str, Any], bool]:
    """The request's JSON object, or its form fields (the page's no-script forms)."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            _bad("send a JSON object")
        return data, False
    return request.form.to_dict(), True


def _done(study_uid: str, body: Any, status: int = 200) -> Response:
    """A form goes back to the study page; a script gets JSON."""
    if request.is_json or request.method == "DELETE" or not request.form:
        response = jsonify(body)
        response.status_code = status
        return response
    return redirect(url_for("pages.study", study_uid=study_uid), 303)  # type: ignore[return-value]


def _parse_when(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        _bad(f"{name} must be an ISO 8601 date or date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        _bad(f"{name} is not an ISO 8601 date or date-time: {value[:40]!r}")
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
            _bad(f"{name} is out of range: {value[:40]!r}")
    return parsed


def _text_field(data: dict, name: str, limit: int, required: bool = False) -> str:
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        _bad(f"{name} must be a string")
    if required and not value.strip():
        _bad(f"{name} is required")
    if len(value) > limit:
        _bad(f"{name} is longer than {limit} characters")
    return value


@bp.post("/reports")
def receive() -> Response:
    """A report from the RIS: a new version, an amendment or an addendum (README)."""
    services = _services()
    principal = require_principal()
    if principal.role not in SENDERS:
        abort(403, description="only admin or uploader staff may send reports")
    limit = services.config.max_file_mb << 20
    request.max_content_length = limit * 4 // 3 + MAX_TEXT * 6 + (64 << 10)
    data, _form = _body()
    study_uid = data.get("study_uid")
    if not isinstance(study_uid, str) or len(study_uid) > 64 or not UID.match(study_uid):
        _bad("study_uid must be a UID: digits and dots, at most 64 characters")
    status = data.get("status")
    if status not in release.STATUSES:
        _bad(f"status must be one of {', '.join(release.STATUSES)}")
    kind = data.get("kind") or "report"
    if kind not in release.KINDS:
        _bad(f"kind must be one of {', '.join(release.KINDS)}")
    text = _text_field(data, "text", MAX_TEXT)
    radiologist = _text_field(data, "radiologist", 324, required=True)
    signed_at = _parse_when(data.get("signed_at"), "signed_at")
    if signed_at is None:
        _bad("signed_at is required (ISO 8601)")
    if signed_at > utcnow() + timedelta(minutes=10):
        _bad("signed_at is in the future")
    pdf = None
    encoded = data.get("pdf_base64")
    if encoded not in (None, ""):
        if not isinstance(encoded, str):
            _bad("pdf_base64 must be a base64 string")
        if len(encoded) > limit * 4 // 3 + 4:
            _bad(f"the PDF is larger than the {limit >> 20} MiB limit (VIEWER_MAX_FILE_MB)")
        try:
            pdf = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            _bad("pdf_base64 is not valid base64")
        if len(pdf) > limit:
            _bad(f"the PDF is larger than the {limit >> 20} MiB limit (VIEWER_MAX_FILE_MB)")
        if not pdf.startswith(b"%PDF-"):
            _bad("pdf_base64 is not a PDF (it must start with %PDF-)")
    if not text.strip() and pdf is None:
        _bad("send the report as text, pdf_base64, or both")
    db = services.db()
    if kind == "addendum" and release.newest(study_rows(db, study_uid)[0]) is None:
        abort(409, description="an addendum needs a report of this study to add to")
    pdf_hash = store_bytes(services.store, pdf, limit) if pdf is not None else None
    row = add_report(db, study_uid, kind, status=status, text=text, pdf_hash=pdf_hash,
                     radiologist=radiologist, signed_at=signed_at, source="api",
                     created_by=principal.name[:256])
    db.commit()
    if note_received(services.sessions, row, principal.name, principal.user_pk):
        notify.notify_result_available(services, study_uid)  # visible now: no hold, not draft
    response = jsonify(id=row.id, study_uid=study_uid, status=status, kind=kind)
    response.status_code = 201
    return response


@bp.get("/studies/<study_uid>/report")
def report(study_uid: str) -> Response:
    services = _services()
    db = services.db()
    principal = require_principal()
    study = find_study(db, principal, study_uid)
    if not is_staff(principal):
        note_release(services.sessions, study_uid)
    return jsonify(payload(db, principal, study))


@bp.get("/studies/<study_uid>/report.pdf")
def report_file(study_uid: str) -> Response:
    services = _services()
    db = services.db()
    principal = require_principal()
    study = find_study(db, principal, study_uid)
    rows = visible_rows(db, principal, study_uid)
    wanted = request.args.get("id", "")
    if wanted:
        row = next((r for r in rows if str(r.id) == wanted), None)
    else:
        row = visible_report(db, principal, study_uid)
    if row is None:
        abort(404, description="no report is available for this study yet")
    download = request.args.get("download") == "1"
    if download:
        _audit(services.sessions, db, "study-downloaded", study.study_uid, actor=principal.name,
               user_pk=principal.user_pk, detail={"report_id": row.id, "what": "report PDF"})
    response = Response(report_pdf(services, row), mimetype="application/pdf")
    name = f"report-{study.study_date if study.study_date.isdigit() else 'study'}-{row.id}.pdf"
    response.headers["Content-Disposition"] = (
        f'{"attachment" if download else "inline"}; filename="{name}"')
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _lift(db: Session, holds: list[Hold], now: datetime) -> list[Hold]:
    for hold in holds:
        hold.released_at = now
    db.commit()
    return holds


@bp.route("/studies/<study_uid>/hold", methods=["POST", "DELETE"])
def patient_hold(study_uid: str) -> Response:
    """The patient's own hold on their report: until a date or until reviewed."""
    services = _services()
    db = services.db()
    principal = require_principal()
    find_study(db, principal, study_uid)
    if principal.role != "patient":
        abort(403, description="only the patient can hold their own report; staff use "
              "clinician-hold")
    data, form = _body() if request.method == "POST" else ({}, False)
    now = utcnow()
    _reports, holds = study_rows(db, study_uid)
    mine = [h for h in release.active_holds(holds, now) if h.kind == "patient"]
    if request.method == "DELETE" or data.get("lift"):
        lifted = _lift(db, mine, now)
        for hold in lifted:
            _audit(services.sessions, db, "hold-lifted", study_uid, actor=principal.name,
                   user_pk=principal.user_pk, detail={"hold_id": hold.id, "kind": "patient"})
        if note_release(services.sessions, study_uid, principal.name):
            notify.notify_result_available(services, study_uid)
        return _done(study_uid, {"lifted": len(lifted)})
    until = _parse_when(data.get("until"), "until")
    reviewed = data.get("until_reviewed")
    if form:
        reviewed = reviewed in ("1", "on", "true")
    elif reviewed not in (None, True, False):
        _bad("until_reviewed must be true or false")
    problem = release.check_patient_hold(until, bool(reviewed), now)
    if problem:
        _bad(problem)
    _lift(db, mine, now)  # a new request replaces the previous one
    hold = Hold(study_uid=study_uid, kind="patient", until=until, until_reviewed=bool(reviewed),
                created_by_pk=principal.user_pk, created_by=principal.name[:256], created_at=now)
    db.add(hold)
    db.commit()
    _audit(services.sessions, db, "hold-set", study_uid, actor=principal.name,
           user_pk=principal.user_pk, detail={"hold_id": hold.id, "kind": "patient",
                                              "until": _iso(until),
                                              "until_reviewed": bool(reviewed)})
    return _done(study_uid, hold_json(hold, False), 201)


def _staff(study_uid: str) -> tuple[Any, Session, Principal]:
    services = _services()
    db = services.db()
    principal = require_principal()
    find_study(db, principal, study_uid)
    if not is_staff(principal):
        abort(403, description="staff only")
    return services, db, principal


@bp.post("/studies/<study_uid>/reviewed")
def reviewed(study_uid: str) -> Response:
    """Staff have reviewed the study: holds "until reviewed" end now."""
    services, db, principal = _staff(study_uid)
    now = utcnow()
    _reports, holds = study_rows(db, study_uid)
    waiting = [h for h in release.active_holds(holds, now) if h.until_reviewed]
    for hold in waiting:
        hold.reviewed_at = now
    db.commit()
    _audit(services.sessions, db, "study-reviewed", study_uid, actor=principal.name,
           user_pk=principal.user_pk, detail={"holds_ended": [h.id for h in waiting]})
    released = note_release(services.sessions, study_uid, principal.name)
    if released:
        notify.notify_result_available(services, study_uid)
    return _done(study_uid, {"holds_ended": len(waiting), "released": released})


@bp.route("/studies/<study_uid>/clinician-hold", methods=["POST", "DELETE"])
def clinician_hold(study_uid: str) -> Response:
    """The preventing-harm exception: a reason, an end date within 30 days; audited."""
    services, db, principal = _staff(study_uid)
    data, _form = _body() if request.method == "POST" else ({}, False)
    now = utcnow()
    _reports, holds = study_rows(db, study_uid)
    if request.method == "DELETE" or data.get("lift"):
        lifted = _lift(db, [h for h in release.active_holds(holds, now)
                            if h.kind == "clinician"], now)
        for hold in lifted:
            _audit(services.sessions, db, "hold-lifted", study_uid, actor=principal.name,
                   user_pk=principal.user_pk, detail={"hold_id": hold.id, "kind": "clinician"})
        if note_release(services.sessions, study_uid, principal.name):
            notify.notify_result_available(services, study_uid)
        return _done(study_uid, {"lifted": len(lifted)})
    reason = _text_field(data, "reason", MAX_REASON)
    until = _parse_when(data.get("until"), "until")
    problem = release.check_clinician_hold(reason, until, now)
    if problem:
        _audit(services.sessions, db, "hold-set", study_uid, outcome=f"refused: {problem}",
               actor=principal.name, user_pk=principal.user_pk, detail={"kind": "clinician"})
        _bad(problem)
    hold = Hold(study_uid=study_uid, kind="clinician", until=until, reason=reason.strip(),
                created_by_pk=principal.user_pk, created_by=principal.name[:256], created_at=now)
    db.add(hold)
    db.commit()
    _audit(services.sessions, db, "hold-set", study_uid, actor=principal.name,
           user_pk=principal.user_pk, detail={"hold_id": hold.id, "kind": "clinician",
                                              "until": _iso(until), "reason": hold.reason})
    return _done(study_uid, hold_json(hold, True), 201)
