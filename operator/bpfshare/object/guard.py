"""Reading untrusted bytes: ``cstring`` (a bounds-checked string-table read) and ``guard``, the
backstop that turns a decoder's own error into an ``ObjectError`` saying where it happened.

The parsers check every offset, size, index and encoding themselves and raise ``ObjectError``
naming the section, symbol, offset or field at fault. ``guard`` only catches what the two decoders
they hand bytes to raise on bytes they cannot decode: ``struct`` (struct.error: a buffer shorter
than its layout) and pyelftools (ELFError and its ELFParseError: the ELF header). Nothing else is
caught: a TypeError, KeyError, IndexError or AttributeError out of a parser is a bug in bpfshare
and must surface as one, not be reported as a malformed object.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from elftools.common.exceptions import ELFError

from bpfshare.errors import ObjectError

# What the decoders raise for undecodable bytes (ELFParseError is an ELFError). The tests assert
# that no malformed input they try ever gets this far: every case has an explicit check.
DECODER_ERRORS: tuple[type[Exception], ...] = (struct.error, ELFError)


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Re-raise a decoder's error inside the block as ``ObjectError`` mentioning ``where``."""
    try:
        yield
    except DECODER_ERRORS as exc:
        raise ObjectError(f"malformed object: {where}: {exc}") from exc


def cstring(data: bytes, offset: int, where: str) -> str:
    """The NUL-terminated string at ``offset`` in a string table."""
    if not 0 <= offset < len(data):
        if offset == 0:
            return ""
        raise ObjectError(f"{where}: string offset {offset} outside the string table ({len(data)} bytes)")
    end = data.find(b"\0", offset)
    if end < 0:
        raise ObjectError(f"{where}: string at offset {offset} is not NUL-terminated")
    try:
        return data[offset:end].decode()
    except UnicodeDecodeError as exc:
        raise ObjectError(f"{where}: string at offset {offset} is not valid UTF-8") from exc
