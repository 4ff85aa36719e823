"""A pretend hospital portal that embeds the viewer: ``python examples/host-portal/app.py``.

It plays the portal's part of the embedding protocol (README, "Embedding in a portal"):
its own sign-in (pretend: any password), then, on its *server*, a call to the viewer's
``POST /api/embed/launch`` with the portal key, and a page that frames the one-time URL
it got back and talks to the viewer with postMessage. It runs on its own port, so it is
another origin than the viewer, as a real portal is.

Settings (environment):

``PORTAL_BIND``        where this portal listens (default ``localhost:8100``)
``PORTAL_VIEWER_URL``  the viewer's address (default ``http://127.0.0.1:8000``)
``PORTAL_KEY``         the portal key from ``viewer portals add``; default: read from
                       ``PORTAL_KEY_FILE`` (default ``data/demo-portal.txt``, which
                       ``make run`` writes for the portal ``example-portal``)
``PORTAL_PATIENTS``    pretend accounts, ``user=patient_id@issuer`` separated by commas
                       (default ``alex=DEMO-0001@VIEWER-DEMO``, the demo patient)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, redirect, render_template, request, session, url_for

ROOT = Path(__file__).resolve().parents[2]


def _patients(text: str) -> dict[str, tuple[str, str]]:
    accounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        user, _, who = item.partition("=")
        patient_id, _, issuer = who.partition("@")
        if not user or not patient_id:
            sys.exit(f"PORTAL_PATIENTS: {item!r} is not user=patient_id@issuer")
        accounts[user] = (patient_id, issuer)
    return accounts


def _key() -> str:
    key = os.environ.get("PORTAL_KEY", "").strip()
    if key:
        return key
    path = Path(os.environ.get("PORTAL_KEY_FILE", ROOT / "data" / "demo-portal.txt"))
    try:
        return path.read_text().strip()
    except OSError:
        sys.exit(f"no portal key: set PORTAL_KEY, or run `make run` first so that {path} "
                 "exists (or point PORTAL_KEY_FILE at a file holding the key)")


def create_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    viewer = os.environ.get("PORTAL_VIEWER_URL", "http://127.0.0.1:8000").rstrip("/")
    parts = urlsplit(viewer)
    viewer_origin = f"{parts.scheme}://{parts.netloc}"
    key = _key()
    accounts = _patients(os.environ.get("PORTAL_PATIENTS", "alex=DEMO-0001@VIEWER-DEMO"))

    def launch(user: str) -> tuple[str | None, str]:
        """Ask the viewer, server to server, for a one-time launch URL for this patient."""
        patient_id, issuer = accounts[user]
        body = json.dumps({"patient_id": patient_id, "issuer": issuer,
                           "display_name": user}).encode()
        call = urllib.request.Request(
            f"{viewer}/api/embed/launch", data=body, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(call, timeout=10) as answer:
                return json.load(answer)["url"], ""
        except urllib.error.HTTPError as exc:
            try:
                reason = json.load(exc).get("error", "")
            except ValueError:
                reason = ""
            return None, f"The viewer refused the launch ({exc.code}): {reason or exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            return None, f"The viewer at {viewer} cannot be reached: {exc}"

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; frame-src {viewer_origin}; script-src 'self'; "
            "style-src 'self'; frame-ancestors 'none'")
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def home() -> str:
        user = session.get("user")
        if user not in accounts:
            return render_template("signin.html", users=sorted(accounts), error="")
        url, problem = launch(user)
        return render_template("imaging.html", user=user, launch_url=url, problem=problem,
                               viewer_origin=viewer_origin)

    @app.post("/signin")
    def signin() -> Response | tuple[str, int]:
        user = request.form.get("user", "")
        if user not in accounts or not request.form.get("password"):
            return render_template("signin.html", users=sorted(accounts),
                                   error="Choose an account and type any password."), 400
        session["user"] = user
        return redirect(url_for("home"))

    @app.post("/signout")
    def signout() -> Response:
        session.clear()
        return redirect(url_for("home"))

    return app


if __name__ == "__main__":
    host, _, port = os.environ.get("PORTAL_BIND", "localhost:8100").rpartition(":")
    create_app().run(host=host or "localhost", port=int(port), threaded=True)
