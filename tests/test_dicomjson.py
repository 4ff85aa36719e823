"""WADO-RS metadata (``dicomjson.read_metadata``) is pydicom's DICOM JSON of each file.

The answer converts plain values itself and, for a series, converts each distinct value
once (a memo carried from one instance to the next). Both must give what pydicom's
``DataElement.to_json_dict`` gives, for every file at hand and whatever instance came
before; the second half of this file makes instances whose equal bytes mean different
things, which is what the memo must tell apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from tests.dicomfactory import encode, make_dataset
from tests.test_fastheader import _part10_files
from viewer.dicomjson import BINARY_VRS, BULK_THRESHOLD, ValueMemo, read_metadata

STUDY = "http://x/dicom-web/studies/1/series/2/instances/"
# pydicom keeps the padding of each value but the last of a multi-valued string; the
# standard says it is not significant (PS3.5 6.2), and the JSON leaves it out.
PADDED_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC"}


def _stored_vr(ds: Dataset, tag: int) -> str:
    """The VR a bulk data reference names: as stored, or the dictionary's (else UN).

    pydicom looks a private element of an implicit VR file up in its private dictionary;
    the reference says UN, which is what the file says."""
    raw = ds.get_item(tag, keep_deferred=True)
    if raw.VR:
        return str(raw.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _reference(ds: Dataset, url: str, path: str, left_out: list[str]) -> dict[str, Any]:
    """``ds`` as DICOM JSON made by pydicom alone, value by value."""
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        key = f"{tag:08X}"
        stored_vr = _stored_vr(ds, tag)  # before ds[tag] converts it in place
        try:
            element = ds[tag]
            if element.VR == "SQ":
                items = [_reference(item, url, f"{path}{key}/{i}/", left_out)
                         for i, item in enumerate(element.value)]
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            elif (element.VR in BINARY_VRS and element.value is not None
                  and len(element.value) > BULK_THRESHOLD):
                out[key] = {"vr": stored_vr,
                            "BulkDataURI": f"{url}/bulkdata/{path}{key}"}
            else:
                out[key] = element.to_json_dict(None, BULK_THRESHOLD)
                if element.VR in PADDED_VRS and "Value" in out[key]:
                    out[key]["Value"] = [v.strip(" ") if isinstance(v, str) else v
                                         for v in out[key]["Value"]]
        except Exception:  # the elements pydicom cannot convert are the ones left out
            left_out.append(f"{path}{key}")
    return out


def _expected(path: Path) -> tuple[dict[str, Any], list[str]]:
    left_out: list[str] = []
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return _reference(ds, STUDY + path.name, "", left_out), sorted(left_out)


def _ours(path: Path, memo: ValueMemo) -> tuple[dict[str, Any], list[str]]:
    data, left_out = read_metadata(path, STUDY + path.name, "", 0, memo)
    return json.loads(data), sorted(element for element, _why in left_out)


def test_every_file_is_pydicoms_json_whatever_came_before(corpus: Path) -> None:
    """One memo for all of them, in two orders: the corpus has the same slice in nine
    transfer syntaxes, and pydicom's files have the same names in many character sets."""
    paths = []
    for path in _part10_files(corpus):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom's deliberately broken files: not this test's subject
            continue
        paths.append(path)
    expected = {path: _expected(path) for path in paths}
    for order in (paths, paths[::-1]):
        memo = ValueMemo()
        for path in order:
            assert _ours(path, memo) == expected[path], path
    assert len(paths) >= 290 and len(memo) > 1000


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _implicit(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _pixel_sign(representation: int) -> bytes:
    """SmallestImagePixelValue is US or SS by PixelRepresentation: the same two bytes
    are 65535 or -1."""
    ds = _implicit(make_dataset())
    ds.PixelRepresentation = representation
    ds.add_new(0x00280106, "US" if representation == 0 else "SS",
               65535 if representation == 0 else -1)
    return encode(ds)


def _private_creator(creator: str) -> bytes:
    """A private element of an implicit VR file: pydicom finds its VR from the creator."""
    ds = _implicit(make_dataset())
    ds.add_new(0x00290010, "LO", creator)
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
    return encode(ds)


def _charset(charset: str) -> bytes:
    """The same bytes in another character set: "Müller" in UTF-8 is "MÃ¼ller" in
    ISO 8859-1, and something else again in ISO 8859-5 or 8859-2 (which pydicom decodes)."""
    ds = make_dataset()
    ds.SpecificCharacterSet = charset
    ds.add_new(0x00081030, "LO", "Müller".encode())
    return encode(ds)


def _byte_order(big: bool) -> bytes:
    """Columns 16 in big endian is the bytes of 4096 in little endian."""
    ds = make_dataset()
    ds.add_new(0x00181310, "US", [16, 0, 0, 16] if big else [4096, 0, 0, 4096])
    if big:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return encode(ds)


def _bulk_in_sequence(_which: bool) -> bytes:
    """Equal sequences whose item holds bulk data: each names its own instance."""
    ds = make_dataset()
    item = Dataset()
    item.add_new(0x00189114, "OB", b"\x01" * 2000)
    ds.add_new(0x00540016, "SQ", [item])
    return encode(ds)


def _not_a_number(_which: bool) -> bytes:
    """Text in a DS (as GE writes it into a private element): left out of each instance."""
    ds = make_dataset()
    ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
    ds.add_new(0x00431080, "SH", "P1:\\GEHC")
    return encode(ds).replace(b"\x43\x00\x80\x10SH", b"\x43\x00\x80\x10DS")


CASES: dict[str, tuple[Callable[[Any], bytes], Any, Any]] = {
    "US or SS": (_pixel_sign, 0, 1),
    "private creator": (_private_creator, "SIEMENS CSA HEADER", "SOMEONE ELSE"),
    "character set": (_charset, "ISO_IR 100", "ISO_IR 192"),
    "character sets pydicom decodes": (_charset, "ISO_IR 144", "ISO_IR 101"),
    "byte order": (_byte_order, False, True),
    "bulk data in a sequence": (_bulk_in_sequence, False, True),
    "a value left out": (_not_a_number, False, True),
}


@pytest.mark.parametrize("case", CASES)
def test_equal_bytes_that_mean_different_things(case: str, tmp_path: Path) -> None:
    make, first, second = CASES[case]
    a = _write(tmp_path, "a.dcm", make(first))
    b = _write(tmp_path, "b.dcm", make(second))
    memo = ValueMemo()
    assert _ours(a, memo) == _expected(a)
    assert _ours(b, memo) == _expected(b)


def test_what_the_cases_differ_in(tmp_path: Path) -> None:
    """The cases above test something: the second file of each differs from the first in
    the JSON of the element whose bytes are equal."""
    differing = {
        "US or SS": "00280106", "private creator": "00291008", "character set": "00081030",
        "character sets pydicom decodes": "00081030",
        "byte order": "00181310", "bulk data in a sequence": "00540016",
    }
    for case, key in differing.items():
        make, first, second = CASES[case]
        one, two = (_expected(_write(tmp_path, f"{case}{n}.dcm", make(arg)))[0]
                    for n, arg in ((1, first), (2, second)))
        raw = [pydicom.dcmread(BytesIO(make(arg))).get_item(int(key, 16)).value
               for arg in (first, second)]
        assert one[key] != two[key], case
        if case != "bulk data in a sequence":
            assert raw[0] == raw[1], case
    assert _expected(_write(tmp_path, "nan.dcm", _not_a_number(True)))[1] == ["00431080"]


def test_the_memo_keeps_within_its_budget(corpus: Path) -> None:
    """An enhanced instance's per-frame sequence is hundreds of KiB of bytes and JSON: a
    memo with less room does not keep it, and the answers are the same."""
    [path] = [p for p in (corpus / "philips-enhanced").iterdir() if p.suffix == ".dcm"]
    budget = 64 << 10
    roomy, tight = ValueMemo(budget=4 << 20), ValueMemo(budget=budget)
    assert _ours(path, roomy) == _ours(path, tight) == _expected(path)
    assert (4 << 20) - roomy.room > budget >= budget - tight.room > 0
    assert _ours(path, tight) == _expected(path)  # again, from what the memo kept
