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
