"""Shared pieces of the benchmarks: running one (arguments, root, signals, its section of a markdown
file), a private control plane, agents for simulated nodes (``bpfshare.controlplane.agents``), network
namespaces with veths, cgroups, bpffs mounts, a status watch, resource builders, process statistics and
the clock that adds up kernel time.

Run the benchmarks from the repository's root as modules: ``python -m bench.latency``. Everything a
benchmark creates is registered on one ``contextlib.ExitStack`` as soon as it exists and is removed by
name when the stack unwinds, which ``main()`` makes happen on normal exit, on an exception, on Ctrl-C
and on SIGTERM/SIGHUP. Network addresses: only 127.0.0.1 (the control plane and the agents' liveness
endpoints); veths get none.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfshare.api.resources import API_VERSION, GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_KIND, PROGRAM_PLURAL, VERSION
from bpfshare.controlplane.agents import Agent, mount_bpffs, unmount_bpffs
from bpfshare.controlplane.agents import start_agent as launch_agent
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import REPORT_PLURALS, Key, install_crds, node_report

REPO = Path(__file__).resolve().parents[1]
MAPS, PROGS = MAP_PLURAL, PROGRAM_PLURAL
PROBE_CACHE_SECONDS = 10.0  # kopf's liveness endpoint caches probe results this long
TAG = f"bsb{os.getpid() % 100000}"  # prefix of every name this run creates (netns, cgroups, nodes)


# -- running a benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A benchmark's section of a markdown file, between two marker comments."""

    script: str  # the module's name in bench/, e.g. "latency"
    heading: str  # the heading of a new section, for a file that does not have it yet
    doc: str = "docs/benchmarks.md"

    @property
    def begin(self) -> str:
        return f"<!-- bench/{self.script}.py begin -->"

    @property
    def end(self) -> str:
        return f"<!-- bench/{self.script}.py end -->"

    def command(self, args: str = "") -> str:
        """The command line that reproduces the section, as the section quotes it."""
        return f"`sudo .venv/bin/python -m bench.{self.script}{' ' + args if args else ''} --write {self.doc}`"

    def write(self, doc: Path, body: str) -> None:
        """Replace the section in ``doc`` (or append it under its heading)."""
        section = f"{self.begin}\n{body}\n{self.end}"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n"
        if self.begin in text:
            head, rest = text.split(self.begin, 1)
            text = head + section + rest.split(self.end, 1)[1]
        else:
            text = text.rstrip() + f"\n\n## {self.heading}\n\n" + section + "\n"
        doc.write_text(text)


