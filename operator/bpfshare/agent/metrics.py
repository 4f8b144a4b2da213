"""The agent's Prometheus metrics (``bpfshare agent --metrics HOST:PORT``), in the text format.

Series (every one carries only the labels listed; the node is the scrape target, not a label):

``bpfshare_resources{kind, phase}``
    BpfMaps and BpfPrograms that select this node, by this node's phase (Pending, Ready, Error), as of
    the last engine pass. Every kind/phase pair is always exported, zeros included.
``bpfshare_program_loads_total{reason}``
    Programs loaded into the kernel: ``Loaded`` (first load), ``Upgraded`` (new version in place).
``bpfshare_failures_total{kind}``
    Failed attempts (a ``Failed`` event): a resource in Error is retried at every resync, and each
    retry that fails counts again.
``bpfshare_events_total{kind, type, reason}``
    Every event the engine produced (Created, Adopted, Loaded, Attached, Detached, Deleted, ...).
``bpfshare_reconcile_duration_seconds`` (histogram)
    One engine pass: the bpffs and kernel work, without the API writes that follow it.
``bpfshare_reconcile_errors_total``
    Passes that raised (the loop retries them); each has a traceback in the log.
``bpfshare_kernel_load_seconds`` (histogram)
    The BPF_PROG_LOAD system call(s) of one successful program load: the verifier's time, measured
    around the call in the loader, not the object parsing or the attaching.
``bpfshare_api_requests_total``
    API requests the agent made beyond its watches (writes and deletions of its state objects, their
    list at start, events, ConfigMap reads): the same number as the liveness probe's ``apiRequests``.
``bpfshare_map_max_entries{map}``
    ``max_entries`` of each BpfMap that is Ready on this node, read from the kernel.
``bpfshare_map_entries{map}``
    For hash-like maps only (Hash, PercpuHash, LruHash, LruPercpuHash, LpmTrie) with at most
    ``entry_limit`` (65536) max entries: the number of distinct keys, counted with
    BPF_MAP_GET_NEXT_KEY at scrape time, at most once per ``entry_ttl`` (30 s) whatever the scrape
    rate, never in the reconcile loop. An array always holds max_entries keys, so it has no such
    series. The count is a snapshot of a map that programs may change while it is counted.
``bpfshare_agent_info{node, version}``
    Always 1.

The same server answers ``GET /readyz`` (``readiness.py``): 200 once the agent has completed its first
full reconcile pass, 503 with the reason before.

Kernel load times come with the engine's report of a pass (``Report.kernel_load_seconds``), as
everything else here does: the loader knows nothing of metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bpfshare.agent import readiness
from bpfshare.agent.readiness import ReadyCheck, Server
from bpfshare.agent.readiness import parse_address as parse_address  # the --metrics address

log = logging.getLogger("bpfshare.metrics")

KINDS = ("BpfMap", "BpfProgram")
PHASES = ("Pending", "Ready", "Error")
LOAD_REASONS = ("Loaded", "Upgraded")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HASH_LIKE = ("Hash", "PercpuHash", "LruHash", "LruPercpuHash", "LpmTrie")


class AgentMetrics:
    """The agent's registry. ``observe_pass`` after every engine pass; the rest is read at scrape time."""

    def __init__(
        self, node: str, *, requests: Callable[[], int] = lambda: 0, entry_ttl: float = 30.0, entry_limit: int = 65536
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from bpfshare import __version__

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.resources = Gauge(
            "bpfshare_resources", "BpfMaps and BpfPrograms selecting this node, by phase", ["kind", "phase"], registry=r
        )
        self.loads = Counter(
            "bpfshare_program_loads", "Programs loaded into the kernel (first load or upgrade)", ["reason"], registry=r
        )
        self.failures = Counter(
            "bpfshare_failures", "Failed attempts to reconcile a resource (Failed events)", ["kind"], registry=r
        )
        self.events = Counter(
            "bpfshare_events", "Events produced by the engine", ["kind", "type", "reason"], registry=r
        )
        self.reconcile = Histogram(
            "bpfshare_reconcile_duration_seconds",
            "One engine pass (bpffs and kernel work, without API writes)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter("bpfshare_reconcile_errors", "Reconcile passes that raised", registry=r)
        self.kernel_load = Histogram(
            "bpfshare_kernel_load_seconds",
            "BPF_PROG_LOAD system calls of one successful program load",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        info = Gauge("bpfshare_agent_info", "The agent's node and version", ["node", "version"], registry=r)
        info.labels(node, __version__).set(1)
        for kind in KINDS:
            self.failures.labels(kind)
            for phase in PHASES:
                self.resources.labels(kind, phase).set(0)
        for reason in LOAD_REASONS:
            self.loads.labels(reason)
        self._phases: dict[tuple[str, str], str] = {}
        self._pins: dict[str, str] = {}  # BpfMap name -> pin path, for the maps Ready on this node
        self._lock = threading.Lock()
        r.register(_ScrapeTime(self, requests, entry_ttl, entry_limit))

    def observe_pass(self, snapshot: Any, report: Any) -> None:
        """Update from one engine pass: ``snapshot`` (agent.state.Snapshot), ``report`` (engine.Report)."""
        self.reconcile.observe(report.seconds)
        for seconds in report.kernel_load_seconds:
            self.kernel_load.observe(seconds)
        for event in report.events:
            self.events.labels(event.kind, event.type, event.reason).inc()
            if event.reason in LOAD_REASONS:
                self.loads.labels(event.reason).inc()
            elif event.reason == "Failed":
                self.failures.labels(event.kind).inc()
        with self._lock:
            for key in snapshot.invalid:
                self._phases[key] = "Error"
            for kind, entries in (("BpfMap", report.maps), ("BpfProgram", report.programs)):
                for name, entry in entries.items():
                    self._phases[(kind, name)] = str(entry.phase)
                    if kind == "BpfMap":
                        pin = entry.pin_path
                        if str(entry.phase) == "Ready" and pin:
                            self._pins[name] = str(pin)
                        else:
                            self._pins.pop(name, None)
            gone = set(report.released) | {key for key in self._phases if key not in snapshot.bodies}
            for kind, name in gone:
                self._phases.pop((kind, name), None)
                if kind == "BpfMap":
                    self._pins.pop(name, None)
            counts = {(kind, phase): 0 for kind in KINDS for phase in PHASES}
            for (kind, _), phase in self._phases.items():
                counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in counts.items():
            self.resources.labels(kind, phase).set(count)

    def pins(self) -> dict[str, str]:
        with self._lock:
            return dict(self._pins)


class _ScrapeTime:
    """Series computed when scraped: API requests, and max entries and entry counts of the maps."""

    def __init__(self, metrics: AgentMetrics, requests: Callable[[], int], ttl: float, limit: int) -> None:
        self.metrics = metrics
        self.requests = requests
        self.ttl = ttl
        self.limit = limit
        self._lock = threading.Lock()
        self._cached_at = float("-inf")
        self._maps: dict[str, tuple[int, int | None]] = {}  # name -> (max_entries, entries or None)

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("bpfshare_api_requests", "API requests beyond the watches")
        yield GaugeMetricFamily("bpfshare_map_max_entries", "max_entries of each BpfMap Ready on this node")
        yield GaugeMetricFamily("bpfshare_map_entries", "Distinct keys in each hash-like BpfMap")

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("bpfshare_api_requests", "API requests beyond the watches", value=self.requests())
        maps = self._read_maps()
        max_entries = GaugeMetricFamily(
            "bpfshare_map_max_entries", "max_entries of each BpfMap Ready on this node", labels=["map"]
        )
        entries = GaugeMetricFamily("bpfshare_map_entries", "Distinct keys in each hash-like BpfMap", labels=["map"])
        for name, (maximum, count) in sorted(maps.items()):
            max_entries.add_metric([name], maximum)
            if count is not None:
                entries.add_metric([name], count)
        yield max_entries
        yield entries

    def _read_maps(self) -> dict[str, tuple[int, int | None]]:
        with self._lock:
            now = time.monotonic()
            if now - self._cached_at >= self.ttl:
                self._maps = {
                    name: read for name, pin in self.metrics.pins().items() if (read := self._read_map(pin)) is not None
                }
                self._cached_at = now
            return dict(self._maps)

    def _read_map(self, pin: str) -> tuple[int, int | None] | None:
        from bpfshare.errors import BpfshareError
        from bpfshare.kernel.maps import Map

        try:
            with Map.from_pin(pin, readonly=True) as live:
                info = live.info()
                if getattr(info.type, "name", "") not in HASH_LIKE or info.max_entries > self.limit:
                    return info.max_entries, None
                keys: set[bytes] = set()
                # Keys can repeat while programs delete concurrently: stop after a bounded number of steps.
                for step, key in enumerate(live.keys()):
                    if step >= 2 * info.max_entries:
                        break
                    keys.add(key)
                return info.max_entries, len(keys)
        except (BpfshareError, OSError) as exc:
            log.debug("metrics: cannot read map %s: %s", pin, exc)
            return None


def serve(address: str, metrics: AgentMetrics, ready: ReadyCheck | None = None) -> Server:
    """Serve ``/metrics`` on ``HOST:PORT`` in a daemon thread, and ``/readyz`` from ``ready`` (the
    agent's readiness, ``readiness.agent_not_ready``) when given; returns the server (the address bound)."""
    from prometheus_client import make_wsgi_app

    app = make_wsgi_app(metrics.registry)
    if ready is not None:
        app = readiness.readyz_app(ready, fallback=app)
    server = readiness.serve(address, app, what="metrics")
    log.info("metrics at http://%s:%d/metrics", server.host, server.port)
    return server
