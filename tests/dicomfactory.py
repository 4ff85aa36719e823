"""Small DICOM files made on the spot, for import and bad-input tests."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def make_dataset(
    rows: int = 16,
    columns: int = 16,
    frames: int | None = None,
    bits: int = 16,
    bits_stored: int | None = None,
    pixels: bytes | None = None,
    photometric: str = "MONOCHROME2",
    patient: tuple[str, str] = ("P-TEST", "Test^Patient"),
) -> Dataset:
    """A valid grey Secondary Capture image (8 or 16 bits) with fresh UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    stored = bits_stored or bits
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if pixels is None:
        count = rows * columns * (frames or 1)
        values = np.arange(count, dtype=np.uint32) % min(2**stored, 4000)
        pixels = values.astype("<u2" if bits == 16 else "u1").tobytes()
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


def encode(ds: Dataset) -> bytes:
    """The data set as a Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
