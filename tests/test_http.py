"""The HTTP contract through the Flask test client: JSON API, DICOMweb, sign-in, errors."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from viewer import create_app, rendered_params
from viewer.access import create_login_link, create_token
from viewer.config import load_config

from .conftest import make_env


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app and one import of the GE series for the whole module (import is the slow part)."""
    application = create_app(load_config(make_env(tmp_path_factory.mktemp("http") / "data")))
    yield application
    application.extensions["viewer"].engine.dispose()


@pytest.fixture(scope="module")
def services(app: Flask):  # type: ignore[no-untyped-def]
    return app.extensions["viewer"]


@pytest.fixture(scope="module")
def auth(services) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with services.sessions() as db:
        token = create_token(db, "tests", "admin")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def ge(services, corpus: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    summary = services.importer.import_paths([corpus / "ge-t1-mprage"])
    assert summary.counts["imported"] == 130
    first = pydicom.dcmread(next((corpus / "ge-t1-mprage").glob("*.MRDC.*")))
    return {"study": first.StudyInstanceUID, "series": first.SeriesInstanceUID}


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def series_json(client: FlaskClient, auth: dict[str, str], ge: dict[str, str]) -> dict:
    response = client.get(f"/api/studies/{ge['study']}/series/{ge['series']}", headers=auth)
    assert response.status_code == 200
    return response.get_json()


def test_study_list_and_study_json(client: FlaskClient, auth: dict[str, str], ge) -> None:  # type: ignore[no-untyped-def]
    studies = client.get("/api/studies", headers=auth).get_json()["studies"]
    assert ge["study"] in [s["study_uid"] for s in studies]
    entry = next(s for s in studies if s["study_uid"] == ge["study"])
    assert entry["instance_count"] == entry["image_count"] == 130
    assert entry["modalities"] == "MR"
    study = client.get(f"/api/studies/{ge['study']}", headers=auth).get_json()
    assert study["series"][0]["instance_count"] == study["series"][0]["image_count"] == 130
    thumb = client.get(study["series"][0]["thumbnail_url"], headers=auth)
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.data)).size) == 128


def test_the_studies_page_counts_the_frames_of_an_enhanced_object_as_images(
    client: FlaskClient, auth: dict[str, str], services, corpus: Path, ge  # type: ignore[no-untyped-def]
) -> None:
    services.importer.import_paths([corpus / "philips-enhanced"])
    page = client.get("/", headers={**auth, "Accept": "text/html"}).get_data(as_text=True)
    assert "1 series · 40 images" in page and "1 series · 130 images" in page
    assert "1 images" not in page


