"""``headers.value`` and ``headers.text`` read raw values the short way; pydicom is the oracle.

Import reads ~45 values of every file through these two. Each must give what
pydicom's own ``Dataset.get`` gives, for every element of every file at hand and
for random strings built to hit the padding, separator and character set rules.
"""

from __future__ import annotations

import warnings
from functools import partial
from io import BytesIO
from pathlib import Path
from random import Random

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from tests.test_fastheader import _part10_files
from viewer.fastheader import read_header
from viewer.headers import text, value

# A keyword per VR that ``_ascii_text`` reads, plus some it leaves to pydicom.
KEYWORDS = {
    "AS": "PatientAge",
    "CS": "Modality",
    "DA": "StudyDate",
    "DT": "AcquisitionDateTime",
    "TM": "StudyTime",
    "LO": "PatientID",
    "SH": "AccessionNumber",
    "UC": "LongCodeValue",
    "UI": "SOPInstanceUID",
    "PN": "PatientName",
    "LT": "AdditionalPatientHistory",
    "AE": "RetrieveAETitle",
    "DS": "SliceThickness",
    "IS": "SeriesNumber",
}
CHARSETS = ["", "ISO_IR 100", "ISO_IR 192", "GB18030", "ISO 2022 IR 6\\ISO 2022 IR 87",
            "ISO_IR 13", "ISO 2022 IR 13\\ISO 2022 IR 87"]
# Characters chosen for the rules: separators, padding, whitespace, escape, non-ASCII.
ALPHABET = b"AZaz09.^=- \\\x00\t\r\n\x1b" + "é".encode() + b"\xa5\xff"


def _pydicom_text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    """``text`` as it was before its short way: the value from pydicom's ``Dataset.get``."""
    try:
        found = ds.get(keyword)
    except Exception:
        return ""
    if found is None:
        return ""
    if isinstance(found, MultiValue):
        found = "\\".join(str(v) for v in found)
    return str(found).strip().replace("\x00", "")[:limit]


def _dataset(charset: str, tag: int, vr: str, raw: bytes, implicit: bool = False) -> Dataset:
    elements = {BaseTag(tag): RawDataElement(BaseTag(tag), None if implicit else vr, len(raw),
                                              raw, 0, implicit, True)}
    if charset:
        encoded = charset.encode()
        elements[BaseTag(0x00080005)] = RawDataElement(
            BaseTag(0x00080005), "CS", len(encoded), encoded, 0, implicit, True)
    return Dataset(elements)


def _pydicom_read(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data), defer_size=4096)


def _outcome(read, *args):  # type: ignore[no-untyped-def]
    """What a read gives: its value's repr, or the kind of error it raises."""
    try:
        return repr(read(*args))
    except Exception as exc:
        return type(exc).__name__


def _same(keywords: list[str], make) -> None:  # type: ignore[no-untyped-def]
    """``text``, then ``value``, of each keyword in fresh data sets against pydicom's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = make(), make()
        for keyword in keywords:
            assert text(ours, keyword, 200) == _pydicom_text(theirs, keyword, 200), keyword
        ours, theirs = make(), make()
        for keyword in keywords:
            assert _outcome(value, ours, keyword) == _outcome(theirs.get, keyword), keyword


def test_every_value_of_every_file_is_pydicoms(corpus: Path) -> None:
    compared = 0
    for path in _part10_files(corpus):
        data = path.read_bytes()
        ds = read_header(data, 64)
        if ds is None:
            continue
        keywords = [
            keyword
            for tag in ds.keys()  # noqa: SIM118 (a Dataset iterates its elements)
            if (keyword := keyword_for_tag(tag)) and tag >> 16 not in (0x7FE0, 0x5600)
        ]
        _same(keywords, partial(read_header, data, 64))
        _same(keywords, partial(_pydicom_read, data))
        compared += len(keywords)
    assert compared > 10_000


@pytest.mark.parametrize("vr", sorted(KEYWORDS))
def test_random_strings_are_read_as_pydicom_reads_them(vr: str) -> None:
    keyword = KEYWORDS[vr]
    tag = int(pydicom.datadict.tag_for_keyword(keyword))  # type: ignore[arg-type]
    assert dictionary_VR(tag) == vr
    rng = Random(f"headers-{vr}")
    for _ in range(400):
        raw = bytes(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 24)))
        if len(raw) % 2:
            raw += rng.choice([b" ", b"\x00"])
        charset = rng.choice(CHARSETS)
        _same([keyword], partial(_dataset, charset, tag, vr, raw))
        _same([keyword], partial(_dataset, charset, tag, vr, raw, implicit=True))


def test_a_value_written_with_another_vr_is_read_with_that_vr() -> None:
    tag = int(pydicom.datadict.tag_for_keyword("PatientID"))  # type: ignore[arg-type]
    for vr in ("CS", "UI", "SH", "UN", "OB", "US"):
        for raw in (b"AB\\ CD ", b" 1.2 \\3\x00", b"\x01\x02"):
            _same(["PatientID"], partial(_dataset, "", tag, vr, raw))


@pytest.mark.parametrize("option", ["datetime_conversion", "raise"])
def test_pydicom_options_are_honoured(option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if option == "datetime_conversion":
        monkeypatch.setattr(config, "datetime_conversion", True)
    else:
        monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    tag = int(pydicom.datadict.tag_for_keyword("StudyDate"))  # type: ignore[arg-type]
    for raw in (b"20261130", b"2026113 ", b"nonsense"):
        _same(["StudyDate"], partial(_dataset, "", tag, "DA", raw))


def test_iso_2022_escapes_are_left_to_pydicom() -> None:
    """JIS X 0208 is 7-bit: after an escape sequence, ASCII bytes are other characters."""
    tag = int(pydicom.datadict.tag_for_keyword("PatientID"))  # type: ignore[arg-type]
    make = partial(_dataset, "\\ISO 2022 IR 87", tag, "LO", b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")
    assert text(make(), "PatientID") == "山田^太郎"
    _same(["PatientID"], make)
