"""iproute2's bpf_pinning file: custom pinning values of ``struct bpf_elf_map`` -> subdirectories.

iproute2 (lib/bpf_legacy.c, bpf_hash_init and bpf_read_pin_mapping) reads ``<value> <subdir>`` lines
from /usr/lib/iproute2/bpf_pinning, then /etc/iproute2/bpf_pinning (a later file's entry wins);
blank lines and ``#`` comments are skipped, the value is read with ``%i`` (decimal, 0x hex or 0
octal), and values 1 and 2 (PIN_OBJECT_NS, PIN_GLOBAL_NS) are reserved. A map whose pinning is such
a value is pinned at ``<bpffs>/<subdir>/<name>`` (bpf_make_pathname: ``<tc dir>/../<subdir>/<name>``).

Where iproute2 quietly leaves a map with an unknown value unpinned (bpf_no_pinning), bpfshare
refuses it by name: a datapath that shares maps through such pins would silently split in two.
The file is read on the node, at load time (plan time for the engine), never by the object reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from bpfshare.errors import BpfshareError

# Overrides the two default files with one (tests, and nodes whose iproute2 keeps it elsewhere).
ENV_VAR = "BPFSHARE_BPF_PINNING"
DEFAULT_FILES = (Path("/usr/lib/iproute2/bpf_pinning"), Path("/etc/iproute2/bpf_pinning"))
_RESERVED = (1, 2)  # PIN_OBJECT_NS, PIN_GLOBAL_NS

_cache: dict[tuple[Path, int, int], dict[int, str]] = {}


def pinning_files() -> tuple[Path, ...]:
    override = os.environ.get(ENV_VAR)
    return (Path(override),) if override else DEFAULT_FILES


def parse_bpf_pinning(text: str, source: str) -> dict[int, str]:
    """``{value: subdir}`` from the text of one bpf_pinning file; a malformed line is an error naming it."""
    out: dict[int, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        where = f"{source} line {number}"
        if len(words) != 2:
            raise BpfshareError(f"{where}: expected '<pinning value> <subdirectory>', got {raw.strip()!r}")
        try:
            value = int(words[0], 0)  # C's %i: 42, 0x2a, 052
        except ValueError:
            try:
                value = int(words[0], 8) if words[0].startswith("0") else int(words[0])
            except ValueError:
                raise BpfshareError(f"{where}: {words[0]!r} is not a number") from None
        if not 0 <= value <= 0xFFFFFFFF:
            raise BpfshareError(f"{where}: pinning value {value} does not fit 32 bits")
        subdir = words[1].strip("/")
        if value in _RESERVED or value == 0:
            continue  # iproute2: "id %u is reserved - ignoring!"
        if not subdir or ".." in Path(subdir).parts:
            raise BpfshareError(f"{where}: subdirectory {words[1]!r} must stay inside the bpffs mount")
        out[value] = subdir
    return out


def _read(path: Path) -> dict[int, str]:
    try:
        st = path.stat()
    except OSError:
        return {}  # iproute2: a missing file is no mapping
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _cache:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BpfshareError(f"cannot read {path}: {exc}") from None
        _cache[key] = parse_bpf_pinning(text, str(path))
    return _cache[key]


def custom_pin_subdir(value: int, map_name: str, files: tuple[Path, ...] | None = None) -> str:
    """The subdirectory a custom pinning ``value`` names, or an error naming the map and the files."""
    files = files if files is not None else pinning_files()
    found: dict[int, str] = {}
    for path in files:
        found.update(_read(path))  # the later file wins, as in iproute2's hash
    if value not in found:
        where = " or ".join(str(p) for p in files)
        raise BpfshareError(f"map {map_name!r}: pinning {value} is not in {where}")
    return found[value]
