"""Hollow nodes, as kubemark does for kubelets: N simulated nodes in this one process, each running the
agent's real code — its ClusterState, the Engine (plan and apply) on an in-memory kernel of its own
(``MemoryKernel``: bpffs, maps, programs, links, cgroups and interfaces in memory), and the agent's
real Writer, which server-side-applies the node's BpfMapStates and BpfProgramStates to the real
kube-apiserver — against the real ``bpfshare controller`` process, which turns the states into the
conditions on the resources.

What is hollow: the kernel, and the watch. A real agent keeps its own watch on BpfMaps and BpfPrograms;
here one watch in this process feeds every hollow node's ClusterState (N Python watch connections in
one process would measure this process's scheduling, not the design; the API server's cost of a watch
per agent is what docs/benchmarks.md's section on real agents measures). Each hollow node lists its own
states with the field selector at start, as an agent does.

Measured per node count (the sizes given, default 250 and 1000), from one `kubectl apply` of 20
resources (1 BpfMap, 15 cgroup and 4 tc BpfPrograms) until the Ready condition is True at the current
generation on every resource: the time, the controller's CPU and peak RSS, API requests by verb and
resource (kube-apiserver's apiserver_request_total), bytes and events sent to watchers by resource
(apiserver_watch_events_sizes), the largest object of each kind (compact JSON, managedFields
included, as etcd stores it), and a linear extrapolation of each to 5,000 nodes.
Run as root, from the repository's root:
`.venv/bin/python -m bench.hollow_nodes [--nodes 250,1000] [--write docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MAPS,
    PROGS,
    TAG,
    Section,
    bpfmap,
    build_objects,
    cgroup_program,
    control_plane,
    kubectl_apply,
    log,
    machine,
    main,
    proc_cpu_seconds,
    proc_status_kib,
    program_doc,
    verdict,
)
from bpfshare.agent.loop import Agent
from bpfshare.api.resources import GROUP, VERSION
from bpfshare.api.states import MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import key_of
from bpfshare.engine.memory_kernel import MemoryKernel

SECTION = Section("hollow_nodes", "Hollow nodes: the controller and the API server at 1,000 nodes")
PIN_ROOT = Path("/sys/fs/bpf/bpfshare")
EXTRAPOLATE_TO = 5000
N_CGROUP, N_TC = 15, 4
WORKERS = 8  # threads running hollow nodes' passes (their API calls overlap)


def hollow_kernel() -> MemoryKernel:
    kernel = MemoryKernel()
    for j in range(N_CGROUP):
        kernel.add_cgroup(f"/hollow/p{j}")
    kernel.add_interface("eth0")
    return kernel


def resources(obj: Path) -> list[dict[str, Any]]:
    docs = [bpfmap("hollow-shared")]
    docs += [cgroup_program(f"hollow-cg-{j}", obj, f"hollow/p{j}", map_name="hollow-shared") for j in range(N_CGROUP)]
    for k in range(N_TC):  # one tc slot each: priorities 1..N on eth0's ingress
        tc = {"interfaces": ["eth0"], "direction": "ingress", "priority": k + 1}
        docs.append(program_doc(f"hollow-tc-{k}", obj, "count_ingress", {"tc": tc}, "hollow-shared"))
    return docs


class SpecWatch:
    """One watch per plural of the resources, feeding every hollow node's state (as each agent's own
    watch would), and keeping the latest bodies for the Ready check."""

    def __init__(self, cp: ControlPlane, stack: contextlib.ExitStack, nodes: list[Agent]) -> None:
        self.api = cp.api_client()
        self.nodes = nodes
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed = threading.Condition(self.lock)
        self._stop = threading.Event()
        stack.callback(self._stop.set)
        for plural in (MAPS, PROGS):
            threading.Thread(target=self._run, args=(plural,), daemon=True).start()

    def _run(self, plural: str) -> None:
        from kubernetes import client, watch

        custom = client.CustomObjectsApi(self.api)
        rv = custom.list_cluster_custom_object(GROUP, VERSION, plural)["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for event in watch.Watch().stream(
                    custom.list_cluster_custom_object, GROUP, VERSION, plural, resource_version=rv, timeout_seconds=30
                ):
                    obj, kind = event["object"], event["type"]
                    rv = obj["metadata"]["resourceVersion"]
                    with self.lock:
                        key = (plural, obj["metadata"]["name"])
                        if kind == "DELETED":
                            self.objects.pop(key, None)
                        else:
                            self.objects[key] = obj
                        for node in self.nodes:
                            feed = node.state.on_map if plural == MAPS else node.state.on_program
                            feed(kind, obj)
                        self.changed.notify_all()

    def ready(self, keys: Iterable[tuple[str, str]]) -> bool:
        for key in keys:
            body = self.objects.get(key)
            if body is None:
                return False
            generation = body["metadata"].get("generation")
            status = body.get("status") or {}
            conditions = {c.get("type"): c for c in status.get("conditions") or []}
            cond = conditions.get("Ready") or {}
            if status.get("observedGeneration") != generation or cond.get("status") != "True":
                return False
        return True


def hollow_pass(node: Agent, lock: threading.Lock) -> int:
    """One reconcile pass of a hollow node, as the agent's loop runs it (the loop's own steps); the
    API requests it made. A node is in one pass at a time: the driver hands each dirty node to one
    worker. ``lock`` stands for the agent's event loop: the watch feeds the state under it, and the
    snapshot is taken and the writes remembered under it, as the agent does them on its loop."""
    with lock:
        snapshot = node.state.take()
    report = node.reconcile(snapshot)
    before = node.writer.requests
    published = node.publish(snapshot, report)
    with lock:
        node.remember(published)
    node.passes += 1
    return node.writer.requests - before


def apiserver_metrics(cp: ControlPlane) -> str:
    return cp.kubectl("get", "--raw", "/metrics", timeout=60).stdout


METRIC = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+-]+)$")


def parse_metrics(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = METRIC.match(line)
        if m and m["name"] == name:
            labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m["labels"]))
            out.append((labels, float(m["value"])))
    return out


@dataclass
class Sample:
    """The API server's counters at one moment."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verb, resource) -> count
    watch_bytes: Counter[str] = field(default_factory=Counter)  # resource -> bytes sent to watchers
    watch_events: Counter[str] = field(default_factory=Counter)

    @classmethod
    def take(cls, cp: ControlPlane) -> Sample:
        text = apiserver_metrics(cp)
        sample = cls()
        for labels, value in parse_metrics(text, "apiserver_request_total"):
            if labels.get("group") == GROUP or labels.get("resource") in ("nodes", "events"):
                sample.requests[(labels.get("verb", ""), labels.get("resource", ""))] += int(value)
        for labels, value in parse_metrics(text, "apiserver_watch_events_sizes_sum"):
            sample.watch_bytes[labels.get("resource") or labels.get("kind", "")] += int(value)
        for labels, value in parse_metrics(text, "apiserver_watch_events_total"):
            sample.watch_events[labels.get("resource") or labels.get("kind", "")] += int(value)
        return sample

    def __sub__(self, other: Sample) -> Sample:
        return Sample(
            self.requests - other.requests, self.watch_bytes - other.watch_bytes, self.watch_events - other.watch_events
        )


