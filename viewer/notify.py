"""Telling patients by email that new results are available (optional, only with SMTP).

The message says only that something new is there: no finding, no study description,
modality, date or name (an inbox is not a safe place for them), and a link to the portal
(``VIEWER_PUBLIC_URL``) when one is configured. It goes to every patient account linked to
the study's patient that has an email address, once per released report version: each
message is audited as "result-notified" with the version it announced, and a version
already announced to an account is not announced again.

Callers notify when a report has just become visible to the patient (received final or
amended without a hold, or a hold ended); nothing here raises into them.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from sqlalchemy import select

from viewer import audit, mailer, release
from viewer.config import Config
from viewer.db import AuditEvent, Hold, Patient, PatientLink, Report, Study, User, utcnow

log = logging.getLogger(__name__)

SUBJECT = "New results are available"


def result_message(config: Config, to: str) -> EmailMessage:
    """The notification: that new results are available, where to see them, nothing else."""
    message = EmailMessage()
    message["From"] = config.smtp_from
    message["To"] = to
    message["Subject"] = SUBJECT
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = config.smtp_from.rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    if config.public_url:
        where = f"To see them, sign in here:\n\n{config.public_url.rstrip('/')}/\n"
    else:
        where = "To see them, sign in to your patient portal.\n"
    message.set_content(
        "New results are available for you to see online.\n\n"
        f"{where}\n"
        "For your privacy, this message does not say what the results are. Nobody from the "
        "clinic will ask you for your password or for codes from your app.\n"
    )
    return message


def notify_result_available(services: Any, study_uid: str) -> int:
    """Email the study's patient accounts that new results are available; how many were sent.

    Nothing happens without ``VIEWER_SMTP_HOST``; failures are logged (and audited per
    message), never raised.
    """
    if not mailer.configured(services.config):
        return 0
    try:
        return _notify(services, study_uid)
    except Exception:
        log.exception("result notification failed")
        return 0


def _notify(services: Any, study_uid: str) -> int:
    with services.sessions() as db:
        patient = db.execute(select(Patient.patient_id, Patient.issuer).join(
            Study, Study.patient_pk == Patient.id).where(Study.study_uid == study_uid)).first()
        if patient is None:
            return 0  # a report before its images: no patient to tell yet
        patient_id, issuer = patient
        reports = list(db.scalars(select(Report).where(Report.study_uid == study_uid)))
        holds = list(db.scalars(select(Hold).where(Hold.study_uid == study_uid)))
        now = utcnow()
        current = release.current_for(False, reports, holds, now)
        if current is None:
            return 0  # preliminary only, or held: nothing the patient can see
        addenda = release.addenda_for(False, reports, holds, now)
        version = max(r.id for r in [current, *addenda])
        people = db.execute(
            select(User.id, User.email).join(PatientLink, PatientLink.user_pk == User.id)
            .where(PatientLink.patient_id == patient_id, PatientLink.issuer == issuer,
                   User.role == "patient", User.disabled_at.is_(None), User.email != "")
            .distinct().order_by(User.id)
        ).all()
        told = {
            row.user_pk for row in db.scalars(select(AuditEvent).where(
                AuditEvent.event == "result-notified", AuditEvent.study_uid == study_uid,
                AuditEvent.outcome == "success"))
            if (row.detail or {}).get("report_id") == version
        }
    sent = 0
    for user_pk, address in people:
        if user_pk in told:
            continue
        outcome = "success"
        try:
            mailer.send(services.config, result_message(services.config, address))
            sent += 1
        except (mailer.MailError, ValueError) as exc:  # ValueError: a malformed address
            log.warning("result notification to account %s not sent: %s", user_pk, exc)
            outcome = f"failed: {exc}"
        audit.record(services.sessions, "result-notified", outcome, user_pk=user_pk,
                     actor="notify", patient_id=patient_id, issuer=issuer,
                     study_uid=study_uid, detail={"report_id": version})
    return sent
