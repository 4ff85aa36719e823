"""When a patient may see a report (release-rules.md), as pure functions over rows.

- Images are visible as soon as they are stored (nothing here).
- A report is released as soon as it is final or amended; a preliminary one never is.
  There is no blanket delay.
- A hold keeps a study's reports from the patient while it is active: the patient's own
  (until a date, or until staff mark the study reviewed) or a clinician's (preventing
  harm: a recorded reason and an end date no more than ``MAX_CLINICIAN_HOLD`` ahead).
- Staff always see every version, whatever its status, and every hold.

Nothing here reads the database or the clock: callers pass the rows and ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from viewer.db import Hold, Report

STATUSES = ("preliminary", "final", "amended")
RELEASED_STATUSES = ("final", "amended")
KINDS = ("report", "addendum")
MAX_CLINICIAN_HOLD = timedelta(days=30)
MAX_PATIENT_HOLD = timedelta(days=366)


def hold_end(hold: Hold) -> datetime | None:
    """When the hold stopped (or will stop) applying; None while open-ended."""
    ends = [t for t in (hold.released_at, hold.until) if t is not None]
    if hold.until_reviewed and hold.reviewed_at is not None:
        ends.append(hold.reviewed_at)
    return min(ends) if ends else None


def hold_active(hold: Hold, now: datetime) -> bool:
    end = hold_end(hold)
    return hold.created_at <= now and (end is None or end > now)


def active_holds(holds: Iterable[Hold], now: datetime) -> list[Hold]:
    return [h for h in holds if hold_active(h, now)]


def releasable(report: Report) -> bool:
    """A version a patient may ever see: final or amended, never preliminary."""
    return report.status in RELEASED_STATUSES


def newest(rows: Iterable[Report], kind: str = "report") -> Report | None:
    """The newest row of ``kind`` (rows are never edited, so the highest id is the latest)."""
    return max((r for r in rows if r.kind == kind), key=lambda r: r.id, default=None)


def current_for(staff: bool, reports: Sequence[Report], holds: Sequence[Hold],
                now: datetime) -> Report | None:
    """The report version to show: staff the newest of any status; a patient the newest
    final or amended one, and nothing while a hold is active."""
    if staff:
        return newest(reports)
    if active_holds(holds, now):
        return None
    return newest(r for r in reports if releasable(r))


def addenda_for(staff: bool, reports: Sequence[Report], holds: Sequence[Hold],
                now: datetime) -> list[Report]:
    """Addenda shown after the report, oldest first; released like the report itself."""
    if not staff and (active_holds(holds, now) or current_for(False, reports, holds, now) is None):
        return []
    rows = [r for r in reports if r.kind == "addendum" and (staff or releasable(r))]
    return sorted(rows, key=lambda r: r.id)


def released_at(report: Report, holds: Sequence[Hold], now: datetime) -> datetime | None:
    """When ``report`` first became visible to the patient (None: not yet, or never).

    It is released when received, unless a hold was active then: then when the last
    overlapping hold ended.
    """
    if not releasable(report):
        return None
    at = report.received_at
    for hold in sorted(holds, key=lambda h: h.created_at):
        end = hold_end(hold)
        if hold.created_at <= at and (end is None or end > at):
            if end is None or end > now:
                return None
            at = end
    return at


def check_clinician_hold(reason: str, until: datetime | None, now: datetime) -> str | None:
    """Why a clinician hold is not acceptable, or None."""
    if not reason.strip():
        return "a clinician hold needs a reason (the preventing-harm judgement)"
    if until is None:
        return "a clinician hold needs an end date (until)"
    if until <= now:
        return "until must be in the future"
    if until > now + MAX_CLINICIAN_HOLD:
        return f"a clinician hold may last at most {MAX_CLINICIAN_HOLD.days} days"
    return None


def check_patient_hold(until: datetime | None, until_reviewed: bool,
                       now: datetime) -> str | None:
    """Why a patient's hold request is not acceptable, or None."""
    if until is None and not until_reviewed:
        return 'send {"until": "YYYY-MM-DD"} or {"until_reviewed": true}'
    if until is not None and until <= now:
        return "until must be a date after today"
    if until is not None and until > now + MAX_PATIENT_HOLD:
        return "a hold may last at most a year"
    return None
