"""A minimal PDF writer: plain text to a valid multi-page PDF (A4, standard Helvetica).

Only the 14 standard Type 1 fonts need no embedding, so the text is encoded as
WinAnsi (cp1252; anything else becomes "?") and escaped for a PDF string. Lines
are wrapped by Helvetica's own glyph widths, so nothing runs off the page.
"""

from __future__ import annotations

PAGE_W, PAGE_H, MARGIN = 595, 842, 56
SIZE, LEADING, TITLE_SIZE = 10.5, 14.5, 15
# Helvetica advance widths (per 1000 em) for ASCII 32..126, from the Adobe AFM.
_W = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722,
    722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722,
    667, 944, 667, 667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556,
    556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500,
    500, 334, 260, 334, 584,
)


def _width(text: str, size: float) -> float:
    return sum(_W[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in text) * size / 1000


def wrap(text: str, size: float = SIZE, width: float = PAGE_W - 2 * MARGIN) -> list[str]:
    """Lines that fit ``width`` points; long words are cut."""
    lines: list[str] = []
    for paragraph in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = ""
        for word in paragraph.replace("\t", "    ").split(" "):
            while _width(word, size) > width:  # a word longer than a line is cut
                cut = max(1, max(i for i in range(len(word) + 1)
                                 if _width(word[:i], size) <= width))
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{line} {word}" if line else word
            if line and _width(candidate, size) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _string(text: str) -> bytes:
    """A PDF literal string in WinAnsi: backslash, parentheses and non-ASCII escaped."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"\\()":
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    return bytes(out + b")")


def text_pdf(text: str, title: str = "") -> bytes:
    """A PDF of ``title`` (bold, first page) and ``text``, as many A4 pages as needed."""
    per_page = int((PAGE_H - 2 * MARGIN) // LEADING)
    lines = [(line, False) for line in wrap(text)]
    if title:
        lines = [(line, True) for line in wrap(title, TITLE_SIZE)] + [("", False), *lines]
    pages = [lines[i:i + per_page] for i in range(0, len(lines), per_page)] or [[]]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in once the page numbers are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    ]
    kids = []
    for page in pages:
        y = PAGE_H - MARGIN - TITLE_SIZE
        ops = []
        for line, bold in page:
            font, size = (b"/F2", TITLE_SIZE) if bold else (b"/F1", SIZE)
            ops.append(b"BT %s %g Tf %d %g Td %s Tj ET" % (font, size, MARGIN, y, _string(line)))
            y -= LEADING * (1.3 if bold else 1)
        stream = b"\n".join(ops)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>"
            % (PAGE_W, PAGE_H, len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)
