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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["write_demo_study"]

# Bump the version to get a new set of UIDs if the content ever changes on purpose.
_UID_NAMESPACE = "viewer-demo-study/v1"
_ROWS = _COLS = 256
_PIXEL_MM = 0.9375
_SOFT_EDGE_MM = 1.0  # partial-volume width of every tissue boundary, about one pixel

Array = np.ndarray
Shape = Callable[[Array, Array, Array], Array]


def _uid(*parts: object) -> str:
    """A stable 2.25 UID from fixed strings: same inputs, same UID, on any machine."""
    return generate_uid(prefix=None, entropy_srcs=[_UID_NAMESPACE, *map(str, parts)])


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


def _grid(first: Array, row_dir: Array, col_dir: Array, normal: Array, step: float, n: int):
    """The _Grid of n slices starting at ``first`` (ImagePositionPatient of slice 1)."""
    axes = []
    world = []
    for direction, count, spacing in (
        (normal, n, step),
        (col_dir, _ROWS, _PIXEL_MM),
        (row_dir, _COLS, _PIXEL_MM),
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
               yaw_deg: float = 0.0) -> _Shape:
    cx, cy, cz = center
    a, b, c = semi
    cos, sin = float(np.cos(np.radians(yaw_deg))), float(np.sin(np.radians(yaw_deg)))

    def dist(x: Array, y: Array, z: Array) -> Array:
        dx, dy, dz = x - cx, y - cy, z - cz
        if yaw_deg:
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        rho2 = dx * dx + dy * dy + dz * dz
        return _ray_distance(rho2, (dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)

    ex = ey = max(a, b) if yaw_deg else 0.0
    half = (ex or a, ey or b, c)
    lo = (cx - half[0] - 2, cy - half[1] - 2, cz - half[2] - 2)
    hi = (cx + half[0] + 2, cy + half[1] + 2, cz + half[2] + 2)
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
    """Partial-volume fraction from a signed distance: 0 outside, 1 inside."""
    return np.clip(d * (1.0 / _SOFT_EDGE_MM) + 0.5, 0.0, 1.0)


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


# The anatomy, in mm (LPS: +x patient left, +y posterior, +z head). The cerebrum is
# centred near the origin; the head spans about z -130..86.
_CEREBRUM = _ellipsoid((0, 0, 8), (66, 84, 60))
_CEREBELLUM = _ellipsoid((0, 46, -38), (48, 30, 21))
_FOLIA_CENTRE = (0.0, 33.0, -37.0)
_BRAINSTEM = (
    _ellipsoid((0, 14, -40), (11, 12, 38)),  # midbrain, medulla
    _ellipsoid((0, 8, -34), (15, 14, 12)),  # pons
    _cylinder((0, 20), (6.0, 7.0), -60),  # spinal cord
)
_CANAL = _cylinder((0, 20), (10, 11), -55)
_SULCI = _Waves(seed=11, wavelengths=(30, 46), count=12)
_SULCUS_REACH = _Waves(seed=12, wavelengths=(50, 80), count=5)
_SURFACE = _Waves(seed=13, wavelengths=(60, 90), count=5)
_FACE = _ellipsoid((0, -46, -64), (58, 50, 52))
_NOSE = _ellipsoid((0, -96, -50), (10, 14, 22))
_NECK = _cylinder((0, 14), (55, 56), -30)
_LAT_VENTRICLES = (
    _ellipsoid((-7.5, -3, 7), (5.0, 27, 9.0), yaw_deg=12),
    _ellipsoid((7.5, -3, 7), (5.0, 27, 9.0), yaw_deg=-12),
)
_CSF_SPACES = (
    *_LAT_VENTRICLES,
    _ellipsoid((-27, 0, -19), (3, 13, 3.5), yaw_deg=-20),  # temporal horns
    _ellipsoid((27, 0, -19), (3, 13, 3.5), yaw_deg=20),
    _ellipsoid((-15, 26, 8), (3.5, 9, 6), yaw_deg=-25),  # atria
    _ellipsoid((15, 26, 8), (3.5, 9, 6), yaw_deg=25),
    _ellipsoid((0, 5, -5), (1.8, 12, 8)),  # third ventricle
    _ellipsoid((0, 27, -40), (6, 3.5, 7)),  # fourth ventricle
)
_DEEP_GREY = (
    _ellipsoid((-11, 8, -2), (8.5, 14, 9)),  # thalami
    _ellipsoid((11, 8, -2), (8.5, 14, 9)),
    _ellipsoid((-12, -20, 7), (4.5, 9, 10)),  # caudate heads
    _ellipsoid((12, -20, 7), (4.5, 9, 10)),
    _ellipsoid((-24, -5, -1), (5.5, 15, 10), yaw_deg=8),  # putamina
    _ellipsoid((24, -5, -1), (5.5, 15, 10), yaw_deg=-8),
)
_ORBIT_FAT = (_ellipsoid((-31, -62, -34), (16, 22, 14)), _ellipsoid((31, -62, -34), (16, 22, 14)))
_GLOBES = (_ellipsoid((-31, -72, -34), (12, 12, 12)), _ellipsoid((31, -72, -34), (12, 12, 12)))
_AIR = (
    _ellipsoid((-23, -56, -62), (12, 15, 14)),  # maxillary sinuses
    _ellipsoid((23, -56, -62), (12, 15, 14)),
    _ellipsoid((0, -72, -55), (5, 22, 16)),  # nasal cavity
    _ellipsoid((0, -76, -10), (11, 7, 8)),  # frontal sinus
    _ellipsoid((0, -38, -42), (9, 8, 8)),  # sphenoid sinus
    _cylinder((0, -18), (10, 6), -72),  # pharynx
)
_TONGUE = _ellipsoid((0, -50, -96), (26, 34, 17))
_VERTEBRAE = tuple(_ellipsoid((0, 2, -90 - 17 * i), (12, 10, 7)) for i in range(3))


def _cerebral_floor(x: Array, y: Array) -> Array:
    """Height of the cerebral base: rising over the orbits, lower in the temporal fossae."""
    temporal = np.clip((np.abs(x) - 18) / 14, 0, 1) * np.exp(-(((y + 8) / 26) ** 2))
    frontal = np.clip((-30 - y) / 45, 0, 1)
    return -21 - 17 * temporal + 8 * frontal


def _cerebrum_depth(x: Array, y: Array, z: Array) -> Array:
    """Depth inside the cerebral hemispheres: a slightly irregular ellipsoid with a
    base, a midline fissure that ends in a rounded edge above the corpus callosum,
    and a tentorium over the cerebellum."""
    depth = _CEREBRUM(x, y, z) + 1.0 * _SURFACE(x, y, z)
    depth = np.minimum(depth, z - _cerebral_floor(x, y))
    callosum = 1 - ((y + 3) / 38) ** 2 - ((z - 7) / 17) ** 2
    depth = np.minimum(depth, np.abs(x) - 1.0 + 80 * np.maximum(callosum, 0))
    return np.minimum(depth, -_CEREBELLUM(x, y, z) - 2)


def _cavity_depth(x: Array, y: Array, z: Array) -> Array:
    """Depth inside the cranial cavity and spinal canal (the CSF space)."""
    depth = np.minimum(_CEREBRUM(x, y, z), z - _cerebral_floor(x, y)) + 3
    depth = np.maximum(depth, _CEREBELLUM(x, y, z) + 4)
    depth = np.maximum(depth, _BRAINSTEM[0](x, y, z) + 3)
    return np.maximum(depth, _CANAL(x, y, z))


# ----------------------------------------------------------------------------- render


class _Canvas:
    """A float volume that tissues are painted onto, outside in, with soft alpha."""

    def __init__(self, grid: _Grid, values: dict[str, float]) -> None:
        self.grid = grid
        self.values = values
        self.image = np.zeros(grid.shape, dtype=np.float32)

    def region(self, box: Box) -> tuple[tuple[slice, slice, slice], tuple[Array, Array, Array]]:
        found = self.grid.block(*box)
        if found is None:
            empty = slice(0, 0)
            z = np.zeros((0, 0, 0), np.float32)
            return (empty, empty, empty), (z, z, z)
        return found

    def paint(self, tissue: str, index: tuple[slice, slice, slice], alpha: Array) -> None:
        target = self.image[index]
        target += alpha * (np.float32(self.values[tissue]) - target)

    def shape(self, tissue: str, shape: _Shape, opacity: float = 1.0, grow: float = 0) -> None:
        index, xyz = self.region(shape.box)
        if self.image[index].size:
            self.paint(tissue, index, _soft(shape(*xyz) + grow) * np.float32(opacity))


def _sulcus_distance(x: Array, y: Array, z: Array) -> Array:
    """Distance to the nearest sulcus. The wave field is sampled on points projected
    towards a sphere around each hemisphere's centre, so its zero set is a labyrinth
    on the surface that runs radially inwards: sulci in any cut."""
    px = x - np.where(x < 0, -30.0, 30.0).astype(np.float32)
    py, pz = y + 2.0, z - 8.0
    rho = np.sqrt(px * px + py * py + pz * pz) + 1e-3
    stretch = (55.0 / rho) ** 0.6
    field = _SULCI(px * stretch, py * stretch, pz * stretch)
    return np.abs(field) / (stretch * _SULCI.gradient)


def _render(grid: _Grid, values: dict[str, float]) -> Array:
    """Paint the phantom onto one series grid with one contrast (a value per tissue)."""
    canvas = _Canvas(grid, values)

    # Scalp, skull (cortical bone with a marrow core) and the CSF-filled cavity.
    head_index, (x, y, z) = canvas.region(((-95, -120, -140), (95, 110, 95)))
    cavity = _cavity_depth(x, y, z)
    scalp = 12.5 + 1.5 * np.sin(y / 17 + 1) * np.cos(z / 23)
    head = np.maximum(cavity + scalp, _FACE(x, y, z))
    head = np.maximum(np.maximum(head, _NOSE(x, y, z)), _NECK(x, y, z))
    canvas.paint("fat", head_index, _soft(head))
    canvas.paint("muscle", head_index, _soft(head - 4.5) * np.float32(0.9))
    canvas.paint("muscle", head_index, _soft(np.minimum(head - 8, cavity + 7.5)) * 0.3)
    canvas.paint("bone", head_index, _soft(cavity + 7))
    canvas.paint("marrow", head_index, _soft(np.minimum(cavity + 5.5, -1.8 - cavity)) * 0.85)
    for vertebra in _VERTEBRAE:
        canvas.shape("marrow", vertebra)
    canvas.shape("muscle", _TONGUE)
    for air in _AIR:
        canvas.shape("air", air)
    canvas.paint("csf", head_index, _soft(cavity))

    # Cerebrum: grey matter, with white matter deeper than ~2.6 mm from the pial surface
    # or from a sulcus. Sulci open at the surface and reach 12-24 mm deep, so cuts show
    # gyri with white-matter cores.
    index, (x, y, z) = canvas.region(((-70, -90, -46), (70, 90, 72)))
    depth = _cerebrum_depth(x, y, z)
    canvas.paint("gm", index, _soft(depth))
    reach = 15 + 5 * _SULCUS_REACH(x, y, z)
    cortical = depth.copy()
    sulcal = np.zeros_like(depth)
    near = (depth > -1.5) & (depth < reach + 3.5)
    xs, ys, zs = (np.broadcast_to(c, depth.shape)[near] for c in (x, y, z))
    d_near = depth[near]
    # Distance to a sulcus: a sheet from the surface down to its fundus at `reach`.
    beyond = np.maximum(d_near - reach[near], 0)
    to_sulcus = np.sqrt(_sulcus_distance(xs, ys, zs) ** 2 + beyond * beyond)
    half_width = 0.35 + 0.9 * np.clip(1 - d_near / 6, 0, 1)
    cortical[near] = np.minimum(d_near, to_sulcus - half_width)
    sulcal[near] = _soft(half_width - to_sulcus) * _soft(d_near + 1)
    canvas.paint("wm", index, _soft(cortical - 2.6))
    for nucleus in _DEEP_GREY:
        canvas.shape("deep", nucleus, opacity=0.85, grow=-0.5)
    canvas.paint("csf", index, sulcal)

    # Cerebellum: lobules fan out from a centre near the fourth ventricle, separated by
    # fissures, around a white-matter core with thin branches (arbor vitae).
    index, (x, y, z) = canvas.region(_CEREBELLUM.box)
    depth = _CEREBELLUM(x, y, z)
    fx, fy, fz = _FOLIA_CENTRE
    across = np.sqrt((0.6 * (x - fx)) ** 2 + (y - fy) ** 2)
    angle = np.arctan2(z - fz, across)
    radius = np.sqrt(across**2 + (z - fz) ** 2) + 1e-3
    fissure = np.abs(np.sin(15 * angle + 0.5 * np.sin(x / 9))) * radius / 15
    canvas.paint("gm", index, _soft(depth))
    branches = _soft(np.minimum(depth - 3.5, fissure - 1.6) * 0.7)
    canvas.paint("wm", index, np.maximum(branches, _soft(depth - 12)))
    canvas.paint("csf", index, _soft(0.45 - fissure) * _soft(12 - depth) * _soft(depth + 1))

    for part in _BRAINSTEM:
        canvas.shape("stem", part)
    for space in _CSF_SPACES:
        canvas.shape("csf", space)
    for fat, globe in zip(_ORBIT_FAT, _GLOBES, strict=True):
        canvas.shape("fat", fat)
        canvas.shape("eye", globe)
    return canvas.image


def _box_blur(a: Array, axis: int) -> Array:
    """A 3-wide running mean along one axis, edges repeated."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    take = lambda s: np.take(p, np.arange(s, s + n), axis=axis)  # noqa: E731
    return (take(0) + take(1) + take(2)) / np.float32(3)


def _acquire(grid: _Grid, signal: Array, sigma: float, seed: int) -> Array:
    """Turn a clean tissue map into a plausible magnitude image: smooth tissue texture,
    a receive-coil bias field (brighter periphery, fading towards the neck), and
    Rician noise, all seeded."""
    rng = np.random.default_rng(seed)
    texture = rng.standard_normal(signal.shape, dtype=np.float32)
    for axis in (1, 2, 1, 2):
        texture = _box_blur(texture, axis)
    texture *= np.float32(0.045 / texture.std())
    (index, (x, y, z)) = grid.block((-1e9,) * 3, (1e9,) * 3)  # type: ignore[misc]
    radius2 = (x * x + y * y + (z - 10) * (z - 10)) * np.float32(1 / 100**2)
    bias = (0.93 + 0.12 * radius2) * np.clip(1 + (z + 70) / 90, 0.35, 1.0)
    clean = signal * (1 + texture) * bias
    real = clean + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt(real * real + imag * imag)


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

_HALF_FOV = (_ROWS - 1) / 2 * _PIXEL_MM


def _geometry(series: _Series) -> tuple[list[float], Array, list[Array]]:
    """Orientation, slice normal and one ImagePositionPatient per slice, centred on
    the origin; slices run along the normal in InstanceNumber order."""
    if series.plane == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    else:
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row, col)
    offsets = (np.arange(series.slices) - (series.slices - 1) / 2) * series.spacing
    corner = -_HALF_FOV * (row + col)
    positions = [corner + t * normal for t in offsets]
    return [*row, *col], normal, positions


def _ds_number(value: float) -> str:
    """DS text without float noise (e.g. -119.53125, 2.5, 0)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _dataset(series: _Series, instance: int, position: Array, normal: Array,
             orientation: list[float], pixels: Array, uids: dict[str, str]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uids["implementation"]
    meta.ImplementationVersionName = "VIEWER_DEMO_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20261120"
    ds.StudyTime = "093000"
    ds.SeriesTime = series.time
    ds.AcquisitionTime = ds.ContentTime = series.time
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
    ds.ImagingFrequency = 123.2
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
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds_number(v) for v in position]
    ds.ImageOrientationPatient = [_ds_number(v) for v in orientation]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [_ds_number(_PIXEL_MM)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = series.bits_stored
    ds.HighBit = series.bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if series.window is not None:
        ds.WindowCenter, ds.WindowWidth = series.window
        ds.WindowCenterWidthExplanation = "DEMO"
    if series.rescale:
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _series_pixels(series: _Series) -> tuple[list[float], Array, list[Array], Array]:
    orientation, normal, positions = _geometry(series)
    grid = _grid(positions[0], np.array(orientation[:3]), np.array(orientation[3:]), normal,
                 series.spacing, series.slices)
    image = _acquire(grid, _render(grid, series.values), series.sigma, seed=1000 + series.number)
    dtype = np.dtype(series.dtype)
    top = 2**series.bits_stored - 1 if dtype.kind == "u" else 2 ** (series.bits_stored - 1) - 1
    stored = np.clip(np.rint(image), 0, top).astype(dtype)
    return orientation, normal, positions, stored


def write_demo_study(out_dir: Path) -> list[Path]:
    """Write the demo MR brain study (3 series, 114 files) into ``out_dir``.

    File names are hashes of the SOP Instance UIDs, so directory order is not slice
    order and the viewer's geometric sort is exercised. Returns the paths in the
    order written (sorted by name).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {"study": _uid("study"), "frame": _uid("frame-of-reference"),
              "implementation": _uid("implementation")}
    pending: list[tuple[str, Dataset]] = []
    for series in _SERIES:
        orientation, normal, positions, stored = _series_pixels(series)
        series_uid = _uid("series", series.number)
        for i, position in enumerate(positions):
            sop = _uid("instance", series.number, i + 1)
            uids = {**common, "series": series_uid, "sop": sop}
            ds = _dataset(series, i + 1, position, normal, orientation, stored[i], uids)
            name = hashlib.sha256(sop.encode()).hexdigest()[:16].upper() + ".dcm"
            pending.append((name, ds))

    paths = []
    for name, ds in sorted(pending, key=lambda item: item[0]):
        path = out_dir / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