def main(
    section: Section,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    report: Callable[[argparse.Namespace], str],
) -> None:
    """Parse the arguments (``add_arguments`` adds the benchmark's own, ``--write FILE`` is common),
    then, as root with SIGTERM/SIGHUP turned into SystemExit and SIGINT into KeyboardInterrupt (so that
    every cleanup runs on any exit), print ``report(args)`` and write it into the file's section."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{section.script}", description=description.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--write", type=Path, metavar="FILE", help=f"update this file's section (e.g. {section.doc})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"bench.{section.script} needs root (bpffs mounts, netns, cgroups, program loads)")

    def bail(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGHUP, bail)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    body = report(args)
    print(f"{section.begin}\n{body}\n{section.end}", flush=True)
    if args.write:
        section.write(args.write, body)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, input=input)


LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    """The machine, and its 1-minute load average when the benchmark started (other work on it
    shows there)."""
    return f"{os.cpu_count()} CPUs, kernel {os.uname().release}, load average {LOAD_AT_START:.2f} at start"


def verdict(good: bool) -> str:
    return "met" if good else "**missed**"


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank (p99 of 20 samples is the largest)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def median(samples: Iterable[float]) -> float:
    return statistics.median(list(samples))


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- example objects ---------------------------------------------------------------------------------


def build_objects(stack: contextlib.ExitStack) -> Path:
    """A scratch directory, removed on unwind, holding the example objects built from bpf/ (and room
    for the agents' logs)."""
    out = Path(tempfile.mkdtemp(prefix="bpfshare-bench-"))
    stack.callback(sh, "rm", "-rf", str(out), check=False)
    sh("make", "-s", "-C", str(REPO / "bpf"), f"O={out}")
    return out


# -- control plane -----------------------------------------------------------------------------------


def control_plane(stack: contextlib.ExitStack, crds: Path = REPO / "crds", *, node: bool = False) -> ControlPlane:
    """A private etcd + kube-apiserver on free loopback ports with the CRDs (of ``crds``) installed; stopped
    (and its state directory removed) when the stack unwinds. Its processes die with this one. ``node``:
    with a real node (``cluster up --node``: containerd, kubelet, scheduler, controller-manager), whose
    pods, mounts, cgroups, links and NAT chain go with it."""
    from bpfshare.controlplane.build import ensure_built
    from bpfshare.controlplane.run import start, stop

    bin_dir = ensure_built()
    if node:
        from bpfshare.controlplane.node import require_tools

        require_tools()
    parent = Path(tempfile.mkdtemp(prefix=f"bpfshare-bench-{'node' if node else 'cp'}-"))
    state = parent / ("node" if node else "cluster")

    def teardown() -> None:
        with contextlib.suppress(Exception):
            stop(state)
        sh("rm", "-rf", str(parent), check=False)

    stack.callback(teardown)
    if node:
        from bpfshare.controlplane.node import default_node_name

        log("starting the node (etcd, kube-apiserver, containerd, kubelet, scheduler, controller-manager)")
        cp = start(state, bin_dir, die_with_parent=True, node=default_node_name(), timeout=180.0)
    else:
        log("starting the control plane")
        cp = start(state, bin_dir, die_with_parent=True)
    if crds == REPO / "crds":
        install_crds(cp.kubectl, crds)
    else:  # another design's CRDs (bench.scale_nodes's previous design): wait for whichever they are
        cp.kubectl("apply", "-f", str(crds))
        cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", timeout=90)
    return cp


def kubectl_apply(cp: ControlPlane, docs: list[dict[str, Any]], *args: str) -> float:
    """``kubectl apply -f -`` of ``docs`` as one List; returns the seconds the kubectl process took."""
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    start = time.perf_counter()
    cp.kubectl("apply", "-f", "-", *args, input=payload, timeout=600)
    return time.perf_counter() - start


def add_node(cp: ControlPlane, name: str, labels: dict[str, str] | None = None) -> None:
    cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}),
    )


# -- status watch ------------------------------------------------------------------------------------