def test_series_stacks_are_in_anatomical_order(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    data = series_json(client, auth, ge)
    (stack,) = data["stacks"]
    positions = [s["position_mm"] for s in stack["slices"]]
    assert len(positions) == 130
    assert positions == sorted(positions)
    assert stack["spacing_mm"] == pytest.approx(1.2, abs=0.01)
    assert stack["windows"]["header"] == {"center": 3010.0, "width": 6020.0}
    assert stack["windows"]["auto"]["width"] > 0


def test_rendered_frame_png_equals_the_pipeline(client: FlaskClient, auth, ge, corpus) -> None:  # type: ignore[no-untyped-def]
    slice_ = series_json(client, auth, ge)["stacks"][0]["slices"][60]
    response = client.get(slice_["url"] + "?window=600,1200&accept=image/png", headers=auth)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert "private" in response.headers["Cache-Control"]
    path = next(
        p for p in (corpus / "ge-t1-mprage").glob("*.MRDC.*")
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == slice_["sop_uid"]
    )
    values = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = np.clip(np.floor(((values - 599.5) / 1199 + 0.5) * 255 + 0.5), 0, 255)
    assert np.abs(png(response.data).astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "query",
    ["window=600%2C1200%2Clinear", "window=600,1200", "window=600,1200,SIGMOID",
     "viewport=128,128", "viewport=64,64,10,10,100,-100", "quality=50&accept=image/jpeg",
     "accept=image/gif", "annotation=patient,technique&window=1,2", "charset=UTF-8",
     "window=-1.5e2,.5e3", "window=+600.,1200.0", "viewport=64,64,-0,10.,10,-1e1"],
)
def test_rendered_parameters_accepted(client: FlaskClient, auth, ge, query: str) -> None:  # type: ignore[no-untyped-def]
    url = series_json(client, auth, ge)["stacks"][0]["slices"][0]["url"]
    response = client.get(f"{url}?{query}", headers=auth)
    assert response.status_code == 200, response.data
    assert response.mimetype.startswith("image/")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("window=abc,1", "not a number"),
        ("window=%EF%BC%91,2", "not a number"),  # a full-width one (U+FF11): float() takes it
        ("window=1_0,2", "not a number"),
        ("window=nan,2", "not a number"),
        ("window=1e400,2", "finite"),
        ("viewport=64,64,%EF%BC%91,0,5,5", "not a number"),
        ("viewport=64,64,1_0,0,5,5", "not a number"),
        ("window=1", "center,width"),
        ("window=1,0", "width"),
        ("window=1,100,cubic", "function"),
        ("viewport=0,10", "vw"),
        ("viewport=10,10,1,2,3", "vw,vh"),
        ("viewport=10,10,1,1,0,5", "must not be zero"),
        ("viewport=10,10,9000,9000,5,5", "outside the image"),
        ("quality=101", "quality"),
        ("quality=%C2%B2", "quality"),  # "²": str.isdigit says yes, int() says no
        ("viewport=%C2%B2,10", "vw"),
        ("accept=image/webp", "not supported"),
        ("annotation=everything", "annotation"),
        ("colour=red", "unsupported parameter"),
    ],
)
def test_bad_rendered_parameters_are_400_with_reason(
    client: FlaskClient, auth, ge, query: str, reason: str  # type: ignore[no-untyped-def]
) -> None:
    url = series_json(client, auth, ge)["stacks"][0]["slices"][0]["url"]
    response = client.get(f"{url}?{query}", headers=auth)
    assert response.status_code in (400, 422)
    assert reason in response.get_json()["error"]


def test_rendered_parameters_are_parsed_once_per_query_and_accept(
    client: FlaskClient, auth, ge  # type: ignore[no-untyped-def]
) -> None:
    """Scrolling asks with the same parameters slice after slice: parsed once, remembered
    by query string and Accept header; a refusal is not remembered."""
    slices = series_json(client, auth, ge)["stacks"][0]["slices"]
    rendered_params.parse_request.cache_clear()
    png = {**auth, "Accept": "image/png"}
    for slice_ in slices[:3]:
        assert client.get(slice_["url"] + "?window=600,1200", headers=png).mimetype == "image/png"
    assert client.get(slices[3]["url"] + "?window=600,1200", headers=auth).mimetype == "image/jpeg"
    info = rendered_params.parse_request.cache_info()
    assert (info.misses, info.hits) == (2, 2)
    for _ in range(2):
        refused = client.get(slices[0]["url"] + "?window=abc,1", headers=png)
        assert refused.status_code == 400 and "not a number" in refused.get_json()["error"]
    assert rendered_params.parse_request.cache_info().currsize == 2


def test_remembered_parameters_are_those_parse_gives() -> None:
    from werkzeug.datastructures import MIMEAccept, MultiDict

    query = b"window=600%2C1200%2Csigmoid&viewport=64,64,1,2,30,-40&charset=UTF-8"
    remembered = rendered_params.parse_request(query, "image/png, image/*;q=0.5", True)
    assert remembered == rendered_params.parse(
        MultiDict([("window", "600,1200,sigmoid"), ("viewport", "64,64,1,2,30,-40"),
                   ("charset", "UTF-8")]),
        MIMEAccept([("image/png", 1), ("image/*", 0.5)]), True)
    assert remembered.media_type == "image/png" and remembered.warnings == ("charset ignored",)
    assert rendered_params.parse_request(query, "image/png, image/*;q=0.5", True) is remembered


