"""Fetch a BpfProgram's bytecode (node path, ConfigMap, inline base64), check its digest, parse it once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from bpfshare.api.resources import Bytecode
from bpfshare.errors import BpfshareError
from bpfshare.spec import CollectionSpec

MAX_BYTECODE = 64 * 1024 * 1024  # the default limit (agent and apply: --max-bytecode-bytes)
ELF_MAGIC = b"\x7fELF"

# (namespace, name, key) -> bytes; the agent reads ConfigMaps from the API, the CLI has none.
ConfigMapReader = Callable[[str, str, str], bytes]


def no_config_maps(namespace: str, name: str, key: str) -> bytes:
    raise BpfshareError(f"spec.bytecode.configMap {namespace}/{name}: ConfigMaps need a cluster (use the agent)")


def read_node_file(path: Path, limit: int, where: str) -> bytes:
    """A regular file's bytes, at most ``limit`` of them, never blocking: opened O_NONBLOCK (a FIFO
    would otherwise wait for a writer), refused unless fstat says regular (not /dev/zero, a FIFO,
    a socket or a directory), and read no further than the limit whatever the size claims."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise BpfshareError(f"{where}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BpfshareError(f"{where}: not a regular file ({_file_kind(st.st_mode)})")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise BpfshareError(f"{where}: {st.st_size} bytes is larger than the {limit} byte limit")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BpfshareError(f"{where}: larger than the {limit} byte limit")
    return data


def _identity(path: str) -> FileIdentity | None:
    """A regular file's identity (stat never blocks, even on a FIFO); None for anything else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def fetch(bytecode: Bytecode, read_config_map: ConfigMapReader = no_config_maps, limit: int = MAX_BYTECODE) -> bytes:
    """Return the object's bytes, after the size, ELF and sha256 checks, naming the source on error."""
    where = f"spec.bytecode ({bytecode.describe()})"
    if bytecode.path is not None:
        data = read_node_file(Path(bytecode.path), limit, where)
    elif bytecode.config_map is not None:
        data = read_config_map(*bytecode.config_map)
    else:
        try:
            data = base64.b64decode(bytecode.inline or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BpfshareError(f"{where}: not valid base64 ({exc})") from None
    if len(data) > limit:
        raise BpfshareError(f"{where}: {len(data)} bytes is larger than the {limit} byte limit")
    if not data.startswith(ELF_MAGIC):
        raise BpfshareError(f"{where}: not an ELF object")
    digest = hashlib.sha256(data).hexdigest()
    if bytecode.sha256 and bytecode.sha256 != digest:
        raise BpfshareError(f"spec.bytecode.sha256: expected {bytecode.sha256}, the object's digest is {digest}")
    return data


FileIdentity = tuple[str, int, int, int, int]  # path, device, inode, size, mtime (ns)


class CollectionCache:
    """Parsed objects by digest, and node files by identity: a resync neither re-parses an object
    nor re-reads and re-hashes a file that has not changed (same inode, size and mtime)."""

    def __init__(self, limit: int = 64) -> None:
        self._cache: dict[str, CollectionSpec] = {}
        self._files: dict[FileIdentity, str] = {}  # a node file -> its digest
        self._limit = limit

    def load(
        self, bytecode: Bytecode, read_config_map: ConfigMapReader, limit: int = MAX_BYTECODE
    ) -> tuple[str, CollectionSpec]:
        """``fetch`` and ``parse``, skipping both for a node file seen unchanged before."""
        identity = _identity(bytecode.path) if bytecode.path is not None else None
        if identity is not None:
            digest = self._files.get(identity)
            if digest is not None and digest in self._cache and (not bytecode.sha256 or bytecode.sha256 == digest):
                return digest, self._cache[digest]
        digest, spec = self.parse(fetch(bytecode, read_config_map, limit))
        if identity is not None:
            if len(self._files) >= self._limit:
                self._files.pop(next(iter(self._files)))
            self._files[identity] = digest
        return digest, spec

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
