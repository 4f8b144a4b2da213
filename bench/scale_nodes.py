"""Many nodes: 20 agents on this machine as simulated nodes, each with its own Node object, bpffs,
cgroup subtree and network namespace, and 50 BpfPrograms (40 cgroup, 10 tc) sharing one BpfMap.

Each simulated node's agent runs in its own mount and cgroup namespaces (`unshare`), set up before
the agent starts:
- its own bpffs mounted at /sys/fs/bpf (the default pin root /sys/fs/bpf/bpfshare, as on a node);
- cgroup2 re-mounted at /sys/fs/cgroup inside a cgroup namespace rooted at the node's subtree
  `<cgroup root>/<tag>-nodes/n<i>`, so the same `cgroup.path` (`bench/p<j>`) in a BpfProgram names
  a different cgroup on each node, as it would on separate machines;
- its own network namespace for the tc programs: they name the namespace by the absolute path
  /run/<tag>-netns, and each node's mount namespace bind-mounts its own namespace there.
The agents themselves stay in the host network namespace: they reach the API server on 127.0.0.1.

Measured: time from `kubectl apply` until every node's status entry of every resource is Ready, API
requests per agent, object sizes (as `kubectl get -o json` prints them, and as stored: compact JSON
with managedFields) and their growth per node (a least-squares fit over the sizes the watch saw as
entries arrived), that no entry is lost, that the host sees each node's attachments on that node's
own cgroups and namespace, and that no agent logged a warning or an error (write conflicts).
Run as root, from the repository's root:
`.venv/bin/python -m bench.scale_nodes [--nodes 20] [--programs 50] [--quick] [--write FILE]`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MAPS,
    PROGS,
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
    median,
    netns_with_veths,
    proc_cpu_seconds,
    py_spy,
    sh,
    start_agent,
    summarize_profile,
    tc_program,
    verdict,
)
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import key_of, node_report

SECTION = Section("scale_nodes", "Many nodes")
ETCD_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes (1.5 MiB): the largest object it stores

# Runs in the agent's process before `exec`: join the node's cgroup, then new mount and cgroup
# namespaces with the node's own cgroup2 view, bpffs and network namespace.
NODE_WRAPPER = r"""
set -e
cgroup=$1 netns=$2 netns_path=$3
shift 3
echo $$ > "$cgroup/cgroup.procs"
exec unshare --mount --cgroup --propagation private -- sh -c '
  set -e
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  mount -t bpf bpf /sys/fs/bpf
  mount --bind "/run/netns/$1" "$2"
  shift 2
  exec "$@"' sh "$netns" "$netns_path" "$@"
"""


def printed_size(obj: dict[str, Any]) -> int:
    """Bytes as `kubectl get -o json` prints the object (indented, without managedFields)."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return len(json.dumps({**obj, "metadata": meta}, indent=4)) + 1


def stored_size(obj: dict[str, Any]) -> int:
    """Bytes as etcd keeps a custom resource: compact JSON, managedFields included."""
    return len(json.dumps(obj, separators=(",", ":")))


def without_node(obj: dict[str, Any], node: str) -> dict[str, Any]:
    """The object as it would be had ``node`` never reported: its status entry, its keys in the
    summary maps, its finalizer and its field manager's managedFields entries removed."""
    from bpfshare.agent.writer import field_manager, finalizer_name

    out = copy.deepcopy(obj)
    status = out.get("status") or {}
    status["nodes"] = [e for e in status.get("nodes") or [] if e.get("node") != node]
    for summary in ("phases", "mapIds", "programIds"):
        (status.get(summary) or {}).pop(node, None)
    meta = out["metadata"]
    meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer_name(node)]
    manager = field_manager(node)
    meta["managedFields"] = [m for m in meta.get("managedFields") or [] if m.get("manager") != manager]
    return out


