"""Malformed DICOM (security.md, "Malformed input"): every broken file ends either refused
at import with a clear reason, or imported and answered 422 with a JSON reason by the
rendered endpoint. Never a 500, an escaping exception, a hang, or changed stored data."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import simplejpeg
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from sqlalchemy import func, select

from viewer import Services, ingest
from viewer.db import Instance
from viewer.headers import codestream_size

from . import dicomfactory
from .dicomfactory import encode

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


# --- building broken files -------------------------------------------------------------


def make_dataset(rows: int = 16, columns: int = 16, bits: int = 16,
                 pixels: bytes | None = None, photometric: str = "MONOCHROME2") -> Dataset:
    """A small valid grey image (16 or 8 bits) with fresh UIDs."""
    return dicomfactory.make_dataset(rows, columns, bits=bits, pixels=pixels,
                                     photometric=photometric,
                                     patient=("P-MALFORMED", "Malformed^Test"))


def with_value(keyword: str, value: object, vr: str | None = None) -> bytes:
    ds = make_dataset()
    if vr is None:
        setattr(ds, keyword, value)
    else:
        ds.add_new(keyword, vr, value)
    return encode(ds)


def with_raw_value(tag_and_vr: bytes, raw: bytes) -> bytes:
    """A valid file (with a window) whose element (tag + explicit VR) holds ``raw`` bytes."""
    ds = make_dataset()
    ds.WindowCenter, ds.WindowWidth = 100, 200
    data = encode(ds)
    at = data.index(tag_and_vr)
    old_length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    raw += b" " * (len(raw) % 2)
    return data[: at + 6] + struct.pack("<H", len(raw)) + raw + data[at + 8 + old_length :]


def number_of_frames(raw: bytes) -> bytes:
    ds = make_dataset()
    ds.NumberOfFrames = 1
    data = encode(ds)
    at = data.index(b"\x28\x00\x08\x00IS")
    raw += b" " * (len(raw) % 2)
    return data[: at + 6] + struct.pack("<H", len(raw)) + raw + data[at + 10 :]


def truncated_in_pixel_data() -> bytes:
    data = encode(make_dataset())
    return data[: len(data) - 200]


def truncated_before_pixel_data() -> bytes:
    data = encode(make_dataset())
    return data[: data.index(PIXEL_DATA_TAG)]


def truncated_before_rows() -> bytes:
    """Cut between SOP Class UID and Rows: an image with no image left in it."""
    data = encode(make_dataset())
    return data[: data.index(b"\x28\x00\x02\x00")]  # (0028,0002) Samples per Pixel


def truncated_in_meta(cut: int) -> bytes:
    return encode(make_dataset())[:cut]


def with_vr(tag_and_vr: bytes, vr: bytes, ds: Dataset | None = None) -> bytes:
    """A file whose element (tag + explicit VR) claims another, unknown VR."""
    data = encode(ds or make_dataset())
    at = data.index(tag_and_vr)
    return data[: at + 4] + vr + data[at + 6 :]


def with_content_time() -> Dataset:
    ds = make_dataset()
    ds.ContentTime = "101010"
    return ds


def palette_one_column() -> bytes:
    """PALETTE COLOR whose pixel data holds 16 times Rows x Columns (pydicom reads frames)."""
    ds = pydicom.dcmread(io.BytesIO(palette(256, 256)))
    ds.Columns = 1
    return encode(ds)


def palette_three_samples() -> bytes:
    """PALETTE COLOR with three samples per pixel: indexes cannot be three numbers."""
    ds = pydicom.dcmread(io.BytesIO(palette(256, 256)))
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = bytes(range(256)) * 3
    return encode(ds)


def jpeg_frames_claimed(frames: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(jpeg_dataset([jpeg_frame()])))
    ds.NumberOfFrames = frames
    return encode(ds)


def instance_number(raw: str) -> bytes:
    ds = make_dataset()
    ds.InstanceNumber = raw
    return encode(ds)


def transfer_syntax_uid(uid: bytes) -> bytes:
    """A valid file whose meta names ``uid`` (20 bytes, padded) as its transfer syntax."""
    data = encode(make_dataset())
    assert data.count(b"1.2.840.10008.1.2.1\0") == 1
    return data.replace(b"1.2.840.10008.1.2.1\0", uid)


def deflated(data: bytes) -> bytes:
    """An Explicit VR Little Endian file made Deflated Explicit VR Little Endian: its data
    set deflated as it stands (cut short or broken, it stays so once inflated)."""
    start = 144 + struct.unpack("<I", data[140:144])[0]  # after the file meta group
    at = data.index(b"\x02\x00\x10\x00UI", 132, start)  # Transfer Syntax UID
    end = at + 8 + struct.unpack("<H", data[at + 6 : at + 8])[0]
    uid = DeflatedExplicitVRLittleEndian.encode()  # 22 characters: no padding
    meta = data[144:at] + data[at : at + 6] + struct.pack("<H", len(uid)) + uid + data[end:start]
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return (data[:140] + struct.pack("<I", len(meta)) + meta + deflater.compress(data[start:])
            + deflater.flush())


def ge_slice_with_short_pixels(corpus: Path, syntax: str) -> bytes:
    """A GE corpus slice (256x256, 16 bits) in ``syntax`` with 700 bytes of pixel data."""
    path = next(p for p in sorted((corpus / "ge-t1-mprage").iterdir()) if p.name != "LICENSE")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = b"\x01\x02" * 350  # 131072 bytes expected
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def pixel_data_length(length: int) -> bytes:
    data = bytearray(encode(make_dataset()))
    at = data.index(PIXEL_DATA_TAG)
    data[at + 8 : at + 12] = struct.pack("<I", length)
    return bytes(data)


def patient_name_length_past_end() -> bytes:
    data = bytearray(encode(make_dataset()))
    at = data.index(b"\x10\x00\x10\x00PN")
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    return bytes(data)


def pixels_of_length(count: int) -> bytes:
    return encode(make_dataset(pixels=bytes(count)))


def bits_allocated(bits: int) -> bytes:
    ds = make_dataset()
    ds.BitsAllocated = bits
    ds.BitsStored = ds.HighBit = max(bits - 1, 0)
    if bits:
        ds.PixelData = bytes(16 * 16 * bits // 8)
    return encode(ds)


def image_size(rows: int, columns: int, samples: int = 1) -> bytes:
    ds = make_dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    return encode(ds)


def palette(entries: int, table_entries: int) -> bytes:
    """PALETTE COLOR with pixel values 0..255 and a LUT that is shorter than that."""
    ds = make_dataset(bits=8, pixels=bytes(range(256)), photometric="PALETTE COLOR")
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries, 0, 16])
        table = np.linspace(0, 65535, table_entries).astype("<u2").tobytes()
        setattr(ds, f"{colour}PaletteColorLookupTableData", table)
    return encode(ds)


def jpeg_frame(rows: int = 16, columns: int = 16) -> bytes:
    image = (np.arange(rows * columns) % 256).astype(np.uint8).reshape(rows, columns, 1)
    return bytes(simplejpeg.encode_jpeg(image, quality=90, colorspace="GRAY"))


def with_sof_size(frame: bytes, rows: int, columns: int) -> bytes:
    at = frame.index(b"\xff\xc0")
    return frame[: at + 5] + struct.pack(">HH", rows, columns) + frame[at + 9 :]


def jpeg_dataset(frames: list[bytes], rows: int = 16, columns: int = 16) -> bytes:
    ds = make_dataset(rows=rows, columns=columns, bits=8, pixels=encapsulate(frames))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    return encode(ds)


def jpeg2000_with_size(rows: int, columns: int) -> bytes:
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_jp2klossless.dcm")  # 64x64
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    return encode(ds)


def nested_sequences(levels: int, undefined_length: bool) -> bytes:
    """``levels`` ContentSequence (0040,A730) items, each inside the one before."""
    inner = b""
    for _ in range(levels):
        if undefined_length:
            item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
            inner = (b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + item
                     + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        else:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
            inner = b"\x40\x00\x30\xa7SQ\x00\x00" + struct.pack("<I", len(item)) + item
    data = encode(make_dataset())
    at = data.index(PIXEL_DATA_TAG)
    return data[:at] + inner + data[at:]


def macro_not_a_sequence() -> bytes:
    """A shared functional group whose position and window macros are written as text."""
    ds = make_dataset()
    group = Dataset()
    group.add_new("PlanePositionSequence", "LO", "abc")
    group.add_new("FrameVOILUTSequence", "LO", "abc")
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([group])
    return encode(ds)


def uid(keyword: str, value: str) -> bytes:
    ds = make_dataset()
    setattr(ds, keyword, value)
    return encode(ds)


# --- the cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    refused: str = ""  # a part of the import reason; empty: imported
    status: int = 0  # the rendered endpoint's answer when imported


CASES: dict[str, Case] = {
    "control: a valid file": Case(lambda: encode(make_dataset()), status=200),
    "truncated in the pixel data": Case(truncated_in_pixel_data, "the file is truncated"),
    "truncated just before the pixel data": Case(truncated_before_pixel_data,
                                                 "ends before its pixel data"),
    "truncated before Rows": Case(truncated_before_rows, "truncated or incomplete: an image "
                                  "(Secondary Capture Image Storage) without pixel data"),
    "truncated in the meta header": Case(lambda: truncated_in_meta(150), "the file is truncated"),
    "truncated inside a meta element": Case(lambda: truncated_in_meta(190),
                                            "the file is truncated"),
    "truncated inside the SOP Instance UID": Case(lambda: truncated_in_meta(400),
                                                  "the file is truncated"),
    "only a preamble": Case(lambda: truncated_in_meta(132), "the file is truncated"),
    "truncated inside the meta group length": Case(lambda: truncated_in_meta(138),
                                                   "the file is truncated"),
    "BitsAllocated with a VR that does not exist": Case(
        lambda: with_vr(b"\x28\x00\x00\x01US", b"U\xd3"),
        "BitsAllocated (missing or unreadable) is not 1, 8, 16 or 32"),
    "ContentTime with a VR that does not exist": Case(
        lambda: with_vr(b"\x08\x00\x33\x00TM", b"PM", with_content_time()), status=200),
    "a transfer syntax UID that names no transfer syntax": Case(
        lambda: transfer_syntax_uid(b"1.2.840.10008.1.2.3\0"), status=422),
    "a private transfer syntax": Case(
        lambda: transfer_syntax_uid(b"1.2.840.113619.5.2\0\0"), status=422),
    "pixel data length larger than the file": Case(lambda: pixel_data_length(0x7FFFFFF0),
                                                   "claims 2147483632 bytes"),
    "element length larger than the file": Case(patient_name_length_past_end,
                                                "element (0010,0010) claims 65520 bytes"),
    "rows x columns huge": Case(lambda: image_size(65535, 65535), "VIEWER_MAX_FRAME_PIXELS"),
    "rows x columns just over the limit": Case(lambda: image_size(4097, 4096),
                                               "VIEWER_MAX_FRAME_PIXELS"),
    "samples per pixel huge": Case(lambda: image_size(4096, 4096, 65535),
                                   "SamplesPerPixel 65535 is not 1 or 3"),
    "samples per pixel 0": Case(lambda: image_size(16, 16, 0), "SamplesPerPixel 0"),
    "no rows": Case(lambda: image_size(0, 16), "no Rows/Columns"),
    "NumberOfFrames 0": Case(lambda: number_of_frames(b"0"), "NumberOfFrames '0'"),
    "NumberOfFrames negative": Case(lambda: number_of_frames(b"-1"), "NumberOfFrames '-1'"),
    "NumberOfFrames abc": Case(lambda: number_of_frames(b"abc"), "NumberOfFrames 'abc'"),
    "NumberOfFrames 1.5": Case(lambda: number_of_frames(b"1.5"), "NumberOfFrames '1.5'"),
    "NumberOfFrames huge": Case(lambda: number_of_frames(b"2147483647"), "VIEWER_MAX_FRAMES"),
    "BitsAllocated 0": Case(lambda: bits_allocated(0), "BitsAllocated '0' is not 1, 8, 16 or 32"),
    "BitsAllocated 64": Case(lambda: bits_allocated(64), "BitsAllocated '64'"),
    "BitsAllocated 12": Case(lambda: bits_allocated(12), "BitsAllocated '12'"),
    "pixel data shorter than declared": Case(lambda: pixels_of_length(100),
                                             "pixel data is truncated (100 bytes, 512 expected)"),
    "pixel data longer than declared": Case(lambda: pixels_of_length(512 + 256), status=200),
    "palette indexes beyond the LUT": Case(lambda: palette(16, 16), status=200),
    "palette LUT shorter than its descriptor": Case(lambda: palette(256, 16), status=422),
    "palette pixel data holding many times Rows x Columns": Case(palette_one_column, status=200),
    "palette with three samples per pixel": Case(palette_three_samples, status=422),
    "InstanceNumber past 64 bits": Case(lambda: instance_number("99999999999999999999"),
                                        status=200),
    "JPEG control: a valid frame": Case(lambda: jpeg_dataset([jpeg_frame()]), status=200),
    "JPEG frame that is garbage": Case(
        lambda: jpeg_dataset([b"\xff\xd8" + bytes(300) + b"\xff\xd9"]), status=422),
    "JPEG frame that is not JPEG at all": Case(lambda: jpeg_dataset([b"GIF89a" + bytes(64)]),
                                               status=422),
    "NumberOfFrames larger than the encoded fragments": Case(
        lambda: jpeg_frames_claimed(2), "NumberOfFrames says 2 but the pixel data holds 1 "
        "encoded fragment"),
    "JPEG frame smaller than Rows/Columns": Case(
        lambda: jpeg_dataset([jpeg_frame(8, 8)]), "encoded frame is 8x8 pixels"),
    "JPEG frame larger than Rows/Columns": Case(
        lambda: jpeg_dataset([jpeg_frame(32, 32)]), "but Rows/Columns say 16x16"),
    "JPEG decompression bomb (header claims 60000x60000)": Case(
        lambda: jpeg_dataset([with_sof_size(jpeg_frame(), 60000, 60000)]),
        "encoded frame is 60000x60000 pixels"),
    "JPEG 2000 frame disagreeing with Rows/Columns": Case(
        lambda: jpeg2000_with_size(32, 32), "encoded frame is 64x64 pixels"),
    "500 nested sequences (undefined length)": Case(
        lambda: nested_sequences(500, True), "nested more than 64 levels"),
    "500 nested sequences (defined length)": Case(
        lambda: nested_sequences(500, False), "nested more than 64 levels"),
    "20 nested sequences are fine": Case(lambda: nested_sequences(20, False), status=200),
    "ModalityLUTSequence that is not a sequence": Case(
        lambda: with_value("ModalityLUTSequence", "abc", "LO"), "ModalityLUTSequence is not"),
    "VOILUTSequence that is not a sequence": Case(
        lambda: with_value("VOILUTSequence", "abc", "LO"), "VOILUTSequence is not"),
    "PerFrameFunctionalGroupsSequence that is not a sequence": Case(
        lambda: with_value("PerFrameFunctionalGroupsSequence", "abc", "LO"),
        "PerFrameFunctionalGroupsSequence is not"),
    "functional group macros that are not sequences": Case(macro_not_a_sequence, status=200),
    "window values that are not numbers": Case(
        lambda: with_raw_value(b"\x28\x00\x50\x10DS", b"abc\\-"), status=200),
    "window width that is not a number": Case(
        lambda: with_raw_value(b"\x28\x00\x51\x10DS", b"1e999"), status=200),
    "PhotometricInterpretation multi-valued": Case(
        lambda: with_value("PhotometricInterpretation", ["MONOCHROME2", "RGB"], "CS"),
        status=422),
    # A deflated file gets the checks of any other, on its inflated data set.
    "deflated control: a valid file": Case(lambda: deflated(encode(make_dataset())), status=200),
    "deflated, pixel data shorter than declared": Case(
        lambda: deflated(pixels_of_length(100)),
        "pixel data is truncated (100 bytes, 512 expected)"),
    "deflated, truncated in the pixel data": Case(
        lambda: deflated(truncated_in_pixel_data()),
        "the file is truncated: element (7FE0,0010) claims 512 bytes, only 312 are left"),
    "deflated, the deflate stream cut short": Case(
        lambda: deflated(encode(make_dataset()))[:-40],
        "the file is truncated: its deflated data set is cut short"),
    "deflated, rows x columns just over the limit": Case(
        lambda: deflated(image_size(4097, 4096)), "VIEWER_MAX_FRAME_PIXELS"),
    "deflated, NumberOfFrames huge": Case(
        lambda: deflated(number_of_frames(b"2147483647")), "VIEWER_MAX_FRAMES"),
}
for _keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
    for _label, _value in (("letters", "1.2.840.abc"), ("65 characters", "1." + "2" * 63),
                           ("a path", "../../../etc/passwd"), ("empty parts", "1..2"),
                           ("two values", "1.2.3\\4.5.6")):
        CASES[f"{_keyword} with {_label}"] = Case(
            lambda k=_keyword, v=_value: uid(k, v), f"{_keyword} is not a valid UID")


def rendered_url(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/rendered")


def instance_count(services: Services) -> int:
    with services.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Instance)) or 0)


def stored_files(services: Services) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in services.store.root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_refused_or_answered_422(
    name: str, services: Services, client: FlaskClient, auth: dict[str, str], tmp_path: Path
) -> None:
    case = CASES[name]
    data = case.build()
    source = tmp_path / "input.dcm"
    source.write_bytes(data)

    summary = services.importer.import_paths([source])

    assert len(summary.outcomes) == 1
    outcome = summary.outcomes[0]
    assert list(services.store.tmp.iterdir()) == []
    if case.refused:
        assert outcome.status == "refused", outcome
        assert case.refused in outcome.reason
        assert stored_files(services) == {}
        assert instance_count(services) == 0
        return
    assert (outcome.status, outcome.reason) == ("imported", "")
    response = client.get(rendered_url(data), headers=auth)
    assert response.status_code == case.status, response.get_data(as_text=True)[:300]
    if case.status == 422:
        assert response.is_json
        assert response.get_json()["error"]
    else:
        assert response.mimetype.startswith("image/")
    # Rendering never changes what was stored: still the original bytes under their hash.
    assert stored_files(services) == {hashlib.sha256(data).hexdigest(): data}
    assert source.read_bytes() == data


def test_broken_frames_of_a_multiframe_instance_answer_422(
    services: Services, client: FlaskClient, auth: dict[str, str], tmp_path: Path
) -> None:
    garbage = b"\xff\xd8" + bytes(300) + b"\xff\xd9"
    data = jpeg_dataset([jpeg_frame(), garbage])
    (tmp_path / "two.dcm").write_bytes(data)
    assert services.importer.import_paths([tmp_path / "two.dcm"]).counts == {"imported": 1}
    frames = rendered_url(data).removesuffix("/rendered") + "/frames/{}/rendered"

    assert client.get(frames.format(1), headers=auth).status_code == 200
    response = client.get(frames.format(2), headers=auth)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error == ("cannot decode the pixel data of frame 2 (JPEG Baseline (Process 1)): "
                     "it is corrupt or cut short")  # the decoders' own words stay in the log
    assert client.get(frames.format(3), headers=auth).status_code == 404


def test_a_frame_that_fails_mid_answer_cuts_the_multipart_short(
    services: Services, client: FlaskClient, auth: dict[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Frame 1 is sent before frame 2 is read: when frame 2 cannot be, the answer ends
    without its closing delimiter (an incomplete multipart, not a frame left out)."""
    data = jpeg_dataset([jpeg_frame(), b"\xff\xd8" + bytes(300) + b"\xff\xd9"])
    (tmp_path / "two.dcm").write_bytes(data)
    assert services.importer.import_paths([tmp_path / "two.dcm"]).counts == {"imported": 1}
    frames = rendered_url(data).removesuffix("/rendered") + "/frames/1,2"
    octets = {**auth, "Accept": 'multipart/related; type="application/octet-stream"'}
    response = client.get(frames, headers=octets)
    assert response.status_code == 200
    body = response.get_data()
    boundary = response.headers["Content-Type"].rsplit("boundary=", 1)[1].encode()
    assert body.count(b"--" + boundary) == 1 and not body.endswith(b"--" + boundary + b"--\r\n")
    assert len(np.frombuffer(body.split(b"\r\n\r\n", 1)[1][:256], np.uint8)) == 256
    assert "cut short: cannot decode the pixel data of frame 2" in caplog.text


