"""Loader benchmark: bpfshare's in-process load next to bpftool and iproute2's tc, in one run.

For each BTF example object (the ones bpftool and tc can load too):
- parse: `read_collection` alone (ELF + BTF + relocations), no kernel;
- bpfshare load: parse + map create/reuse + verifier + pin of every program of the object, in process,
  with the share of that time spent inside bpf() system calls;
- bpftool: `bpftool prog loadall OBJ DIR pinmaps DIR`, the whole process (what a user waits for);
- tc attach: `bpfshare load --attach tc:...` work in process vs `tc filter add ... bpf obj` (whole process);
- CLI start-up: `bpfshare inspect OBJ` as a process;
- CO-RE (core_skb.o, built against vmlinux.h): every program loaded in process with the kernel's BTF
  not yet indexed (cold: the per-process cache cleared) and already indexed (warm), against
  `bpftool prog loadall` of the same object as a whole process; and the resident memory the index
  adds to a fresh process (RSS after indexing + one CO-RE load, minus RSS before).
Run as root, from the repository's root: `make bench` or
`.venv/bin/python -m bench.loader [--rounds N] [--write docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import KernelClock, Section, bpffs, build_objects, main, median, netns_with_veths, timed

SECTION = Section("loader", "Loader")
# bpftool (libbpf 1.1 in Debian 12) refuses legacy SEC("maps") objects and does not know tcx/ sections; the
# objects it can load are compared with `type classifier` (its strict mode does not guess classifier/*).
OBJECTS = ("flow_counter_tc", "features", "cgroup_counter_mapdef", "flow_counter_legacy", "flow_counter")
BPFTOOL_CANNOT = {
    "flow_counter": "refuses the tcx/ingress section",
    "cgroup_counter_mapdef": 'refuses SEC("maps")',
    "flow_counter_legacy": 'refuses SEC("maps")',
}


def median_ms(samples: list[float]) -> float:
    return median(samples) * 1000


def bench_parse(obj: Path, rounds: int) -> float:
    from bpfshare.object import read_collection

    data = obj.read_bytes()
    read_collection(data)  # warm imports
    return median_ms([timed(lambda: read_collection(data)) for _ in range(rounds)])


def bench_bpfshare_load(obj: Path, rounds: int) -> tuple[float, float]:
    """Median ms to load every program of ``obj`` in process, and the share inside bpf()."""
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    totals: list[float] = []
    shares: list[float] = []
    for i in range(rounds):
        with contextlib.ExitStack() as stack:
            root = bpffs(stack)
            clock = KernelClock()
            with clock.installed():
                start = time.perf_counter()
                collection = read_collection(obj)
                for name in collection.programs:
                    load_program(collection, name, pin_root=root, pin_dir=root / "progs" / name).close()
                elapsed = time.perf_counter() - start
            if i:  # the first round pays one-off imports
                totals.append(elapsed)
                shares.append(clock.bpf_seconds / elapsed)
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


def bench_tc(obj: Path, rounds: int) -> tuple[float, float]:
    """(bpfshare in-process load + tc attach, tc filter add as a process), median ms each."""
    from bpfshare.api.targets import TcTarget
    from bpfshare.load.attach import attach_program
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    ours, theirs = [], []
    with contextlib.ExitStack() as outer:
        ns = f"bsbench{os.getpid()}"
        ifname = netns_with_veths(outer, ns, 1)[0]
        for i in range(rounds + 1):
            with contextlib.ExitStack() as stack:
                root = bpffs(stack)

                def load_and_attach(root: Path = root) -> None:
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


CORE_OBJECT = "core_skb"
RSS_PROBE = """
import sys
from pathlib import Path
from bpfshare.load.loader import load_program
from bpfshare.object import read_collection

def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096

collection = read_collection(Path(sys.argv[1]))
before = rss()
load_program(collection, "core_len", pin_root=Path(sys.argv[2]), pin_program=False).close()
print(rss() - before)
"""


def bench_core_load(obj: Path, rounds: int, *, cold: bool) -> float:
    """Median ms to parse ``obj`` and load every program, in process, the kernel BTF index
    cleared before each round (cold) or kept (warm)."""
    from bpfshare.load.loader import load_program
    from bpfshare.object import kernel_btf, read_collection

    samples = []
    for i in range(rounds + 1):
        with contextlib.ExitStack() as stack:
            root = bpffs(stack)
            if cold:
                kernel_btf.clear_cache()
            start = time.perf_counter()
            collection = read_collection(obj)
            for name in collection.programs:
                load_program(collection, name, pin_root=root, pin_program=False).close()
            if i:  # the first round pays one-off imports
                samples.append(time.perf_counter() - start)
    return median_ms(samples)


def bench_core_rss(obj: Path) -> float:
    """MiB of resident memory that indexing the kernel's BTF and one CO-RE load add to a fresh process."""
    with contextlib.ExitStack() as stack:
        root = bpffs(stack)
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(obj), str(root)], check=True, capture_output=True, text=True
        ).stdout
    return int(out.split()[-1]) / 2**20


def core_lines(objs: Path, rounds: int) -> list[str]:
    from bpfshare.object import read_collection

    obj = objs / f"{CORE_OBJECT}.o"
    programs = read_collection(obj).programs.values()
    relocations = sum(len(p.core_relocations) for p in programs)
    cold = bench_core_load(obj, rounds, cold=True)
    warm = bench_core_load(obj, rounds, cold=False)
    theirs = bench_bpftool(obj, rounds)
    rss = bench_core_rss(obj)
    return [
        "",
        f"CO-RE: `{CORE_OBJECT}.o` ({len(programs)} tc programs, {relocations} CO-RE relocations, built against "
        "vmlinux.h), every program "
        "loaded; targets: warm at most 1.5x bpftool, cold at most 3x, index under 50 MiB.",
        "",
        "| load of core_skb.o | bpfshare, in process (ms) | bpftool prog loadall (ms) | ratio |",
        "|---|---:|---:|---:|",
        f"| cold (kernel BTF not yet indexed) | {cold:.2f} | {theirs:.2f} | {cold / theirs:.2f}x |",
        f"| warm (kernel BTF indexed earlier in the process) | {warm:.2f} | {theirs:.2f} | {warm / theirs:.2f}x |",
        "",
        f"Resident memory of the kernel BTF index (RSS growth of a fresh process over indexing + one "
        f"CO-RE load): {rss:.1f} MiB.",
    ]


def bench_cli_startup(obj: Path, rounds: int) -> float:
    cmd = [sys.executable, "-m", "bpfshare", "inspect", str(obj)]
    return median_ms([timed(lambda: subprocess.run(cmd, check=True, capture_output=True)) for _ in range(rounds)])


def report(args: argparse.Namespace) -> str:
    private_sys_fs_bpf()
    with contextlib.ExitStack() as stack:
        rounds = 3 if args.quick else args.rounds
        if args.core_only:
            if args.write:
                raise SystemExit("--core-only prints the CO-RE rows only: it would not rewrite the whole section")
            return "\n".join(core_lines(build_objects(stack), rounds))
        return measure(build_objects(stack), rounds)


def measure(objs: Path, rounds: int) -> str:
    lines = [
        f"Command: {SECTION.command(f'--rounds {rounds}')} "
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
    ]
    lines += core_lines(objs, rounds)
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--core-only", action="store_true", help="only the CO-RE rows (printed; not for --write)")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