class StatusWatch:
    """The latest body of every object node reports are read from, kept by one watch per plural (no
    polling, so the benchmark does not load the API server it measures)."""

    def __init__(self, cp: ControlPlane, stack: contextlib.ExitStack, plurals: Iterable[str] = REPORT_PLURALS) -> None:
        self.api = cp.api_client()
        self.plurals = tuple(plurals)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events = 0
        self.counts: collections.Counter[str] = collections.Counter()  # watch events by plural (no lists)
        self.errors: list[str] = []
        self.on_event: Callable[[tuple[str, str], dict[str, Any]], None] | None = None  # under the lock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._synced: set[str] = set()
        for plural in self.plurals:
            threading.Thread(target=self._run, args=(plural,), daemon=True, name=f"watch-{plural}").start()
        stack.callback(self._stop.set)
        self.wait(lambda objs: len(self._synced) == len(self.plurals), timeout=30, what="the initial lists")

    def _run(self, plural: str) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        custom = client.CustomObjectsApi(self.api)
        while not self._stop.is_set():
            try:
                listing = custom.list_cluster_custom_object(GROUP, VERSION, plural)
                with self._cond:
                    for key in [k for k in self.objects if k[0] == plural]:
                        del self.objects[key]
                    for item in listing["items"]:
                        self.objects[(plural, item["metadata"]["name"])] = item
                    self._synced.add(plural)
                    self.events += 1
                    self._cond.notify_all()
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    stream = watch.Watch().stream(
                        custom.list_cluster_custom_object,
                        GROUP,
                        VERSION,
                        plural,
                        resource_version=rv,
                        timeout_seconds=20,
                        allow_watch_bookmarks=True,
                    )
                    for event in stream:
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        with self._cond:
                            key = (plural, obj["metadata"]["name"])
                            if event["type"] == "DELETED":
                                self.objects.pop(key, None)
                            else:
                                self.objects[key] = obj
                                if self.on_event is not None:
                                    self.on_event(key, obj)
                            self.events += 1
                            self.counts[plural] += 1
                            self._cond.notify_all()
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the resourceVersion expired, list again
                    self.errors.append(f"{plural}: {exc.status} {exc.reason}")
                    time.sleep(0.5)
            except Exception as exc:  # the watch must outlive a dropped connection
                if not self._stop.is_set():
                    self.errors.append(f"{plural}: {exc!r}")
                    time.sleep(0.5)

    def wait(
        self,
        predicate: Callable[[dict[tuple[str, str], dict[str, Any]]], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.0,
    ) -> float:
        """Block until ``predicate(objects)`` holds; the perf_counter() time at which it was seen.
        ``interval``: evaluate at most that often (a costly predicate over a stream of events)."""
        deadline = time.monotonic() + timeout
        seen = -1
        with self._cond:
            while True:
                if self.events != seen:
                    seen = self.events
                    if predicate(self.objects):
                        return time.perf_counter()
                    if interval:
                        self._cond.release()
                        try:
                            time.sleep(interval)
                        finally:
                            self._cond.acquire()
                        continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self._cond.wait(timeout=min(left, 0.5))

    def get(self, plural: str, name: str, /) -> dict[str, Any] | None:
        """The latest body seen of ``plural/name`` (a ``Getter``)."""
        return self.objects.get((plural, name))

    def all_ready(self, names: Iterable[Key], nodes: Iterable[str]) -> Callable[..., bool]:
        """Every node reports Ready on every resource at its current generation."""
        names, nodes = list(names), list(nodes)

        def check(objects: dict[Key, dict[str, Any]]) -> bool:
            return all(node_report(self.get, key, node) for key in names for node in nodes)

        return check

    def gone(self, names: Iterable[Key]) -> Callable[..., bool]:
        names = list(names)
        return lambda objects: not any(key in objects for key in names)


# -- resources ---------------------------------------------------------------------------------------


def bpfmap(
    name: str, *, type_: str = "Array", key_size: int = 4, value_size: int = 8, max_entries: int = 4, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": MAP_KIND,
        "metadata": {"name": name},
        "spec": {"type": type_, "keySize": key_size, "valueSize": value_size, "maxEntries": max_entries, **spec},
    }


def program_doc(name: str, obj: Path, program: str, attach: dict[str, Any], map_name: str) -> dict[str, Any]:
    """A BpfProgram loading ``program`` of ``obj`` with its map ``shared_counts`` bound to ``map_name``."""
    return {
        "apiVersion": API_VERSION,
        "kind": PROGRAM_KIND,
        "metadata": {"name": name},
        "spec": {
            "bytecode": {"path": str(obj)},
            "program": program,
            "attach": attach,
            "maps": {"shared_counts": map_name},
        },
    }


def tc_program(
    name: str,
    obj: Path,
    interfaces: list[str],
    netns: str | None,
    *,
    map_name: str,
    program: str = "count_ingress",
    direction: str = "ingress",
) -> dict[str, Any]:
    tc: dict[str, Any] = {"interfaces": interfaces, "direction": direction}
    if netns:
        tc["networkNamespace"] = netns
    return program_doc(name, obj, program, {"tc": tc}, map_name)


def cgroup_program(
    name: str, obj: Path, cgroup: str, *, map_name: str, program: str = "count_cgroup_egress", type_: str = "egress"
) -> dict[str, Any]:
    return program_doc(name, obj, program, {"cgroup": {"path": cgroup, "type": type_}}, map_name)


# -- kernel objects: bpffs, netns + veths, cgroups -----------------------------------------------------


def bpffs(stack: contextlib.ExitStack, label: str = "") -> Path:
    """A fresh bpffs mount in a temporary directory; unmounted (pins released) on unwind."""
    path = mount_bpffs(f"bpfshare-bench-{label}")
    stack.callback(unmount_bpffs, path)
    return path


def netns_with_veths(stack: contextlib.ExitStack, name: str, count: int, prefix: str = "v") -> list[str]:
    """A network namespace holding ``count`` veth pairs (``{prefix}{i}a`` / ``{prefix}{i}b``, up,
    no addresses); the ``a`` ends are returned. Deleting the namespace on unwind removes them all."""
    sh("ip", "netns", "add", name)
    stack.callback(sh, "ip", "netns", "del", name, check=False)
    lines = []
    for i in range(count):
        lines += [
            f"link add {prefix}{i}a type veth peer name {prefix}{i}b",
            f"link set {prefix}{i}a up",
            f"link set {prefix}{i}b up",
        ]
    if lines:
        sh("ip", "-n", name, "-batch", "-", input="\n".join(lines) + "\n")
    return [f"{prefix}{i}a" for i in range(count)]


def cgroup_root() -> Path:
    from bpfshare.kernel.cgroup import cgroup2_root

    return cgroup2_root()


def remove_cgroup_tree(path: Path) -> None:
    """rmdir bottom-up, moving any process left inside to the root first."""
    if not path.is_dir():
        return
    root = cgroup_root()
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, path]:
        for _ in range(100):
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (root / "cgroup.procs").write_text(pid)
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # EBUSY: an exiting process still counted


