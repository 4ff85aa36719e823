"""Series geometry: split a series into stacks and put each in anatomical order.

A stack is a run of images that share size and orientation, so they can be
scrolled as one volume. Order is by position along the slice normal
(ImagePositionPatient . (row x column)), which is right whatever order the
files were named or sent in; InstanceNumber is the fallback when there is no
geometry.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

import numpy as np

ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Slice:
    """One displayable frame of one instance, as the index knows it."""

    sop_uid: str
    frame: int
    instance_number: int | None
    rows: int
    columns: int
    position: list[float] | None
    orientation: list[float] | None
    pixel_spacing: list[float] | None
    window_center: float | None
    window_width: float | None
    color: bool
    file_hash: str


@dataclass
class Stack:
    slices: list[Slice]
    orientation: list[float] | None
    positions_mm: list[float | None] = field(default_factory=list)
    spacing_mm: float | None = None

    @property
    def label(self) -> str:
        first = self.slices[0]
        return f"{plane_name(self.orientation)} {first.columns}×{first.rows}"  # noqa: RUF001


def normal(orientation: list[float]) -> np.ndarray:
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    vector = np.cross(row, column)
    length = np.linalg.norm(vector)
    return vector / length if length > 0 else vector


def plane_name(orientation: list[float] | None) -> str:
    """Axial, Coronal or Sagittal by the dominant axis of the normal; else Oblique."""
    if not orientation:
        return "Image"
    vector = np.abs(normal(orientation))
    if not vector.any():
        return "Image"
    axis = int(np.argmax(vector))
    if vector[axis] < 0.8:
        return "Oblique"
    return ("Sagittal", "Coronal", "Axial")[axis]


def _stack_key(item: Slice) -> tuple:
    orientation = (
        tuple(round(v / ORIENTATION_TOLERANCE) for v in item.orientation)
        if item.orientation
        else None
    )
    return (item.rows, item.columns, item.color, orientation)


def build_stacks(slices: list[Slice]) -> list[Stack]:
    """Group slices into stacks and order each one; biggest stack first."""
    groups: dict[tuple, list[Slice]] = {}
    for item in slices:
        groups.setdefault(_stack_key(item), []).append(item)
    stacks = [_order(members) for members in groups.values()]
    stacks.sort(key=lambda stack: (-len(stack.slices), stack.slices[0].sop_uid))
    return stacks


def _order(members: list[Slice]) -> Stack:
    orientation = members[0].orientation
    fallback = [(m.instance_number if m.instance_number is not None else 0, m.frame)
                for m in members]
    if orientation and all(m.position for m in members):
        axis = normal(orientation)
        distances = [float(np.dot(axis, m.position)) for m in members]  # type: ignore[arg-type]
        order = sorted(range(len(members)), key=lambda i: (distances[i], fallback[i]))
        ordered = [members[i] for i in order]
        positions: list[float | None] = [round(distances[i], 3) for i in order]
        # statistics.median, not np.median: numpy's pulls in numpy.ma (~40 ms) on first use.
        sorted_distances = [distances[i] for i in order]
        steps = [b - a for a, b in itertools.pairwise(sorted_distances) if b - a > 1e-4]
        spacing = round(statistics.median(steps), 3) if steps else None
        return Stack(ordered, orientation, positions, spacing)
    order = sorted(range(len(members)), key=lambda i: fallback[i])
    return Stack([members[i] for i in order], orientation, [None] * len(members), None)
