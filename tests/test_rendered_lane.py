"""The rendered-image lane (``viewer.rendered_lane``): what it answers is byte for byte what
Flask answers, and everything else reaches Flask untouched."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from sqlalchemy import select, update
from werkzeug.test import EnvironBuilder

from viewer import Services, create_app, rendered_lane
from viewer.access import create_token
from viewer.config import load_config
from viewer.db import ApiToken, WebSession, utcnow
from viewer.rendered_lane import RenderedLane

from .conftest import make_env
from .dicomfactory import encode, make_dataset
from .test_accounts import audit_rows, make_patient, sign_in
from .test_malformed import with_value

Answer = tuple[str, list[tuple[str, str]], bytes]


def textured(frames: int | None = None) -> bytes:
    """A 64x64 16-bit image (or ``frames`` of them) with noise: a PNG that is not trivial."""
    count = 64 * 64 * (frames or 1)
    values = np.random.default_rng(7).integers(0, 3000, count).astype("<u2")
    return encode(make_dataset(rows=64, columns=64, frames=frames, bits_stored=12,
                               pixels=values.tobytes()))


def stored(services: Services, tmp_path: Path, data: bytes) -> str:
    """Import ``data``; the instance's DICOMweb URL."""
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm"
    path.write_bytes(data)
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def call(wsgi: Callable[..., Iterable[bytes]], path: str, headers: dict[str, str],
         method: str = "GET", scheme: str = "http") -> Answer:
    environ = EnvironBuilder(path=path, method=method, headers=headers,
                             base_url=f"{scheme}://localhost").get_environ()
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(wsgi(environ, lambda status, head, exc=None: started.append((status, head))))
    return started[0][0], started[0][1], body


@pytest.fixture
def lane(app: Flask, monkeypatch: pytest.MonkeyPatch) -> RenderedLane:
    """The app's lane, with Flask behind it counting the requests it is handed."""
    assert isinstance(app.wsgi_app, RenderedLane)
    lane = app.wsgi_app
    flask_side = lane.app
    lane.handed: list[str] = []  # type: ignore[attr-defined]

    def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        lane.handed.append(environ["PATH_INFO"])  # type: ignore[attr-defined]
        return flask_side(environ, start_response)

    monkeypatch.setattr(lane, "app", counted)
    return lane


@pytest.fixture
def urls(services: Services, tmp_path: Path, corpus: Path) -> dict[str, str]:
    ge = sorted(p for p in (corpus / "ge-t1-mprage").iterdir() if p.name != "LICENSE")[0]
    return {
        "single": stored(services, tmp_path, textured()),
        "frames": stored(services, tmp_path, textured(frames=3)),
        "ge": stored(services, tmp_path, ge.read_bytes()),
        "undecodable": stored(services, tmp_path, with_value(
            "PhotometricInterpretation", ["MONOCHROME2", "RGB"], "CS")),
    }


ANSWERED = {
    "PNG": ("single", "/rendered", {"Accept": "image/png"}, "http"),
    "JPEG": ("single", "/rendered", {"Accept": "image/jpeg"}, "http"),
    "no Accept (JPEG)": ("single", "/rendered", {}, "http"),
    "a real slice, windowed": ("ge", "/rendered?window=600,1200", {"Accept": "image/png"}, "http"),
    "sigmoid window": ("ge", "/rendered?window=600,1200,sigmoid", {"Accept": "image/png"},
                       "http"),
    "viewport with a region": ("ge", "/rendered?viewport=100,100,20,30,128,128",
                               {"Accept": "image/png"}, "http"),
    "quality": ("ge", "/rendered?quality=40", {"Accept": "image/jpeg"}, "http"),
    "accept parameter": ("single", "/rendered?accept=image/png", {"Accept": "image/jpeg"},
                         "http"),
    "an ignored parameter (Warning)": ("single", "/rendered?charset=utf-8",
                                       {"Accept": "image/png"}, "http"),
    "a cookie that names no session": ("single", "/rendered",
                                       {"Accept": "image/png", "Cookie": "theme=dark"}, "http"),
    "a session header that names no session": (
        "single", "/rendered", {"Accept": "image/png", "X-Viewer-Session": "not-one"}, "http"),
    "HTTPS (HSTS)": ("single", "/rendered", {"Accept": "image/png"}, "https"),
    "thumbnail": ("ge", "/thumbnail", {"Accept": "image/png"}, "http"),
    "frame 1": ("single", "/frames/1/rendered", {"Accept": "image/png"}, "http"),
    "frame 2 of 3": ("frames", "/frames/2/rendered?window=1500,3000", {"Accept": "image/png"},
                     "http"),
    "frame 3's thumbnail": ("frames", "/frames/3/thumbnail", {}, "http"),
    "a multi-frame instance's thumbnail": ("frames", "/thumbnail", {"Accept": "image/png"},
                                           "http"),
}


