"""Response headers and error answers for every route.

APIs (``/api``, ``/dicom-web``) answer errors as JSON ``{"error": ...}``;
pages answer with a friendly HTML page. Nothing ever shows a traceback, and
an unexpected failure is logged and answered 500 without details.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from viewer.render import RenderError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'"
)

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


def wants_json() -> bool:
    path = request.path
    return path.startswith(("/api/", "/dicom-web")) or (
        request.accept_mimetypes.best_match(["application/json", "text/html"])
        == "application/json"
    )


def error_response(status: int, message: str) -> Response:
    if wants_json():
        response = jsonify(error=message)
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="viewer"'
        return response
    if status == 401:
        return redirect(url_for("signin.signin_form", next=request.path))  # type: ignore[return-value]
    html = render_template(
        "error.html", status=status, title=TITLES.get(status, "Error"), message=message
    )
    return Response(html, status=status, mimetype="text/html")


def _add_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    if not g.get("framing_allowed"):  # set by viewer.embed for its portals' origins
        headers.setdefault("X-Frame-Options", "DENY")
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers.setdefault("Cache-Control", "private, no-cache")
    if request.is_secure:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return response


def init_app(app: Flask) -> None:
    app.after_request(_add_headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or TITLES.get(exc.code or 500, ""))

    @app.errorhandler(RenderError)
    def _render_error(exc: RenderError) -> Response:
        return error_response(422, str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The endpoint, not the path: some paths carry one-time secrets.
        log.exception("unhandled error on %s %s", request.method, request.endpoint)
        return error_response(500, "an internal error occurred; it has been logged")