def cgroup_tree(stack: contextlib.ExitStack, name: str, children: Iterable[str] = ()) -> Path:
    """``<cgroup2 root>/<name>`` with the given child paths; removed bottom-up on unwind."""
    top = cgroup_root() / name
    top.mkdir()
    stack.callback(remove_cgroup_tree, top)
    for child in children:
        (top / child).mkdir(parents=True, exist_ok=True)
    return top


# -- agents ------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class BenchAgent(Agent):
    """An agent with its liveness endpoint on, whose probe values count its reconcile passes and API
    requests; and its CPU and memory from /proc."""

    _probed_at: float | None = None

    def health(self) -> dict[str, Any]:
        """The probe values. kopf recollects them at most every 10 s and serves the cached values in
        between (see ``counters(fresh=True)``)."""
        data = super().health()
        if self._probed_at is None or time.monotonic() - self._probed_at >= PROBE_CACHE_SECONDS:
            self._probed_at = time.monotonic()
        return data

    def counters(self, fresh: bool = True) -> tuple[int, int]:
        """(reconcile passes, API requests beyond the watches), from the liveness probe; ``fresh``
        waits out kopf's probe cache, so that the values are current."""
        if fresh and self._probed_at is not None:
            time.sleep(max(0.0, self._probed_at + PROBE_CACHE_SECONDS + 0.2 - time.monotonic()))
        probe = self.health()
        return int(probe.get("reconcilePasses", 0)), int(probe.get("apiRequests", 0))

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        return proc_status_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return proc_status_kib(self.pid, "VmHWM") / 1024


