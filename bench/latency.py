"""Apply-to-ready latency: `kubectl apply` of one BpfMap and two BpfPrograms (tc + cgroup) until every
state object is Ready, next to the same loads done directly by `bpfshare load`, in one run.

- agent: one `bpfshare agent` (its own bpffs mount, a Node object) against a private control plane;
  each run starts just before `kubectl apply` and ends when a watch sees all three entries Ready for
  the current generation; then the resources are deleted and the benchmark waits until they are gone
  (the agent detached and deleted its state objects) before the next run.
- direct: `bpfshare load flow_counter.o --program count_ingress --attach tc:...` then
  `--program count_cgroup_egress --attach cgroup:...` (two processes; the first creates and pins the
  shared map by name, the second reuses it), then the pins and the tc filter are removed.
Run as root, from the repository's root:
`.venv/bin/python -m bench.latency [--runs 20] [--quick] [--write docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    TAG,
    BenchAgent,
    Section,
    StatusWatch,
    bpffs,
    bpfmap,
    build_objects,
    cgroup_program,
    cgroup_tree,
    control_plane,
    kubectl_apply,
    log,
    machine,
    main,
    median,
    netns_with_veths,
    pct,
    sh,
    start_agent,
    tc_program,
    verdict,
)
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import key_of

SECTION = Section("latency", "Apply-to-ready latency")
TARGET_P50, TARGET_P99, TARGET_OVERHEAD = 1.0, 2.0, 0.3


def direct_runs(obj: Path, root: Path, netns: str, iface: str, cgroup: str, runs: int) -> list[float]:
    """Seconds for the two `bpfshare load` processes, per run (after one warm-up run)."""
    samples = []
    for i in range(runs + 1):
        pin_root = root / f"direct{i}"
        common = [sys.executable, "-m", "bpfshare", "load", str(obj), "--pin-root", str(pin_root), "--json"]
        start = time.perf_counter()
        sh(*common, "--program", "count_ingress", "--attach", f"tc:{iface}:ingress@{netns}")
        sh(*common, "--program", "count_cgroup_egress", "--attach", f"cgroup:{cgroup}:egress")
        elapsed = time.perf_counter() - start
        if i:
            samples.append(elapsed)
        sh("tc", "-n", netns, "filter", "del", "dev", iface, "ingress", check=False)
        shutil.rmtree(pin_root)  # unpins the program, the map and the cgroup link (which detaches it)
    return samples


def inprocess_runs(obj: Path, root: Path, netns: str, iface: str, cgroup: str, runs: int) -> list[float]:
    """Seconds for the same two loads and attachments through the loader API in this process (no
    process start-up, no imports): the kernel and loader cost alone."""
    from bpfshare.api.targets import CgroupTarget, TcTarget
    from bpfshare.load.attach import attach_program
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    samples = []
    for i in range(runs + 1):
        pin_root = root / f"inproc{i}"
        start = time.perf_counter()
        for program, target in (
            ("count_ingress", TcTarget(iface, "ingress", netns)),
            ("count_cgroup_egress", CgroupTarget(cgroup, "egress")),
        ):
            loaded = load_program(read_collection(obj), program, pin_root=pin_root)
            try:
                attach_program(loaded.program, loaded.spec, target, loaded.pin_path.parent)
            finally:
                loaded.close()
        elapsed = time.perf_counter() - start
        if i:
            samples.append(elapsed)
        sh("tc", "-n", netns, "filter", "del", "dev", iface, "ingress", check=False)
        shutil.rmtree(pin_root)
    return samples


def agent_runs(
    cp: ControlPlane, watch: StatusWatch, agent: BenchAgent, docs: list[dict[str, Any]], runs: int
) -> tuple[list[float], list[float], int, int]:
    """Apply-to-ready seconds and kubectl apply seconds per run; reconcile passes and API requests
    over all the runs (applies and deletions)."""
    keys = [key_of(d) for d in docs]
    totals, applies = [], []
    passes0 = requests0 = 0
    for i in range(runs + 1):
        if i == 1:
            passes0, requests0 = agent.counters()
        start = time.perf_counter()
        applies_s = kubectl_apply(cp, docs)
        ready = watch.wait(watch.all_ready(keys, [agent.node]), timeout=60, what="all Ready")
        if i:
            totals.append(ready - start)
            applies.append(applies_s)
        time.sleep(0.2)  # let the pass that reported Ready finish its last write (usedBy on the map)
        cp.kubectl("delete", "--wait=false", *[f"{plural}/{name}" for plural, name in keys])
        watch.wait(watch.gone(keys), timeout=60, what="deletion")
    passes1, requests1 = agent.counters()
    return totals, applies, passes1 - passes0, requests1 - requests0


def report(args: argparse.Namespace) -> str:
    runs = 5 if args.quick else args.runs
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        obj = objs / "flow_counter.o"
        netns = f"{TAG}lat"
        iface = netns_with_veths(stack, netns, 1)[0]
        cgroups = cgroup_tree(stack, f"{TAG}-latency", ["direct", "agent"])
        root = bpffs(stack, "direct-")

        log(f"direct loads: {runs} runs")
        direct = direct_runs(obj, root, netns, iface, f"{cgroups.name}/direct", runs)
        inproc = inprocess_runs(obj, root, netns, iface, f"{cgroups.name}/direct", runs)

        cp = control_plane(stack)
        agent = start_agent(stack, cp, f"{TAG}-node", objs)
        watch = StatusWatch(cp, stack)
        docs = [
            bpfmap("flow-counts"),
            tc_program("count-ingress", obj, [iface], netns, map_name="flow-counts"),
            cgroup_program("count-cgroup", obj, f"{cgroups.name}/agent", map_name="flow-counts"),
        ]
        log(f"agent: {runs} runs")
        totals, applies, passes, requests = agent_runs(cp, watch, agent, docs, runs)
        problems = agent.problems()

    d50, d99 = median(direct), pct(direct, 99)
    a50, a99 = median(totals), pct(totals, 99)
    k50 = median(applies)
    i50 = median(inproc)
    lines = [
        f"Command: {SECTION.command(f'--runs {runs}')} ({runs} runs each after one warm-up; {machine()}).",
        "",
        "| | p50 (ms) | p99 (ms) | direct p50 (ms) | ratio p50 | agent minus direct, p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `kubectl apply` → all 3 entries Ready | {a50 * 1000:.0f} | {a99 * 1000:.0f} | {d50 * 1000:.0f} "
        f"| {a50 / d50:.2f}x | {(a50 - d50) * 1000:+.0f} |",
        f"| of which the `kubectl apply` process | {k50 * 1000:.0f} | {pct(applies, 99) * 1000:.0f} | | | |",
        f"| direct: two `bpfshare load` processes (the reference) | {d50 * 1000:.0f} | {d99 * 1000:.0f} "
        f"| {d50 * 1000:.0f} | 1.00x | 0 |",
        f"| the same loads in process (loader API: no start-up, no imports) | {i50 * 1000:.1f} "
        f"| {pct(inproc, 99) * 1000:.1f} | {d50 * 1000:.0f} | {i50 / d50:.2f}x | {(i50 - d50) * 1000:+.0f} |",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| p50 < {TARGET_P50 * 1000:.0f} ms | {a50 * 1000:.0f} ms ({a50 / TARGET_P50:.2f}x of target) "
        f"| {verdict(a50 < TARGET_P50)} |",
        f"| p99 < {TARGET_P99 * 1000:.0f} ms | {a99 * 1000:.0f} ms ({a99 / TARGET_P99:.2f}x of target) "
        f"| {verdict(a99 < TARGET_P99)} |",
        f"| agent adds ≤ {TARGET_OVERHEAD * 1000:.0f} ms over the direct load (p50) | "
        f"{(a50 - d50) * 1000:+.0f} ms | {verdict(a50 - d50 <= TARGET_OVERHEAD)} |",
        "",
        f"Over the {runs} measured apply + delete cycles the agent made {passes} reconcile passes "
        f"({passes / runs:.1f} per cycle) and {requests} API requests beyond its watches "
        f"({requests / runs:.1f} per cycle: state objects, their deletion, events); agent log lines at "
        f"WARNING or above: {len(problems)}.",
    ]
    if problems:
        log("agent problems:\n" + "\n".join(problems[:20]))
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 runs")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