@dataclass
class Run:
    nodes: int
    ready_s: float
    controller_cpu_s: float
    controller_rss_mib: float
    api: Sample
    largest: dict[str, int]  # plural -> bytes of its largest object
    passes: int
    writes: int


def largest_objects(cp: ControlPlane) -> dict[str, int]:
    from kubernetes import client

    custom = client.CustomObjectsApi(cp.api_client())
    out = {}
    for plural in (MAPS, PROGS, MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL):
        items = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        out[plural] = max((len(json.dumps(i, separators=(",", ":"))) for i in items), default=0)
    return out


def run_nodes(stack: contextlib.ExitStack, count: int, obj: Path, tmp: Path) -> Run:
    from bpfshare.controlplane.controllers import install_peering, start_controller

    with contextlib.ExitStack() as inner:
        cp = control_plane(inner)
        install_peering(cp.kubectl)
        controller = start_controller(cp, tmp / f"controller-{count}.log")
        inner.callback(controller.close)
        names = [f"{TAG}-h{i}" for i in range(count)]
        log(f"{count} hollow nodes: Node objects")
        nodes_doc = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": {"bench": TAG}}} for n in names
            ],
        }
        cp.kubectl("apply", "-f", "-", input=json.dumps(nodes_doc), timeout=600)
        api = cp.api_client()
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = WORKERS * 2
        hollow = [Agent(n, PIN_ROOT, api, kernel=hollow_kernel()) for n in names]
        watch = SpecWatch(cp, inner, hollow)
        log(f"{count} hollow nodes: initial sync (each lists its own states)")
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda n: n.initial_sync(), hollow))
        docs = resources(obj)
        keys = [key_of(d) for d in docs]
        before = Sample.take(cp)
        cpu0 = proc_cpu_seconds(controller.pid)
        stop = threading.Event()
        passes = writes = 0

        def drive() -> None:
            nonlocal passes, writes
            with ThreadPoolExecutor(WORKERS) as pool:
                while not stop.is_set():
                    dirty = [n for n in hollow if n.state.dirty]
                    if not dirty:
                        time.sleep(0.02)
                        continue
                    for made in pool.map(lambda n: hollow_pass(n, watch.lock), dirty):
                        passes += 1
                        writes += made

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        log(f"{count} hollow nodes: applying {len(docs)} resources")
        start = time.perf_counter()
        kubectl_apply(cp, docs)
        deadline = time.monotonic() + 1800
        with watch.changed:
            while not watch.ready(keys):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} hollow nodes: not Ready after 1800 s")
                watch.changed.wait(0.5)
        ready_s = time.perf_counter() - start
        log(f"{count} hollow nodes: Ready condition on every resource after {ready_s:.1f} s")
        time.sleep(3)  # the controller's last coalesced writes
        stop.set()
        driver.join()
        cpu = proc_cpu_seconds(controller.pid) - cpu0
        rss = proc_status_kib(controller.pid, "VmHWM") / 1024
        api_used = Sample.take(cp) - before
        largest = largest_objects(cp)
        problems = controller.problems()
        if problems:
            log(f"controller problems: {problems[:5]}")
        return Run(count, ready_s, cpu, rss, api_used, largest, passes, writes)


