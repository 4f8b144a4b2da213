"""The Argo CD health check (deploy/argocd/health.lua) run under a real Lua 5.1 interpreter, as Argo CD
runs it: ``obj`` a global table, the script's returned table ``{status=..., message=...}`` the health.

Argo CD runs scripts in gopher-lua (Lua 5.1 semantics) with only the base, table, package and a
safe os library for a script configured in argocd-cm (util/lua/lua.go: the standard libraries are
off unless useOpenLibs is set): no ``string`` or ``math``, and no string methods. The harness gives
the script exactly that, so a script that passes here does not fail in Argo CD for a missing library.
The object reaches Lua as Argo CD's decodeValue builds it: JSON null is nil, numbers are numbers,
lists are 1-based tables. It is converted to a Lua table literal here (Lua 5.1 has no JSON).

The objects are the cluster view the controller writes (docs/gitops.md): Ready, Progressing
(nodes pending, a generation the controller has not seen, no status yet, deletion) and Degraded
(Stalled), for BpfMap and BpfProgram alike.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO

HEALTH = DEPLOY / "argocd" / "health.lua"
ARGOCD_CM = DEPLOY / "argocd" / "argocd-cm.yaml"
KINDS = ("BpfMap", "BpfProgram")

# What Argo CD's Lua state holds for a configured script: the base library (as gopher-lua's), table,
# and os with time/date/clock only. The string metatable's __index goes, so ("x"):upper() fails as
# it does in gopher-lua without the string library.
HARNESS = """
local write = io.write
local script = assert(loadfile(%(path)s))
local env = {obj = %(obj)s}
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
                       "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring",
                       "type", "unpack", "xpcall"}) do
  env[name] = _G[name]
end
env.table = table
env.os = {time = os.time, date = os.date, clock = os.clock}
env._G = env
setfenv(script, env)
getmetatable("").__index = nil
local ok, hs = pcall(script)
if not ok then
  write("ERROR\\n", tostring(hs))
  os.exit(1)
end
if type(hs) ~= "table" then
  write("ERROR\\n", "the script returned ", type(hs), ", not a table")
  os.exit(1)
