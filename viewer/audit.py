"""The audit trail: one append-only record per access or change (security.md, "Audit").

Records are written in their own transaction, so a refused or failed request
is still recorded, and nothing in the code updates or deletes them. Event
codes follow DICOM PS3.15 A.5.3.6 / PS3.16 CID 400 where one exists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import has_request_context, request
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from viewer.db import AuditEvent

log = logging.getLogger(__name__)

# event name -> (DICOM event code, action: C create, R read, U update, D delete, E execute)
EVENTS: dict[str, tuple[str, str]] = {
    "login": ("110122", "E"),  # Login
    "logout": ("110123", "E"),  # Logout
    "study-viewed": ("110103", "R"),  # DICOM Instances Accessed
    "study-downloaded": ("110104", "R"),  # DICOM Instances Transferred
    "account-created": ("110110", "C"),  # Patient Record (the account's)
    "session-refused": ("110113", "E"),  # Security Alert
    "report-received": ("110107", "C"),  # Import (a report, from the API or a DICOM object)
    "instances-stored": ("110107", "C"),  # Import: a STOW-RS request (counts and reasons)
    "report-released": ("110106", "E"),  # Export (made visible to the patient)
    "hold-set": ("110111", "U"),  # Procedure Record (a patient's or clinician's hold)
    "hold-lifted": ("110111", "U"),  # Procedure Record
    "study-reviewed": ("110111", "U"),  # Procedure Record (ends holds "until reviewed")
    # Share links: granting or withdrawing access changes the study's security attributes
    # (CID 403 "Object Security Attributes Changed"); opening a link authenticates its holder.
    "share-created": ("110135", "C"),
    "share-revoked": ("110135", "D"),
    "share-used": ("110114", "E"),  # User Authentication
    "invitation-created": ("", "C"),  # an enrolment or reset link was issued
    "invitation-refused": ("110113", "E"),  # Security Alert: unknown, used or expired link
    "account-enrolled": ("110137", "U"),  # User Security Attributes Changed
    "password-reset": ("110137", "U"),  # User Security Attributes Changed
    "result-notified": ("", "E"),  # a patient was emailed that new results are available
    # Embedding in a portal: the portal asks for a launch token, the frame trades it in.
    "portal-added": ("110135", "C"),
    "portal-revoked": ("110135", "D"),
    "embed-launch": ("", "E"),
    "embed-session": ("110114", "E"),  # User Authentication
    "embed-refused": ("110113", "E"),  # Security Alert: bad, expired or replayed token
}


def client_address() -> str:
    """The caller's address as the server sees it (no proxy headers trusted)."""
    return (request.remote_addr or "") if has_request_context() else ""


def record(
    sessions: sessionmaker,
    event: str,
    outcome: str = "success",
    *,
    user_pk: int | None = None,
    actor: str = "",
    patient_id: str = "",
    issuer: str = "",
    study_uid: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit record now, in its own transaction."""
    code, action = EVENTS.get(event, ("", "E"))
    row = AuditEvent(
        event=event,
        event_code=code,
        action=action,
        outcome=outcome[:256],
        user_pk=user_pk,
        actor=actor[:256],
        address=client_address(),
        patient_id=patient_id,
        issuer=issuer,
        study_uid=study_uid,
        detail=detail or {},
    )
    with sessions() as db:
        db.add(row)
        db.commit()


def export(sessions: sessionmaker, since: datetime) -> Iterator[str]:
    """Audit records from ``since`` on, as JSON lines, oldest first."""
    with sessions() as db:
        rows = db.scalars(
            select(AuditEvent).where(AuditEvent.at >= since).order_by(AuditEvent.id)
        )
        for row in rows:
            yield json.dumps(
                {
                    "id": row.id,
                    "at": row.at.isoformat() + "Z",
                    "event": row.event,
                    "event_code": row.event_code,
                    "action": row.action,
                    "outcome": row.outcome,
                    "user_id": row.user_pk,
                    "actor": row.actor,
                    "address": row.address,
                    "patient_id": row.patient_id,
                    "issuer": row.issuer,
                    "study_uid": row.study_uid,
                    "detail": row.detail,
                },
                sort_keys=True,
            )
