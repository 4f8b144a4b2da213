"""Idle cost: an agent holding 1000 converged resources, watched over a window (5 minutes by default),
next to the same agent's idle cost with no resources at all, measured first in the same run.

The 1000 resources: 500 BpfMaps and 500 BpfPrograms, each program binding its own map (an
application = one map + one program; 250 tc programs on 250 veths in a network namespace, 250
cgroup programs on 250 cgroups). It is the mix that makes a resync pass do the most work per
resource: every kind of check (map pins, program records, tc filter dumps, pinned links), and the
usedBy of each map.

Measured over the window: the agent's CPU (utime + stime from /proc/PID/stat) as a share of one
CPU, its RSS (sampled; and VmHWM, the peak since start, which includes the apply burst), API requests
beyond the watches per minute (the liveness probe's apiRequests), reconcile passes (the resync
period is the agent's default, 60 s), and status writes: watch events on the 1000 objects during
the window (there must be none).
Run as root, from the repository's root:
`.venv/bin/python -m bench.idle [--window 300] [--quick] [--write docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from bench.common import (
    TAG,
    BenchAgent,
    Section,
    StatusWatch,
    bpfmap,
    build_objects,
    cgroup_program,
    cgroup_tree,
    control_plane,
    kubectl_apply,
    log,
    machine,
    main,
    netns_with_veths,
    py_spy,
    start_agent,
    summarize_profile,
    tc_program,
    verdict,
)
from bpfshare.controlplane.wait import key_of

SECTION = Section("idle", "Idle cost")
TARGET_CPU = 0.01
TARGET_RSS_MIB = 150e6 / 2**20  # the target is 150 MB: 143 MiB


def observe(agent: BenchAgent, watch: StatusWatch, seconds: float) -> dict[str, float]:
    """Watch the agent for ``seconds``: CPU share, RSS (mean and max of samples), requests, passes,
    watch events."""
    passes0, requests0 = agent.counters()
    events0 = watch.events
    cpu0, t0 = agent.cpu_seconds(), time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds:
        samples.append(agent.rss_mib())
        time.sleep(min(2.0, max(0.0, seconds - (time.monotonic() - t0))))
    cpu1, t1 = agent.cpu_seconds(), time.monotonic()
    events1 = watch.events
    passes1, requests1 = agent.counters()  # waits out kopf's probe cache (up to 10 s more)
    elapsed = t1 - t0
    return {
        "seconds": elapsed,
        "cpu": (cpu1 - cpu0) / elapsed,
        "cpu_seconds": cpu1 - cpu0,
        "rss": sum(samples) / len(samples),
        "rss_max": max(samples),
        "hwm": agent.peak_rss_mib(),
        "requests_per_min": (requests1 - requests0) / elapsed * 60,
        "requests": requests1 - requests0,
        "passes": passes1 - passes0,
        "events": events1 - events0,
    }


def report(args: argparse.Namespace) -> str:
    if args.quick:
        args.window, args.baseline, args.apps = 60.0, 20.0, 100
    window, baseline, apps, resync, profile = args.window, args.baseline, args.apps, args.resync, args.profile
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        obj = objs / "flow_counter.o"
        n_tc = apps // 2
        n_cg = apps - n_tc
        netns = f"{TAG}idle"
        log(f"{n_tc} veths, {n_cg} cgroups")
        interfaces = netns_with_veths(stack, netns, n_tc)
        cg_top = cgroup_tree(stack, f"{TAG}-idle", [f"c{j}" for j in range(n_cg)])
        cp = control_plane(stack)
        node = f"{TAG}-idle-node"
        agent = start_agent(stack, cp, node, objs, resync=resync)
        watch = StatusWatch(cp, stack)
        time.sleep(5)  # past start-up
        log(f"baseline: the agent with no resources, {baseline:.0f} s")
        empty = observe(agent, watch, baseline)

        docs = [bpfmap(f"m{i}") for i in range(apps)]
        docs += [tc_program(f"tc{i}", obj, [iface], netns, map_name=f"m{i}") for i, iface in enumerate(interfaces)]
        docs += [cgroup_program(f"cg{j}", obj, f"{cg_top.name}/c{j}", map_name=f"m{n_tc + j}") for j in range(n_cg)]
        keys = [key_of(d) for d in docs]
        log(f"applying {len(docs)} resources")
        start = time.perf_counter()
        apply_s = kubectl_apply(cp, docs)
        ready = watch.wait(
            watch.all_ready(keys, [node]), timeout=1800, what=f"{len(docs)} resources Ready", interval=0.2
        )
        ready_s = ready - start
        log(f"all Ready after {ready_s:.1f} s (kubectl apply {apply_s:.1f} s); settling")
        settle_deadline = time.monotonic() + 120
        last = agent.counters()
        while time.monotonic() < settle_deadline:  # converged: no API request for a probe period
            now = agent.counters()
            if now[1] == last[1]:
                break
            last = now
        log(f"idle window: {window:.0f} s")
        out = profile / "idle.txt" if profile else None
        with py_spy(agent.pid, out):
            busy = observe(agent, watch, window)
        if out is not None:
            log(f"profile of the idle agent, {out}:\n{summarize_profile(out)}")
        problems = agent.problems()

    cpu_ratio = f"{busy['cpu'] / empty['cpu']:.1f}x" if empty["cpu"] else "—"
    per_pass = busy["cpu_seconds"] / busy["passes"] if busy["passes"] else 0.0
    lines = [
        f"Command: {SECTION.command(f'--window {window:.0f}')} ({machine()}; agent resync {resync:.0f} s).",
        "",
        f"{len(docs)} resources ({apps} BpfMaps, {n_tc} tc and {n_cg} cgroup BpfPrograms) applied in "
        f"{apply_s:.1f} s (`kubectl apply`), all Ready after {ready_s:.1f} s; then {busy['seconds']:.0f} s "
        f"idle. Reference: the same agent with no resources, {empty['seconds']:.0f} s, before the apply.",
        "",
        f"| over the window | {len(docs)} resources | no resources | ratio | target | |",
        "|---|---:|---:|---:|---:|---|",
        f"| agent CPU (share of one CPU) | {busy['cpu']:.2%} | {empty['cpu']:.2%} "
        f"| {cpu_ratio} | < {TARGET_CPU:.0%} "
        f"| {verdict(busy['cpu'] < TARGET_CPU)} |",
        f"| agent RSS, mean of samples (MiB) | {busy['rss']:.0f} | {empty['rss']:.0f} "
        f"| {busy['rss'] / empty['rss']:.2f}x | < {TARGET_RSS_MIB:.0f} (150 MB) "
        f"| {verdict(busy['rss_max'] < TARGET_RSS_MIB)} |",
        f"| agent RSS, max of samples / peak since start (MiB) | {busy['rss_max']:.0f} / {busy['hwm']:.0f} "
        f"| {empty['rss_max']:.0f} / {empty['hwm']:.0f} | | | |",
        f"| API requests beyond the watches, per minute | {busy['requests_per_min']:.1f} "
        f"| {empty['requests_per_min']:.1f} | | 0 | {verdict(busy['requests'] == 0)} |",
        f"| status writes (watch events on the {len(docs)} objects) | {busy['events']} | {empty['events']} "
        f"| | 0 | {verdict(busy['events'] == 0)} |",
        f"| reconcile passes (resyncs) | {busy['passes']} | {empty['passes']} | | | |",
        f"| CPU per resync pass (s) | {per_pass:.2f} | | | | |",
        "",
        f"Agent log lines at WARNING or above: {len(problems)}.",
    ]
    if problems:
        log("agent problems:\n" + "\n".join(problems[:20]))
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=300.0, help="idle seconds measured (default 300)")
    parser.add_argument("--baseline", type=float, default=60.0, help="seconds measured with no resources")
    parser.add_argument("--apps", type=int, default=500, help="BpfMap + BpfProgram pairs (default 500)")
    parser.add_argument("--resync", type=float, default=60.0, help="the agent's resync period (its default: 60)")
    parser.add_argument("--quick", action="store_true", help="100 pairs, 60 s window, 20 s baseline")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the agent during the window into DIR")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
