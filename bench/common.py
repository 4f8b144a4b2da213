"""Shared pieces of the scale benchmarks: a private control plane, agent processes, network
namespaces with veths, cgroups, bpffs mounts, a status watch, resource builders, process statistics
and the clock that adds up kernel time.

Everything a benchmark creates is registered on one ``contextlib.ExitStack`` as soon as it exists and
is removed by name when the stack unwinds, which ``main()`` makes happen on normal exit, on an
exception, on Ctrl-C and on SIGTERM/SIGHUP. Network addresses: only 127.0.0.1 (the control plane and
the agents' liveness endpoints); veths get none.
"""

from __future__ import annotations

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
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))  # runnable from a checkout without installing

GROUP, VERSION = "bpfshare.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MAPS, PROGS = "bpfmaps", "bpfprograms"
PROBE_CACHE_SECONDS = 10.0  # kopf's liveness endpoint caches probe results this long
TAG = f"bsb{os.getpid() % 100000}"  # prefix of every name this run creates (netns, cgroups, nodes)


# -- running a benchmark -----------------------------------------------------------------------------


def run_main(body: Callable[[contextlib.ExitStack], None]) -> None:
    """Run ``body(stack)`` as root with SIGTERM/SIGHUP turned into SystemExit and SIGINT into
    KeyboardInterrupt, so that every cleanup registered on ``stack`` runs on any exit."""
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]} needs root (bpffs mounts, netns, cgroups, program loads)")

    def bail(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGHUP, bail)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    with contextlib.ExitStack() as stack:
        body(stack)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, input=input)


def write_section(doc: Path, begin: str, end: str, section: str, heading: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``doc`` (or append a new section)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    doc.write_text(text)


LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    """The machine, and its 1-minute load average when the benchmark started (other work on it
    shows there)."""
    return f"{os.cpu_count()} CPUs, kernel {os.uname().release}, load average {LOAD_AT_START:.2f} at start"


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank (p99 of 20 samples is the largest)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def median(samples: Iterable[float]) -> float:
    return statistics.median(list(samples))


# -- example objects ---------------------------------------------------------------------------------


def build_objects(stack: contextlib.ExitStack) -> Path:
    out = Path(tempfile.mkdtemp(prefix="bpfshare-bench-objs-"))
    stack.callback(sh, "rm", "-rf", str(out), check=False)
    sh("make", "-s", "-C", str(REPO / "bpf"), f"O={out}")
    return out


# -- control plane -----------------------------------------------------------------------------------

CRD_NAMES = ("crd/bpfmaps.bpfshare.io", "crd/bpfprograms.bpfshare.io")


def control_plane(stack: contextlib.ExitStack) -> Any:
    """A private etcd + kube-apiserver on free loopback ports with the CRDs installed; stopped (and
    its state directory removed) when the stack unwinds. Its processes die with this one."""
    from bpfshare.controlplane.build import ensure_built
    from bpfshare.controlplane.run import start, stop

    bin_dir = ensure_built()
    parent = Path(tempfile.mkdtemp(prefix="bpfshare-bench-cp-"))
    state = parent / "cluster"

    def teardown() -> None:
        with contextlib.suppress(Exception):
            stop(state)
        sh("rm", "-rf", str(parent), check=False)

    stack.callback(teardown)
    log("starting the control plane")
    cp = start(state, bin_dir, die_with_parent=True)
    cp.kubectl("apply", "-f", str(REPO / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *CRD_NAMES, timeout=70)
    deadline = time.monotonic() + 60
    while "bpfmaps" not in cp.kubectl("api-resources", "--api-group=bpfshare.io", check=False).stdout:
        if time.monotonic() > deadline:
            raise RuntimeError("bpfshare.io resources never appeared in discovery")
        time.sleep(0.2)
    return cp


def kubectl_apply(cp: Any, docs: list[dict[str, Any]], *args: str) -> float:
    """``kubectl apply -f -`` of ``docs`` as one List; returns the seconds the kubectl process took."""
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    start = time.perf_counter()
    cp.kubectl("apply", "-f", "-", *args, input=payload, timeout=600)
    return time.perf_counter() - start


def add_node(cp: Any, name: str, labels: dict[str, str] | None = None) -> None:
    cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}),
    )


def object_sizes(cp: Any, plural: str) -> dict[str, int]:
    """Bytes of each object as ``kubectl get PLURAL NAME -o json`` prints it."""
    items = json.loads(cp.kubectl("get", plural, "-o", "json", timeout=300).stdout)["items"]
    return {item["metadata"]["name"]: len(json.dumps(item, indent=4)) + 1 for item in items}


# -- status watch ------------------------------------------------------------------------------------


def node_entry(body: dict[str, Any], node: str) -> dict[str, Any] | None:
    for entry in (body.get("status") or {}).get("nodes") or []:
        if entry.get("node") == node:
            return entry
    return None


def ready_on(body: dict[str, Any] | None, node: str) -> bool:
    """This node's entry is Ready for the object's current generation."""
    if body is None:
        return False
    entry = node_entry(body, node)
    return (
        entry is not None
        and entry.get("phase") == "Ready"
        and entry.get("observedGeneration") == body["metadata"].get("generation")
    )


