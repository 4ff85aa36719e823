"""Query parameters of DICOMweb rendered resources (PS3.18 8.3.5), parsed strictly.

A malformed or unsupported value is a ``BadRequest`` whose text says which
parameter and why; it is never silently ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import parse_qsl

from werkzeug.datastructures import ImmutableMultiDict, MIMEAccept, MultiDict
from werkzeug.exceptions import BadRequest, NotAcceptable
from werkzeug.http import parse_accept_header

from viewer.render import MAX_VIEWPORT, MEDIA_TYPES, WINDOW_FUNCTIONS, Viewport, Window

KNOWN = {"window", "viewport", "quality", "annotation", "accept", "charset", "iccprofile"}
IGNORED = {"charset", "iccprofile"}
ANNOTATIONS = {"patient", "technique"}
DEFAULT_THUMBNAIL = Viewport(128, 128)


@dataclass(frozen=True)
class RenderParams:
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None
    media_type: str = "image/jpeg"
    annotations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def cache_key(self) -> str:
        """A stable text of everything that changes the output, for the ETag."""
        return repr((self.window, self.viewport, self.quality, self.media_type, self.annotations))


def _whole(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses."""
    return text.isascii() and text.isdigit()


# A decimal number in ASCII: ``float`` also takes full-width digits, "1_0", "nan" and "inf".
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(text: str, what: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(f"{what}: {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"{what}: must be a finite number")
    return value


def parse_window(text: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise BadRequest("window: expected center,width or center,width,function")
    center = _number(parts[0], "window center")
    width = _number(parts[1], "window width")
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise BadRequest(f"window: function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if width <= 0 or (function == "linear" and width < 1):
        raise BadRequest("window: width must be at least 1 (linear) or above 0")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise BadRequest("viewport: expected vw,vh or vw,vh,sx,sy,sw,sh")
    size = []
    for part, name in zip(parts[:2], ("vw", "vh"), strict=True):
        if not _whole(part) or not 1 <= int(part) <= MAX_VIEWPORT:
            raise BadRequest(f"viewport: {name} must be a whole number from 1 to {MAX_VIEWPORT}")
        size.append(int(part))
    region = None
    if len(parts) == 6:
        sx, sy, sw, sh = (_number(p, "viewport region") for p in parts[2:])
        if sx < 0 or sy < 0:
            raise BadRequest("viewport: sx and sy must not be negative")
        if sw == 0 or sh == 0:
            raise BadRequest("viewport: sw and sh must not be zero")
        region = (sx, sy, sw, sh)
    return Viewport(size[0], size[1], region)


def parse_quality(text: str) -> int:
    if not _whole(text) or not 1 <= int(text) <= 100:
        raise BadRequest("quality: must be a whole number from 1 to 100")
    return int(text)


def choose_media_type(query: str | None, accept: MIMEAccept) -> str:
    """The image type from the ``accept`` parameter, else the Accept header (JPEG default)."""
    if query:
        wanted = query.split(";")[0].strip().lower()
        if wanted not in MEDIA_TYPES:
            raise BadRequest(f"accept: {wanted!r} is not supported; use {', '.join(MEDIA_TYPES)}")
        return wanted
    for value, _quality in accept:
        if value.lower().startswith("multipart/related") and "type=" in value.lower():
            inner = value.lower().split("type=", 1)[1].split(";")[0].strip().strip('"')
            if inner in MEDIA_TYPES:
                return inner
    if not accept:
        return "image/jpeg"
    best = accept.best_match(["image/jpeg", "image/png", "image/gif"])
    if best is None:
        raise NotAcceptable(f"can answer only {', '.join(MEDIA_TYPES)}")
    return best


def parse(args: MultiDict, accept: MIMEAccept, thumbnail: bool = False) -> RenderParams:
    unknown = sorted(set(args) - KNOWN)
    if unknown:
        raise BadRequest(f"unsupported parameter(s): {', '.join(unknown)}")
    given = args.to_dict()  # first values; a plain dict's get raises no KeyError inside
    annotations: tuple[str, ...] = ()
    if thumbnail and "annotation" in given:
        raise BadRequest("annotation: not offered for thumbnails; use the rendered resource")
    if given.get("annotation"):
        annotations = tuple(a.strip().lower() for a in given["annotation"].split(","))
        bad = [a for a in annotations if a not in ANNOTATIONS]
        if bad:
            raise BadRequest("annotation: must be patient and/or technique")
    viewport = parse_viewport(given["viewport"]) if given.get("viewport") else None
    return RenderParams(
        window=parse_window(given["window"]) if given.get("window") else None,
        viewport=viewport or (DEFAULT_THUMBNAIL if thumbnail else None),
        quality=parse_quality(given["quality"]) if given.get("quality") else None,
        media_type=choose_media_type(given.get("accept"), accept),
        annotations=annotations,
        warnings=tuple(f"{name} ignored" for name in sorted(IGNORED & set(args))),
    )


@lru_cache(maxsize=256)
def parse_request(query: bytes, accept: str | None, thumbnail: bool = False) -> RenderParams:
    """``parse`` of a request's raw query string and Accept header, remembered.

    A viewer scrolling a series asks with the same parameters slice after slice;
    parsing them (the query, the Accept header, then each value) was ~5 % of a
    rendered slice's time. The arguments are parsed as Werkzeug parses
    ``request.args`` and ``request.accept_mimetypes``; a refusal is not remembered.
    """
    args = ImmutableMultiDict(
        parse_qsl(query.decode(), keep_blank_values=True, errors="werkzeug.url_quote"))
    return parse(args, parse_accept_header(accept, MIMEAccept), thumbnail)