end
write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def lua_literal(value: Any) -> str:
    """``value`` (JSON data) as a Lua 5.1 expression; None is nil, as in Argo CD's decodeValue."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = []
        for byte in value.encode():
            char = chr(byte)
            out.append(char if 32 <= byte < 127 and char not in '"\\' else f"\\{byte:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        assert None not in value, "a nil inside a Lua list would end it"
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not JSON data: {value!r}")


def lua() -> str:
    path = shutil.which("lua5.1")
    if path is None:
        pytest.skip("lua5.1 is not installed (make install installs Debian's lua5.1)")
    return path


def run(obj: dict[str, Any], script: Path = HEALTH) -> tuple[str, str]:
    """The (status, message) the script returns for ``obj``."""
    program = HARNESS % {"path": lua_literal(str(script)), "obj": lua_literal(obj)}
    proc = subprocess.run([lua(), "-"], input=program, capture_output=True, text=True, timeout=30)
    status, _, message = proc.stdout.partition("\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return status, message


def condition(type_: str, status: bool, reason: str, message: str = "", generation: int = 3) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def resource(kind: str, status: dict[str, Any] | None, generation: int = 3, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = (
        {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 1024}
        if kind == "BpfMap"
        else {"bytecode": {"path": "/opt/bpfshare/bpf/flow_counter.o"}, "program": "count_ingress"}
    )
    obj: dict[str, Any] = {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "flow-counts", "generation": generation, "uid": "0c0ffee0", **meta},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def view(ready: int, pending: int, error: int, conditions: list[dict[str, Any]], generation: int = 3) -> dict[str, Any]:
    selected = ready + pending + error
    return {
        "observedGeneration": generation,
        "nodes": {"selected": selected, "ready": ready, "pending": pending, "error": error},
        "ready": f"{ready}/{selected}",
        "conditions": conditions,
    }


READY = view(
    3,
    0,
    0,
    [
        condition("Ready", True, "AllNodesReady", "3 of 3 nodes ready"),
        condition("Reconciling", False, "AllNodesReported"),
        condition("Stalled", False, "NoErrors"),
    ],
)
PENDING = view(
    2,
    1,
    0,
    [
        condition(
            "Ready",
            False,
            "NodesPending",
            "2 of 3 nodes ready; 1 of 3 nodes have not reported Ready on generation 3: worker-3: no report",
        ),
        condition(
            "Reconciling",
            True,
            "NodesPending",
            "1 of 3 nodes have not reported Ready on generation 3: worker-3: no report",
        ),
        condition("Stalled", False, "NoErrors"),
    ],
)
STALLED = view(
    2,
    0,
    1,
    [
        condition(
            "Ready",
            False,
            "NodeErrors",
            "2 of 3 nodes ready; 1 of 3 nodes in Error: worker-1: BPF_PROG_LOAD: Permission denied",
        ),
        condition("Reconciling", False, "AllNodesReported"),
        condition("Stalled", True, "NodeErrors", "1 of 3 nodes in Error: worker-1: BPF_PROG_LOAD: Permission denied"),
    ],
)
STALLED_AND_PENDING = view(
    1,
    1,
    1,
    [
        condition(
            "Ready",
            False,
            "NodeErrors",
            "1 of 3 nodes ready; 1 of 3 nodes in Error: worker-1: map flow-counts: key size 8 != 4",
        ),
        condition(
            "Reconciling",
            True,
            "NodesPending",
            "1 of 3 nodes have not reported Ready on generation 3: worker-3: reports generation 2",
        ),
        condition("Stalled", True, "NodeErrors", "1 of 3 nodes in Error: worker-1: map flow-counts: key size 8 != 4"),
    ],
)
RELEASING = view(
    0,
    2,
    0,
    [
        condition("Ready", False, "Deleting", "the resource is being deleted"),
        condition("Reconciling", True, "Releasing", "waiting for 2 nodes to release it: worker-1, worker-2"),
        condition("Stalled", False, "NoErrors"),
    ],
)
NO_NODES = view(
    0,
    0,
    0,
    [
        condition("Ready", True, "NoNodesSelected", "no Node matches spec.nodeSelector"),
        condition("Reconciling", False, "AllNodesReported"),
        condition("Stalled", False, "NoErrors"),
    ],
)

# (status, metadata.generation, more metadata, the health's status, its message)
Case = tuple[dict[str, Any] | None, int, dict[str, Any], str, str]
CASES: dict[str, Case] = {
    "ready": (READY, 3, {}, "Healthy", "3 of 3 nodes ready"),
    "no-nodes-selected": (NO_NODES, 3, {}, "Healthy", "no Node matches spec.nodeSelector"),
    "nodes-pending": (
        PENDING,
        3,
        {},
        "Progressing",
        "1 of 3 nodes have not reported Ready on generation 3: worker-3: no report",
    ),
    "no-status-yet": (None, 1, {}, "Progressing", "Waiting for the bpfshare controller to report on this resource"),
    "stale-observed-generation": (
        READY,
        4,
        {},
        "Progressing",
        "Waiting for the bpfshare controller: status describes generation 3, the resource is at generation 4",
    ),
    "status-without-conditions": (
        {"observedGeneration": 3},
        3,
        {},
        "Progressing",
        "Waiting for the bpfshare controller to set the Ready condition",
    ),
    "stalled": (
        STALLED,
        3,
        {},
        "Degraded",
        "1 of 3 nodes in Error: worker-1: BPF_PROG_LOAD: Permission denied",
    ),
    # Errors win over nodes still pending: the error will not go away by waiting for them.
    "stalled-while-others-pending": (
        STALLED_AND_PENDING,
        3,
        {},
        "Degraded",
        "1 of 3 nodes in Error: worker-1: map flow-counts: key size 8 != 4",
    ),
    "the resource is being deleted": (
        RELEASING,
        3,
        {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["bpfshare.io/controller"]},
        "Progressing",
        "waiting for 2 nodes to release it: worker-1, worker-2",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_health(kind: str, case: str) -> None:
    status, generation, meta, want_status, want_message = CASES[case]
    assert run(resource(kind, status, generation, **meta)) == (want_status, want_message)


def test_a_ready_condition_of_an_older_generation_is_not_health() -> None:
    """status.observedGeneration moved on but Ready still describes the previous generation."""
    stale_ready = view(3, 0, 0, [condition("Ready", True, "AllNodesReady", "3 of 3 nodes ready", generation=2)])
    assert run(resource("BpfMap", stale_ready))[0] == "Progressing"


def test_the_fixtures_use_only_fields_the_crds_define() -> None:
    """The script reads what the controller can write: every status field of the fixtures is in both CRDs."""
    for kind in KINDS:
        crd = yaml.safe_load((REPO / "crds" / f"{kind.lower()}.yaml").read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        fields = set(schema["properties"])
        condition_fields = set(schema["properties"]["conditions"]["items"]["properties"])
        for case in CASES.values():
            status = case[0] or {}
            assert set(status) <= fields, (kind, set(status) - fields)
            for c in status.get("conditions", []):
                assert set(c) <= condition_fields, (kind, set(c) - condition_fields)
            assert set(status.get("nodes", {})) <= set(schema["properties"]["nodes"]["properties"])


def test_argocd_cm_carries_the_script_for_both_kinds() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    script = HEALTH.read_text()
    assert cm["data"] == {f"resource.customizations.health.bpfshare.io_{kind}": script for kind in KINDS}


def test_the_harness_withholds_what_argo_cd_withholds(tmp_path: Path) -> None:
    """The sandbox is real: a script using the string library or a string method fails here as in Argo CD."""
    for body in ('return {status = string.upper("x")}', 'return {status = ("x"):upper()}', "return {status = io}"):
        script = tmp_path / "probe.lua"
        script.write_text(body + "\n")
        program = HARNESS % {"path": lua_literal(str(script)), "obj": "{}"}
        proc = subprocess.run([lua(), "-"], input=program, capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 or proc.stdout.startswith("nil"), (body, proc.stdout)
