"""A series as the viewer sees it: its stacks, read from the index alone.

No pixel data is read here, so listing a 130-slice series costs one query.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from viewer.db import Frame, Instance, Series
from viewer.stacks import Slice, Stack, build_stacks

COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420",
          "PALETTE COLOR"}


def series_slices(db: Session, series: Series) -> list[Slice]:
    rows = db.execute(
        select(Instance, Frame)
        .join(Frame, Frame.instance_pk == Instance.id)
        .where(Instance.series_pk == series.id)
    ).all()
    return [
        Slice(
            sop_uid=instance.sop_uid,
            frame=frame.number,
            instance_number=instance.instance_number,
            rows=instance.rows,
            columns=instance.columns,
            position=frame.position,
            orientation=frame.orientation,
            pixel_spacing=frame.pixel_spacing,
            window_center=frame.window_center,
            window_width=frame.window_width,
            color=instance.photometric.upper() in COLOUR,
            file_hash=instance.file_hash,
        )
        for instance, frame in rows
    ]


def series_stacks(db: Session, series: Series) -> list[Stack]:
    return build_stacks(series_slices(db, series))


def representative(stacks: list[Stack]) -> Slice | None:
    """The slice that stands for a series: the middle of its largest stack."""
    if not stacks:
        return None
    slices = stacks[0].slices
    return slices[len(slices) // 2]
