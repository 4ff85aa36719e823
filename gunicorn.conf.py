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
    if isinstance(text, str) and ("/login/" in text or "/enrol/" in text or "/s/" in text):
        return _SECRET_PATH.sub(r"\1\2…", text)
    return text


class MaskingLogger(Logger):
    """gunicorn's logger, with link secrets masked in every access-log atom.

    With the format above, only its six atoms are made: gunicorn's own ``atoms`` makes
    ~60 (every header and environ entry), which cost 0.14 ms of each rendered slice.
    Another format (``--access-logformat``) gets every atom, masked.
    """

    def atoms(self, resp, req, environ, request_time):
        if self.cfg.access_log_format == access_log_format:
            return {
                "h": environ.get("REMOTE_ADDR", "-"),
                "m": environ.get("REQUEST_METHOD"),
                "U": mask_secrets(environ.get("PATH_INFO")),
                "s": str(resp.status).split(None, 1)[0],
                "b": str(resp.sent) if getattr(resp, "sent", None) is not None else "-",
                "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            }
        return {key: mask_secrets(value)
                for key, value in super().atoms(resp, req, environ, request_time).items()}


logger_class = MaskingLogger
