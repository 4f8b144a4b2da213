"""What every map-definition reader shares."""

from __future__ import annotations

from bpfshare.errors import UnsupportedError
from bpfshare.types import MapType


def map_type(value: int, where: str) -> MapType:
    try:
        return MapType(value)
    except ValueError:
        raise UnsupportedError(f"unsupported: {where}: unknown map type {value}") from None
