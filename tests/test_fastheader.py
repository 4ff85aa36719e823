"""``fastheader.read_header`` builds the data set pydicom builds, or declines.

Import trusts it for every plain file, so these tests compare it with pydicom on
every file at hand (the shared corpus and pydicom's own test files), element by
element, and check that each kind of file it must not read goes to pydicom.
"""

from __future__ import annotations

import json
import struct
from io import BytesIO
from pathlib import Path
from random import Random

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tests.dicomfactory import encode, make_dataset
from tests.test_malformed import PIXEL_DATA_TAG, nested_sequences
from viewer import fastheader
from viewer.dicomjson import read_metadata
from viewer.fastheader import read_dataset, read_header
from viewer.ingest import MAX_SEQUENCE_DEPTH, Limits, Refused, check, describe
from viewer.render import decode_frame

PYDICOM_FILES = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
DEFER = 4096  # import's pydicom read (``ingest._dcmread``)


def _part10_files(corpus: Path) -> list[Path]:
    """Every file with a preamble and "DICM", in the corpus and in pydicom's test data."""
    found = []
    for path in sorted([*corpus.rglob("*"), *PYDICOM_FILES.rglob("*")]):
        if path.is_file():
            with path.open("rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    found.append(path)
    return found


def _values(ds: Dataset) -> dict[int, tuple[str, str]]:
    """Every element's VR and value as pydicom converts it (pixel data by its place)."""
    values = {}
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if tag >> 16 == 0x7FE0 or tag == 0x56000020:
            values[tag] = ("pixels", f"{element.length} at {element.value_tell}")
            continue
        try:
            converted = ds[tag]
            values[tag] = (converted.VR, repr(converted.value))
        except Exception as exc:  # the same failure is what must match
            values[tag] = ("error", type(exc).__name__)
    return values


def _indexed(ds: Dataset, walked: bool) -> object:
    """What import makes of a data set: its index record, or why it is refused."""
    try:
        check(ds, Limits(), walked)
        return describe(ds)
    except Refused as exc:
        return f"refused: {exc}"


def test_every_file_read_is_what_pydicom_reads(corpus: Path) -> None:
    read = declined = 0
    for path in _part10_files(corpus):
        data = path.read_bytes()
        ours = read_header(data, MAX_SEQUENCE_DEPTH)
        if ours is None:
            declined += 1
            continue
        read += 1
        theirs = pydicom.dcmread(BytesIO(data), defer_size=DEFER)
        assert _values(ours.file_meta) == _values(theirs.file_meta), path
        assert _values(ours) == _values(theirs), path
        fresh = read_header(data, MAX_SEQUENCE_DEPTH)
        assert fresh is not None
        assert _indexed(fresh, walked=True) == _indexed(
            pydicom.dcmread(BytesIO(data), defer_size=DEFER), walked=False), path
    assert read >= 250 and declined <= 25, (read, declined)


def test_stop_before_pixels_is_pydicoms(corpus: Path) -> None:
    read = 0
    for path in _part10_files(corpus):
        data = path.read_bytes()
        ours = read_header(data, MAX_SEQUENCE_DEPTH, stop_before_pixels=True)
        if ours is not None:
            read += 1
            theirs = pydicom.dcmread(BytesIO(data), defer_size=DEFER, stop_before_pixels=True)
            assert _values(ours) == _values(theirs), path
    assert read >= 250


def _metadata(path: Path) -> object:
    try:
        data, left_out = read_metadata(path, "http://x/dicom-web/studies/1", "", 16)
        return json.loads(data), left_out
    except Exception as exc:  # the same failure is what must match
        return type(exc).__name__


def test_metadata_json_is_what_it_is_from_pydicom(corpus: Path, monkeypatch) -> None:
    """WADO-RS metadata reads files through the walk: the JSON must not change."""
    paths = _part10_files(corpus)
    ours = [_metadata(path) for path in paths]
    monkeypatch.setattr(fastheader, "read_header", lambda *args, **kwargs: None)
    for path, fast in zip(paths, ours, strict=True):
        assert fast == _metadata(path), path


def _decoded(ds: Dataset) -> object:
    try:
        frame = decode_frame(ds)
    except Exception as exc:  # the same failure is what must match
        return type(exc).__name__
    return frame.pixels.dtype, frame.pixels.tobytes(), frame.header_window


def test_frames_decode_as_from_pydicom(corpus: Path) -> None:
    """The frame loader reads stored files through the walk: the pixels must not change."""
    read = 0
    for path in _part10_files(corpus):
        with path.open("rb") as handle:
            ours = read_dataset(handle, path.stat().st_size, keep_pixels=True)
        read += read_header(path.read_bytes(), MAX_SEQUENCE_DEPTH, defer_pixels=False) is not None
        assert _decoded(ours) == _decoded(pydicom.dcmread(path)), path
    assert read >= 250


def test_the_corpus_is_read_except_big_endian(corpus: Path) -> None:
    """Every little endian corpus file takes the fast path (else import gains nothing)."""
    for path in _part10_files(corpus):
        if PYDICOM_FILES in path.parents:
            continue
        meta = pydicom.filereader.read_file_meta_info(path)
        syntax = meta.TransferSyntaxUID
        expected = syntax.is_little_endian and not syntax.is_deflated
        assert (read_header(path.read_bytes(), MAX_SEQUENCE_DEPTH) is not None) == expected, path


def test_pixel_data_is_read_from_the_buffer_on_access() -> None:
    source = make_dataset(rows=8, columns=8)
    ds = read_header(encode(source), MAX_SEQUENCE_DEPTH)
    assert ds is not None
    assert ds.get_item("PixelData", keep_deferred=True).value is None
    assert ds.PixelData == source.PixelData
    assert (ds.pixel_array == source.pixel_array).all()


def test_kept_pixel_data_is_the_only_copy() -> None:
    """A multi-frame data set stays in the frame loader's cache: with its pixel data
    kept, it must not hold on to the whole file as well."""
    source = make_dataset(rows=8, columns=8, frames=3)
    ds = read_header(encode(source), MAX_SEQUENCE_DEPTH, defer_pixels=False)
    assert ds is not None and ds.buffer is None
    assert ds.get_item("PixelData", keep_deferred=True).value == source.PixelData
    assert (ds.pixel_array == source.pixel_array).all()


def _with_element(data: bytes, element: bytes) -> bytes:
    at = data.index(PIXEL_DATA_TAG)
    return data[:at] + element + data[at:]


PLAIN = encode(make_dataset())
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
DECLINED = {
    "big endian": get_testdata_file("MR_small_bigendian.dcm"),
    "deflated": get_testdata_file("image_dfl.dcm"),
    "no preamble": get_testdata_file("no_meta.dcm"),
    "meta without a transfer syntax": get_testdata_file("meta_missing_tsyntax.dcm"),
    "meta says explicit VR, the data set is implicit": get_testdata_file("SC_rgb_jpeg.dcm"),
    "undefined length UN (pydicom guesses a sequence)": get_testdata_file("UN_sequence.dcm"),
}


@pytest.mark.parametrize("name", DECLINED)
def test_files_pydicom_must_read_are_declined(name: str) -> None:
    path = DECLINED[name]
    assert path is not None
    assert read_header(Path(path).read_bytes(), MAX_SEQUENCE_DEPTH) is None


BROKEN = {
    "truncated in the pixel data": PLAIN[:-10],
    "truncated in an element header": PLAIN[: PLAIN.index(PIXEL_DATA_TAG) + 6],
    "truncated in the meta": PLAIN[:150],
    "only a preamble": PLAIN[:132],
    "an element longer than the file": _with_element(
        PLAIN, b"\x10\x00\x10\x00PN" + struct.pack("<H", 0xFFF0)),
    "an unknown VR": _with_element(PLAIN, b"\x10\x00\x10\x00QQ\x02\x00AB"),
    "an item outside a sequence": _with_element(PLAIN, b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
    "a sequence with a stray element for an item": _with_element(
        PLAIN, b"\x40\x00\x30\xa7SQ\x00\x00\x08\x00\x00\x00\x10\x00\x10\x00PN\x00\x00"),
    "an undefined length item never closed": _with_element(
        PLAIN, b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"),
    "an item longer than its sequence": _with_element(
        PLAIN, b"\x40\x00\x30\xa7SQ\x00\x00\x08\x00\x00\x00\xfe\xff\x00\xe0\x10\x00\x00\x00"),
    "65 nested sequences (defined length)": nested_sequences(MAX_SEQUENCE_DEPTH + 1, False),
    "65 nested sequences (undefined length)": nested_sequences(MAX_SEQUENCE_DEPTH + 1, True),
    "an element twice": _with_element(PLAIN, b"\x08\x00\x60\x00CS\x02\x00OT"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_are_left_to_pydicom(name: str) -> None:
    """The walk never refuses: import's pydicom path decides, with its reasons."""
    assert read_header(BROKEN[name], MAX_SEQUENCE_DEPTH) is None


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on damaged tags and values
def test_damaged_files_are_read_as_pydicom_reads_them_or_declined(corpus: Path) -> None:
    """Files with bytes overwritten or cut short, at random places: the walk never
    raises, and what it does read is what pydicom reads."""
    random = Random(20261130)
    sources = [sorted((corpus / "ge-t1-mprage").glob("i*"))[0], CT_SMALL,
               Path(get_testdata_file("rtplan.dcm")), Path(get_testdata_file("MR_small.dcm")),
               Path(get_testdata_file("MR_small_implicit.dcm"))]
    read = 0
    for source in sources:
        original = source.read_bytes()
        pixels = original.find(PIXEL_DATA_TAG)
        header_end = len(original) if pixels < 0 else min(len(original), pixels + 16)
        for _ in range(150):
            data = bytearray(original)
            at = random.randrange(132, header_end)
            if random.random() < 0.2:
                del data[at:]
            else:
                data[at : at + 4] = random.randbytes(4)
            ours = read_header(bytes(data), MAX_SEQUENCE_DEPTH)
            if ours is None:
                continue
            read += 1
            try:
                theirs = pydicom.dcmread(BytesIO(bytes(data)), defer_size=DEFER)
            except Exception:  # pydicom refuses what the walk read: a difference
                pytest.fail(f"{source.name}: the walk read bytes pydicom cannot ({at})")
            assert _values(ours) == _values(theirs), (source.name, at)
    assert read > 100


@pytest.mark.parametrize("undefined_length", [False, True])
def test_nesting_up_to_the_limit_is_read(undefined_length: bool) -> None:
    data = nested_sequences(MAX_SEQUENCE_DEPTH, undefined_length)
    ours = read_header(data, MAX_SEQUENCE_DEPTH)
    assert ours is not None
    assert _values(ours) == _values(pydicom.dcmread(BytesIO(data), defer_size=DEFER))


def test_implicit_vr_private_sequence_is_walked() -> None:
    """A private implicit VR element of undefined length that holds items is a sequence
    to pydicom, so its nesting counts (and a too deep one is declined)."""
    source = make_dataset()
    source.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    data = encode(source)
    inner = b""
    for _ in range(MAX_SEQUENCE_DEPTH + 1):
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        inner = b"\x09\x00\x10\x10\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert read_header(_with_element(data, inner), MAX_SEQUENCE_DEPTH) is None
    assert read_header(data, MAX_SEQUENCE_DEPTH) is not None


