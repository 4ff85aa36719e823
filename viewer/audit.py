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
