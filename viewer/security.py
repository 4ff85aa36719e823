"""Response headers and error answers for every route.

APIs (``/api``, ``/dicom-web``) answer errors as JSON ``{"error": ...}``;
pages answer with a friendly HTML page. Nothing ever shows a traceback, and
an unexpected failure is logged and answered 500 without details.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.globals import request_ctx
from flask.json.provider import DefaultJSONProvider
from markupsafe import escape
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from viewer.render import RenderError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'"
)

# On every answer, whatever the route set.
ALWAYS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")  # HTTPS only

TITLES = {
    400: "That request was not understood",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    413: "Too large",
    422: "This image cannot be shown",
    500: "Something went wrong",
    502: "The image archive is not answering",
    504: "The image archive is too slow",
}

# Werkzeug's own descriptions are written for developers ("If you entered the URL manually
# please check your spelling and try again."); these say it plainly.
PLAIN = {
    404: "This address was not found: it may be mistyped, or no longer there.",
    405: "This address does not take that kind of request.",
}


def wants_json() -> bool:
    path = request.path
    return path.startswith(("/api/", "/dicom-web")) or (
        request.accept_mimetypes.best_match(["application/json", "text/html"])
        == "application/json"
    )


def error_response(status: int, message: str, *, title: str | None = None,
                   action: tuple[str, str] | None = None) -> Response:
    """JSON ``{"error": message}`` for APIs, else a page with ``title`` and one button,
    ``action`` (label, address), by default back to the studies list."""
    if wants_json():
        response = jsonify(error=message)
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="viewer"'
        return response
    title = title or TITLES.get(status, "Error")
    if request_ctx.url_adapter is None:
        # Werkzeug refused the Host header, so no URL (not even the stylesheet's) can be
        # built: a plain page instead of the template.
        html = (f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1>"
                f"<p>{escape(message)}</p>")
        return Response(html, status=status, mimetype="text/html")
    if status == 401:
        return redirect(url_for("signin.signin_form", next=request.path))  # type: ignore[return-value]
    label, address = action or ("Back to your studies", url_for("pages.index"))
    html = render_template("error.html", status=status, title=title, message=message,
                           action_label=label, action_url=address)
    return Response(html, status=status, mimetype="text/html")


def _query_is_utf8() -> None:
    """A query string with bytes that are not UTF-8 (sent raw, not percent-encoded) is the
    client's error: Werkzeug's ``request.args``, and the rendered parameters, would raise
    a decoding error (a 500) wherever the query is read. gunicorn refuses such a request
    line itself; other WSGI servers pass it on."""
    query = request.query_string
    if not query.isascii():
        try:
            query.decode()
        except UnicodeDecodeError:
            abort(400, description="the query string is not UTF-8; percent-encode its bytes")


def unframed_headers(secure: bool) -> tuple[tuple[str, str], ...]:
    """What ``_add_headers`` adds to an answer that may not be framed and set none of these
    itself (``viewer.rendered_lane``'s answers)."""
    return _UNFRAMED[secure]


_UNFRAMED = {
    secure: (("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"), *ALWAYS,
             *((HSTS,) if secure else ()))
    for secure in (False, True)
}


def _add_headers(response: Response) -> Response:
    headers = response.headers
    # "not in" rather than setdefault: Werkzeug's setdefault raises and catches an
    # HTTP exception for each header that is missing, on every response.
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = CSP
    if not g.get("framing_allowed") and "X-Frame-Options" not in headers:
        headers["X-Frame-Options"] = "DENY"  # framing_allowed: viewer.embed's portals
    for name, value in ALWAYS:
        headers[name] = value
    if "Cache-Control" not in headers:
        headers["Cache-Control"] = "private, no-cache"
    if request.is_secure:
        headers[HSTS[0]] = HSTS[1]
    if response.status_code in (204, 304):
        del headers["Content-Type"]  # no body to type (Flask gives every answer one)
    return response


def _check_text(value: Any) -> None:
    """Raise ValueError if a string anywhere in ``value`` is not valid Unicode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a JSON string holds a lone surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


class StrictJSONProvider(DefaultJSONProvider):
    """Request bodies whose strings are all valid Unicode and whose nesting Python can parse.

    JSON may escape half a surrogate pair (``"\\ud800"``); Python parses it into a
    string that no database, hash or encoder takes. Refused here, it is a bad body
    (``get_json`` answers None, or 400) instead of a 500 wherever the string goes.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            data = super().loads(s, **kwargs)
            if (b"\\u" if isinstance(s, bytes) else "\\u") in s:
                _check_text(data)
        except RecursionError:  # [[[[…]]]] a hundred thousand deep
            raise ValueError("the JSON is nested too deeply") from None
        return data


class DatabaseId(IntegerConverter):
    """``<int:…>`` in a route: a number past a 64-bit database integer is 404, not a crash."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


def init_app(app: Flask) -> None:
    """Before any blueprint: the ``int`` converter is bound when a route is added."""
    app.url_map.converters["int"] = DatabaseId
    app.json = StrictJSONProvider(app)
    app.before_request(_query_is_utf8)
    app.after_request(_add_headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = exc.description or TITLES.get(code, "")
        if message == type(exc).description:
            message = PLAIN.get(code, message)
        return error_response(code, message)

    @app.errorhandler(RenderError)
    def _render_error(exc: RenderError) -> Response:
        return error_response(422, str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The endpoint, not the path: some paths carry one-time secrets.
        log.exception("unhandled error on %s %s", request.method, request.endpoint)
        return error_response(500, "an internal error occurred; it has been logged")
