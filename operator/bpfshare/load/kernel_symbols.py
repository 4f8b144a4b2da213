"""Where the running kernel's symbols are: BTF ids (vmlinux and module BTF) and kallsyms addresses.

``find_ksym_btf_id`` is the one function the extern resolver asks the kernel's BTF (the shared,
lazily indexed, per-process ``object.kernel_btf``), as libbpf's find_ksym_btf_id does: vmlinux
first, then the modules' split BTF (read only when vmlinux lacks the name).
"""

from __future__ import annotations

from pathlib import Path

from bpfshare.errors import BpfshareError
from bpfshare.object.btf import Kind
from bpfshare.object.externs import type_shape
from bpfshare.object.kernel_btf import KernelType, kernel_btf

KALLSYMS = Path("/proc/kallsyms")


def find_ksym_btf_id(name: str, kind: Kind) -> KernelType | None:
    """The kernel's BTF VAR or FUNC called ``name`` (vmlinux's, else a module's); None if none."""
    kbtf = kernel_btf()
    found = kbtf.find(name, kind) or kbtf.find(name, kind, modules=True)
    return found[0] if found else None


def kernel_type_shape(found: KernelType) -> str:
    """The type of the kernel VAR ``found`` (a FUNC: its prototype), as ``type_shape`` writes it."""
    return type_shape(found.btf, found.btf.type(found.id).size_or_type)


# (file, name) -> address of a name found in vmlinux only. vmlinux's symbols do not move while
# the system runs (KASLR picks their offset at boot), so each is read from the file once per
# process; a module's may (it can be unloaded and loaded elsewhere), so those are read each time,
# as are names not found (a module loaded later may bring them).
_VMLINUX: dict[tuple[Path, str], int] = {}


def kallsyms(names: set[str]) -> dict[str, int]:
    """Addresses of ``names`` in /proc/kallsyms (libbpf's bpf_object__read_kallsyms_file).

    A name listed twice at different addresses is ambiguous, and refused, as libbpf does. The file
    (some 5 MiB) is searched for each name rather than split into lines: a few names are wanted.
    """
    found = {name: _VMLINUX[KALLSYMS, name] for name in names if (KALLSYMS, name) in _VMLINUX}
    wanted = names - found.keys()
    if not wanted:
        return found
    try:
        text = KALLSYMS.read_bytes()
    except OSError as exc:
        raise BpfshareError(f"cannot read {KALLSYMS}: {exc.strerror or exc}") from None
    for name in wanted:
        # Lines are "<address> <type> <name>[\t[<module>]]": find " <name>" ending the name.
        needle = b" " + name.encode()
        in_module = False
        pos = text.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            if end == len(text) or text[end : end + 1] in (b"\t", b"\n", b" "):
                head = text[text.rfind(b"\n", 0, pos) + 1 : pos].split()
                if len(head) == 2 and len(head[1]) == 1:
                    addr = int(head[0], 16)
                    if found.get(name, addr) != addr:
                        raise BpfshareError(f"ksym {name}: ambiguous in {KALLSYMS} (two addresses)")
                    found[name] = addr
                    in_module |= text[end : end + 1] == b"\t"
            pos = text.find(needle, pos + 1)
        if found.get(name) and not in_module:  # 0: addresses hidden (kptr_restrict), not cached
            _VMLINUX[KALLSYMS, name] = found[name]
    return found