def test_a_decoder_panic_is_a_422(services: Services, client: FlaskClient,
                                  auth: dict[str, str], corpus: Path, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """One byte changed in an RLE segment makes pylibjpeg-rle's Rust decoder panic; pyo3
    raises that as PanicException, a BaseException that ``except Exception`` misses."""
    data = bytearray((corpus / "siemens-transfer-syntaxes" / "4.dcm").read_bytes())
    assert data[105196] == 0xF5  # the corpus file as the fuzzer found it
    data[105196] = 0xBC
    (tmp_path / "rle.dcm").write_bytes(data)
    assert services.importer.import_paths([tmp_path / "rle.dcm"]).counts == {"imported": 1}
    instance = rendered_url(bytes(data)).removesuffix("/rendered")
    octets = {**auth, "Accept": 'multipart/related; type="application/octet-stream"'}
    for url, headers in ((instance + "/rendered", auth), (instance + "/thumbnail", auth),
                         (instance + "/frames/1", octets), (instance, auth)):
        response = client.get(url, headers=headers)
        assert response.status_code == 422, url
        error = response.get_json()["error"]
        assert "corrupt or cut short" in error and "index out of bounds" not in error
    assert "index out of bounds" in caplog.text  # the panic's own words, for the log
    stored = client.get(instance, headers={**auth, "Accept": 'multipart/related; '
                                           'type="application/dicom"; transfer-syntax=*'})
    assert stored.status_code == 200 and bytes(data) in stored.get_data()


def test_a_batch_twin_of_a_file_that_cannot_be_indexed_is_not_present(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second source of a SOP Instance UID in one batch waits for the first: if the
    first could not be indexed, the twin is refused too, never 'present'."""
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the index is broken")

    monkeypatch.setattr(ingest, "index_instances", broken)
    monkeypatch.setattr(ingest, "index_record", broken)
    ds = make_dataset()
    first = encode(ds)
    ds.PatientName = "Other^Bytes"
    other = encode(ds)
    for name, data in (("a.dcm", first), ("b.dcm", first), ("c.dcm", other)):
        (tmp_path / name).write_bytes(data)
    summary = services.importer.import_paths([tmp_path / n for n in ("a.dcm", "b.dcm", "c.dcm")])
    reason = "could not be indexed (the index is broken)"
    assert [(o.status, o.reason) for o in summary.outcomes] == [
        ("refused", reason), ("refused", reason),
        ("refused", f"same SOP Instance UID as {tmp_path / 'a.dcm'}, which was refused: "
                    f"{reason}"),
    ]
    assert stored_files(services) == {}


def test_multiframe_instance_with_no_decodable_frame_answers_422(
    services: Services, client: FlaskClient, auth: dict[str, str], tmp_path: Path
) -> None:
    garbage = b"\xff\xd8" + bytes(300) + b"\xff\xd9"
    data = jpeg_dataset([garbage, garbage])
    (tmp_path / "two.dcm").write_bytes(data)
    assert services.importer.import_paths([tmp_path / "two.dcm"]).counts == {"imported": 1}

    response = client.get(rendered_url(data), headers=auth)

    assert response.status_code == 422


def voi_lut_in_ow() -> bytes:
    """A valid VOI LUT whose LUT Data is OW (PS3.3 C.11.2.1.1 allows US or OW)."""
    ds = make_dataset()
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 16])
    item.add_new("LUTData", "OW", np.arange(0, 65536, 256, dtype="<u2").tobytes())
    ds.VOILUTSequence = pydicom.Sequence([item])
    return encode(ds)


def modality_lut_without_descriptor() -> bytes:
    ds = make_dataset()
    item = Dataset()
    item.add_new("LUTData", "US", list(range(16)))
    ds.ModalityLUTSequence = pydicom.Sequence([item])
    return encode(ds)


@pytest.mark.parametrize(("build", "status"), [
    (voi_lut_in_ow, 200), (modality_lut_without_descriptor, 422),
], ids=["VOI LUT Data in OW", "Modality LUT without descriptor"])
def test_lookup_tables_never_answer_500(
    build: Callable[[], bytes], status: int, services: Services, client: FlaskClient,
    auth: dict[str, str], tmp_path: Path,
) -> None:
    data = build()
    (tmp_path / "lut.dcm").write_bytes(data)
    assert services.importer.import_paths([tmp_path / "lut.dcm"]).counts == {"imported": 1}

    response = client.get(rendered_url(data), headers=auth)

    assert response.status_code == status


def test_pydicom_broken_test_files(services: Services, tmp_path: Path) -> None:
    """pydicom's own broken files: refused with the real reason, the batch goes on."""
    names = ["MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm", "badVR.dcm",
             "JPEG2000-embedded-sequence-delimiter.dcm", "CT_small.dcm"]
    summary = services.importer.import_paths([PYDICOM_FILES / n for n in names])
    reasons = {Path(o.source).name: (o.status, o.reason) for o in summary.outcomes}
    assert reasons["MR_truncated.dcm"] == (
        "refused", "the file is truncated: element (7FE0,0010) claims 8192 bytes, "
        "only 8130 are left")
    assert reasons["rtplan_truncated.dcm"][1].startswith("the file is truncated")
    assert reasons["no_meta.dcm"][0] == "refused"
    assert reasons["badVR.dcm"] == (
        "refused", "NumberOfFrames '1A' is not a whole number of 1 or more")
    assert reasons["JPEG2000-embedded-sequence-delimiter.dcm"][1].startswith(
        "an encoded frame is")
    assert reasons["CT_small.dcm"] == ("imported", "")


def test_an_unforeseen_failure_refuses_only_that_file(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else goes wrong reading a file is that file's refusal, never the batch's."""
    good, bad = encode(make_dataset()), encode(make_dataset(rows=8))
    real = ingest.describe

    def describe(ds: Dataset) -> ingest.Record:
        if int(ds.Rows) == 8:
            raise RuntimeError("a failure nobody foresaw")
        return real(ds)

    monkeypatch.setattr(ingest, "describe", describe)
    (tmp_path / "good.dcm").write_bytes(good)
    (tmp_path / "bad.dcm").write_bytes(bad)
    services.importer.workers = 1
    summary = services.importer.import_paths([tmp_path / "bad.dcm", tmp_path / "good.dcm"])
    assert [(Path(o.source).name, o.status, o.reason) for o in summary.outcomes] == [
        ("bad.dcm", "refused", "not a readable DICOM file (a failure nobody foresaw)"),
        ("good.dcm", "imported", ""),
    ]
    assert stored_files(services) == {hashlib.sha256(good).hexdigest(): good}
    assert list(services.store.tmp.iterdir()) == []


def test_codestream_size_reads_jpeg_jpegls_and_jpeg2000_headers() -> None:
    assert codestream_size(jpeg_frame(24, 40)) == (24, 40)
    assert codestream_size(with_sof_size(jpeg_frame(), 65535, 1)) == (65535, 1)
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_jp2klossless.dcm")
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert codestream_size(frame) == (64, 64)
    ds = pydicom.dcmread(PYDICOM_FILES / "JPEGLSNearLossless_08.dcm")
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert codestream_size(frame) == (ds.Rows, ds.Columns)
    assert codestream_size(b"") is None
    assert codestream_size(b"\xff\xd8\xff\xe0\x00") is None  # cut before any frame header
    assert codestream_size(b"\xff\xd8" + b"\xff\xe0\x00\x02" * 10) is None
    assert codestream_size(b"GIF89a") is None
