"""What a file is, in a few words, from its first bytes: "a PNG image", "a zip archive", "UTF-16
text", "binary data". Used where a file turns out not to be the text expected, so the message
can say what it got. Only magic numbers are read (at most HEAD bytes); nothing is decoded fully.
"""

from __future__ import annotations

from pathlib import Path

HEAD = 4096  # bytes read to tell the kind

# (magic bytes at offset 0, description); the first match wins, so longer prefixes come first
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (such as .xls)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable program"),
    (b"\xff\xfe", "UTF-16 text (as Excel's 'Unicode Text' saves)"),
    (b"\xfe\xff", "UTF-16 text"),
)


def describe(path: Path) -> str:
    """A few words saying what the file at `path` is, judged from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
    return describe_bytes(head)


def describe_bytes(head: bytes) -> str:
    """What a file starting with `head` is: a known format, text, or "binary data"."""
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        if b"[Content_Types].xml" in head or b"xl/" in head:
            return "an Office document (such as an Excel .xlsx workbook, a zip archive)"
        return "a zip archive"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "a BMP image"  # "BM", size, then four reserved zero bytes
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:2] == b"\x80\x04" or head[:2] == b"\x80\x05":
        return "a Python pickle"
    try:
        head.decode("utf-8")
        return "UTF-8 text"
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(head) == HEAD:  # a character cut by
            # the end of the sample, not by the end of the file
            return "UTF-8 text"
    if b"\x00" not in head and _mostly_printable(head.decode("latin-1")):
        return "text in an encoding other than UTF-8 (such as Latin-1 or Windows-1252)"
    return "binary data"


def _mostly_printable(text: str) -> bool:
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return printable >= 0.95 * len(text)


__all__ = ["describe", "describe_bytes"]
