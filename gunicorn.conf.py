"""gunicorn settings, from the same VIEWER_* variables as the app (see README)."""

import os

bind = os.environ.get("VIEWER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("VIEWER_WORKERS", "2"))
# Threads give keep-alive and let one browser's parallel slice requests overlap;
# decoding, windowing and PNG/JPEG encoding release the GIL for most of their time.
worker_class = "gthread"
threads = int(os.environ.get("VIEWER_THREADS", "4"))
keepalive = 5
timeout = 60
graceful_timeout = 10
loglevel = os.environ.get("VIEWER_LOG_LEVEL", "info")
accesslog = "-"
# Never log query strings' secrets: the access log shows the path only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
preload_app = False

# Secrets that travel in the path: one-time sign-in links, enrolment/reset links and share
# links. The access log shows "/enrol/…" instead of the token (security.md: never log tokens).
import re  # noqa: E402

from gunicorn.glogging import Logger  # noqa: E402

_SECRET_PATH = re.compile(r"(^|[\s\"']|//[^/\s\"']*)(/(?:login|enrol|s)/)[^/?#\s\"']+")


def mask_secrets(text):
    """The text with the path segment after /login/, /enrol/ and /s/ replaced by '…'."""
    return _SECRET_PATH.sub(r"\1\2…", text) if isinstance(text, str) else text


class MaskingLogger(Logger):
    """gunicorn's logger, with link secrets masked in every access-log atom."""

    def atoms(self, resp, req, environ, request_time):
        return {key: mask_secrets(value)
                for key, value in super().atoms(resp, req, environ, request_time).items()}


logger_class = MaskingLogger