@pytest.mark.parametrize("case", list(ANSWERED))
def test_the_lane_answers_as_flask_does(case: str, lane: RenderedLane, urls: dict[str, str],
                                        auth: dict[str, str]) -> None:
    instance, suffix, headers, scheme = ANSWERED[case]
    path = urls[instance] + suffix
    answered = call(lane, path, {**auth, **headers}, scheme=scheme)
    assert lane.handed == []  # type: ignore[attr-defined]
    status, head, body = answered
    assert status == "200 OK" and len(body) > 100
    assert (answered[0], answered[1], answered[2]) == call(lane.app, path, {**auth, **headers},
                                                          scheme=scheme)
    assert lane.handed == [path.split("?")[0]]  # type: ignore[attr-defined]
    names = [name for name, _ in head]
    assert ("Strict-Transport-Security" in names) == (scheme == "https")
    assert ("Warning" in names) == ("charset" in suffix)


def test_revalidation_is_answered_as_flask_does(lane: RenderedLane, urls: dict[str, str],
                                                auth: dict[str, str]) -> None:
    """If-None-Match: 304 when it holds the image's ETag (strongly, or ``*``), else the
    image; the same answers as Flask's, with the same headers."""
    png = {**auth, "Accept": "image/png"}
    rendered = urls["ge"] + "/rendered?window=600,1200&charset=utf-8"
    etag = dict(call(lane, rendered, png)[1])["ETag"]
    for sent, status in ((etag, "304 NOT MODIFIED"), (f'"other", {etag}', "304 NOT MODIFIED"),
                         ("*", "304 NOT MODIFIED"), (f"W/{etag}", "200 OK"),
                         ('"other"', "200 OK")):
        headers = {**png, "If-None-Match": sent}
        answered = call(lane, rendered, headers)
        assert lane.handed == []  # type: ignore[attr-defined]
        assert answered[0] == status
        assert answered == call(lane.app, rendered, headers)
        lane.handed.clear()  # type: ignore[attr-defined]
        if status.startswith("304"):
            assert answered[2] == b"" and dict(answered[1])["ETag"] == etag
            assert "Content-Type" not in dict(answered[1])


def test_a_lowercase_bearer_scheme_is_a_bearer(lane: RenderedLane, urls: dict[str, str],
                                               auth: dict[str, str]) -> None:
    token = auth["Authorization"].split(" ", 1)[1]
    status, _, _ = call(lane, urls["single"] + "/rendered", {"Authorization": f"bearer {token}"})
    assert status == "200 OK" and lane.handed == []  # type: ignore[attr-defined]


def handed_on(lane: RenderedLane, path: str, headers: dict[str, str],
              method: str = "GET") -> Answer:
    answer = call(lane, path, headers, method)
    assert lane.handed == [path.split("?")[0]], "the lane answered it itself"  # type: ignore[attr-defined]
    lane.handed.clear()  # type: ignore[attr-defined]
    return answer


