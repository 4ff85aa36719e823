"""WSGI entry point: ``gunicorn wsgi:app`` (configuration from ``VIEWER_*`` variables)."""

import sys

from viewer import create_app
from viewer.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    print(f"viewer: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