def per_node_bytes(obj: dict[str, Any], nodes: list[str]) -> tuple[list[int], list[int], int, int]:
    """Each node's share of the object, stored and printed (size with it minus size without it), and
    the object's size with no node at all, stored and printed."""
    stored, printed = stored_size(obj), printed_size(obj)
    shares_stored, shares_printed = [], []
    for node in nodes:
        alone = without_node(obj, node)
        shares_stored.append(stored - stored_size(alone))
        shares_printed.append(printed - printed_size(alone))
    bare = obj
    for node in nodes:
        bare = without_node(bare, node)
    return shares_stored, shares_printed, stored_size(bare), printed_size(bare)


def control_plane_cpu(cp: ControlPlane) -> float:
    return sum(proc_cpu_seconds(rec.pid) for rec in cp.processes.values())


def node_wrapper(tmp: Path) -> Path:
    path = tmp / "node-wrapper.sh"
    path.write_text(NODE_WRAPPER)
    return path


def verify_attachments(top: Path, nodes: int, n_cg: int, n_tc: int) -> int:
    """Nodes whose attachments the host sees where they belong: a program on each of the node's own
    cgroups (bpftool cgroup show) and a bpf filter on each of the veths in its own namespace."""
    good = 0
    for i in range(nodes):
        cgroups_ok = all(
            json.loads(sh("bpftool", "-j", "cgroup", "show", str(top / f"n{i}/bench/p{j}")).stdout or "[]")
            for j in range(n_cg)
        )
        filters_ok = all(
            "bpf" in sh("tc", "-n", f"{TAG}n{i}", "filter", "show", "dev", f"e{k}a", "ingress").stdout
            for k in range(n_tc)
        )
        good += cgroups_ok and filters_ok
    return good


@dataclass
class Burst:
    """One `kubectl apply` of the resources until every entry is Ready on every node given."""

    nodes: int
    apply_s: float = 0.0
    ready_s: float = 0.0
    requests: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    cp_cpu: float = 0.0
    own_cpu: float = 0.0
    events: int = 0

    @property
    def busy(self) -> float:
        """Share of the machine's CPUs busy with agents, API server, etcd and this benchmark."""
        return (sum(self.cpu) + self.cp_cpu + self.own_cpu) / (self.ready_s * (os.cpu_count() or 1))


def burst(
    cp: ControlPlane, watch: StatusWatch, agents: list[BenchAgent], docs: list[dict[str, Any]], profile: Path | None
) -> Burst:
    keys = [key_of(d) for d in docs]
    names = [a.node for a in agents]
    result = Burst(len(agents))
    counters0 = [a.counters() for a in agents]
    cpu0 = [a.cpu_seconds() for a in agents]
    cp0, own0, events0 = control_plane_cpu(cp), time.process_time(), watch.events
    log(f"{len(agents)} node(s): applying {len(docs)} resources")
    with py_spy(agents[0].pid, profile):
        start = time.perf_counter()
        result.apply_s = kubectl_apply(cp, docs)
        ready = watch.wait(
            watch.all_ready(keys, names), timeout=1800, what="every entry Ready on every node", interval=0.05
        )
    result.ready_s = ready - start
    result.cp_cpu, result.own_cpu = control_plane_cpu(cp) - cp0, time.process_time() - own0
    result.cpu = [a.cpu_seconds() - c for a, c in zip(agents, cpu0, strict=True)]
    result.events = watch.events - events0
    log(f"{len(agents)} node(s): all Ready after {result.ready_s:.1f} s; settling")
    time.sleep(5)  # the usedBy writes that follow the last Ready
    counters1 = [a.counters() for a in agents]
    result.requests = [c1[1] - c0[1] for c0, c1 in zip(counters0, counters1, strict=True)]
    result.passes = [c1[0] - c0[0] for c0, c1 in zip(counters0, counters1, strict=True)]
    result.rss = [a.rss_mib() for a in agents]
    if profile is not None:
        log(f"profile of agent {agents[0].node} during the burst, {profile}:\n{summarize_profile(profile)}")
    return result