def test_other_requests_reach_flask_untouched(lane: RenderedLane, urls: dict[str, str],
                                              auth: dict[str, str], services: Services) -> None:
    png = {**auth, "Accept": "image/png"}
    rendered = urls["single"] + "/rendered"
    etag = dict(call(lane, rendered, png)[1])["ETag"]
    status, head, body = handed_on(lane, rendered, png, "HEAD")
    assert status == "200 OK" and body == b"" and dict(head)["ETag"] == etag
    assert handed_on(lane, rendered + "?annotation=patient", png)[0] == "200 OK"
    status, head, _ = handed_on(lane, urls["frames"] + "/rendered", png)
    assert status == "200 OK" and dict(head)["Content-Type"].startswith("multipart/related")
    assert handed_on(lane, rendered, {"Accept": "image/png"})[0] == "401 UNAUTHORIZED"
    assert handed_on(lane, rendered, {"Authorization": "Bearer vw_nope"})[0] == "401 UNAUTHORIZED"
    assert handed_on(lane, rendered, {**png, "Authorization": "Basic dXNlcjpwdw=="}
                     )[0] == "401 UNAUTHORIZED"
    assert handed_on(lane, rendered, png, "POST")[0] == "405 METHOD NOT ALLOWED"

    status, _, body = handed_on(lane, rendered + "?window=40", png)
    assert status == "400 BAD REQUEST" and b"window" in body
    status, _, body = handed_on(lane, rendered + "?window=40,%FF", png)
    assert status == "400 BAD REQUEST"
    status, _, body = handed_on(lane, urls["frames"] + "/frames/4/rendered", png)
    assert status == "404 NOT FOUND"