class StatusWatch:
    """The latest body of every BpfMap and BpfProgram, kept by one watch per plural (no polling, so
    the benchmark does not load the API server it measures)."""

    def __init__(self, cp: Any, stack: contextlib.ExitStack) -> None:
        self.api = cp.api_client()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events = 0
        self.errors: list[str] = []
        self.on_event: Callable[[tuple[str, str], dict[str, Any]], None] | None = None  # under the lock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._synced: set[str] = set()
        for plural in (MAPS, PROGS):
            threading.Thread(target=self._run, args=(plural,), daemon=True, name=f"watch-{plural}").start()
        stack.callback(self._stop.set)
        self.wait(lambda objs: len(self._synced) == 2, timeout=30, what="the initial lists")

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

    def all_ready(self, names: Iterable[tuple[str, str]], nodes: Iterable[str]) -> Callable[..., bool]:
        names, nodes = list(names), list(nodes)

        def check(objects: dict[tuple[str, str], dict[str, Any]]) -> bool:
            return all(ready_on(objects.get(key), node) for key in names for node in nodes)

        return check

    def gone(self, names: Iterable[tuple[str, str]]) -> Callable[..., bool]:
        names = list(names)
        return lambda objects: not any(key in objects for key in names)


# -- resources ---------------------------------------------------------------------------------------


def bpfmap(
    name: str, *, type_: str = "Array", key_size: int = 4, value_size: int = 8, max_entries: int = 4, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": type_, "keySize": key_size, "valueSize": value_size, "maxEntries": max_entries, **spec},
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
    return {
        "apiVersion": API_VERSION,
        "kind": "BpfProgram",
        "metadata": {"name": name},
        "spec": {
            "bytecode": {"path": str(obj)},
            "program": program,
            "attach": {"tc": tc},
            "maps": {"shared_counts": map_name},
        },
    }


def cgroup_program(
    name: str, obj: Path, cgroup: str, *, map_name: str, program: str = "count_cgroup_egress", type_: str = "egress"
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "BpfProgram",
        "metadata": {"name": name},
        "spec": {
            "bytecode": {"path": str(obj)},
            "program": program,
            "attach": {"cgroup": {"path": cgroup, "type": type_}},
            "maps": {"shared_counts": map_name},
        },
    }


def key_of(doc: dict[str, Any]) -> tuple[str, str]:
    return (MAPS if doc["kind"] == "BpfMap" else PROGS, doc["metadata"]["name"])


# -- kernel objects: bpffs, netns + veths, cgroups -----------------------------------------------------


def bpffs(stack: contextlib.ExitStack, label: str = "") -> Path:
    """A fresh bpffs mount in a temporary directory; unmounted (pins released) on unwind."""
    path = Path(tempfile.mkdtemp(prefix=f"bpfshare-bench-{label}"))
    sh("mount", "-t", "bpf", "bpf", str(path))

    def teardown() -> None:
        sh("umount", "-l", str(path), check=False)
        with contextlib.suppress(OSError):
            path.rmdir()

    stack.callback(teardown)
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
class AgentProcess:
    """``bpfshare agent`` for one simulated node, with its liveness endpoint on a loopback port.

    ``wrapper`` is a shell snippet run before the agent's ``exec`` (in the same process, so the pid
    stays the agent's): item 3 uses it to give each node its own mount and cgroup namespace."""

    node: str
    pin_root: Path
    kubeconfig: Path
    log_path: Path
    resync: float = 60.0
    wrapper: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _probed_at: float | None = None

    def start(self, stack: contextlib.ExitStack) -> None:
        from bpfshare.controlplane.procs import free_ports

        self.port = free_ports(1)[0]
        argv = [
            sys.executable,
            "-m",
            "bpfshare",
            "agent",
            "--node",
            self.node,
            "--pin-root",
            str(self.pin_root),
            "--resync",
            str(self.resync),
            "--liveness",
            f"http://127.0.0.1:{self.port}/healthz",
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(REPO / "operator"), **self.env}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*(self.wrapper or []), *argv], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        stack.callback(self.stop)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def probe(self) -> dict[str, Any]:
        """The liveness endpoint's probe values. kopf recollects them at most every 10 s and serves
        the cached values in between (see ``counters(fresh=True)``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as resp:
            data = dict(json.load(resp))
        if self._probed_at is None or time.monotonic() - self._probed_at >= PROBE_CACHE_SECONDS:
            self._probed_at = time.monotonic()
        return data

    def wait_up(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the liveness endpoint answers (the agent has listed everything and runs)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.node} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                return self.probe()
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {self.node} not up after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def counters(self, fresh: bool = True) -> tuple[int, int]:
        """(reconcile passes, API requests beyond the watches), from the liveness probe; ``fresh``
        waits out kopf's probe cache, so that the values are current."""
        if fresh and self._probed_at is not None:
            time.sleep(max(0.0, self._probed_at + PROBE_CACHE_SECONDS + 0.2 - time.monotonic()))
        probe = self.probe()
        return int(probe.get("reconcilePasses", 0)), int(probe.get("apiRequests", 0))

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        return proc_status_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return proc_status_kib(self.pid, "VmHWM") / 1024

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """Log lines at WARNING or above, and tracebacks."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if " ERROR " in line or " WARNING " in line or " CRITICAL " in line or "Traceback" in line
        ]


# -- kernel time, in process -------------------------------------------------------------------------


class KernelClock:
    """Adds up the time spent in bpf() (libc's syscall(), as the kernel layer calls it) and in the
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

        from bpfshare.kernel import syscall

        real_syscall = syscall._libc.syscall

        def timed_syscall(*args: object) -> int:
            start = time.perf_counter()
            try:
                return real_syscall(*args)  # type: ignore[no-any-return]
            finally:
                self.bpf_seconds += time.perf_counter() - start
                self.bpf_calls += 1

        from bpfshare.kernel import tc

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
        syscall._libc.syscall = timed_syscall
        try:
            yield
        finally:
            syscall._libc.syscall = real_syscall
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
