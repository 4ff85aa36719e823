"""A series as the viewer sees it: its stacks, read from the index alone.

No pixel data is read here, so listing a 130-slice series costs one query.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from viewer.db import Frame, Instance, Series
from viewer.stacks import Slice, Stack, build_stacks

COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420",
          "PALETTE COLOR"}


_SLICES = (
    select(
        Instance.sop_uid,
        Frame.number,
        Instance.instance_number,
        Instance.rows,
        Instance.columns,
        Frame.position,
        Frame.orientation,
        Frame.pixel_spacing,
        Frame.window_center,
        Frame.window_width,
        Instance.photometric,
        Instance.file_hash,
    )
    .join(Frame, Frame.instance_pk == Instance.id)
    .where(Instance.series_pk == bindparam("series"))
)


def series_slices(db: Session, series: Series) -> list[Slice]:
    """Every frame of the series as a Slice (plain columns: no ORM objects per row)."""
    return [
        Slice(*row[:10], row[10].upper() in COLOUR, row[11])
        for row in db.execute(_SLICES, {"series": series.id})
    ]


def study_series(db: Session, study_pk: int) -> list[Series]:
    """A study's series in series-number order (unnumbered first, on every database)."""
    return list(
        db.scalars(
            select(Series)
            .where(Series.study_pk == study_pk)
            .order_by(Series.number.nulls_first(), Series.id)
        )
    )


def series_stacks(db: Session, series: Series) -> list[Stack]:
    return build_stacks(series_slices(db, series))


def representative(stacks: list[Stack]) -> Slice | None:
    """The slice that stands for a series: the middle of its largest stack."""
    if not stacks:
        return None
    slices = stacks[0].slices
    return slices[len(slices) // 2]
