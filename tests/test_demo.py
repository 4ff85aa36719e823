"""The synthetic demo study: valid MR Part 10 files, stable across runs, correct
geometry, brain-like contrast, and a file order that is not the slice order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from viewer.demo import write_demo_study

EXPECTED = {"Ax T1": (1, 60, 2.5), "Ax T2": (2, 30, 5.0), "Sag T1": (3, 24, 5.0)}

# Points inside the phantom (patient mm, LPS), from the anatomy in viewer/demo.py:
# deep white matter lateral to the atria, the thalami, and the frontal horns.
WHITE_MATTER = [(-28.0, 22.0), (28.0, 22.0)]  # (x, y) on an axial slice near z = 0
DEEP_GREY = [(-9.5, 8.0), (9.5, 8.0)]
VENTRICLE = [(-7.0, -22.0), (7.0, -22.0)]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_demo_study(tmp_path_factory.mktemp("demo-a"))


@pytest.fixture(scope="module")
def series(study: list[Path]) -> dict[str, list[tuple[Path, Dataset]]]:
    """Datasets per series description, sorted along the slice normal."""
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in study:
        ds = pydicom.dcmread(path)
        found.setdefault(ds.SeriesDescription, []).append((path, ds))
    for items in found.values():
        items.sort(key=lambda item: _along_normal(item[1]))
    return found


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def _along_normal(ds: Dataset) -> float:
    return float(np.dot(_normal(ds), np.array(ds.ImagePositionPatient, dtype=float)))


def _pixel_of(ds: Dataset, point: tuple[float, float, float]) -> tuple[int, int]:
    """(row, column) of a patient point on this slice, from the header geometry."""
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    offset = np.array(point) - np.array(ds.ImagePositionPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    assert abs(np.dot(offset, _normal(ds))) < 3, "point is not on this slice"
    row = round(np.dot(offset, iop[3:]) / row_spacing)
    return row, round(np.dot(offset, iop[:3]) / col_spacing)


def _mean_at(ds: Dataset, points: list[tuple[float, float, float]]) -> float:
    """Mean modality value in 3x3 pixels around each point."""
    pixels = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1))
    pixels += float(ds.get("RescaleIntercept", 0))
    values = []
    for point in points:
        row, col = _pixel_of(ds, point)
        values.append(pixels[row - 1 : row + 2, col - 1 : col + 2].mean())
    return float(np.mean(values))


def _slice_nearest(items: list[tuple[Path, Dataset]], axis: int, value: float) -> Dataset:
    return min(
        (ds for _, ds in items),
        key=lambda ds: abs(float(ds.ImagePositionPatient[axis]) - value),
    )


def test_files_are_part10_mr_images(study: list[Path]) -> None:
    assert len(study) == 114
    for path in study:
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == MRImageStorage == ds.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID
        assert ds.Modality == "MR"
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns) == (256, 256)
        assert ds.MagneticFieldStrength == 3
        for keyword in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType",
                        "RepetitionTime", "EchoTime", "StudyTime", "ReferringPhysicianName",
                        "StudyID", "InstanceNumber", "SliceLocation", "PixelData"):
            assert keyword in ds, keyword


def test_one_patient_one_study(series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    datasets = [ds for items in series.values() for _, ds in items]
    assert {str(ds.PatientName) for ds in datasets} == {"Demo^Alex"}
    assert {ds.PatientID for ds in datasets} == {"DEMO-0001"}
    assert {ds.IssuerOfPatientID for ds in datasets} == {"VIEWER-DEMO"}
    assert {(ds.PatientBirthDate, ds.PatientSex) for ds in datasets} == {("19800101", "O")}
    assert {ds.StudyDescription for ds in datasets} == {"MRI Brain without contrast"}
    assert {(ds.StudyDate, ds.AccessionNumber) for ds in datasets} == {("20261120", "DEMO0001")}
    assert {ds.BodyPartExamined for ds in datasets} == {"BRAIN"}
    assert {ds.Manufacturer for ds in datasets} == {"Viewer Demo Generator"}
    assert {ds.InstitutionName for ds in datasets} == {"Demo Hospital"}
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)


def test_three_series(series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    assert set(series) == set(EXPECTED)
    for description, (number, count, _) in EXPECTED.items():
        datasets = [ds for _, ds in series[description]]
        assert len(datasets) == count
        assert {ds.SeriesNumber for ds in datasets} == {number}
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, count + 1))


def test_second_run_is_identical(study: list[Path], tmp_path: Path) -> None:
    again = write_demo_study(tmp_path)
    assert [p.name for p in again] == [p.name for p in study]
    for first, second in zip(study, again, strict=True):
        a, b = pydicom.dcmread(first), pydicom.dcmread(second)
        assert (a.SOPInstanceUID, a.SeriesInstanceUID, a.StudyInstanceUID) == (
            b.SOPInstanceUID, b.SeriesInstanceUID, b.StudyInstanceUID)
        assert a.PixelData == b.PixelData
        assert first.read_bytes() == second.read_bytes()


def test_slice_positions_follow_the_spacing(
    series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    for description, (_, count, spacing) in EXPECTED.items():
        datasets = [ds for _, ds in series[description]]
        iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
        assert np.allclose([np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])], 1)
        assert abs(np.dot(iop[:3], iop[3:])) < 1e-6
        distances = np.array([_along_normal(ds) for ds in datasets])
        assert np.allclose(np.diff(distances), spacing, atol=1e-3)
        for ds, distance in zip(datasets, distances, strict=True):
            assert list(ds.ImageOrientationPatient) == list(iop)
            assert float(ds.SliceLocation) == pytest.approx(distance, abs=1e-3)
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == spacing
            assert [float(v) for v in ds.PixelSpacing] == [0.9375, 0.9375]
            # Positions move only along the normal: same in-plane origin on every slice.
            first = np.array(datasets[0].ImagePositionPatient, dtype=float)
            offset = np.array(ds.ImagePositionPatient, dtype=float) - first
            assert np.allclose(offset - np.dot(offset, _normal(ds)) * _normal(ds), 0, atol=1e-3)
        # The stack is centred on the head, near the origin.
        middle = np.array(datasets[count // 2].ImagePositionPatient, dtype=float)
        centre = middle + 127.5 * 0.9375 * (iop[:3] + iop[3:])
        assert np.linalg.norm(centre - np.dot(centre, _normal(datasets[0])) * _normal(
            datasets[0])) < 1
        assert abs(distances.mean()) < spacing


def test_pixel_formats_and_windows(series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    t1 = [ds for _, ds in series["Ax T1"]]
    assert {(ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored) for ds in t1} == {
        (1, 16, 16)}
    assert {(float(ds.RescaleSlope), float(ds.RescaleIntercept)) for ds in t1} == {(1.0, 0.0)}
    assert all(ds.pixel_array.dtype == np.int16 for ds in t1[::10])

    t2 = [ds for _, ds in series["Ax T2"]]
    assert {(ds.PixelRepresentation, ds.BitsStored, ds.HighBit) for ds in t2} == {(0, 12, 11)}
    assert max(int(ds.pixel_array.max()) for ds in t2) <= 4095

    for description in ("Ax T1", "Ax T2"):
        datasets = [ds for _, ds in series[description]]
        assert len({(ds.WindowCenter, ds.WindowWidth) for ds in datasets}) == 1
        # The header window fits the brain on the middle slice: it spans the central
        # 90% of the values without being much wider than their full range.
        ds = datasets[len(datasets) // 2]
        low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        high = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
        p1, p5, p95, p99 = np.percentile(ds.pixel_array[64:192, 64:192], [1, 5, 95, 99])
        assert low <= p5 and high >= p95
        assert high - low <= 2 * (p99 - p1)

    sagittal = [ds for _, ds in series["Sag T1"]]
    assert {ds.PixelRepresentation for ds in sagittal} == {0}
    for ds in sagittal:
        assert "WindowCenter" not in ds and "WindowWidth" not in ds


def test_t1_and_t2_contrast(series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    t1 = _slice_nearest(series["Ax T1"], 2, 0.0)
    z = float(t1.ImagePositionPatient[2])
    wm, gm, csf = (_mean_at(t1, [(x, y, z) for x, y in points])
                   for points in (WHITE_MATTER, DEEP_GREY, VENTRICLE))
    assert wm > gm > csf
    assert wm - csf > 300

    t2 = _slice_nearest(series["Ax T2"], 2, 0.0)
    z = float(t2.ImagePositionPatient[2])
    wm, gm, csf = (_mean_at(t2, [(x, y, z) for x, y in points])
                   for points in (WHITE_MATTER, DEEP_GREY, VENTRICLE))
    assert csf > gm > wm


def test_sagittal_shows_the_same_head(series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    """The ventricle and the white matter sampled on sagittal slices, at the same
    patient points as on the axial series, have T1 contrast too."""
    items = series["Sag T1"]
    csf = np.mean([_mean_at(_slice_nearest(items, 0, x), [(x, y, 0.0)]) for x, y in VENTRICLE])
    wm = np.mean([_mean_at(_slice_nearest(items, 0, x), [(x, y, 0.0)]) for x, y in WHITE_MATTER])
    assert wm > 2 * csf


def test_file_names_are_not_in_slice_order(
    series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    for items in series.values():
        by_name = sorted(items, key=lambda item: item[0].name)
        numbers = [ds.InstanceNumber for _, ds in by_name]
        assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
        positions = [_along_normal(ds) for _, ds in by_name]
        assert positions != sorted(positions) and positions != sorted(positions, reverse=True)


def test_a_512_matrix_is_the_same_head_in_a_study_of_its_own(
    series: dict[str, list[tuple[Path, Dataset]]], tmp_path: Path
) -> None:
    """``matrix=512`` (the benchmarks' realistic 512x512 slices): half the pixel size over
    the same field of view, the same anatomy at the same patient points, other UIDs."""
    large: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in write_demo_study(tmp_path, matrix=512):
        ds = pydicom.dcmread(path)
        large.setdefault(ds.SeriesDescription, []).append((path, ds))
    assert {k: len(v) for k, v in large.items()} == {k: v[1] for k, v in EXPECTED.items()}
    small_t1, large_t1 = _slice_nearest(series["Ax T1"], 2, 0.0), _slice_nearest(
        large["Ax T1"], 2, 0.0)
    assert (large_t1.Rows, large_t1.Columns) == (512, 512)
    assert [float(v) for v in large_t1.PixelSpacing] == [0.46875, 0.46875]
    # Same field of view: the first pixel's centre is half a new pixel in from its edge.
    corner = np.array(large_t1.ImagePositionPatient, dtype=float)
    assert np.allclose(corner[:2], np.array(small_t1.ImagePositionPatient[:2], float) - 0.234375)
    z = float(large_t1.ImagePositionPatient[2])
    wm, gm, csf = (_mean_at(large_t1, [(x, y, z) for x, y in points])
                   for points in (WHITE_MATTER, DEEP_GREY, VENTRICLE))
    assert wm > gm > csf
    assert abs(wm - _mean_at(small_t1, [(x, y, z) for x, y in WHITE_MATTER])) < 80
    uids = {ds.StudyInstanceUID for items in series.values() for _, ds in items}
    large_uids = {ds.StudyInstanceUID for items in large.values() for _, ds in items}
    assert len(large_uids) == 1 and not uids & large_uids
    assert not ({ds.SOPInstanceUID for items in series.values() for _, ds in items}
                & {ds.SOPInstanceUID for items in large.values() for _, ds in items})
