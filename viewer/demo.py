"""A deterministic synthetic MR brain study, so the viewer can be demonstrated and tested
without shipping or downloading patient data.

The head is one analytic 3-D phantom (ellipsoids, planes and smooth fields in patient
coordinates, millimetres, LPS). Every series samples the same phantom on its own slice
grid, so the axial and sagittal series show the same head, and each series applies its
own tissue contrast, texture and noise. Everything is seeded, and every UID is a hash of
fixed strings, so writing the study twice gives byte-identical files and a re-import is
a no-op.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

__all__ = ["write_demo_study"]

# Change the name to get a new set of UIDs if the content ever changes on purpose.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:viewer:demo-study:v1")
# The field of view is fixed; ``matrix`` (rows = columns) sets the pixel size.
_FOV_MM = 240.0
_MATRIX = 256

Array = np.ndarray


def _uid(*parts: object) -> str:
    """A stable UID from fixed strings: same inputs, same UID, on any machine.

    A name-based (SHA-1, version 5) UUID as a 2.25 UID (PS3.5 B.2). Not
    ``generate_uid(prefix=None, entropy_srcs=...)``: pydicom 3.0 ignores the entropy
    when there is no prefix and returns a random UUID.
    """
    name = "/".join(map(str, parts))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Grid:
    """The voxel centres of one series as three 1-D coordinate axes.

    Both orientations used here are aligned with the patient axes, so the world
    coordinate of each voxel depends on one array index only. Shapes are evaluated on
    broadcast views of these axes and only inside their bounding boxes, which keeps
    the whole study fast without a 3-D coordinate array per series.
    """

    axes: tuple[Array, Array, Array]  # coordinate along array axis 0 (slice), 1 (row), 2 (col)
    world: tuple[int, int, int]  # which patient axis (0=x, 1=y, 2=z) each array axis moves

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.axes[0]), len(self.axes[1]), len(self.axes[2]))

    def block(
        self, lo: tuple[float, float, float], hi: tuple[float, float, float]
    ) -> tuple[tuple[slice, slice, slice], tuple[Array, Array, Array]] | None:
        """Index slices covering a world bounding box, and x, y, z broadcast over them."""
        index: list[slice] = []
        xyz: list[Array] = [np.empty(0)] * 3
        for dim in range(3):
            coords = self.axes[dim]
            w = self.world[dim]
            inside = np.flatnonzero((coords >= lo[w]) & (coords <= hi[w]))
            if inside.size == 0:
                return None
            sl = slice(int(inside[0]), int(inside[-1]) + 1)
            index.append(sl)
            view = [1, 1, 1]
            view[dim] = sl.stop - sl.start
            xyz[w] = coords[sl].reshape(view)
        return (index[0], index[1], index[2]), (xyz[0], xyz[1], xyz[2])


def _grid(first: Array, row_dir: Array, col_dir: Array, normal: Array, step: float, n: int,
          matrix: int):
    """The _Grid of n slices starting at ``first`` (ImagePositionPatient of slice 1)."""
    axes = []
    world = []
    pixel = _FOV_MM / matrix
    for direction, count, spacing in (
        (normal, n, step),
        (col_dir, matrix, pixel),
        (row_dir, matrix, pixel),
    ):
        w = int(np.argmax(np.abs(direction)))
        axes.append((first[w] + np.arange(count) * spacing * direction[w]).astype(np.float32))
        world.append(w)
    return _Grid(axes=(axes[0], axes[1], axes[2]), world=(world[0], world[1], world[2]))


# ----------------------------------------------------------------------------- shapes
# A shape gives an approximate signed distance in mm, positive inside, and a bounding
# box, so painting it only touches the voxels near it. Soft edges and layer thicknesses
# (cortex, skull, scalp) are all expressed in these distances.

Box = tuple[tuple[float, float, float], tuple[float, float, float]]
_EVERYWHERE: Box = ((-1e4, -1e4, -1e4), (1e4, 1e4, 1e4))


@dataclass(frozen=True)
class _Shape:
    dist: Callable[[Array, Array, Array], Array]
    box: Box

    def __call__(self, x: Array, y: Array, z: Array) -> Array:
        return self.dist(x, y, z)


def _ray_distance(rho2: Array, r2: Array) -> Array:
    """Distance to the surface along the ray from the centre: exact on the axes."""
    rho = np.sqrt(rho2)
    return rho / np.sqrt(np.maximum(r2, 1e-12)) - rho


def _ellipsoid(center: tuple[float, float, float], semi: tuple[float, float, float],
               yaw_deg: float = 0.0, arch: float = 0.0) -> _Shape:
    """An ellipsoid, optionally turned about z (yaw) and arched upwards in its middle
    by ``arch`` mm along its y axis (a banana, for the lateral ventricles)."""
    cx, cy, cz = center
    a, b, c = semi
    cos, sin = float(np.cos(np.radians(yaw_deg))), float(np.sin(np.radians(yaw_deg)))

    def dist(x: Array, y: Array, z: Array) -> Array:
        dx, dy, dz = x - cx, y - cy, z - cz
        if yaw_deg:
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        if arch:
            dz = dz - arch * np.maximum(1 - (dy / b) ** 2, 0)
        rho2 = dx * dx + dy * dy + dz * dz
        return _ray_distance(rho2, (dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)

    ex = ey = max(a, b) if yaw_deg else 0.0
    half = (ex or a, ey or b, c)
    lo = (cx - half[0] - 2, cy - half[1] - 2, cz - half[2] - 2)
    hi = (cx + half[0] + 2, cy + half[1] + 2, cz + half[2] + arch + 2)
    return _Shape(dist, (lo, hi))


def _cylinder(center: tuple[float, float], semi: tuple[float, float], top: float) -> _Shape:
    """An elliptic cylinder along z that ends at z = top (neck, spinal canal, airway)."""
    (cx, cy), (a, b) = center, semi

    def dist(x: Array, y: Array, z: Array) -> Array:
        dx, dy = x - cx, y - cy
        side = _ray_distance(dx * dx + dy * dy, (dx / a) ** 2 + (dy / b) ** 2)
        return np.minimum(side, top - z)

    return _Shape(dist, ((cx - a - 2, cy - b - 2, -1e4), (cx + a + 2, cy + b + 2, top + 2)))


def _soft(d: Array) -> Array:
    """Partial-volume fraction from a signed distance: 0 outside, 1 inside, over a
    1 mm (about one pixel) wide edge, so boundaries are smooth rather than jagged."""
    alpha = d + np.float32(0.5)
    return np.clip(alpha, 0.0, 1.0, out=alpha)


class _Waves:
    """A smooth random field (sum of plane waves) with unit variance and a known mean
    gradient, so |field| / gradient approximates the distance to its zero set."""

    def __init__(self, seed: int, wavelengths: tuple[float, float], count: int) -> None:
        rng = np.random.default_rng(seed)
        dirs = rng.normal(size=(count, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2 * np.pi / rng.uniform(*wavelengths, size=count)
        self.k = [tuple(float(v) for v in row) for row in dirs * k[:, None]]
        self.phase = [float(v) for v in rng.uniform(0, 2 * np.pi, size=count)]
        self.scale = float(np.sqrt(2.0 / count))
        self.gradient = float(np.sqrt(np.mean(k**2)))

    def __call__(self, x: Array, y: Array, z: Array) -> Array:
        total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        for (kx, ky, kz), phase in zip(self.k, self.phase, strict=True):
            total += np.sin(kx * x + ky * y + (kz * z + phase))
        return total * self.scale

    def zero_distance(self, x: Array, y: Array, z: Array) -> Array:
        """field / |gradient|: one Newton step to the zero set, in the field's units.
        Signed, so it stays smooth across the zero set and can be interpolated."""
        value = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        gx, gy, gz = np.zeros_like(value), np.zeros_like(value), np.zeros_like(value)
        for (kx, ky, kz), phase in zip(self.k, self.phase, strict=True):
            arg = kx * x + ky * y + (kz * z + phase)
            value += np.sin(arg)
            c = np.cos(arg)
            gx += kx * c
            gy += ky * c
            gz += kz * c
        gradient = np.sqrt(gx * gx + gy * gy + gz * gz)
        return value / np.maximum(gradient, 0.5 * self.gradient / self.scale)


# The anatomy, in mm (LPS: +x patient left, +y posterior, +z head). The cerebrum is
# centred near the origin; the head spans about z -140..86.
_CEREBRUM = _ellipsoid((0, 0, 8), (66, 84, 60))
_TEMPORAL_LOBES = (
    _ellipsoid((-41, -6, -17), (22, 38, 20)),
    _ellipsoid((41, -6, -17), (22, 38, 20)),
)
_CEREBELLUM = _ellipsoid((0, 46, -38), (47, 30, 21))
_FOLIA_CENTRE = (0.0, 35.0, -37.0)
_BRAINSTEM = (
    _ellipsoid((0, 16, -44), (10, 11, 34)),  # midbrain, medulla
    _ellipsoid((0, 8, -33), (15, 14, 12)),  # pons
    _cylinder((0, 20), (6.0, 7.0), -60),  # spinal cord
)
_CANAL = _cylinder((0, 20), (10, 11), -55)
_SULCI = _Waves(seed=11, wavelengths=(20, 32), count=12)
_SULCUS_REACH = _Waves(seed=12, wavelengths=(50, 80), count=5)
_SURFACE = _Waves(seed=13, wavelengths=(60, 90), count=5)
_SOFT_TISSUE = _Waves(seed=14, wavelengths=(22, 40), count=6)
_MIDFACE = _ellipsoid((0, -52, -58), (50, 46, 40))
_JAW = _ellipsoid((0, -40, -98), (44, 50, 30))
_CHEEKS = _ellipsoid((0, -22, -66), (52, 36, 34))
_NOSE = _ellipsoid((0, -95, -50), (10, 14, 21))
_NECK = _cylinder((0, 12), (47, 54), -40)
_CSF_SPACES = (
    _ellipsoid((-7.5, -2, 8), (5.0, 26, 6.0), yaw_deg=8, arch=6),  # lateral ventricles
    _ellipsoid((7.5, -2, 8), (5.0, 26, 6.0), yaw_deg=-8, arch=6),
    _ellipsoid((-7, -22, 4), (5.5, 12, 9), yaw_deg=15),  # frontal horns
    _ellipsoid((7, -22, 4), (5.5, 12, 9), yaw_deg=-15),
    _ellipsoid((-16, 24, 4), (5, 10, 9), yaw_deg=-25),  # atria
    _ellipsoid((16, 24, 4), (5, 10, 9), yaw_deg=25),
    _ellipsoid((-20, 38, 2), (3, 10, 4), yaw_deg=-20),  # occipital horns
    _ellipsoid((20, 38, 2), (3, 10, 4), yaw_deg=20),
    _ellipsoid((-29, -2, -20), (3, 15, 3.5), yaw_deg=-15),  # temporal horns
    _ellipsoid((29, -2, -20), (3, 15, 3.5), yaw_deg=15),
    _ellipsoid((0, 5, -5), (1.8, 12, 8)),  # third ventricle
    _ellipsoid((0, 27, -40), (6, 3.5, 7)),  # fourth ventricle
)
_DEEP_GREY = (
    _ellipsoid((-9.5, 8, -3), (8.5, 14, 9)),  # thalami
    _ellipsoid((9.5, 8, -3), (8.5, 14, 9)),
    _ellipsoid((-12, -20, 7), (4.5, 9, 10)),  # caudate heads
    _ellipsoid((12, -20, 7), (4.5, 9, 10)),
    _ellipsoid((-24, -5, -1), (5.5, 15, 10), yaw_deg=8),  # putamina
    _ellipsoid((24, -5, -1), (5.5, 15, 10), yaw_deg=-8),
)
_ORBIT_FAT = (_ellipsoid((-31, -62, -34), (16, 22, 14)), _ellipsoid((31, -62, -34), (16, 22, 14)))
_GLOBES = (_ellipsoid((-31, -72, -34), (12, 12, 12)), _ellipsoid((31, -72, -34), (12, 12, 12)))
_SINUSES = (
    _ellipsoid((-23, -60, -62), (12, 15, 13)),  # maxillary
    _ellipsoid((23, -60, -62), (12, 15, 13)),
    _ellipsoid((0, -72, -56), (5, 20, 15)),  # nasal cavity
    _ellipsoid((0, -78, -12), (11, 6, 7)),  # frontal
    _ellipsoid((0, -36, -44), (9, 8, 7)),  # sphenoid
)
_PHARYNX = _cylinder((0, -16), (11, 6), -62)
_TONGUE = _ellipsoid((0, -54, -94), (24, 30, 16))
_MANDIBLE_OUTER = _ellipsoid((0, -40, -104), (44, 48, 9))
_MANDIBLE_INNER = _ellipsoid((0, -40, -104), (37, 41, 14))
_PALATE = _ellipsoid((0, -62, -78), (22, 28, 2.5))
_VERTEBRAE = tuple(_ellipsoid((0, 2, -86 - 17 * i), (12, 10, 7)) for i in range(4))
_DENS = _ellipsoid((0, 4, -72), (5, 5, 9))


def _smooth_max(a: Array, b: Array, k: float) -> Array:
    """Union of two shapes with a fillet of about k mm, so outlines blend like skin."""
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.maximum(a, b) + h * h * (k / 4)


def _cerebral_floor(x: Array, y: Array) -> Array:
    """Height of the frontal and occipital base, rising over the domed orbital roofs."""
    return -21 + np.clip((-30 - y) / 45, 0, 1) * (5 + 7 * np.minimum((x / 32) ** 2, 1))


def _hemispheres(x: Array, y: Array, z: Array, wobble: Array | float = 0.0,
                 closed: bool = False) -> Array:
    """Depth inside the cerebral outline: an ellipsoid with a base, plus temporal lobes."""
    union = partial(_smooth_max, k=20) if closed else np.maximum
    depth = np.minimum(_CEREBRUM(x, y, z) + wobble, z - _cerebral_floor(x, y))
    for lobe in _TEMPORAL_LOBES:
        depth = union(depth, lobe(x, y, z) + wobble)
    return depth


def _cerebrum_depth(x: Array, y: Array, z: Array) -> Array:
    """Depth inside the cerebral hemispheres, with a slightly irregular surface, a
    midline fissure that ends in a rounded edge above the corpus callosum, and a
    tentorium over the cerebellum."""
    depth = _hemispheres(x, y, z, _SURFACE(x, y, z))
    callosum = 1 - ((y + 3) / 38) ** 2 - ((z - 7) / 17) ** 2
    depth = np.minimum(depth, np.abs(x) - 1.0 + 80 * np.maximum(callosum, 0))
    return np.minimum(depth, -_CEREBELLUM(x, y, z) - 2)


def _cavity_depth(x: Array, y: Array, z: Array, closed: bool = False) -> Array:
    """Depth inside the cranial cavity and spinal canal (the CSF space). ``closed``
    fills the notches between the fossae with fillets, which gives the outline of
    the skull base and of the scalp."""
    union = partial(_smooth_max, k=28) if closed else np.maximum
    depth = _hemispheres(x, y, z, closed=closed) + 3
    depth = union(depth, _CEREBELLUM(x, y, z) + 4)
    depth = union(depth, _BRAINSTEM[0](x, y, z) + 3)
    return np.maximum(depth, _CANAL(x, y, z))


def _sylvian_distance(x: Array, y: Array, z: Array) -> Array:
    """Distance to the lateral (Sylvian) fissure: a sheet between the frontal and
    temporal lobes, from the insula at |x| = 34 out to the surface."""
    height = z - (-6 + 0.3 * (y + 10))
    medial = np.maximum(34 - np.abs(x), 0)
    length = np.maximum(np.abs(y + 6) - 30, 0)
    return np.sqrt(height * height + medial * medial + length * length)


# ----------------------------------------------------------------------------- render


def _upsample(a: Array) -> Array:
    """Double the rows and columns by linear interpolation (pixel centres kept)."""
    n, rows, cols = a.shape
    tall = np.empty((n, 2 * rows, cols), np.float32)
    tall[:, 0], tall[:, -1] = a[:, 0], a[:, -1]
    tall[:, 1:-1:2] = 0.75 * a[:, :-1] + 0.25 * a[:, 1:]
    tall[:, 2::2] = 0.25 * a[:, :-1] + 0.75 * a[:, 1:]
    out = np.empty((n, 2 * rows, 2 * cols), np.float32)
    out[:, :, 0], out[:, :, -1] = tall[:, :, 0], tall[:, :, -1]
    out[:, :, 1:-1:2] = 0.75 * tall[:, :, :-1] + 0.25 * tall[:, :, 1:]
    out[:, :, 2::2] = 0.25 * tall[:, :, :-1] + 0.75 * tall[:, :, 1:]
    return out


class _Canvas:
    """A float volume that tissues are painted onto, outside in, with soft alpha.

    Smooth distance fields (skull, skin, the signed distance to the sulci) are
    computed on a grid with half the rows and columns and interpolated back, which
    is exact enough for smooth fields and four times cheaper; the soft edges are
    still made at full resolution.
    """

    def __init__(self, grid: _Grid, values: dict[str, float]) -> None:
        self.grid = grid
        rows, cols = ((a[0::2] + a[1::2]) / 2 for a in grid.axes[1:])
        self.coarse = _Grid(axes=(grid.axes[0], rows, cols), world=grid.world)
        self.values = values
        self.image = np.zeros(grid.shape, dtype=np.float32)

    def region(self, box: Box, coarse: bool = False) -> tuple[tuple[slice, ...], tuple[Array, ...]]:
        """Index of the box in the image, and x, y, z there (on the coarse grid if asked;
        the index is then the matching full-resolution one)."""
        found = (self.coarse if coarse else self.grid).block(*box)
        if found is None:
            empty = slice(0, 0)
            nothing = np.zeros((0, 0, 0), np.float32)
            return (empty, empty, empty), (nothing, nothing, nothing)
        index, xyz = found
        if coarse:
            index = (index[0], *(slice(2 * i.start, 2 * i.stop) for i in index[1:]))
        return index, xyz

    def paint(self, tissue: str, index: tuple[slice, ...], alpha: Array) -> None:
        target = self.image[index]
        if target.size:
            change = np.subtract(np.float32(self.values[tissue]), target)
            change *= alpha
            target += change

    def shape(self, tissue: str, shape: _Shape, opacity: float = 1.0, grow: float = 0) -> None:
        index, xyz = self.region(shape.box)
        if self.image[index].size:
            self.paint(tissue, index, _soft(shape(*xyz) + grow) * np.float32(opacity))


def _sulcus_distance(x: Array, y: Array, z: Array) -> Array:
    """Signed distance to the nearest sulcus (sign: which side). The wave field is sampled on points
    projected towards a sphere around each hemisphere's centre, so its zero set is a
    labyrinth on the surface that runs radially inwards: sulci in any cut."""
    side = np.tanh(x / 4)
    px, py, pz = x - 30 * side, y + 2.0, z - 8.0
    rho = np.sqrt(px * px + py * py + pz * pz) + 1e-3
    stretch = (55.0 / rho) ** 0.6
    # Offset the left hemisphere's sample so the two sides are not copies.
    qx, qy = px * stretch + 23 * side, py * stretch + 17 * side
    return _SULCI.zero_distance(qx, qy, pz * stretch) / stretch


def _paint_head(canvas: _Canvas) -> None:
    """Skin, subcutaneous fat, muscle with fatty planes, skull with marrow, the facial
    skeleton and sinuses, and the CSF-filled cranial cavity."""
    index, (x, y, z) = canvas.region(_EVERYWHERE, coarse=True)
    cavity = _cavity_depth(x, y, z)
    skull = _cavity_depth(x, y, z, closed=True)
    scalp = 12.5 + 1.5 * np.sin(y / 17 + 1) * np.cos(z / 23)
    face = _smooth_max(_MIDFACE(x, y, z), _JAW(x, y, z), 20)
    face = _smooth_max(face, _CHEEKS(x, y, z), 15)
    face = _smooth_max(face, _NECK(x, y, z), 25)
    head = _smooth_max(_smooth_max(skull + scalp, face, 25), _NOSE(x, y, z), 6)
    # Fatty planes between the muscles of the face and neck, below the skull.
    planes = _SOFT_TISSUE.zero_distance(x, y, z) if z.min() < -25 else None
    cavity, skull, head = map(_upsample, (cavity, skull, head))

    canvas.paint("fat", index, _soft(head))
    canvas.paint("muscle", index, _soft(head - 4.5) * np.float32(0.92))
    if planes is not None:
        planes = np.where(z < -25, planes, np.float32(99))
        planes = np.abs(_upsample(planes))
        canvas.paint("fat", index, _soft(head - 7) * _soft(0.7 - planes) * 0.7)
    # Skull: cortical bone with a marrow core, thick at the base between the fossae.
    canvas.paint("bone", index, _soft(skull + 7))
    canvas.paint("marrow", index, _soft(np.minimum(skull + 5.5, -1.8 - cavity)) * 0.8)

    canvas.shape("muscle", _TONGUE)
    # Mandible: a U of bone with a marrow core, open at the back.
    index_j, (x, y, z) = canvas.region(_MANDIBLE_OUTER.box)
    if canvas.image[index_j].size:
        u = np.minimum(np.minimum(_MANDIBLE_OUTER(x, y, z), -_MANDIBLE_INNER(x, y, z)), -12 - y)
        canvas.paint("bone", index_j, _soft(u))
        canvas.paint("marrow", index_j, _soft(u - 2.0) * 0.8)
    canvas.shape("marrow", _PALATE)
    for vertebra in (*_VERTEBRAE, _DENS):
        canvas.shape("bone", vertebra, grow=1.5)
        canvas.shape("marrow", vertebra)
    for sinus in _SINUSES:
        canvas.shape("bone", sinus, grow=1.5)
        canvas.shape("air", sinus)
    canvas.shape("air", _PHARYNX)
    for fat, globe in zip(_ORBIT_FAT, _GLOBES, strict=True):
        canvas.shape("fat", fat)
        canvas.shape("eye", globe)
    canvas.paint("csf", index, _soft(cavity))


def _paint_cerebrum(canvas: _Canvas) -> None:
    """Grey matter, with white matter deeper than ~2.6 mm from the pial surface or a
    sulcus. Sulci open at the surface and end 10-20 mm deep, so cuts show gyri with
    white-matter cores; deep grey nuclei and ventricles sit in the white matter."""
    box = ((-70.0, -90.0, -46.0), (70.0, 90.0, 72.0))
    index, (x, y, z) = canvas.region(box, coarse=True)
    if not canvas.image[index].size:
        return
    depth = _cerebrum_depth(x, y, z)
    reach = 15 + 5 * _SULCUS_REACH(x, y, z)
    sulcus, sylvian = _sulcus_distance(x, y, z), _sylvian_distance(x, y, z)
    depth, reach, sulcus, sylvian = map(_upsample, (depth, reach, sulcus, sylvian))
    sulcus = np.minimum(np.abs(sulcus), sylvian)

    canvas.paint("gm", index, _soft(depth))
    # A sulcus is a sheet from the surface down to its fundus at `reach`.
    beyond = np.maximum(depth - reach, 0)
    to_sulcus = np.sqrt(sulcus * sulcus + beyond * beyond)
    half_width = 0.35 + 0.9 * np.clip(1 - depth / 6, 0, 1)
    cortical = np.minimum(depth, to_sulcus - half_width)
    canvas.paint("wm", index, _soft(cortical - 2.6))
    for nucleus in _DEEP_GREY:
        canvas.shape("deep", nucleus, opacity=0.85, grow=-0.5)
    canvas.paint("csf", index, _soft(half_width - to_sulcus) * _soft(depth + 1))


def _paint_posterior_fossa(canvas: _Canvas) -> None:
    """Cerebellum: lobules fan out from a transverse axis through its middle, separated
    by fissures, around a small white-matter core with thin branches (arbor vitae);
    then the brainstem and cord."""
    index, (x, y, z) = canvas.region(_CEREBELLUM.box)
    if canvas.image[index].size:
        depth = _CEREBELLUM(x, y, z)
        _, fy, fz = _FOLIA_CENTRE
        dy, dz = y - fy, z - fz
        angle = np.arctan2(dz, dy)
        radius = np.sqrt(dy * dy + dz * dz) + 1e-3
        wobble = 0.6 * np.sin(x / 9) + 0.7 * np.sin(radius / 5 + 3 * angle) + (x / 40) ** 2
        fissure = np.abs(np.sin(15 * angle + wobble)) * radius / 15
        canvas.paint("gm", index, _soft(depth))
        branches = _soft(np.minimum(depth - 4, fissure - 1.7) * 0.7)
        axis = 7 - radius - (x / 14) ** 2
        core = _soft(np.minimum(depth - 1, np.maximum(depth - 15, axis)))
        canvas.paint("wm", index, np.maximum(branches, core))
        outer = _soft(12 - depth) * _soft(depth + 1) * _soft(radius - 12)
        canvas.paint("csf", index, _soft(0.45 - fissure) * outer)
    for part in _BRAINSTEM:
        canvas.shape("stem", part)


def _render(grid: _Grid, values: dict[str, float]) -> Array:
    """Paint the phantom onto one series grid with one contrast (a value per tissue)."""
    canvas = _Canvas(grid, values)
    _paint_head(canvas)
    _paint_cerebrum(canvas)
    _paint_posterior_fossa(canvas)
    for space in _CSF_SPACES:
        canvas.shape("csf", space)
    return canvas.image


def _noise(rng: np.random.Generator, shape: tuple[int, ...], count: int) -> list[Array]:
    """``count`` fields of unit-variance noise. Each is the sum of two uniform fields
    made from random bytes: it looks like Gaussian noise and is about 3x cheaper."""
    size = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(4 * count * size), "<i2").reshape(2 * count, *shape)
    scale = np.float32(1 / (np.sqrt(2 / 12) * 65536))
    return [(raw[2 * i].astype(np.float32) + raw[2 * i + 1]) * scale for i in range(count)]


def _acquire(grid: _Grid, signal: Array, sigma: float, seed: tuple[int, int]) -> Array:
    """Turn a clean tissue map into a plausible magnitude image: smooth tissue texture,
    a receive-coil bias field (brighter periphery, fading towards the neck), and noise
    taken as a magnitude, so the background has the usual noise floor. Seeded."""
    rng = np.random.default_rng(seed)
    n, rows, cols = signal.shape
    (texture,) = _noise(rng, (n, rows // 4, cols // 4), 1)
    texture = _upsample(_upsample(texture)) * np.float32(0.05)
    whole = grid.block(*_EVERYWHERE)
    assert whole is not None
    _, (x, y, z) = whole
    radius2 = (x * x + y * y + (z - 10) * (z - 10)) * np.float32(1 / 100**2)
    bias = (0.93 + 0.12 * radius2) * np.clip(1 + (z + 70) / 90, 0.35, 1.0)
    (noise,) = _noise(rng, signal.shape, 1)
    noise *= np.float32(sigma * 1.3)
    noise += signal * (1 + texture) * bias
    return np.abs(noise, out=noise)


# ----------------------------------------------------------------------------- series


@dataclass(frozen=True)
class _Series:
    number: int
    description: str
    plane: str  # "axial" or "sagittal"
    slices: int
    spacing: float
    values: dict[str, float]
    sigma: float
    dtype: str  # numpy dtype of the stored pixels
    bits_stored: int
    window: tuple[float, float] | None
    rescale: bool
    time: str
    mr: dict[str, object]


# Tissue signal per series. T1: fat > WM > GM > CSF; T2: CSF > GM > WM, fat fairly bright.
_T1_MPRAGE = {"fat": 880, "muscle": 360, "bone": 25, "marrow": 600, "air": 0, "csf": 120,
              "gm": 500, "wm": 760, "deep": 575, "stem": 690, "eye": 110}
_T2_TSE = {"fat": 1450, "muscle": 520, "bone": 30, "marrow": 950, "air": 0, "csf": 3250,
           "gm": 1650, "wm": 1050, "deep": 1380, "stem": 1200, "eye": 3150}
_T1_SE = {"fat": 1500, "muscle": 640, "bone": 40, "marrow": 1050, "air": 0, "csf": 260,
          "gm": 820, "wm": 1180, "deep": 900, "stem": 1080, "eye": 240}

_SERIES = (
    _Series(1, "Ax T1", "axial", 60, 2.5, _T1_MPRAGE, 11.0, "<i2", 16, (480.0, 960.0), True,
            "093512", {"ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SP", "MP"],
                       "ScanOptions": "IR", "MRAcquisitionType": "3D",
                       "SequenceName": "*tfl3d1", "RepetitionTime": 2300.0,
                       "EchoTime": 2.98, "InversionTime": 900.0, "FlipAngle": 9.0,
                       "EchoTrainLength": 1, "PixelBandwidth": 240.0}),
    _Series(2, "Ax T2", "axial", 30, 5.0, _T2_TSE, 28.0, "<u2", 12, (1700.0, 3400.0), False,
            "094230", {"ScanningSequence": "SE", "SequenceVariant": ["SK", "SP"],
                       "ScanOptions": "", "MRAcquisitionType": "2D",
                       "SequenceName": "*tse2d1_15", "RepetitionTime": 5000.0,
                       "EchoTime": 98.0, "FlipAngle": 150.0, "EchoTrainLength": 15,
                       "PixelBandwidth": 220.0}),
    _Series(3, "Sag T1", "sagittal", 24, 5.0, _T1_SE, 15.0, "<u2", 16, None, False,
            "095015", {"ScanningSequence": "SE", "SequenceVariant": ["SK", "SP"],
                       "ScanOptions": "", "MRAcquisitionType": "2D",
                       "SequenceName": "*se2d1", "RepetitionTime": 550.0,
                       "EchoTime": 12.0, "FlipAngle": 90.0, "EchoTrainLength": 1,
                       "PixelBandwidth": 180.0}),
)

def _geometry(series: _Series, matrix: int) -> tuple[list[float], Array, list[Array]]:
    """Orientation, slice normal and one ImagePositionPatient per slice, centred on
    the origin; slices run along the normal in InstanceNumber order."""
    if series.plane == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    else:
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row, col)
    offsets = (np.arange(series.slices) - (series.slices - 1) / 2) * series.spacing
    corner = -(matrix - 1) / 2 * (_FOV_MM / matrix) * (row + col)
    positions = [corner + t * normal for t in offsets]
    return [*row, *col], normal, positions


def _ds_number(value: float) -> str:
    """DS text without float noise (e.g. -119.53125, 2.5, 0)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _series_template(series: _Series, uids: dict[str, str], orientation: list[float],
                     pixels: Array) -> Dataset:
    """The attributes shared by every image of a series (patient, study, series,
    equipment, MR acquisition, pixel format, window), set once per series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20261120"
    ds.StudyTime = "093000"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series.time
    ds.AccessionNumber = "DEMO0001"
    ds.Modality = "MR"
    ds.Manufacturer = "Viewer Demo Generator"
    ds.InstitutionName = "Demo Hospital"
    ds.ReferringPhysicianName = "Referrer^Demo"
    ds.StationName = "DEMO-MR"
    ds.StudyDescription = "MRI Brain without contrast"
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "Synthetic 3T"
    ds.PatientName = "Demo^Alex"
    ds.PatientID = "DEMO-0001"
    ds.IssuerOfPatientID = "VIEWER-DEMO"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.PatientAge = "046Y"
    ds.BodyPartExamined = "BRAIN"
    for key, value in series.mr.items():
        setattr(ds, key, value)
    ds.SliceThickness = series.spacing
    ds.SpacingBetweenSlices = series.spacing
    ds.ImagingFrequency = 127.74
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = 3
    ds.SoftwareVersions = "viewer-demo 1"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds_number(v) for v in orientation]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.PixelSpacing = [_ds_number(_FOV_MM / pixels.shape[2])] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = series.bits_stored
    ds.HighBit = series.bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if series.window is not None:
        ds.WindowCenter, ds.WindowWidth = series.window
        ds.WindowCenterWidthExplanation = "BRAIN"
    if series.rescale:
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    return ds


def _instance(template: Dataset, uids: dict[str, str], number: int, position: Array,
              normal: Array, pixels: Array) -> Dataset:
    """One image: the series template plus what differs per slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uids["implementation"]
    meta.ImplementationVersionName = "VIEWER_DEMO_1"

    ds = Dataset(template)  # shares the template's (unchanged) elements
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPInstanceUID = uids["sop"]
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [_ds_number(v) for v in position]
    ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


