"""CPU counts the kernel sizes things by."""

from __future__ import annotations

import functools

POSSIBLE = "/sys/devices/system/cpu/possible"


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,5,7-8`` -> [0, 1, 2, 3, 5, 7, 8] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return cpus


@functools.cache
def possible_cpus() -> int:
    """How many CPUs may ever be online: per-CPU map values and perf event arrays use this number,
    not the online count (CPUs can be hot-plugged later, and the map was sized for all of them)."""
    with open(POSSIBLE) as f:
        return len(parse_cpu_list(f.read()))
