"""Many nodes, real agents: agents on this machine as simulated nodes (1, 10, 20 and 40 by default), each
with its own Node object, bpffs, cgroup subtree and network namespace, with a real `bpfshare controller`;
and the previous design (each node's entry in the shared objects' status.nodes, per-node finalizers), run
at 20 nodes from a git worktree of its last commit, in the same run.

Each simulated node's agent runs in its own mount and cgroup namespaces (`unshare`), set up before
the agent starts:
- its own bpffs mounted at /sys/fs/bpf (the default pin root /sys/fs/bpf/bpfshare, as on a node);
- cgroup2 re-mounted at /sys/fs/cgroup inside a cgroup namespace rooted at the node's subtree
  `<cgroup root>/<tag>-nodes/n<i>`, so the same `cgroup.path` (`bench/p<j>`) in a BpfProgram names
  a different cgroup on each node, as it would on separate machines;
- its own network namespace for the tc programs: they name the namespace by the absolute path
  /run/<tag>-netns, and each node's mount namespace bind-mounts its own namespace there.
The agents themselves stay in the host network namespace: they reach the API server on 127.0.0.1.

Measured per rollout (one `kubectl apply` of all resources until done, then their deletion): the time
to done (this design: the Ready condition at the current generation with every node counted), the watch
events on BpfMaps and BpfPrograms (every agent watches both, so each agent receives each of them), CPU
and API requests per agent, the controller's CPU, the API server's and etcd's CPU, the largest shared
object; that the host sees each node's attachments on its own cgroups and namespace; that nothing is
left attached after deletion; and that no agent or controller logged a warning or an error.
Run as root, from the repository's root:
`.venv/bin/python -m bench.scale_nodes [--nodes 1,10,20,40] [--programs 20] [--quick] [--write FILE]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MAPS,
    PROGS,
    REPO,
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
    sh,
    start_agent,
    tc_program,
    verdict,
)
from bpfshare.controlplane.controllers import install_peering, start_controller
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import Key, cluster_ready, key_of

SECTION = Section("scale_nodes", "Many nodes")
PREVIOUS = "6561082"  # the last commit of the previous status model (per-node entries in the shared objects)

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


def control_plane_cpu(cp: ControlPlane) -> float:
    return sum(proc_cpu_seconds(rec.pid) for rec in cp.processes.values())


def node_wrapper(tmp: Path) -> Path:
    path = tmp / "node-wrapper.sh"
    path.write_text(NODE_WRAPPER)
    return path


def cgroup_programs(path: Path) -> list[dict[str, Any]]:
    """The programs attached to a cgroup (bpftool prints only a newline when there is none)."""
    shown = sh("bpftool", "-j", "cgroup", "show", str(path)).stdout.strip()
    return list(json.loads(shown)) if shown else []


def verify_attachments(top: Path, nodes: int, n_cg: int, n_tc: int) -> int:
    """Nodes whose attachments the host sees where they belong: a program on each of the node's own
    cgroups (bpftool cgroup show) and a bpf filter on each of the veths in its own namespace."""
    good = 0
    for i in range(nodes):
        cgroups_ok = all(cgroup_programs(top / f"n{i}/bench/p{j}") for j in range(n_cg))
        filters_ok = all(
            "bpf" in sh("tc", "-n", f"{TAG}n{i}", "filter", "show", "dev", f"e{k}a", "ingress").stdout
            for k in range(n_tc)
        )
        good += cgroups_ok and filters_ok
    return good


def legacy_ready(watch: StatusWatch, keys: list[Key], nodes: list[str]) -> bool:
    """The previous design's "done": every node's entry in the resource's status.nodes is Ready at the
    resource's current generation (it had no conditions)."""
    for key in keys:
        body = watch.get(*key)
        if body is None:
            return False
        generation = body["metadata"].get("generation")
        entries = {e.get("node"): e for e in (body.get("status") or {}).get("nodes") or []}
        for node in nodes:
            entry = entries.get(node) or {}
            if entry.get("phase") != "Ready" or entry.get("observedGeneration") != generation:
                return False
    return True


def conditions_ready(watch: StatusWatch, keys: list[Key], nodes: list[str]) -> bool:
    """This design's "done": the Ready condition True at the current generation on every resource, with
    every node counted (the controller's view, what kubectl wait and GitOps read)."""
    for key in keys:
        body = watch.get(*key)
        if body is None or not cluster_ready(watch.get, key):
            return False
        if ((body.get("status") or {}).get("nodes") or {}).get("ready") != len(nodes):
            return False
    return True


