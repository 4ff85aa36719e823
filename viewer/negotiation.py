"""The Accept header as DICOMweb uses it: media ranges with their parameters.

Werkzeug's ``accept_mimetypes`` drops parameters such as ``type`` and
``transfer-syntax``, which are exactly what WADO-RS negotiates on, so the
header is parsed here, keeping each range's parameters, in order of preference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from werkzeug.exceptions import NotAcceptable


@dataclass(frozen=True)
class MediaRange:
    """One range of an Accept header, e.g. ``multipart/related; type="image/jpeg"``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str:
        """The ``type`` of a multipart range (lower case), or ``""``."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str:
        return self.params.get("transfer-syntax", "")

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts ``media_type`` (``*/*`` and ``x/*`` included)."""
        if self.media_type in ("*/*", media_type):
            return True
        major, _, minor = self.media_type.partition("/")
        return minor == "*" and media_type.startswith(major + "/")


def _split(header: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside quoted strings."""
    pieces, current, quoted = [], [], False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return [p.strip() for p in pieces if p.strip()]


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """A media type (lower case) and its parameters (names lower case), from a
    Content-Type or one Accept range.

    Values may be quoted or not: clients send ``type=application/dicom`` bare, though
    RFC 2045 wants a value with a "/" quoted (werkzeug's parser cuts it at the "/").
    """
    value, *parameters = _split(text, ";") or [""]
    options = {}
    for parameter in parameters:
        name, _, raw = parameter.partition("=")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        options[name.strip().lower()] = raw
    return value.strip().lower(), options


def media_ranges(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, most preferred first; none given means ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for piece in _split(header):
        value, params = parse_media_type(piece)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0 and value:
            ranges.append(MediaRange(value, params, quality))
    if not ranges:
        raise NotAcceptable("the Accept header accepts nothing")
    return sorted(ranges, key=lambda r: -r.quality)


def require_json(header: str | None) -> None:
    """406 unless the caller accepts DICOM JSON (``application/dicom+json`` or JSON)."""
    for wanted in media_ranges(header):
        if any(wanted.matches(t) for t in ("application/dicom+json", "application/json")):
            return
    raise NotAcceptable(
        "this resource is available as application/dicom+json only "
        "(application/dicom+xml is not supported)"
    )
