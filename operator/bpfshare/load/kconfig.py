"""``__kconfig`` values: the ``.kconfig`` map's contents for the running kernel.

libbpf's bpf_object__resolve_externs and bpf_object__read_kconfig_file: ``CONFIG_*`` values come
from /boot/config-$(uname -r), else /proc/config.gz; ``LINUX_*`` ones are "virtual", computed by
the loader (LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE, LINUX_HAS_SYSCALL_WRAPPER). Each value is
encoded as its declared type asks (set_kcfg_value_tri / _str / _num); a missing value is zero for
a ``__weak`` extern and an error naming it otherwise.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from bpfshare.errors import BpfshareError
from bpfshare.load.probes import has_bpf_cookie, has_syscall_wrapper
from bpfshare.spec import KconfigExtern, KconfigType

CONFIG_PATHS = ("/boot/config-{release}", "/proc/config.gz")
TRI_NO, TRI_YES, TRI_MODULE = 0, 1, 2


class KconfigError(BpfshareError):
    pass


def _fail(ext: KconfigExtern, text: str) -> KconfigError:
    return KconfigError(f"extern (kconfig) {ext.name}: {text}")


def encode_tristate(ext: KconfigExtern, value: str) -> bytes:
    """libbpf's set_kcfg_value_tri: 'y', 'n' or 'm' into a bool, tristate or char."""
    if ext.type is KconfigType.BOOL:
        if value == "m":
            raise _fail(ext, "value 'm' (a module) does not fit a bool: declare it enum libbpf_tristate")
        return bytes([value == "y"])
    if ext.type is KconfigType.TRISTATE:
        tri = {"y": TRI_YES, "m": TRI_MODULE}.get(value, TRI_NO)
        return tri.to_bytes(ext.size, "little")
    if ext.type is KconfigType.CHAR:
        return value.encode()
    raise _fail(ext, f"value '{value}' implies a tristate or char type")


def encode_string(ext: KconfigExtern, value: str) -> bytes:
    """libbpf's set_kcfg_value_str: a quoted string into a char array, cut to fit with its NUL."""
    if ext.type is not KconfigType.CHAR_ARRAY:
        raise _fail(ext, f"value {value} implies a char array type")
    if len(value) < 2 or not value.endswith('"'):
        raise _fail(ext, f"invalid string value {value}")
    raw = value[1:-1].encode()[: ext.size - 1]
    return raw + b"\0"


def parse_u64(text: str) -> int | None:
    """strtoull(text, &end, 0) with nothing left over, as libbpf's parse_u64."""
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits, 8)
    else:
        value = int(digits)
    if value >= 1 << 64:
        return None  # ERANGE
    return (-value) % (1 << 64) if m.group(1) == "-" else value


def encode_number(ext: KconfigExtern, value: int) -> bytes:
    """libbpf's set_kcfg_value_num and is_kcfg_value_in_range."""
    if ext.type not in (KconfigType.INT, KconfigType.CHAR, KconfigType.BOOL):
        raise _fail(ext, f"value {value} implies an integer, char or bool type")
    if ext.type is KconfigType.BOOL:
        value = int(bool(value))
    bits = ext.size * 8
    if ext.size != 8:
        fits = (value + (1 << (bits - 1))) % (1 << 64) < (1 << bits) if ext.signed else value >> bits == 0
        if not fits:
            raise _fail(ext, f"value {value} does not fit in {ext.size} bytes")
    return (value % (1 << 64)).to_bytes(8, "little")[: ext.size]


def apply_config(text: str, wanted: dict[str, KconfigExtern], out: dict[str, bytes]) -> None:
    """libbpf's bpf_object__process_kconfig_line over a whole config file: the first value of each
    wanted name wins; lines that are not ``CONFIG_x=value`` are skipped."""
    for line in text.splitlines():
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            continue
        ext = wanted.get(name)
        if ext is None or name in out:
            continue
        if not value:
            raise _fail(ext, "no value in the kernel's configuration")
        if value[0] in "ynm":
            out[name] = encode_tristate(ext, value[0])
        elif value[0] == '"':
            out[name] = encode_string(ext, value)
        else:
            number = parse_u64(value)
            if number is None:
                raise _fail(ext, f"value {value!r} is not a valid integer")
            out[name] = encode_number(ext, number)


@functools.cache
def read_kernel_config() -> tuple[str, str]:
    """(text, path) of the running kernel's configuration."""
    release = os.uname().release
    tried = []
    for pattern in CONFIG_PATHS:
        path = Path(pattern.format(release=release))
        tried.append(str(path))
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if raw[:2] == b"\x1f\x8b":  # gzopen reads both
            raw = gzip.decompress(raw)
        return raw.decode(errors="replace"), str(path)
    raise BpfshareError(f"the object uses __kconfig values but the kernel's configuration is in none of {tried}")


def kernel_version(release: str | None = None) -> int:
    """LINUX_KERNEL_VERSION: KERNEL_VERSION(major, minor, patch) of the release, the patch level
    capped at 255 (libbpf's get_kernel_version)."""
    release = release or os.uname().release
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if m is None:
        raise BpfshareError(f"cannot read a kernel version from the release {release!r}")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    return (major << 16) + (minor << 8) + min(patch, 255)


def kconfig_contents(
    externs: Iterable[KconfigExtern],
    size: int,
    *,
    config: Callable[[], tuple[str, str]] = read_kernel_config,
    virtual: Callable[[str], int | None] | None = None,
) -> bytes:
    """The ``.kconfig`` map's value (``size`` bytes) for the running kernel."""
    externs = list(externs)
    values: dict[str, bytes] = {}
    lookup = virtual or virtual_value
    wanted: dict[str, KconfigExtern] = {}
    for ext in externs:
        if ext.name.startswith("CONFIG_"):
            wanted[ext.name] = ext
            continue
        value = lookup(ext.name) if ext.name.startswith("LINUX_") else None
        if value is None:
            if ext.weak and ext.name.startswith("LINUX_"):
                continue  # an unknown weak LINUX_ value reads as zero, as in libbpf
            raise _fail(ext, "not a Kconfig value (CONFIG_*) nor one bpfshare provides (LINUX_*)")
        if ext.name == "LINUX_KERNEL_VERSION":
            values[ext.name] = encode_number(ext, value)
        else:
            values[ext.name] = encode_tristate(ext, "y" if value else "n")
    source = ""
    if wanted:
        text, source = config()
        apply_config(text, wanted, values)
    buf = bytearray(size)
    for ext in externs:
        encoded = values.get(ext.name)
        if encoded is None:
            if not ext.weak:
                raise _fail(ext, f"not set in the kernel's configuration ({source}); declare it __weak if optional")
            continue
        buf[ext.offset : ext.offset + len(encoded)] = encoded
    return bytes(buf)


def virtual_value(name: str) -> int | None:
    """The LINUX_* values libbpf provides (bpf_object__resolve_externs)."""
    if name == "LINUX_KERNEL_VERSION":
        return kernel_version()
    if name == "LINUX_HAS_BPF_COOKIE":
        return int(has_bpf_cookie())
    if name == "LINUX_HAS_SYSCALL_WRAPPER":
        return int(has_syscall_wrapper())
    return None
