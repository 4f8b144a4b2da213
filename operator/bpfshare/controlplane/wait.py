"""Waiting on a cluster: the CRDs installed and served, a node's report on a resource, and the
cluster view's Ready condition.

``node_report`` is the one place that knows where a node reports on a resource (its BpfMapState or
BpfProgramState, ``api/states.py``) and what "at the resource's current generation" means;
``cluster_ready`` the one that knows the Ready condition the controller writes on the resource.
Everything that waits for Ready or reads a node's status (the demo, the tests, the benchmarks) goes
through them. Objects are read through a ``Getter`` (kubectl, an API client, a watch's cache of
``REPORT_PLURALS``), so the same check serves a polling loop and a watch.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bpfshare.api.resources import GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_PLURAL
from bpfshare.api.states import MAP_STATE, MAP_STATE_PLURAL, PROGRAM_STATE, PROGRAM_STATE_PLURAL, state_name
from bpfshare.controlplane import ControlPlaneError

T = TypeVar("T")
Key = tuple[str, str]  # (plural, name) of a resource

CRD_NAMES = tuple(f"{p}.{GROUP}" for p in (MAP_PLURAL, PROGRAM_PLURAL, MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL))
# The objects node reports and the cluster view are read from (a watch's cache needs all of them):
# the resources (their generation, their conditions) and the nodes' states.
REPORT_PLURALS = (MAP_PLURAL, PROGRAM_PLURAL, MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL)
STATE_PLURALS = {MAP_PLURAL: MAP_STATE, PROGRAM_PLURAL: PROGRAM_STATE}


def key_of(doc: dict[str, Any]) -> Key:
    """The (plural, name) of a BpfMap or BpfProgram document."""
    return (MAP_PLURAL if doc["kind"] == MAP_KIND else PROGRAM_PLURAL, doc["metadata"]["name"])


class Getter(Protocol):
    """Reads one cluster-scoped object: its body, or None if there is none."""

    def __call__(self, plural: str, name: str, /) -> dict[str, Any] | None: ...


class Kubectl(Protocol):
    """Runs kubectl against one cluster (``ControlPlane.kubectl``, the demo's ``Kube``)."""

    def __call__(self, *args: str, check: bool = ..., input: str | None = ...) -> subprocess.CompletedProcess[str]: ...


class WaitTimeout(ControlPlaneError, TimeoutError):
    """What was waited for did not happen in time."""


def poll(predicate: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Call ``predicate`` until it returns something true; that value. ``what`` names it on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kubectl_getter(kubectl: Kubectl) -> Getter:
    """A ``Getter`` that runs ``kubectl get PLURAL NAME -o json``."""

    def get(plural: str, name: str, /) -> dict[str, Any] | None:
        proc = kubectl("get", plural, name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    return get


# -- a node's report on a resource ----------------------------------------------------------------------


def node_report(
    get: Getter, key: Key, node: str, phase: str | None = "Ready", *, current: bool = True
) -> dict[str, Any] | None:
    """What ``node`` reports on the resource ``key`` (phase, message, IDs, attachments), or None.

    Only a report in ``phase`` (any phase if None) and, with ``current``, one made at the resource's
    current ``metadata.generation`` on this very resource (the state's owner is the resource's uid,
    not a deleted namesake's) counts: a Ready from before the last spec change is not Ready.
    The report is the ``status`` of the node's state object of the resource.
    """
    state = node_state(get, key, node)
    if state is None:
        return None
    status: dict[str, Any] = dict(state.get("status") or {})
    if phase is not None and status.get("phase") != phase:
        return None
    if current:
        body = get(*key)
        if body is None or status.get("observedGeneration") != body["metadata"].get("generation"):
            return None
        uid = body["metadata"].get("uid")
        owners = {ref.get("uid") for ref in (state.get("metadata") or {}).get("ownerReferences") or []}
        if uid and owners and uid not in owners:
            return None
    return status


def node_state(get: Getter, key: Key, node: str) -> dict[str, Any] | None:
    """The node's state object of the resource ``key`` (a BpfMapState or BpfProgramState), or None."""
    plural, name = key
    kind = STATE_PLURALS[plural]
    state = get(kind.plural, state_name(name, node))
    if state is None or (state.get("spec") or {}).get("node") != node:
        return None
    return state


def cluster_ready(get: Getter, key: Key) -> dict[str, Any] | None:
    """The resource's Ready condition when it is True at the resource's current generation (the
    condition's and the status's observedGeneration both), else None."""
    body = get(*key)
    if body is None:
        return None
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    if status.get("observedGeneration") != generation:
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ok = condition.get("status") == "True" and condition.get("observedGeneration") == generation
            return dict(condition) if ok else None
    return None


def wait_cluster_ready(
    get: Getter, keys: Iterable[Key], *, timeout: float = 60.0, interval: float = 0.2
) -> dict[Key, dict[str, Any]]:
    """Wait until every resource's Ready condition is True at its current generation; the conditions.
    On timeout, ``WaitTimeout`` names each resource that is not and what its status says."""
    wanted = list(keys)
    deadline = time.monotonic() + timeout
    while True:
        ready = {key: condition for key in wanted if (condition := cluster_ready(get, key)) is not None}
        if len(ready) == len(wanted):
            return ready
        if time.monotonic() > deadline:
            pending = [_describe_condition(get, key) for key in wanted if key not in ready]
            raise WaitTimeout(f"not Ready after {timeout:.0f} s: " + "; ".join(pending))
        time.sleep(interval)


def _describe_condition(get: Getter, key: Key) -> str:
    body = get(*key)
    if body is None:
        return f"{key[0]}/{key[1]}: not found"
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready")
    if ready is None:
        return f"{key[0]}/{key[1]}: no Ready condition (is the controller running?)"
    text = f"{key[0]}/{key[1]}: Ready {ready.get('status')} ({ready.get('reason')}: {ready.get('message', '')})"
    generation = body["metadata"].get("generation")
    if status.get("observedGeneration") != generation:
        text += f" at generation {status.get('observedGeneration')} (the resource is at {generation})"
    return text


def wait_ready(
    get: Getter,
    keys: Iterable[Key],
    nodes: Iterable[str],
    *,
    phase: str = "Ready",
    timeout: float = 60.0,
    interval: float = 0.2,
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Wait until every node reports ``phase`` on every resource at its current generation.

    Returns the reports by (plural, name, node); on timeout, ``WaitTimeout`` says what each pending
    node reports instead.
    """
    wanted = [(plural, name, node) for plural, name in keys for node in nodes]
    deadline = time.monotonic() + timeout
    while True:
        once = _memo(get)  # one read of each resource per round
        reports: dict[tuple[str, str, str], dict[str, Any]] = {}
        for plural, name, node in wanted:
            report = node_report(once, (plural, name), node, phase)
            if report is None:
                break
            reports[(plural, name, node)] = report
        else:
            return reports
        if time.monotonic() > deadline:
            pending = [
                _describe(once, (p, n), node) for p, n, node in wanted if node_report(once, (p, n), node, phase) is None
            ]
            raise WaitTimeout(f"not {phase} after {timeout:.0f} s: " + "; ".join(pending))
        time.sleep(interval)


def _memo(get: Getter) -> Getter:
    bodies: dict[Key, dict[str, Any] | None] = {}

    def once(plural: str, name: str, /) -> dict[str, Any] | None:
        if (plural, name) not in bodies:
            bodies[(plural, name)] = get(plural, name)
        return bodies[(plural, name)]

    return once


def _describe(get: Getter, key: Key, node: str) -> str:
    body = get(*key)
    if body is None:
        return f"{key[0]}/{key[1]}: not found"
    report = node_report(get, key, node, None, current=False)
    if report is None:
        return f"{key[0]}/{key[1]} on {node}: no report"
    text = f"{key[0]}/{key[1]} on {node}: {report.get('phase')}"
    generation = body["metadata"].get("generation")
    if report.get("observedGeneration") != generation:
        text += f" at generation {report.get('observedGeneration')} (the resource is at {generation})"
    return text + (f" ({report['message']})" if report.get("message") else "")


# -- the CRDs -------------------------------------------------------------------------------------------


def crd_dir() -> Path:
    """The CRDs shipped with the package: the validation's copies of the repository's crds/ (one copy,
    in a part of the package that the agent image has too)."""
    return Path(str(resources.files("bpfshare.api") / "crds"))


def crds_served(kubectl: Kubectl) -> bool:
    """The CRDs are Established and their resources are in discovery (which kubectl's short names use)."""
    proc = kubectl("get", *[f"crd/{name}" for name in CRD_NAMES], "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    for crd in json.loads(proc.stdout).get("items") or []:
        conditions = {c.get("type"): c.get("status") for c in (crd.get("status") or {}).get("conditions") or []}
        if conditions.get("Established") != "True":
            return False
    served = kubectl("api-resources", f"--api-group={GROUP}", "-o", "name", check=False).stdout.split()
    return all(name in served for name in CRD_NAMES)


def install_crds(kubectl: Kubectl, directory: Path | None = None, timeout: float = 60.0) -> None:
    """Apply the CRDs (``directory``, by default the package's copies) and wait until they are served."""
    kubectl("apply", "-f", str(directory or crd_dir()))
    poll(lambda: crds_served(kubectl), f"the CRDs {', '.join(CRD_NAMES)} to be served", timeout)
