"""Many attachments on one node: N veth interfaces each with a tc program and M cgroups each with a
cgroup program, all sharing one BpfMap, applied at once with one `kubectl apply`; N = 50, 100, 200,
300 and M = N / 6 (50 cgroups at the top).

Two shapes of the same work:
- per-target: one BpfProgram per interface and per cgroup (N + M BpfPrograms): what a controller
  generating resources per pod would do, and the harder case for the agent (N + M loads, N + M
  state objects);
- lists: the interfaces listed in as few BpfPrograms as the CRD allows (256 interfaces at most per
  resource), plus the M cgroup BpfPrograms (a cgroup attachment names one cgroup).

For each size and shape, the reference is the kernel time of the same work: the node engine runs in
this process on a fresh bpffs with the same resources, and the time spent in bpf() and in the
pyroute2 netlink calls of kernel/tc.py is added up. Then a fresh agent (its own bpffs mount) gets the
resources through the API server; reported: apply-to-all-Ready, the agent's CPU seconds and peak
RSS, its reconcile passes (a burst must coalesce) and API requests.
Run as root, from the repository's root:
`.venv/bin/python -m bench.scale_node [--sizes 50,100,200,300] [--quick] [--write FILE]`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    TAG,
    Section,
    StatusWatch,
    bpfmap,
    build_objects,
    cgroup_program,
    cgroup_tree,
    control_plane,
    engine_reference,
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
from bpfshare.api.resources import MAP_KIND, MAP_PLURAL, PROGRAM_KIND
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import Key, key_of, poll

SECTION = Section("scale_node", "Many attachments on one node")
MAX_INTERFACES = 256  # the CRD's maxItems for attach.tc.interfaces
TARGET_RATIO = 3.0


@dataclass
class Result:
    shape: str
    interfaces: int
    cgroups: int
    resources: int
    kernel_bpf: float = 0.0
    kernel_netlink: float = 0.0
    engine_wall: float = 0.0
    apply_seconds: float = 0.0
    ready_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    passes: int = 0
    requests: int = 0
    problems: int = 0
    api_floor: float = 0.0

    @property
    def kernel(self) -> float:
        return self.kernel_bpf + self.kernel_netlink


def documents(shape: str, obj: Path, netns: str, interfaces: list[str], cgroups: list[str]) -> list[dict[str, Any]]:
    docs = [bpfmap("shared")]
    if shape == "per-target":
        docs += [tc_program(f"tc-{i}", obj, [iface], netns, map_name="shared") for i, iface in enumerate(interfaces)]
    else:
        chunks = math.ceil(len(interfaces) / MAX_INTERFACES)
        size = math.ceil(len(interfaces) / chunks) if chunks else 0
        docs += [
            tc_program(f"tc-list-{c}", obj, interfaces[c * size : (c + 1) * size], netns, map_name="shared")
            for c in range(chunks)
        ]
    docs += [cgroup_program(f"cg-{j}", obj, cg, map_name="shared") for j, cg in enumerate(cgroups)]
    for doc in docs:
        doc["metadata"]["generation"] = 1  # for the in-process engine run (the API server sets its own)
    return docs


def engine_pass(docs: list[dict[str, Any]], result: Result) -> None:
    """The kernel reference: one engine pass in this process over the same resources, on a fresh bpffs."""
    from bpfshare.api.resources import parse_map, parse_program

    maps = [parse_map(d) for d in docs if d["kind"] == "BpfMap"]
    programs = [parse_program(d) for d in docs if d["kind"] == "BpfProgram"]
    ref = engine_reference(maps, programs)
    result.engine_wall, result.kernel_bpf, result.kernel_netlink = ref.engine_wall, ref.bpf, ref.netlink


def agent_run(
    cp: ControlPlane,
    watch: StatusWatch,
    docs: list[dict[str, Any]],
    result: Result,
    workdir: Path,
    resync: float,
    profile: Path | None,
) -> None:
    node = f"{TAG}-{result.shape}-{result.interfaces}"
    keys = [key_of(d) for d in docs]
    with contextlib.ExitStack() as local:
        agent = start_agent(local, cp, node, workdir, resync=resync)
        passes0, requests0 = agent.counters()
        cpu0 = agent.cpu_seconds()
        out = profile / f"{result.shape}-{result.interfaces}.txt" if profile else None
        with py_spy(agent.pid, out):
            start = time.perf_counter()
            result.apply_seconds = kubectl_apply(cp, docs)
            ready = watch.wait(watch.all_ready(keys, [node]), timeout=900, what=f"{len(keys)} resources Ready")
        if out is not None:
            log(f"profile of agent {node} (apply to Ready), {out}:\n{summarize_profile(out)}")
        result.ready_seconds = ready - start
        passes1, requests1 = agent.counters()  # waits out kopf's probe cache: the burst has settled
        result.cpu_seconds = agent.cpu_seconds() - cpu0
        result.peak_rss_mib = agent.peak_rss_mib()
        result.passes, result.requests = passes1 - passes0, requests1 - requests0
        problems = agent.problems()
        result.problems = len(problems)
        if problems:
            log(f"agent {node}: {len(problems)} log lines at WARNING or above, e.g.\n" + "\n".join(problems[:5]))
        result.api_floor = api_floor(cp, keys)
        cp.kubectl("delete", "bpfprograms,bpfmaps", "--all", "--wait=false", timeout=300)
        watch.wait(watch.gone(keys), timeout=900, what="deletion")
        # No controller holds the resources here, so they go at once: the agent has released them
        # on its node (filters and links removed) when its states are gone too. Stopping it sooner
        # would leave its attachments for the next shape's in-process pass to find.
        poll(lambda: not node_states(cp, node), f"agent {node} to release every resource", timeout=300)
    cp.kubectl("delete", "node", node)


def node_states(cp: ControlPlane, node: str) -> list[str]:
    out = cp.kubectl("get", "bpfmapstates,bpfprogramstates", "-l", f"bpfshare.io/node={node}", "-o", "name")
    return out.stdout.split()


def api_floor(cp: ControlPlane, keys: list[Key]) -> float:
    """Seconds for the writes that must precede "all Ready", made by this process against the same API
    server: per resource, one state object for a made-up node (server-side apply, as the agent does);
    they are deleted again afterwards (untimed)."""
    from bpfshare.agent.writer import Writer
    from bpfshare.api.states import state_body, state_kind_of

    node = "bench-floor"
    writer = Writer(cp.api_client(), node)
    status = {"phase": "Ready", "message": "", "observedGeneration": 1}
    kinds = [(state_kind_of(MAP_KIND if plural == MAP_PLURAL else PROGRAM_KIND), name) for plural, name in keys]
    bodies = [(kind, state_body(kind, name, None, node, status)) for kind, name in kinds]
    start = time.perf_counter()
    for kind, body in bodies:
        writer.apply_state(kind, body)
    elapsed = time.perf_counter() - start
    for kind, body in bodies:  # by the names sent: the apply's answer may be a model, not a dict
        writer.delete_state(kind, body["metadata"]["name"])
    return elapsed


def report(args: argparse.Namespace) -> str:
    sizes = [12, 24] if args.quick else [int(s) for s in args.sizes.split(",")]
    shapes, resync, profile = args.shapes.split(","), args.resync, args.profile
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        obj = objs / "flow_counter.o"
        netns = f"{TAG}node"
        top = max(sizes)
        log(f"creating {top} veth pairs in {netns} and {top // 6} cgroups")
        interfaces = netns_with_veths(stack, netns, top)
        cg_top = cgroup_tree(stack, f"{TAG}-scale-node", [f"c{j}" for j in range(top // 6)])
        cp = control_plane(stack)
        watch = StatusWatch(cp, stack)
        for n in sizes:
            m = n // 6
            cgroups = [f"{cg_top.name}/c{j}" for j in range(m)]
            for shape in shapes:
                docs = documents(shape, obj, netns, interfaces[:n], cgroups)
                result = Result(shape, n, m, len(docs))
                log(f"{shape}: {n} interfaces, {m} cgroups, {len(docs)} resources: in-process engine")
                engine_pass(docs, result)
                log(f"{shape}: kernel {result.kernel:.2f} s, engine {result.engine_wall:.2f} s; agent")
                agent_run(cp, watch, docs, result, objs, resync, profile)
                log(
                    f"{shape}: ready after {result.ready_seconds:.2f} s (apply {result.apply_seconds:.2f} s), "
                    f"{result.passes} passes, {result.requests} requests"
                )
                results.append(result)
    return render(results, sizes, shapes, resync)


def render(results: list[Result], sizes: list[int], shapes: list[str], resync: float) -> str:
    sizes_arg = ",".join(str(s) for s in sizes)
    shapes_arg = "" if shapes == ["per-target", "lists"] else f" --shapes {','.join(shapes)}"
    lines = [
        f"Command: {SECTION.command(f'--sizes {sizes_arg}{shapes_arg}')} ({machine()}; agent resync {resync:.0f} s).",
        "",
        "| shape | tc + cgroup attachments | resources | kernel: bpf() + netlink (s) | engine in process (s) "
        "| API floor (s) | apply → all Ready (s) | ratio to kernel | ratio to kernel + API floor "
        "| per attachment (ms) | `kubectl apply` (s) | agent CPU (s) | peak RSS (MiB) | passes | API requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        attachments = r.interfaces + r.cgroups
        lines.append(
            f"| {r.shape} | {r.interfaces} + {r.cgroups} | {r.resources} "
            f"| {r.kernel:.2f} ({r.kernel_bpf:.2f} + {r.kernel_netlink:.2f}) | {r.engine_wall:.2f} "
            f"| {r.api_floor:.2f} | {r.ready_seconds:.2f} | {r.ready_seconds / r.kernel:.1f}x "
            f"| {r.ready_seconds / (r.kernel + r.api_floor):.1f}x | {r.ready_seconds / attachments * 1000:.1f} "
            f"| {r.apply_seconds:.2f} | {r.cpu_seconds:.2f} | {r.peak_rss_mib:.0f} | {r.passes} | {r.requests} |"
        )
    lines += [
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for shape in shapes:
        top = max((r for r in results if r.shape == shape), key=lambda r: r.interfaces)
        ratio = top.ready_seconds / top.kernel
        lines.append(
            f"| {shape}, {top.interfaces} + {top.cgroups}: all Ready within {TARGET_RATIO:.0f}x the kernel "
            f"time | {ratio:.1f}x | {verdict(ratio <= TARGET_RATIO)} |"
        )
    worst_passes = max(r.passes for r in results)
    most = max(results, key=lambda r: r.resources)
    lines.append(
        f"| a burst coalesces (not one pass per event) | at most {worst_passes} passes for up to "
        f"{most.resources} resources | {verdict(worst_passes < most.resources / 10)} |"
    )
    if any(r.problems for r in results):
        lines.append(f"| agent log lines at WARNING or above | {sum(r.problems for r in results)} | **check** |")
    return "\n".join([*lines, ""])


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="50,100,200,300", help="interface counts (cgroups: a sixth of each)")
    parser.add_argument("--shapes", default="per-target,lists")
    parser.add_argument("--resync", type=float, default=60.0, help="the agent's resync period (its default: 60)")
    parser.add_argument("--quick", action="store_true", help="sizes 12,24 (cgroups 2, 4)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the agent from apply to Ready into DIR (slows it down; for diagnosis)",
    )


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