def extrapolate(xs: list[int], ys: list[float], at: int) -> float:
    """Least-squares line through the points, evaluated at ``at`` (two points: the line through them)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my + slope * (at - mx)


def report(args: argparse.Namespace) -> str:
    counts = [int(c) for c in args.nodes.split(",")]
    with contextlib.ExitStack() as stack:
        objs = build_objects(stack)
        runs = [run_nodes(stack, c, objs / "flow_counter.o", objs) for c in counts]
    xs = [r.nodes for r in runs]

    def row(label: str, values: list[float], fmt: str = "{:,.0f}") -> str:
        cells = " | ".join(fmt.format(v) for v in values)
        ext = extrapolate(xs, values, EXTRAPOLATE_TO) if len(xs) > 1 else float("nan")
        return f"| {label} | {cells} | {fmt.format(ext)} |"

    def total(sample: Sample, verbs: set[str] | None = None, resource: str | None = None) -> float:
        return float(
            sum(
                v
                for (verb, res), v in sample.requests.items()
                if (verbs is None or verb in verbs) and (resource is None or res == resource)
            )
        )

    big = [max(r.largest[MAPS], r.largest[PROGS]) for r in runs]
    header = " | ".join(f"{x:,} nodes" for x in xs)
    lines = [
        f"Command: {SECTION.command('--nodes ' + ','.join(map(str, counts)))} ({machine()}).",
        "",
        f"{N_CGROUP + N_TC + 1} resources (1 BpfMap, {N_CGROUP} cgroup and {N_TC} tc BpfPrograms) applied at once; "
        "hollow nodes run the agent's real state, engine and writer on an in-memory kernel each; one real "
        "`bpfshare controller`.",
        "",
        f"| | {header} | at {EXTRAPOLATE_TO:,} nodes (linear) |",
        "|---|" + "---:|" * (len(xs) + 1),
        row("`kubectl apply` → Ready condition on every resource (s)", [r.ready_s for r in runs], "{:,.1f}"),
        row("controller CPU for the rollout (s)", [r.controller_cpu_s for r in runs], "{:,.1f}"),
        row("controller peak RSS (MiB)", [r.controller_rss_mib for r in runs]),
        row("API requests, all", [total(r.api) for r in runs]),
        row(
            "  state writes (apply/patch on states)",
            [
                total(r.api, {"PATCH", "APPLY", "CREATE", "UPDATE"}, MAP_STATE_PLURAL)
                + total(r.api, {"PATCH", "APPLY", "CREATE", "UPDATE"}, PROGRAM_STATE_PLURAL)
                for r in runs
            ],
        ),
        row(
            "  writes to BpfMaps/BpfPrograms (the controller)",
            [total(r.api, {"PATCH", "UPDATE"}, MAPS) + total(r.api, {"PATCH", "UPDATE"}, PROGS) for r in runs],
        ),
        row("  per node", [total(r.api) / r.nodes for r in runs], "{:,.1f}"),
        row(
            "watch events sent, BpfMaps+BpfPrograms",
            [float(r.api.watch_events[MAPS] + r.api.watch_events[PROGS]) for r in runs],
        ),
        row(
            "watch events sent, states",
            [float(r.api.watch_events[MAP_STATE_PLURAL] + r.api.watch_events[PROGRAM_STATE_PLURAL]) for r in runs],
        ),
        row(
            "bytes sent to watchers, BpfMaps+BpfPrograms (KiB)",
            [(r.api.watch_bytes[MAPS] + r.api.watch_bytes[PROGS]) / 1024 for r in runs],
        ),
        row(
            "bytes sent to watchers, states (KiB)",
            [(r.api.watch_bytes[MAP_STATE_PLURAL] + r.api.watch_bytes[PROGRAM_STATE_PLURAL]) / 1024 for r in runs],
        ),
        *[
            row(f"largest {plural} object (bytes)", [float(r.largest[plural]) for r in runs])
            for plural in (MAPS, PROGS, MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL)
        ],
        "",
        "| check | measured | target | |",
        "|---|---:|---:|---|",
        f"| largest BpfMap/BpfProgram at {xs[-1]:,} nodes / at {xs[0]:,} nodes | {big[-1]:,} / {big[0]:,} B "
        f"| independent of the node count | {verdict(big[-1] <= 1.05 * big[0])} |",
    ]
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default="250,1000", help="comma-separated node counts, e.g. 250,1000")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