def start_agent(
    stack: contextlib.ExitStack,
    cp: ControlPlane,
    node: str,
    workdir: Path,
    *,
    labels: dict[str, str] | None = None,
    resync: float = 60.0,
    pin_root: Path | None = None,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> BenchAgent:
    """A Node object and its agent (log in ``workdir``; without ``pin_root``, a private bpffs), stopped
    on unwind; with ``wait``, once it serves its liveness endpoint."""
    add_node(cp, node, labels)
    agent = launch_agent(
        node,
        cp.kubeconfig,
        workdir / f"agent-{node}.log",
        pin_root=pin_root,
        resync=resync,
        liveness=True,
        prefix=prefix or (),
        env=env,
        agent_class=BenchAgent,
    )
    assert isinstance(agent, BenchAgent)
    stack.callback(agent.close)
    if wait:
        agent.wait_serving()
    return agent


# -- kernel time, in process -------------------------------------------------------------------------


@dataclass
class KernelReference:
    """One node-engine pass in this process over the resources, on a fresh bpffs, under KernelClock:
    the floor the agent is measured against."""

    engine_wall: float = 0.0  # the whole pass
    bpf: float = 0.0  # inside bpf()
    netlink: float = 0.0  # inside netlink calls (pyroute2's encoding counted: an upper bound)


def engine_reference(maps: list[Any], programs: list[Any], label: str = "engine-") -> KernelReference:
    """Reconcile ``maps`` and ``programs`` (parsed resources) once, all Ready or RuntimeError naming the
    first few that are not; then everything detached and unpinned again."""
    from bpfshare.api.status import Phase
    from bpfshare.engine import Engine

    ref = KernelReference()
    with contextlib.ExitStack() as local:
        root = bpffs(local, label)
        engine = Engine(root / "bpfshare", "in-process")
        clock = KernelClock()
        with clock.installed():
            start = time.perf_counter()
            report = engine.reconcile(maps, programs, complete=True)
            ref.engine_wall = time.perf_counter() - start
        bad = {n: e.message for n, e in {**report.maps, **report.programs}.items() if e.phase is not Phase.Ready}
        if bad:
            raise RuntimeError(f"in-process engine pass: not Ready: {dict(list(bad.items())[:5])}")
        ref.bpf, ref.netlink = clock.bpf_seconds, clock.netlink_seconds
        engine.reconcile([], [], complete=True)  # detach every tc filter and link it made
    return ref


class KernelClock:
    """Adds up the time spent in bpf() (kernel/libc's syscall(), as the kernel layer calls it) and in the
    netlink calls kernel/tc.py makes: its raw reads (filter dumps, the qdisc check) and its pyroute2
    changes (socket creation, qdisc add, filter replace and delete; these include pyroute2's own
    encoding and decoding, so the netlink share is an upper bound of the kernel's)."""

    NETLINK_CALLS = ("tc", "link_lookup", "get_filters", "get_qdiscs")  # reached through IPRoute.__getattr__

    def __init__(self) -> None:
        self.bpf_seconds = 0.0
        self.bpf_calls = 0
        self.netlink_seconds = 0.0
        self.netlink_calls = 0

    @property
    def seconds(self) -> float:
        return self.bpf_seconds + self.netlink_seconds

    def _timed_netlink(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = real(*args, **kwargs)
                if hasattr(result, "__next__"):  # a dump: the work happens while iterating
                    result = list(result)
                return result
            finally:
                self.netlink_seconds += time.perf_counter() - start
                self.netlink_calls += 1

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from pyroute2 import IPRoute

        from bpfshare.kernel import libc, tc

        real_syscall = libc.syscall  # bpf() is the kernel layer's only syscall() (kernel/syscall.py)

        def timed_syscall(*args: int) -> int:
            start = time.perf_counter()
            try:
                return real_syscall(*args)
            finally:
                self.bpf_seconds += time.perf_counter() - start
                self.bpf_calls += 1

        real_init, real_getattr = IPRoute.__init__, IPRoute.__getattr__
        real_close = IPRoute.close
        real_rtnl = tc._rtnl_request
        tc._rtnl_request = self._timed_netlink(real_rtnl)  # the raw reads: filter dumps, the qdisc

        def timed_getattr(ipr: Any, name: str) -> Any:
            found = real_getattr(ipr, name)
            return self._timed_netlink(found) if name in self.NETLINK_CALLS else found

        IPRoute.__init__ = self._timed_netlink(real_init)  # the socket and pyroute2's event loop
        IPRoute.__getattr__ = timed_getattr
        IPRoute.close = self._timed_netlink(real_close)
        libc.syscall = timed_syscall
        try:
            yield
        finally:
            libc.syscall = real_syscall
            tc._rtnl_request = real_rtnl
            IPRoute.__init__, IPRoute.__getattr__ = real_init, real_getattr
            del IPRoute.close  # back to the inherited SyncAPI.close


# -- profiles ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy (pip install py-spy into the venv) while the block runs, writing
    collapsed stacks to ``out`` (None: no profile)."""
    if out is None:
        yield
        return
    exe = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--function",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # attached
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarize_profile(raw: Path, top: int = 15) -> str:
    """The functions with the most samples (inclusive, each counted once per stack) of a py-spy raw
    (collapsed stacks) file, as text."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + n
    rows = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{n / total:6.1%}  {frame}" for frame, n in rows) if total else "(no samples)"