def test_an_undecodable_frame_is_decoded_once(lane: RenderedLane, urls: dict[str, str],
                                              auth: dict[str, str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The lane's attempt fails, Flask answers the 422; the frame loader remembers the
    failure, so neither Flask's attempt nor a viewer's retries decode (and log) again."""
    rendered = urls["undecodable"] + "/rendered"
    for _ in range(3):
        status, _, body = handed_on(lane, rendered, {**auth, "Accept": "image/png"})
        assert status == "422 UNPROCESSABLE ENTITY"
        assert b"cannot decode the pixel data of frame 1" in body
    warnings = [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(warnings) == 1


def test_a_refusal_is_audited_once(lane: RenderedLane, urls: dict[str, str],
                                   auth: dict[str, str], services: Services) -> None:
    """The lane does not refuse: Flask does, and audits it, once."""
    unknown = urls["single"].rsplit("/", 1)[0] + "/1.2.3.4.5/rendered"
    status, _, body = handed_on(lane, unknown, auth)
    assert status == "404 NOT FOUND" and b"no such instance" in body
    assert [row.outcome for row in audit_rows(services, "study-viewed")] == [
        "refused: not found or not permitted"]


def test_a_revoked_token_is_refused_once_the_cache_forgets_it(
        lane: RenderedLane, urls: dict[str, str], auth: dict[str, str],
        services: Services) -> None:
    rendered = urls["single"] + "/rendered"
    assert call(lane, rendered, auth)[0] == "200 OK"
    with services.sessions() as db:
        for row in db.scalars(select(ApiToken)):
            row.revoked_at = utcnow()
        db.commit()
    services.token_cache.clear()  # as TOKEN_CACHE_SECONDS passing does
    assert handed_on(lane, rendered, auth)[0] == "401 UNAUTHORIZED"


def test_a_patients_session_sees_their_own_images_only(
        app: Flask, lane: RenderedLane, services: Services, tmp_path: Path) -> None:
    """A signed-in patient's slices come from the lane, as Flask would answer them; another
    patient's are Flask's 404."""
    totp = make_patient(services, "carol", "P-TEST")
    own = stored(services, tmp_path, textured()) + "/rendered?window=1500,3000"
    other = stored(services, tmp_path, encode(make_dataset(patient=("P-DAN", "Dan^D"))))
    client = app.test_client()
    csrf = sign_in(client, "carol", totp.now()).get_json()["csrf_token"]
    lane.handed.clear()  # type: ignore[attr-defined]
    response = client.get(own, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.content_type == "image/png"
    assert lane.handed == []  # type: ignore[attr-defined]
    cookie = client.get_cookie("viewer_session")
    assert cookie is not None
    headers = {"Accept": "image/png", "Cookie": f"viewer_session={cookie.value}"}
    assert call(lane.app, own, headers) == call(lane, own, headers)
    lane.handed.clear()  # type: ignore[attr-defined]
    assert handed_on(lane, other + "/rendered", headers)[0] == "404 NOT FOUND"
    assert client.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    lane.handed.clear()  # type: ignore[attr-defined]
    assert handed_on(lane, own, headers)[0] == "401 UNAUTHORIZED"


def test_a_session_is_touched_and_times_out_on_the_lane(
        app: Flask, lane: RenderedLane, services: Services, tmp_path: Path) -> None:
    """Image requests keep a session alive (last seen written at most every 30 s) and an
    idle one is over: the same rules as every other request's."""
    totp = make_patient(services, "carol", "P-TEST")
    url = stored(services, tmp_path, textured()) + "/rendered"
    client = app.test_client()
    assert sign_in(client, "carol", totp.now()).status_code == 201

    def seen(minutes_ago: float | None = None) -> datetime:
        with services.sessions() as db:
            if minutes_ago is not None:
                db.execute(update(WebSession).values(
                    last_seen_at=utcnow() - timedelta(minutes=minutes_ago)))
                db.commit()
            return db.scalars(select(WebSession.last_seen_at)).one()

    lane.handed.clear()  # type: ignore[attr-defined]
    before = seen(10)
    assert client.get(url).status_code == 200
    assert seen() - before > timedelta(minutes=9)  # touched
    recent = seen(0.2)
    assert client.get(url).status_code == 200
    assert seen() == recent  # not written again within TOUCH_INTERVAL
    assert lane.handed == []  # type: ignore[attr-defined]
    seen(16)  # VIEWER_SESSION_IDLE_MINUTES is 15 by default
    assert client.get(url).status_code == 401
    assert lane.handed == [url]  # type: ignore[attr-defined]


def test_share_sessions_go_through_flask(app: Flask, lane: RenderedLane, services: Services,
                                         tmp_path: Path) -> None:
    """A share link's session has its own guard (viewer.shares), which Flask runs."""
    totp = make_patient(services, "carol", "P-TEST")
    url = stored(services, tmp_path, textured()) + "/frames/1/rendered"
    owner = app.test_client()
    csrf = sign_in(owner, "carol", totp.now()).get_json()["csrf_token"]
    study = url.split("/")[3]
    link = owner.post(f"/api/studies/{study}/shares", headers={"X-CSRF-Token": csrf}, json={
        "expires_in_hours": 1, "access_code": False, "allow_download": False}).get_json()
    recipient = app.test_client()
    assert recipient.get(link["url"].replace("http://localhost", "")).status_code == 303
    lane.handed.clear()  # type: ignore[attr-defined]
    assert recipient.get(url).status_code == 200
    assert lane.handed == [url]  # type: ignore[attr-defined]


def test_the_lane_knows_every_hook_of_the_app(app: Flask) -> None:
    """Each hook the lane skips is named with the reason (an entry no app has is stale)."""
    assert rendered_lane.app_hooks(app) == set(rendered_lane.SKIPPED_HOOKS)


def test_an_app_with_a_hook_the_lane_does_not_know_gets_no_lane(data_dir: Path,
                                                                tmp_path: Path) -> None:
    """A later feature's hook is never bypassed unseen: the app keeps Flask's path."""
    app = create_app(load_config(make_env(data_dir)))
    services = app.extensions["viewer"]
    try:
        flask_side = app.wsgi_app.app  # type: ignore[attr-defined]
        app.wsgi_app = flask_side  # type: ignore[method-assign]
        seen: list[str] = []

        @app.before_request
        def rate_limit() -> None:
            seen.append("rate_limit")

        assert rendered_lane.install(app) is False
        assert app.wsgi_app is flask_side
        with services.sessions() as db:
            token = create_token(db, "t", "admin")
        url = stored(services, tmp_path, textured()) + "/rendered"
        response = app.test_client().get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and seen == ["rate_limit"]
    finally:
        services.engine.dispose()
