"""Fetch a BpfProgram's bytecode (node path, ConfigMap, inline base64), check its digest, parse it once."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from pathlib import Path

from bpfshare.api.resources import Bytecode
from bpfshare.errors import BpfshareError
from bpfshare.spec import CollectionSpec

MAX_BYTECODE = 32 * 1024 * 1024
ELF_MAGIC = b"\x7fELF"

# (namespace, name, key) -> bytes; the agent reads ConfigMaps from the API, the CLI has none.
ConfigMapReader = Callable[[str, str, str], bytes]


def no_config_maps(namespace: str, name: str, key: str) -> bytes:
    raise BpfshareError(f"spec.bytecode.configMap {namespace}/{name}: ConfigMaps need a cluster (use the agent)")


def fetch(bytecode: Bytecode, read_config_map: ConfigMapReader = no_config_maps) -> bytes:
    """Return the object's bytes, after the size, ELF and sha256 checks, naming the source on error."""
    where = f"spec.bytecode ({bytecode.describe()})"
    if bytecode.path is not None:
        path = Path(bytecode.path)
        try:
            size = path.stat().st_size
            if size > MAX_BYTECODE:
                raise BpfshareError(f"{where}: {size} bytes is larger than the {MAX_BYTECODE} byte limit")
            data = path.read_bytes()
        except OSError as exc:
            raise BpfshareError(f"{where}: {exc.strerror or exc}") from None
    elif bytecode.config_map is not None:
        data = read_config_map(*bytecode.config_map)
    else:
        try:
            data = base64.b64decode(bytecode.inline or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BpfshareError(f"{where}: not valid base64 ({exc})") from None
    if len(data) > MAX_BYTECODE:
        raise BpfshareError(f"{where}: {len(data)} bytes is larger than the {MAX_BYTECODE} byte limit")
    if not data.startswith(ELF_MAGIC):
        raise BpfshareError(f"{where}: not an ELF object")
    digest = hashlib.sha256(data).hexdigest()
    if bytecode.sha256 and bytecode.sha256 != digest:
        raise BpfshareError(f"spec.bytecode.sha256: expected {bytecode.sha256}, the object's digest is {digest}")
    return data


class CollectionCache:
    """Parsed objects by digest: a resync re-reads bytes (cheap) but does not re-parse them."""

    def __init__(self, limit: int = 64) -> None:
        self._cache: dict[str, CollectionSpec] = {}
        self._limit = limit

    def parse(self, data: bytes) -> tuple[str, CollectionSpec]:
        from bpfshare.object import read_collection

        digest = hashlib.sha256(data).hexdigest()
        spec = self._cache.get(digest)
        if spec is None:
            spec = read_collection(data)
            if len(self._cache) >= self._limit:
                self._cache.pop(next(iter(self._cache)))
            self._cache[digest] = spec
        return digest, spec
