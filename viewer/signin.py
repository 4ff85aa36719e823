"""Signing in and out: the HTML form, ``/api/session`` for scripts, one-time links.

Both the form and the JSON API go through ``accounts.authenticate`` (same
throttling, same generic message) and ``websessions.start`` (new server-side
session), and both are audited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from viewer import audit, websessions
from viewer.access import current_principal, redeem_login_link
from viewer.accounts import SignInRefused, authenticate
from viewer.db import User
from viewer.security import error_response

bp = Blueprint("signin", __name__)


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def _safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("pages.index")


def _sign_in(user: User) -> tuple[str, websessions.Current]:
    services = _services()
    token, current = websessions.start(
        services.db(), user_pk=user.id, name=user.username, role=user.role
    )
    audit.record(services.sessions, "login", user_pk=user.id, actor=user.username)
    return token, current


def _attempt(username: str, password: str, code: str) -> User:
    services = _services()
    try:
        return authenticate(
            services.db(), username, password, code, audit.client_address(),
            services.config.require_2fa,
        )
    except SignInRefused as refused:
        audit.record(services.sessions, "login", f"refused: {refused.reason}",
                     actor=username[:128])
        raise


@bp.get("/signin")
def signin_form() -> str | Response:
    if current_principal() is not None:
        return redirect(_safe_next(request.args.get("next")))  # type: ignore[return-value]
    return render_template("signin.html", next=request.args.get("next", ""), error="")


@bp.post("/signin")
def signin_submit() -> Response:
    form = request.form
    try:
        user = _attempt(form.get("username", ""), form.get("password", ""), form.get("code", ""))
    except SignInRefused as refused:
        # The form page is shown again with the message (200); only throttling is a 429.
        status = 429 if refused.retry_after else 200
        html = render_template("signin.html", next=form.get("next", ""), error=refused.message,
                               username=form.get("username", ""))
        response = Response(html, status=status, mimetype="text/html")
        if refused.retry_after:
            response.headers["Retry-After"] = str(refused.retry_after)
        return response
    token, _current = _sign_in(user)
    response = redirect(_safe_next(form.get("next")))
    websessions.set_cookie(response, token)  # type: ignore[arg-type]
    return response  # type: ignore[return-value]


@bp.post("/api/session")
def api_signin() -> Response:
    data: Any = request.get_json(silent=True)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k, ""), str) for k in ("username", "password", "code")
    ):
        abort(400, description='send JSON {"username", "password", "code"}')
    try:
        user = _attempt(data.get("username", ""), data.get("password", ""), data.get("code", ""))
    except SignInRefused as refused:
        response = jsonify(error=refused.message)
        response.status_code = 429 if refused.retry_after else 401
        if refused.retry_after:
            response.headers["Retry-After"] = str(refused.retry_after)
        return response
    token, current = _sign_in(user)
    response = jsonify(username=user.username, role=user.role, csrf_token=current.csrf_token)
    response.status_code = 201
    websessions.set_cookie(response, token)
    return response


def _sign_out() -> None:
    services = _services()
    current = websessions.load()
    if current is not None:
        websessions.end(services.db(), current)
        audit.record(services.sessions, "logout", user_pk=current.user_pk, actor=current.name)


@bp.delete("/api/session")
def api_signout() -> Response:
    _sign_out()
    response = Response(status=204)
    websessions.clear_cookie(response)
    return response


@bp.post("/signout")
def signout() -> Response:
    _sign_out()
    response = redirect(url_for("signin.signin_form"))
    websessions.clear_cookie(response)  # type: ignore[arg-type]
    return response  # type: ignore[return-value]


@bp.get("/login/<secret>")
def login_link(secret: str) -> Response:
    """A one-time staff/demo link: trade it for a session and drop it from the address."""
    services = _services()
    principal = redeem_login_link(services.db(), secret)
    if principal is None:
        audit.record(services.sessions, "login", "refused: invalid or used sign-in link")
        return error_response(
            400, "This sign-in link is not valid: it has been used already, or it is too old. "
            "Sign in with your username and password, or ask for a new link.",
            title="This sign-in link has expired",
            action=("Sign in", url_for("signin.signin_form")))
    token, _current = websessions.start(
        services.db(), user_pk=None, name=principal.name, role=principal.role
    )
    audit.record(services.sessions, "login", actor=f"link:{principal.name}")
    response = redirect(url_for("pages.index"))
    websessions.set_cookie(response, token)  # type: ignore[arg-type]
    return response  # type: ignore[return-value]


def _netloc(url: str) -> str:
    """The host[:port] of ``url``; empty for one that cannot be parsed (``http://[``)."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


def _csrf_guard() -> None:
    """Refuse cross-site state changes: Origin must be ours, and a cookie session's
    requests must carry its CSRF token. Bearer-token calls carry no ambient
    credentials, so they need neither; nor do a session named by its header
    (``websessions.SESSION_HEADER``) or the embed token exchange (the launch token
    in its body is the credential), which still get the Origin check."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return
    origin = request.headers.get("Origin")
    if origin and origin != "null" and _netloc(origin) != request.host:
        abort(403, description="cross-site request refused")
    if request.endpoint == "embed.session":
        return
    current = websessions.load()
    if current is not None and not current.from_header and not websessions.csrf_ok(current):
        abort(403, description="missing or wrong CSRF token; reload the page and try again")


def _csrf_token() -> str:
    current = websessions.load()
    return current.csrf_token if current is not None else ""


def init_app(app: Flask) -> None:
    app.before_request(_csrf_guard)
    app.jinja_env.globals["csrf_token"] = _csrf_token
    app.register_blueprint(bp)
