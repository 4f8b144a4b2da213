"""Loader benchmark: bpfshare's in-process load next to bpftool and iproute2's tc, in one run.

For each BTF example object (the ones bpftool and tc can load too):
- parse: `read_collection` alone (ELF + BTF + relocations), no kernel;
- bpfshare load: parse + map create/reuse + verifier + pin of every program of the object, in process,
  with the share of that time spent inside bpf() system calls;
- bpftool: `bpftool prog loadall OBJ DIR pinmaps DIR`, the whole process (what a user waits for);
- tc attach: `bpfshare load --attach tc:...` work in process vs `tc filter add ... bpf obj` (whole process);
- CLI start-up: `bpfshare inspect OBJ` as a process.
Run as root: `make bench` or `.venv/bin/python bench/loader.py [--rounds N] [--write docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bpftool (libbpf 1.1 in Debian 12) refuses legacy SEC("maps") objects and does not know tcx/ sections; the
# objects it can load are compared with `type classifier` (its strict mode does not guess classifier/*).
OBJECTS = ("flow_counter_tc", "features", "cgroup_counter_mapdef", "flow_counter_legacy", "flow_counter")
BPFTOOL_CANNOT = {
    "flow_counter": "refuses the tcx/ingress section",
    "cgroup_counter_mapdef": 'refuses SEC("maps")',
    "flow_counter_legacy": 'refuses SEC("maps")',
}
MARK_BEGIN = "<!-- bench/loader.py begin -->"
MARK_END = "<!-- bench/loader.py end -->"


class SyscallClock:
    """Wraps libc's syscall() as the kernel layer calls it, adding up the time spent in bpf()."""

    def __init__(self) -> None:
        from bpfshare.kernel import syscall

        self.module = syscall
        self.real = syscall._libc.syscall
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: object) -> int:
        start = time.perf_counter()
        try:
            return self.real(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    @contextmanager
    def installed(self) -> Iterator[None]:
        self.module._libc.syscall = self
        try:
            yield
        finally:
            self.module._libc.syscall = self.real


@contextmanager
def bpffs() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bpfshare-bench-"))
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_parse(obj: Path, rounds: int) -> float:
    from bpfshare.object import read_collection

    data = obj.read_bytes()
    read_collection(data)  # warm imports
    return median_ms([timed(lambda: read_collection(data)) for _ in range(rounds)])


def bench_bpfshare_load(obj: Path, rounds: int) -> tuple[float, float]:
    """Median ms to load every program of ``obj`` in process, and the share inside bpf()."""
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    clock = SyscallClock()
    totals: list[float] = []
    shares: list[float] = []
    for i in range(rounds):
        with bpffs() as root:
            clock.seconds = 0.0
            with clock.installed():
                start = time.perf_counter()
                collection = read_collection(obj)
                for name in collection.programs:
                    load_program(collection, name, pin_root=root, pin_dir=root / "progs" / name).close()
                elapsed = time.perf_counter() - start
            if i:  # the first round pays one-off imports
                totals.append(elapsed)
                shares.append(clock.seconds / elapsed)
    return median_ms(totals), statistics.median(shares)


def private_sys_fs_bpf() -> None:
    """Give this process (and the bpftool it runs) a mount namespace of its own.

    libbpf pins LIBBPF_PIN_BY_NAME maps under /sys/fs/bpf whatever bpftool is told, so each bpftool
    round gets a fresh bpffs mounted over /sys/fs/bpf, visible to this benchmark only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


def bench_bpftool(obj: Path, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
        try:
            cmd = ["bpftool", "prog", "loadall", str(obj), "/sys/fs/bpf/progs", "type", "classifier"]
            samples.append(timed(lambda: subprocess.run(cmd, check=True, capture_output=True)))  # noqa: B023
        finally:
            subprocess.run(["umount", "/sys/fs/bpf"], check=True)
    return median_ms(samples)


@contextmanager
def veth_namespace() -> Iterator[tuple[str, str]]:
    ns, ifname = f"bsbench{os.getpid()}", "bsbench0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{ns}",
                "ip",
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                "bsbench1",
            ],
            check=True,
        )
        yield ns, ifname
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def bench_tc(obj: Path, rounds: int) -> tuple[float, float]:
    """(bpfshare in-process load + tc attach, tc filter add as a process), median ms each."""
    from bpfshare.api.targets import TcTarget
    from bpfshare.load.attach import attach_program
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    ours, theirs = [], []
    with veth_namespace() as (ns, ifname):
        for i in range(rounds + 1):
            with bpffs() as root:

                def load_and_attach() -> None:
                    loaded = load_program(read_collection(obj), "count_ingress", pin_root=root)
                    with loaded.program:
                        attach_program(
                            loaded.program, loaded.spec, TcTarget(ifname, "ingress", ns), loaded.pin_path.parent
                        )

                t = timed(load_and_attach)
                if i:
                    ours.append(t)
                subprocess.run(
                    ["nsenter", f"--net=/run/netns/{ns}", "tc", "filter", "del", "dev", ifname, "ingress"],
                    check=False,
                    capture_output=True,
                )
                cmd = [
                    "nsenter",
                    f"--net=/run/netns/{ns}",
                    "tc",
                    "filter",
                    "replace",
                    "dev",
                    ifname,
                    "ingress",
                    "prio",
                    "2",
                    "handle",
                    "1",
                    "bpf",
                    "da",
                    "obj",
                    str(obj),
                    "sec",
                    "tc",
                ]
                env = {**os.environ, "TC_BPF_MNT": str(root)}
                t = timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env))  # noqa: B023
                if i:
                    theirs.append(t)
    return median_ms(ours), median_ms(theirs)


def bench_cli_startup(obj: Path, rounds: int) -> float:
    cmd = [sys.executable, "-m", "bpfshare", "inspect", str(obj)]
    return median_ms([timed(lambda: subprocess.run(cmd, check=True, capture_output=True)) for _ in range(rounds)])


def build_objects() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bpfshare-bench-objs-"))
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), f"O={out}"], check=True)
    return out


def report(rounds: int) -> str:
    objs = build_objects()
    lines = [
        MARK_BEGIN,
        f"Command: `sudo .venv/bin/python bench/loader.py --rounds {rounds} --write docs/benchmarks.md` "
        f"(median of {rounds} rounds; {os.cpu_count()} CPUs, kernel {os.uname().release}).",
        "",
        "| object | parse (ms) | bpfshare load, in process (ms) | in bpf() | bpftool prog loadall (ms) | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in OBJECTS:
        obj = objs / f"{name}.o"
        parse = bench_parse(obj, rounds * 10)
        ours, share = bench_bpfshare_load(obj, rounds + 1)
        if name in BPFTOOL_CANNOT:
            lines.append(f"| {name}.o | {parse:.2f} | {ours:.2f} | {share:.0%} | {BPFTOOL_CANNOT[name]} | — |")
            continue
        theirs = bench_bpftool(obj, rounds)
        lines.append(f"| {name}.o | {parse:.2f} | {ours:.2f} | {share:.0%} | {theirs:.2f} | {ours / theirs:.2f}x |")
    tc_ours, tc_theirs = bench_tc(objs / "flow_counter.o", rounds)
    startup = bench_cli_startup(objs / "flow_counter.o", rounds)
    lines += [
        "",
        "| operation | bpfshare (ms) | peer (ms) | ratio |",
        "|---|---:|---:|---:|",
        f"| load + tc attach `count_ingress` (bpfshare in process vs `tc filter replace ... bpf obj`) "
        f"| {tc_ours:.2f} | {tc_theirs:.2f} | {tc_ours / tc_theirs:.2f}x |",
        f"| CLI start-up: `bpfshare inspect flow_counter.o` (process) vs target 300 ms "
        f"| {startup:.1f} | 300 | {startup / 300:.2f}x |",
        MARK_END,
    ]
    return "\n".join(lines)


def write_section(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Loader\n\n" + section + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--write", type=Path, help="update this markdown file's loader section")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/loader.py needs root (bpffs mounts, program loads)")
    private_sys_fs_bpf()
    section = report(args.rounds)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
