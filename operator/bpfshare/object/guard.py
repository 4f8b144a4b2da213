"""Turn stray parsing exceptions into ``ObjectError`` that say where they happened.

The reader checks bounds explicitly where it can; ``guard`` is the backstop, so that malformed input
never escapes as an IndexError, struct.error, KeyError, UnicodeDecodeError or pyelftools error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from elftools.common.exceptions import ELFError

from bpfshare.errors import ObjectError

# What malformed bytes can make Python or pyelftools raise while we decode them.
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    IndexError,
    KeyError,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    OverflowError,
    RecursionError,
    MemoryError,
    struct.error,
    ELFError,
)


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Re-raise any parsing error inside the block as ``ObjectError`` mentioning ``where``."""
    try:
        yield
    except ObjectError:
        raise
    except PARSE_ERRORS as exc:
        raise ObjectError(f"malformed object: {where}: {type(exc).__name__}: {exc}") from exc


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