def test_accept_header_negotiation(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    url = series_json(client, auth, ge)["stacks"][0]["slices"][0]["url"]
    assert client.get(url, headers=auth).mimetype == "image/jpeg"
    assert client.get(url, headers={**auth, "Accept": "image/png"}).mimetype == "image/png"
    browser = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
    assert client.get(url, headers={**auth, "Accept": browser}).status_code == 200
    refused = client.get(url, headers={**auth, "Accept": "image/webp"})
    assert refused.status_code == 406


def test_etag_revalidation_is_304(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    url = series_json(client, auth, ge)["stacks"][0]["slices"][5]["url"] + "?window=1,2"
    first = client.get(url, headers=auth)
    again = client.get(url, headers={**auth, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert "Content-Type" not in again.headers and again.data == b""
    other = client.get(url.replace("1,2", "1,3"), headers=auth)
    assert other.headers["ETag"] != first.headers["ETag"]


def test_series_rendered_is_multipart_in_slice_order(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    response = client.get(
        f"/dicom-web/studies/{ge['study']}/series/{ge['series']}/rendered?viewport=32,32",
        headers={**auth, "Accept": 'multipart/related; type="image/png"'},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith('multipart/related; type="image/png"')
    assert response.data.count(b"Content-Type: image/png") == 130


def test_a_multiframe_rendered_answer_has_a_size_limit(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    """130 slices at 4096x4096 would be 2 gigapixels of encoding for one request."""
    series = f"/dicom-web/studies/{ge['study']}/series/{ge['series']}/rendered"
    for side in (4096, 1450):  # 130 x 1450 x 1450 = 273 megapixels
        refused = client.get(f"{series}?viewport={side},{side}", headers=auth)
        assert refused.status_code == 400
        assert refused.get_json()["error"] == (
            f"viewport: 130 frames of up to {side}x{side} pixels are more than 268 megapixels "
            "in one answer; ask for a smaller viewport or fewer frames")
    allowed = client.get(f"{series}?viewport=1400,1400", headers=auth)  # 255 megapixels
    assert allowed.status_code == 200 and allowed.mimetype == "multipart/related"
    allowed.close()  # not read: 130 frames at 1400x1400


def test_qido_search(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    found = client.get("/dicom-web/studies?PatientID=dicom", headers=auth)
    assert found.status_code == 200
    assert found.mimetype == "application/dicom+json"
    study = found.get_json()[0]
    assert study["0020000D"]["Value"] == [ge["study"]]
    assert study["00100020"]["Value"] == ["dicom"]
    assert study["00100010"]["vr"] == "PN"
    assert study["00201208"]["Value"] == [130]
    for query in ("00100020=dicom", "StudyDate=20200101-20201231", "ModalitiesInStudy=MR",
                  f"StudyInstanceUID={ge['study']}", "PatientID=dic*"):
        assert client.get(f"/dicom-web/studies?{query}", headers=auth).status_code == 200
    for query in ("PatientID=nobody", "StudyDate=20300101-", "ModalitiesInStudy=CT"):
        nothing = client.get(f"/dicom-web/studies?{query}", headers=auth)
        assert nothing.status_code == 204
        assert "Content-Type" not in nothing.headers and nothing.data == b""
    assert client.get("/dicom-web/studies?StudyDate=yesterday", headers=auth).status_code == 400
    series = client.get(f"/dicom-web/studies/{ge['study']}/series", headers=auth).get_json()
    assert series[0]["0020000E"]["Value"] == [ge["series"]]
    page = client.get(
        f"/dicom-web/studies/{ge['study']}/series/{ge['series']}/instances?limit=10&offset=5",
        headers=auth,
    ).get_json()
    assert len(page) == 10


def test_no_open_data(client: FlaskClient, ge) -> None:  # type: ignore[no-untyped-def]
    for url in ("/api/studies", f"/api/studies/{ge['study']}", "/dicom-web/studies",
                f"/dicom-web/studies/{ge['study']}/thumbnail"):
        response = client.get(url)
        assert response.status_code == 401
        assert response.get_json()["error"]
    assert client.get("/", follow_redirects=False).status_code == 302
    assert client.get("/api/studies", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_unknown_study_is_404(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/studies/1.2.3.4", headers=auth).status_code == 404
    response = client.get(f"/dicom-web/studies/{ge['study']}/series/1.2.3/rendered", headers=auth)
    assert response.status_code == 404


def test_undecodable_image_is_422(client: FlaskClient, auth, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    data = bytearray(ds.PixelData)
    data[200:2000] = b"\x00" * 1800
    ds.PixelData = bytes(data)
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    assert services.importer.import_paths([path]).counts["imported"] == 1
    url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/rendered")
    response = client.get(url, headers=auth)
    assert response.status_code == 422
    assert "decode" in response.get_json()["error"]


def test_login_link_is_single_use_and_pages_work(client: FlaskClient, services, ge) -> None:  # type: ignore[no-untyped-def]
    with services.sessions() as db:
        secret = create_login_link(db, "demo")
    response = client.get(f"/login/{secret}")
    assert response.status_code == 302
    page = client.get("/")
    assert page.status_code == 200
    assert b"dicom" in page.data
    study = client.get(f"/studies/{ge['study']}")
    assert study.status_code == 200
    assert b"data-api-url" in study.data
    assert client.get("/api/studies").status_code == 200
    refused = client.post("/signout")
    assert refused.status_code == 403 and b"CSRF" in refused.data
    assert client.get("/api/studies").status_code == 200
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page.data)
    assert token is not None
    signed_out = client.post("/signout", data={"csrf_token": token.group(1).decode()})
    assert signed_out.status_code == 302
    assert client.get("/api/studies").status_code == 401
    reused = client.get(f"/login/{secret}")
    assert reused.status_code == 400
    assert reused.mimetype == "text/html"
    page = reused.get_data(as_text=True)
    assert "This sign-in link has expired" in page and "not valid" in page
    assert 'href="/signin">Sign in</a>' in page
    assert "viewer login-link" not in page  # a command line is no help to a patient


def test_a_missing_page_says_so_plainly(client: FlaskClient, auth) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/nothing-here", headers={**auth, "Accept": "text/html"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "This address was not found: it may be mistyped" in text and "spelling" not in text
    assert 'href="/">Back to your studies</a>' in text
    api = client.get("/api/nothing-here", headers=auth)
    assert api.status_code == 404 and "address was not found" in api.get_json()["error"]


def test_security_headers_everywhere(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    for url in ("/signin", "/api/studies", "/nothing-here"):
        response = client.get(url, headers=auth)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "private" in response.headers["Cache-Control"] or "no-store" in response.headers[
            "Cache-Control"]


def test_page_errors_are_friendly_html(client: FlaskClient) -> None:
    response = client.get("/nothing-here", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert b"Traceback" not in response.data


def test_a_viewport_region_a_fraction_of_a_pixel_wide(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    """The region is scaled up to the viewport, however small: never an infinite scale."""
    url = series_json(client, auth, ge)["stacks"][0]["slices"][0]["url"]
    for region, size in (("5e-324,5e-324", (10, 10)), ("5e-324,50", (1, 10)),
                         ("50,1e-310", (10, 1))):
        response = client.get(f"{url}?viewport=10,10,0,0,{region}&accept=image/png",
                              headers=auth)
        assert response.status_code == 200, response.data
        assert png(response.data).shape[::-1] == size, region


def test_thumbnails_refuse_annotations(client: FlaskClient, auth, ge) -> None:  # type: ignore[no-untyped-def]
    series = f"/dicom-web/studies/{ge['study']}/series/{ge['series']}"
    for url in (f"{series}/thumbnail", f"{series}/thumbnail?viewport=64,64"):
        assert client.get(url, headers=auth).status_code == 200
        response = client.get(f"{url}{'&' if '?' in url else '?'}annotation=patient",
                              headers=auth)
        assert response.status_code == 400
        assert "not offered for thumbnails" in response.get_json()["error"]


@pytest.mark.parametrize(("method", "path", "options", "status", "reason"), [
    ("GET", "/dicom-web/studies?limit=%C2%B2", {}, 400, "limit: must be a whole number"),
    ("GET", "/dicom-web/series?offset=%C2%B2", {}, 400, "offset: must be a whole number"),
    ("GET", "/dicom-web/series?SeriesNumber=--1", {}, 400, "seriesnumber: must be"),
    ("GET", "/dicom-web/instances?00200013=%C2%B2", {}, 400, "instancenumber: must be"),
    ("GET", "{instance}/frames/%C2%B2", {}, 400, "frames: expected frame numbers"),
    ("GET", "{instance}/frames/1,%C2%B2/rendered", {}, 400, "frames: expected"),
    ("GET", "{instance}/bulkdata/00091002/%C2%B2/00091010", {}, 400, "not an item index"),
    ("DELETE", "/api/shares/9223372036854775808", {}, 404, "not found"),
    ("GET", "/embed/99999999999999999999/launch", {}, 404, "not found"),
    ("POST", "/api/session", {"data": '{"username": "\\ud800", "password": "x"}',
                              "content_type": "application/json"}, 400, "send json"),
    ("POST", "/api/session", {"data": "[" * 100_000 + "]" * 100_000,
                              "content_type": "application/json"}, 400, "send json"),
    ("POST", "/api/session", {"headers": {"Origin": "http://["}, "json": {}}, 403,
     "cross-site request refused"),
])
def test_hostile_requests_get_a_clear_4xx(  # type: ignore[no-untyped-def]
    client: FlaskClient, auth, ge, method: str, path: str, options: dict, status: int,
    reason: str,
) -> None:
    """Inputs a fuzzer found answered 500 once: odd digits ("²" passes ``str.isdigit``),
    ids past a 64-bit integer, half a surrogate pair, JSON nested 100,000 deep, an
    Origin that cannot be parsed."""
    sop = client.get(f"/dicom-web/studies/{ge['study']}/series/{ge['series']}/instances",
                     headers=auth).get_json()[0]["00080018"]["Value"][0]
    instance = f"/dicom-web/studies/{ge['study']}/series/{ge['series']}/instances/{sop}"
    options = dict(options)
    headers = {**({} if path.startswith(("/api/session", "/embed")) else auth),
               **options.pop("headers", {})}
    response = client.open(path.format(instance=instance), method=method, headers=headers,
                           **options)
    assert response.status_code == status, response.data
    assert reason in response.get_data(as_text=True).lower()


def test_a_host_header_werkzeug_refuses_gets_a_plain_error_page(client: FlaskClient) -> None:
    """No URL can be built for it, so the page has no links; still a 400 page, not a 500."""
    for path in ("/", "/signin", "/nothing-here"):
        response = client.get(path, headers={"Host": "a" * 64, "Accept": "text/html"})
        assert response.status_code == 400
        assert response.mimetype == "text/html"
        assert b"That request was not understood" in response.data
    api = client.get("/api/studies", headers={"Host": "a" * 64})
    assert api.status_code == 400 and api.get_json()["error"]


def test_a_query_string_that_is_not_utf8_is_400(app: Flask, auth, ge) -> None:  # type: ignore[no-untyped-def]
    """Raw bytes that are not UTF-8 in a query string (which gunicorn refuses itself, but
    other WSGI servers pass on) are the client's error wherever the query is read."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    url = series_json(app.test_client(), auth, ge)["stacks"][0]["slices"][0]["url"]

    def get(path: str, raw_query: bytes, accept: str = "image/png") -> tuple[str, bytes]:
        environ = EnvironBuilder(path=path, headers={**auth, "Accept": accept}).get_environ()
        environ["QUERY_STRING"] = raw_query.decode("latin-1")  # as a WSGI server passes it
        body, status, _ = run_wsgi_app(app, environ, buffered=True)
        return status, b"".join(body)

    for path, accept in ((url, "image/png"), ("/dicom-web/studies", "application/dicom+json"),
                         ("/api/studies", "application/json")):
        status, body = get(path, b"window=\xff\xfe,1&limit=\xc3", accept)
        assert status.startswith("400"), (path, status, body)
        assert b"not UTF-8" in body
    status, body = get("/", b"q=\xff", "text/html")
    assert status.startswith("400") and b"<html" in body and b"not UTF-8" in body
    # UTF-8 sent raw is fine: the same as percent-encoded.
    status, _ = get("/dicom-web/studies", "PatientName=Müller".encode(), "application/dicom+json")
    assert status.startswith("204")  # searched, and no such patient
    status, body = get(url, b"window=600,1200")
    assert status.startswith("200") and body.startswith(b"\x89PNG")
