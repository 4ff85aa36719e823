"""multipart/related, both ways, without ever holding a whole body in memory.

DICOMweb moves studies as ``multipart/related`` (RFC 2387): WADO-RS answers are
written part by part from generators, and STOW-RS requests are split into parts
as they arrive, each part's bytes handed on in chunks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from werkzeug.datastructures import Headers

from viewer.negotiation import parse_media_type

READ = 64 << 10
MAX_HEADER_BYTES = 16 << 10


class MultipartError(ValueError):
    """The body is not well-formed multipart; the message says where."""


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_head(boundary: str, content_type: str, length: int | None = None,
              location: str | None = None) -> bytes:
    """The delimiter and headers that start one part."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


@dataclass
class Part:
    """One part of an incoming body: its headers, and its bytes (read once, in order)."""

    headers: Headers
    chunks: Iterator[bytes]

    @property
    def content_type(self) -> tuple[str, dict[str, str]]:
        return parse_media_type(self.headers.get("Content-Type", ""))


class MultipartReader:
    """Splits a ``multipart/related`` stream into parts, reading ``READ`` bytes at a time.

    Each part's ``chunks`` must be consumed (or is skipped) before the next part is
    produced. A body that ends inside a part makes that part's iterator raise
    ``MultipartError``, so a truncated upload is never mistaken for a whole file.
    """

    def __init__(self, stream: BinaryIO, boundary: str) -> None:
        if not boundary or len(boundary) > 70 or not boundary.isascii():  # RFC 2046 5.1.1
            raise MultipartError("the Content-Type has no valid boundary parameter")
        self.stream = stream
        self.delimiter = b"\r\n--" + boundary.encode("ascii")
        # A CRLF in front lets the first delimiter (which may open the body) match too.
        self.buffer = b"\r\n"
        self.eof = False
        self.truncated = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.stream.read(READ)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _skip_to_delimiter(self) -> None:
        """Drop bytes up to and including the next delimiter (the preamble)."""
        while True:
            found = self.buffer.find(self.delimiter)
            if found >= 0:
                self.buffer = self.buffer[found + len(self.delimiter):]
                return
            self.buffer = self.buffer[-len(self.delimiter):]
            if not self._fill():
                raise MultipartError("no part starts with the boundary from the Content-Type")

    def _after_delimiter(self) -> bool:
        """After a delimiter: True if a part follows, False at the closing delimiter."""
        while len(self.buffer) < 2 and self._fill():
            pass
        if self.buffer.startswith(b"--"):
            return False
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 1024 or not self._fill():
                raise MultipartError("a boundary line is not followed by a line break")
        padding, _, self.buffer = self.buffer.partition(b"\r\n")
        if padding.strip(b" \t"):
            raise MultipartError("unexpected text after a boundary")
        return True

    def _headers(self) -> Headers:
        while b"\r\n\r\n" not in b"\r\n" + self.buffer:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise MultipartError("the headers of a part are too long")
            if not self._fill():
                raise MultipartError("the body ends inside the headers of a part")
        if self.buffer.startswith(b"\r\n"):
            block, self.buffer = b"", self.buffer[2:]
        else:
            block, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        headers = Headers()
        for line in block.decode("latin-1").split("\r\n") if block else ():
            name, colon, value = line.partition(":")
            if not colon:
                raise MultipartError(f"not a header line in a part: {line[:80]!r}")
            headers.add(name.strip(), value.strip())
        return headers

    def _body(self) -> Iterator[bytes]:
        keep = len(self.delimiter) - 1
        while True:
            found = self.buffer.find(self.delimiter)
            if found >= 0:
                chunk, self.buffer = self.buffer[:found], self.buffer[found + len(self.delimiter):]
                if chunk:
                    yield chunk
                return
            if len(self.buffer) > keep:
                chunk, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
                yield chunk
            if not self._fill():
                self.truncated = True
                raise MultipartError("the body ends inside a part (no closing boundary)")

    def __iter__(self) -> Iterator[Part]:
        self._skip_to_delimiter()
        while self._after_delimiter():
            body = self._body()
            yield Part(self._headers(), body)
            if self.truncated:
                return
            for _ in body:  # whatever the consumer left unread
                pass