Ready = Callable[[StatusWatch, list[Key], list[str]], bool]


def leftovers(top: Path, nodes: int, n_cg: int, n_tc: int) -> int:
    """Programs still attached to the nodes' cgroups and veths."""
    count = 0
    for i in range(nodes):
        for j in range(n_cg):
            count += len(cgroup_programs(top / f"n{i}/bench/p{j}"))
        for k in range(n_tc):
            count += sh("tc", "-n", f"{TAG}n{i}", "filter", "show", "dev", f"e{k}a", "ingress").stdout.count(" bpf ")
    return count


@dataclass
class Burst:
    """One `kubectl apply` of the resources until they are done on every node given."""

    design: str
    nodes: int
    apply_s: float = 0.0
    ready_s: float = 0.0
    requests: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    cp_cpu: float = 0.0
    controller_cpu: float = 0.0
    events: int = 0  # watch events on BpfMaps and BpfPrograms: what every agent's watches receive
    largest: int = 0  # the largest BpfMap/BpfProgram, stored (compact JSON with managedFields)

    @property
    def floor_s(self) -> float:
        """The machine's floor for the rollout: all the CPU it took (agents, controller, API server and
        etcd) spread over this machine's CPUs. Simulated nodes share 2 CPUs; real nodes have their own."""
        return (sum(self.cpu) + self.controller_cpu + self.cp_cpu) / (os.cpu_count() or 1)

    def per_agent(self, values: list[float], digits: int) -> str:
        return f"{median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def burst(
    design: str,
    cp: ControlPlane,
    watch: StatusWatch,
    agents: list[BenchAgent],
    docs: list[dict[str, Any]],
    done: Ready,
    controller_pid: int | None,
) -> Burst:
    keys = [key_of(d) for d in docs]
    names = [a.node for a in agents]
    result = Burst(design, len(agents))
    counters0 = [a.counters() for a in agents]
    cpu0 = [a.cpu_seconds() for a in agents]
    cp0 = control_plane_cpu(cp)
    ctl0 = proc_cpu_seconds(controller_pid) if controller_pid else 0.0
    events0 = watch.counts[MAPS] + watch.counts[PROGS]
    log(f"{design}, {len(agents)} node(s): applying {len(docs)} resources")
    start = time.perf_counter()
    result.apply_s = kubectl_apply(cp, docs)
    ready = watch.wait(lambda _: done(watch, keys, names), timeout=1800, what=f"{design}: done", interval=0.05)
    result.ready_s = ready - start
    log(f"{design}, {len(agents)} node(s): done after {result.ready_s:.1f} s; settling")
    time.sleep(5)  # the writes that follow the last Ready (usedBy, the controller's coalesced ones)
    result.cp_cpu = control_plane_cpu(cp) - cp0
    result.controller_cpu = (proc_cpu_seconds(controller_pid) - ctl0) if controller_pid else 0.0
    result.cpu = [a.cpu_seconds() - c for a, c in zip(agents, cpu0, strict=True)]
    result.events = watch.counts[MAPS] + watch.counts[PROGS] - events0
    counters1 = [a.counters() for a in agents]
    result.requests = [c1[1] - c0[1] for c0, c1 in zip(counters0, counters1, strict=True)]
    result.rss = [a.rss_mib() for a in agents]
    result.largest = max(stored_size(watch.objects[key]) for key in keys)
    return result


def delete_all(cp: ControlPlane, watch: StatusWatch, keys: list[Key]) -> None:
    cp.kubectl("delete", "bpfprograms,bpfmaps", "--all", "--wait=false", timeout=300)
    watch.wait(watch.gone(keys), timeout=600, what="deletion")


@dataclass
class Testbed:
    """The simulated nodes' cgroup subtrees and network namespaces, shared by both designs' runs."""

    top: Path
    wrapper: Path
    netns_path: Path
    n_cg: int
    n_tc: int

    def node_agent(
        self, stack: contextlib.ExitStack, cp: ControlPlane, i: int, tmp: Path, resync: float, env: dict[str, str]
    ) -> BenchAgent:
        return start_agent(
            stack,
            cp,
            node_name(i),
            tmp,
            labels={"bench": TAG},
            resync=resync,
            pin_root=Path("/sys/fs/bpf/bpfshare"),  # in the node's own bpffs (the wrapper mounts it)
            prefix=["sh", str(self.wrapper), str(self.top / f"n{i}"), f"{TAG}n{i}", str(self.netns_path)],
            env=env,
            wait=False,
        )