_SLAB = 8  # slices rendered at a time: small arrays stay in cache, about 2.5x faster


def _series_pixels(series: _Series, matrix: int) -> tuple[list[float], Array, list[Array], Array]:
    """Orientation, normal, slice positions and the stored pixel array of one series."""
    orientation, normal, positions = _geometry(series, matrix)
    grid = _grid(positions[0], np.array(orientation[:3]), np.array(orientation[3:]), normal,
                 series.spacing, series.slices, matrix)
    dtype = np.dtype(series.dtype)
    top = 2**series.bits_stored - 1 if dtype.kind == "u" else 2 ** (series.bits_stored - 1) - 1
    stored = np.empty(grid.shape, dtype)
    for start in range(0, series.slices, _SLAB):
        slab = _Grid(axes=(grid.axes[0][start : start + _SLAB], *grid.axes[1:]), world=grid.world)
        image = _render(slab, series.values)
        image = _acquire(slab, image, series.sigma, seed=(series.number, start))
        stored[start : start + _SLAB] = np.clip(np.rint(image), 0, top)
    return orientation, normal, positions, stored


def _file_name(sop_instance_uid: str) -> str:
    """A name from a hash of the UID: stable, and unrelated to the slice order."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:16].upper() + ".dcm"


def _write_series(series: _Series, pixels: tuple, out_dir: Path, matrix: int) -> list[Path]:
    orientation, normal, positions, stored = pixels
    # Another matrix is another study: its own UIDs, and the demo's stay as they were.
    tag = () if matrix == _MATRIX else (f"matrix-{matrix}",)
    uids = {
        "study": _uid(*tag, "study"),
        "frame": _uid(*tag, "frame-of-reference"),
        "implementation": _uid("implementation"),
        "series": _uid(*tag, "series", series.number),
    }
    template = _series_template(series, uids, orientation, stored)
    files = []
    for i, position in enumerate(positions):
        sop = {**uids, "sop": _uid(*tag, "instance", series.number, i + 1)}
        files.append((_file_name(sop["sop"]), i, position, sop))
    paths = []
    for name, i, position, sop in sorted(files, key=lambda item: item[0]):
        ds = _instance(template, sop, i + 1, position, normal, stored[i])
        ds.save_as(out_dir / name, enforce_file_format=True)
        paths.append(out_dir / name)
    return paths


def write_demo_study(out_dir: Path, matrix: int = _MATRIX) -> list[Path]:
    """Write the demo MR brain study (3 series, 114 files) into ``out_dir``.

    ``matrix`` is the rows and columns of every image (the field of view stays 240 mm):
    the demo is 256; the benchmarks also use 512, the size of the throughput targets, as
    a study of its own (other UIDs).

    File names are hashes of the SOP Instance UIDs, so name order is not slice order
    and the viewer's geometric sort is exercised. Existing files of the same names
    are overwritten with identical bytes. Returns the paths sorted by name.

    The series are computed in threads (numpy releases the GIL), and each is written
    as soon as it is ready, so the study takes about a second on two cores.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with ThreadPoolExecutor(max_workers=len(_SERIES)) as pool:
        jobs = {pool.submit(_series_pixels, series, matrix): series for series in _SERIES}
        for job in as_completed(jobs):
            paths += _write_series(jobs[job], job.result(), out_dir, matrix)
    return sorted(paths)
