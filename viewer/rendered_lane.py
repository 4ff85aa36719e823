"""A direct path, under Flask, for the one request that comes by the hundred: a rendered
slice.

A viewer scrolling, or a client fetching a series, asks for one rendered image after
another. For a 512x512 slice, Flask's machinery around the view (request context, URL
routing, six hooks, the response object) cost about as much as encoding half the PNG.
This lane answers such a request straight from WSGI with the very functions the Flask
routes use: ``access.bearer_token`` / ``token_principal``, ``websessions.session_token`` /
``lookup``, ``access.lookup_instance_ref`` (the one authorization check),
``rendered_params.parse_request``, ``dicomweb.render_image`` and ``etag_for``, and
``security``'s headers. So the answer is byte for byte the one Flask would give (tests
compare the two).

It takes only a plain 200 or 304: a ``GET`` of ``.../instances/{uid}/rendered``,
``.../frames/{n}/rendered`` or their ``thumbnail`` for one frame, by a caller with a valid
bearer token or a staff or patient session (share and embed sessions have guards of their
own: Flask runs them), with an ASCII query and no burnt-in annotations; an
``If-None-Match`` that holds the image's ETag is answered 304, as Flask would. Anything
else, and any request the lane finds wrong in any way (no caller, an unknown token or
instance, a bad parameter, a frame that cannot be decoded), goes to Flask untouched, which
answers it (and audits, logs, refuses) as it always has; the lane has no error answers of
its own.

The lane knows which of the app's hooks it may skip and why (``SKIPPED_HOOKS``). An app
with any other hook (a later feature's, or ``viewer.pacssync``'s with a PACS source) is
not given the lane: a new hook cannot be bypassed without someone deciding so here. Flask's
request signals (``request_started``, ``request_finished``...) are not sent for the lane's
answers either; nothing in this service listens to them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import parse_cookie, parse_etags

from viewer import rendered_params, security, websessions
from viewer.access import (
    Principal,
    bearer_token,
    lookup_instance_ref,
    session_principal,
    token_principal,
)
from viewer.dicomweb import etag_for, render_image

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Answer = tuple[str, list[tuple[str, str]], bytes]  # status, headers, body

# The rendered and thumbnail routes of viewer.dicomweb for one instance or one frame, with
# DICOM UIDs (digits and dots; other UIDs go through Flask's routing).
PATH = re.compile(
    r"/dicom-web/studies/([0-9.]{1,64})/series/([0-9.]{1,64})/instances/([0-9.]{1,64})"
    r"(?:/frames/([1-9][0-9]{0,8}))?/(rendered|thumbnail)\Z"
)

# Each hook of the app that the lane does not run, and why it need not.
SKIPPED_HOOKS = {
    "viewer.security._query_is_utf8": "the lane takes ASCII query strings only",
    "viewer.signin._csrf_guard": "it guards state changes; the lane takes GET only",
    "viewer.shares._share_guard": "it acts on share sessions; the lane hands them to Flask",
    "viewer.embed._embed_guard": "it acts on embed sessions; the lane hands them to Flask",
    "viewer.security._add_headers": "the lane sends the same headers (security.CSP, ...)",
    "viewer.embed._frame_headers": "it acts on /embed/ paths only",
    "viewer.create_app.<locals>._close_db": "the lane opens no request database session",
}

_SESSION_HEADER = "HTTP_" + websessions.SESSION_HEADER.upper().replace("-", "_")
# Sessions whose guards (viewer.shares, viewer.embed) only Flask runs.
_GUARDED_ROLES = ("share", "embed")


def app_hooks(app: Flask) -> set[str]:
    """The qualified names of every per-request hook the app would run."""
    hooks: list[Callable[..., Any]] = []
    for table in (app.before_request_funcs, app.after_request_funcs,
                  app.teardown_request_funcs, app.url_value_preprocessors):
        for functions in table.values():
            hooks.extend(functions)
    hooks.extend(app.teardown_appcontext_funcs)
    return {f"{hook.__module__}.{hook.__qualname__}" for hook in hooks}


def install(app: Flask) -> bool:
    """Put the lane in front of the app's WSGI callable, if the app's hooks allow it."""
    unknown = app_hooks(app) - SKIPPED_HOOKS.keys()
    if unknown:
        log.info("rendered images go through Flask: hooks %s", ", ".join(sorted(unknown)))
        return False
    cookies = (websessions.cookie_name(app), websessions.embed_cookie_name(app))
    app.wsgi_app = RenderedLane(app.wsgi_app, app.extensions["viewer"], cookies)  # type: ignore[method-assign]
    return True


class RenderedLane:
    """WSGI middleware: the plain rendered-image requests here, everything else to ``app``."""

    def __init__(self, app: WSGIApp, services: Any, cookie_names: tuple[str, str]) -> None:
        self.app = app
        self.services = services
        self.cookie_names = cookie_names  # the session's and the embedded viewer's

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        answer = self._answer(environ)
        if answer is None:
            return self.app(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    def _answer(self, environ: dict[str, Any]) -> Answer | None:
        """The 200 (or 304): status, headers and body; or None: Flask's to answer."""
        match = PATH.match(environ.get("PATH_INFO", ""))
        if match is None or environ.get("REQUEST_METHOD") != "GET":
            return None
        query = environ.get("QUERY_STRING", "")
        if not query.isascii():
            return None
        study_uid, series_uid, sop_uid, frame, resource = match.groups()
        try:
            principal = self._caller(environ)
            if principal is None:
                return None
            return self._render(environ, principal, query, study_uid, series_uid, sop_uid,
                                frame, resource == "thumbnail")
        except Exception:  # Flask answers it: the 4xx, the 422, or the logged 500
            return None

    def _caller(self, environ: dict[str, Any]) -> Principal | None:
        """Who asks, as ``access.current_principal`` decides; None for no one, and for a
        share or embed session (Flask's guards decide those)."""
        cookie = environ.get("HTTP_COOKIE")
        session_id, from_header = websessions.session_token(
            environ.get(_SESSION_HEADER), parse_cookie(cookie) if cookie else {},
            self.cookie_names)
        current = None
        if session_id:
            current = websessions.lookup(self.services.engine, self.services.config, session_id,
                                         from_header)
            if current is not None and current.role in _GUARDED_ROLES:
                return None
        token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        if token is not None:
            return token_principal(self.services, token)
        return session_principal(current) if current is not None else None

    def _render(self, environ: dict[str, Any], principal: Principal, query: str,
                study_uid: str, series_uid: str, sop_uid: str, frame: str | None,
                thumbnail: bool) -> Answer | None:
        services = self.services
        params = rendered_params.parse_request(query.encode(), environ.get("HTTP_ACCEPT"),
                                               thumbnail)
        if params.annotations:
            return None
        ref = lookup_instance_ref(services.engine, principal, study_uid, series_uid, sop_uid)
        if ref is None:
            return None
        frames = ref.number_of_frames
        if frame is not None:
            number = int(frame)
        elif thumbnail:
            number = (frames + 1) // 2
        elif frames > 1:
            return None  # a multi-frame instance's rendered resource is multipart
        else:
            number = 1
        if number > frames:
            return None
        etag = etag_for(ref.file_hash, number, params, {})
        headers = [("ETag", f'"{etag}"'), ("Cache-Control", "private, max-age=86400")]
        headers.extend(("Warning", f'299 viewer "{w}"') for w in params.warnings)
        headers.extend(security.unframed_headers(environ.get("wsgi.url_scheme") == "https"))
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and parse_etags(if_none_match).contains(etag):
            return "304 NOT MODIFIED", headers, b""
        body = render_image(services.frames, ref.file_hash, number, params, {})
        typed = [("Content-Type", params.media_type), ("Content-Length", str(len(body)))]
        return "200 OK", typed + headers, body