def report(args: argparse.Namespace) -> str:
    nodes, programs = (4, 10) if args.quick else (args.nodes, args.programs)
    tc_share, resync, profile = args.tc_percent, args.resync, args.profile
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        obj = objs / "flow_counter.o"
        tmp = objs  # removed with the objects
        n_tc = programs * tc_share // 100
        n_cg = programs - n_tc
        netns_path = Path(f"/run/{TAG}-netns")
        netns_path.touch()
        stack.callback(lambda: netns_path.unlink(missing_ok=True))
        log(f"{nodes} nodes: cgroup subtrees with {n_cg} cgroups, network namespaces with {n_tc} veths each")
        top = cgroup_tree(stack, f"{TAG}-nodes", [f"n{i}/bench/p{j}" for i in range(nodes) for j in range(n_cg)])
        for i in range(nodes):
            netns_with_veths(stack, f"{TAG}n{i}", n_tc, prefix="e")
        wrapper = node_wrapper(tmp)

        cp = control_plane(stack)
        watch = StatusWatch(cp, stack)
        names = [f"{TAG}-n{i}" for i in range(nodes)]
        docs = [bpfmap("shared")]
        docs += [cgroup_program(f"cg-{j}", obj, f"bench/p{j}", map_name="shared") for j in range(n_cg)]
        docs += [tc_program(f"tc-{k}", obj, [f"e{k}a"], str(netns_path), map_name="shared") for k in range(n_tc)]
        keys = [key_of(d) for d in docs]

        def node_agent(i: int) -> BenchAgent:
            return start_agent(
                stack,
                cp,
                names[i],
                tmp,
                labels={"bench": TAG},
                resync=resync,
                pin_root=Path("/sys/fs/bpf/bpfshare"),  # in the node's own bpffs (the wrapper mounts it)
                prefix=["sh", str(wrapper), str(top / f"n{i}"), f"{TAG}n{i}", str(netns_path)],
                wait=False,
            )

        # The reference: the same resources with one node, in the same run.
        agents = [node_agent(0)]
        agents[0].wait_serving()
        single = burst(cp, watch, agents, docs, None)
        cp.kubectl("delete", "bpfprograms,bpfmaps", "--all", "--wait=false", timeout=300)
        watch.wait(watch.gone(keys), timeout=300, what="deletion")

        started = time.perf_counter()
        agents += [node_agent(i) for i in range(1, nodes)]
        for agent in agents:
            agent.wait_serving(timeout=300)
        log(f"{nodes} agents up after {time.perf_counter() - started:.1f} s")
        many = burst(cp, watch, agents, docs, profile / f"nodes-{nodes}.txt" if profile else None)

        # Nothing lost: every object has exactly one Ready entry per node, and the summary maps agree.
        lost = []
        for key in keys:
            body = watch.objects.get(key) or {}
            status = body.get("status") or {}
            entries = [e.get("node") for e in status.get("nodes") or []]
            if sorted(entries) != sorted(names) or sorted(status.get("phases") or {}) != sorted(names):
                lost.append(f"{key[1]}: {len(entries)} entries, {len(status.get('phases') or {})} phases")
            for node in names:
                entry = node_report(watch.get, key, node, None, current=False) or {}
                if entry.get("phase") != "Ready":
                    lost.append(f"{key[1]} on {node}: {entry.get('phase')} {entry.get('message', '')[:80]}")
        verified = verify_attachments(top, nodes, n_cg, n_tc)
        problems = {a.node: a.problems() for a in agents}
        final = {key: copy.deepcopy(watch.objects[key]) for key in keys}

    per = lambda b, xs: f"{median(xs):.{b}f} ({min(xs):.{b}f}..{max(xs):.{b}f})"  # noqa: E731
    total_problems = sum(len(v) for v in problems.values())
    rows = [
        (
            "`kubectl apply` → every entry Ready on every node (s)",
            f"{single.ready_s:.1f}",
            f"{many.ready_s:.1f}",
            many.ready_s / single.ready_s,
        ),
        (
            "of which the `kubectl apply` process (s)",
            f"{single.apply_s:.1f}",
            f"{many.apply_s:.1f}",
            many.apply_s / single.apply_s,
        ),
        (
            "API requests per agent, median (min..max)",
            per(0, single.requests),
            per(0, many.requests),
            median(many.requests) / median(single.requests),
        ),
        ("reconcile passes per agent, median (min..max)", per(0, single.passes), per(0, many.passes), None),
        (
            "watch events on the resources, delivered to every agent",
            f"{single.events}",
            f"{many.events}",
            many.events / single.events,
        ),
        (
            "CPU per agent for the burst, median (s)",
            per(2, single.cpu),
            per(2, many.cpu),
            median(many.cpu) / median(single.cpu),
        ),
        (
            "CPU of all agents / API server + etcd (s)",
            f"{sum(single.cpu):.1f} / {single.cp_cpu:.1f}",
            f"{sum(many.cpu):.1f} / {many.cp_cpu:.1f}",
            None,
        ),
        (f"machine busy during the burst ({os.cpu_count()} CPUs)", f"{single.busy:.0%}", f"{many.busy:.0%}", None),
        (
            "agent RSS, median (MiB)",
            f"{median(single.rss):.0f}",
            f"{median(many.rss):.0f}",
            median(many.rss) / median(single.rss),
        ),
    ]
    size_rows = []
    for label, key in (
        (f"BpfMap `shared` (usedBy: {len(docs) - 1} names per node)", (MAPS, "shared")),
        ("BpfProgram `cg-0` (cgroup, one link)", (PROGS, "cg-0")),
        ("BpfProgram `tc-0` (tc, one filter)", (PROGS, "tc-0")),
    ):
        obj_ = final[key]
        stored_shares, printed_shares, base_stored, base_printed = per_node_bytes(obj_, names)
        mean_stored = sum(stored_shares) / len(stored_shares)
        limit = (ETCD_LIMIT - base_stored) / mean_stored
        size_rows.append(
            f"| {label} | {printed_size(obj_)} | {stored_size(obj_)} | {base_printed} / {base_stored} "
            f"| {per(0, printed_shares)} | {per(0, stored_shares)} "
            f"| {(max(stored_shares) - min(stored_shares)) / mean_stored:.1%} | {limit:,.0f} |"
        )
    lines = [
        f"Command: {SECTION.command(f'--nodes {nodes} --programs {programs}')} "
        f"({machine()}; agent resync {resync:.0f} s).",
        "",
        f"{len(docs)} resources (1 BpfMap, {n_cg} cgroup and {n_tc} tc BpfPrograms), applied with one "
        f"`kubectl apply`: first with one node (the reference), then, after deleting them, with {nodes} "
        f"nodes ({nodes * len(docs)} status entries).",
        "",
        f"| | 1 node | {nodes} nodes | ratio |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {a} | {b} | {'' if r is None else f'{r:.1f}x'} |" for label, a, b, r in rows],
        "",
        "| check | measured | target | |",
        "|---|---:|---:|---|",
        f"| status entries lost or not Ready | {len(lost)} of {nodes * len(docs)} | 0 | {verdict(not lost)} |",
        f"| nodes whose attachments the host sees on the node's own cgroups and netns | {verified} | {nodes} "
        f"| {verdict(verified == nodes)} |",
        f"| agent log lines at WARNING or above (write conflicts, errors) | {total_problems} | 0 "
        f"| {verdict(not total_problems)} |",
        "",
        f"Object sizes in bytes with {nodes} nodes reporting; a node's share is the size with its entry, "
        "summary keys, finalizer and managedFields minus the size without them:",
        "",
        "| object | `kubectl get -o json` | stored (compact JSON with managedFields) "
        "| with no node: printed / stored | per node, printed: median (min..max) "
        "| per node, stored: median (min..max) | spread of the shares | nodes until etcd's 1.5 MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *size_rows,
    ]
    if lost:
        log("lost or not Ready:\n" + "\n".join(lost[:20]))
    for node, lines_ in problems.items():
        if lines_:
            log(f"agent {node}: {len(lines_)} problems, e.g.\n" + "\n".join(lines_[:5]))
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--programs", type=int, default=50)
    parser.add_argument("--tc-percent", type=int, default=20, help="share of the programs that are tc")
    parser.add_argument("--resync", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="4 nodes x 10 programs")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the first agent during the burst")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