def node_name(i: int) -> str:
    return f"{TAG}-n{i}"


def previous_design(stack: contextlib.ExitStack, rev: str, tmp: Path) -> Path:
    """A git worktree of ``rev`` (the last commit before the status model changed), removed on unwind."""
    path = tmp / "previous"
    sh("git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev)
    stack.callback(lambda: sh("git", "-C", str(REPO), "worktree", "remove", "--force", str(path), check=False))
    return path


def report(args: argparse.Namespace) -> str:
    counts = [1, 4] if args.quick else [int(c) for c in args.nodes.split(",")]
    programs = 10 if args.quick else args.programs
    previous_nodes = min(args.previous_nodes, max(counts))
    most = max(counts)
    runs: list[Burst] = []
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        obj = objs / "flow_counter.o"
        tmp = objs  # removed with the objects
        n_tc = programs * args.tc_percent // 100
        n_cg = programs - n_tc
        netns_path = Path(f"/run/{TAG}-netns")
        netns_path.touch()
        stack.callback(lambda: netns_path.unlink(missing_ok=True))
        log(f"{most} nodes: cgroup subtrees with {n_cg} cgroups, network namespaces with {n_tc} veths each")
        top = cgroup_tree(stack, f"{TAG}-nodes", [f"n{i}/bench/p{j}" for i in range(most) for j in range(n_cg)])
        for i in range(most):
            netns_with_veths(stack, f"{TAG}n{i}", n_tc, prefix="e")
        bed = Testbed(top, node_wrapper(tmp), netns_path, n_cg, n_tc)
        docs = [bpfmap("shared")]
        docs += [cgroup_program(f"cg-{j}", obj, f"bench/p{j}", map_name="shared") for j in range(n_cg)]
        docs += [tc_program(f"tc-{k}", obj, [f"e{k}a"], str(netns_path), map_name="shared") for k in range(n_tc)]
        keys = [key_of(d) for d in docs]

        # This design: state objects, and the controller's conditions.
        with contextlib.ExitStack() as run:
            cp = control_plane(run)
            install_peering(cp.kubectl)
            controller = start_controller(cp, tmp / "controller.log")
            run.callback(controller.close)
            watch = StatusWatch(cp, run, plurals=(MAPS, PROGS))
            agents: list[BenchAgent] = []
            for count in counts:
                agents += [bed.node_agent(run, cp, i, tmp, args.resync, {}) for i in range(len(agents), count)]
                for agent in agents:
                    agent.wait_serving(timeout=300)
                runs.append(burst("state objects", cp, watch, agents, docs, conditions_ready, controller.pid))
                if count == most:
                    verified = verify_attachments(top, most, n_cg, n_tc)
                delete_all(cp, watch, keys)
            problems = {a.node: a.problems() for a in agents} | {"controller": controller.problems()}
            left = leftovers(top, most, n_cg, n_tc)

        # The previous design, from a worktree of its last commit, in its own control plane.
        legacy: Burst | None = None
        if previous_nodes:
            tree = previous_design(stack, args.previous, tmp)
            env = {"PYTHONPATH": str(tree / "operator")}
            with contextlib.ExitStack() as run:
                cp = control_plane(run, tree / "crds")
                watch = StatusWatch(cp, run, plurals=(MAPS, PROGS))
                agents = [bed.node_agent(run, cp, i, tmp, args.resync, env) for i in range(previous_nodes)]
                for agent in agents:
                    agent.wait_serving(timeout=300)
                legacy = burst(f"per-node entries ({args.previous[:7]})", cp, watch, agents, docs, legacy_ready, None)
                delete_all(cp, watch, keys)

    one = runs[0]
    by_nodes = {r.nodes: r for r in runs}
    rows = []
    for r in [*runs, *([legacy] if legacy else [])]:
        rows.append(
            f"| {r.design} | {r.nodes} | {r.ready_s:.1f} | {r.ready_s / one.ready_s:.1f}x | {r.floor_s:.1f} "
            f"| {r.events} "
            f"| {r.events / one.events:.2f}x | {r.per_agent(r.cpu, 2)} | {median(r.cpu) / median(one.cpu):.2f}x "
            f"| {r.per_agent([float(x) for x in r.requests], 0)} | {r.controller_cpu:.1f} | {r.cp_cpu:.1f} "
            f"| {median(r.rss):.0f} | {r.largest:,} |"
        )
    last = runs[-1]
    at20 = by_nodes.get(20, last)
    total_problems = sum(len(v) for v in problems.values())
    checks = [
        (
            f"watch events per agent, {last.nodes} nodes / 1 node",
            f"{last.events / one.events:.2f}x",
            "≤ 1.5x",
            last.events / one.events <= 1.5,
        ),
        (
            f"agent CPU per rollout, {last.nodes} nodes / 1 node (median)",
            f"{median(last.cpu) / median(one.cpu):.2f}x",
            "≤ 1.5x",
            median(last.cpu) / median(one.cpu) <= 1.5,
        ),
        (
            f"apply → Ready condition, {at20.nodes} nodes / 1 node",
            f"{at20.ready_s / one.ready_s:.1f}x",
            "≤ 3x",
            at20.ready_s / one.ready_s <= 3,
        ),
        (
            f"apply → Ready condition at {at20.nodes} nodes / the machine's floor then",
            f"{at20.ready_s / at20.floor_s:.1f}x",
            "",
            True,
        ),
        (
            f"largest shared object, {last.nodes} nodes / 1 node",
            f"{last.largest / one.largest:.2f}x",
            "1x (independent of nodes)",
            last.largest <= one.largest * 1.05,
        ),
        (
            f"nodes whose attachments the host sees on their own cgroups and netns ({most} nodes)",
            f"{verified}",
            f"{most}",
            verified == most,
        ),
        ("attachments left on the nodes after deletion", f"{left}", "0", not left),
        ("agent and controller log lines at WARNING or above", f"{total_problems}", "0", not total_problems),
    ]
    if legacy is not None:
        checks.insert(
            3,
            (
                f"watch events per agent at {legacy.nodes} nodes, previous design / this one",
                f"{legacy.events / by_nodes.get(legacy.nodes, last).events:.1f}x",
                "",
                True,
            ),
        )
    for node, lines_ in problems.items():
        if lines_:
            log(f"{node}: {len(lines_)} problems, e.g.\n" + "\n".join(lines_[:5]))
    node_counts = ",".join(map(str, counts))
    return "\n".join(
        [
            f"Command: {SECTION.command(f'--nodes {node_counts} --programs {programs}')} "
            f"({machine()}; agent resync {args.resync:.0f} s).",
            "",
            f"{len(docs)} resources (1 BpfMap, {n_cg} cgroup and {n_tc} tc BpfPrograms), applied with one "
            "`kubectl apply`, until done: for this design, the Ready condition True at the current generation on "
            f"every resource with every node counted; for the previous design ({args.previous[:7]}, run from a "
            "git worktree in the same run), every node's entry in status.nodes Ready. Watch events: on BpfMaps and "
            "BpfPrograms, which every agent watches (each agent receives all of them).",
            "",
            "| design | nodes | apply → done (s) | vs 1 node | machine floor (s): all CPU / CPUs "
            "| watch events per agent | vs 1 node "
            "| CPU per agent (s), median (min..max) | vs 1 node | API requests per agent | controller CPU (s) "
            "| API server + etcd CPU (s) | agent RSS (MiB) | largest BpfMap/BpfProgram (B) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "| check | measured | target | |",
            "|---|---:|---:|---|",
            *[
                f"| {label} | {value} | {target} | {verdict(good) if target else ''} |"
                for label, value, target, good in checks
            ],
        ]
    )


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default="1,10,20,40", help="comma-separated node counts, run in order")
    parser.add_argument("--programs", type=int, default=20)
    parser.add_argument("--tc-percent", type=int, default=20, help="share of the programs that are tc")
    parser.add_argument("--resync", type=float, default=60.0)
    parser.add_argument("--previous", default=PREVIOUS, help="the previous design's commit (per-node entries)")
    parser.add_argument("--previous-nodes", type=int, default=20, help="nodes for the previous design (0: skip)")
    parser.add_argument("--quick", action="store_true", help="1 and 4 nodes x 10 programs")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
