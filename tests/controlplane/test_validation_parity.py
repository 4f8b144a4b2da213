"""bpfshare's validation and a real kube-apiserver agree: the same corpus of good and bad objects goes to
both; both accept (storing the same spec, defaults included) or both refuse, naming the same fields.

The API server's side is a create with ``dryRun=All`` and ``fieldValidation=Strict`` (what
``kubectl apply`` asks for), of the object as JSON text; bpfshare's is that text read as
``bpfshare apply -f`` reads a file (api/manifests.py) and checked by api/schema.py. A 422 names its
fields in ``details.causes`` (``<nil>`` for "some rules were not checked", which bpfshare reports as
the field ""); a 400 (strict decoding) names them in its message.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bpfshare.api import manifests
from bpfshare.api.schema import validate
from bpfshare.controlplane.run import ControlPlane
from tests.controlplane.objects import GROUP, VERSION, bpfmap, bpfprogram
from tests.controlplane.test_crds import INVALID_MAPS, INVALID_PROGRAMS, VALID_MAPS

pytestmark = pytest.mark.cluster

PLURALS = {"BpfMap": "bpfmaps", "BpfProgram": "bpfprograms"}


def with_meta(obj: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {**obj, "metadata": meta}


def tc(**body: Any) -> dict[str, Any]:
    return {"tc": {"interfaces": ["eth0"], "direction": "ingress", **body}}


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return out


M, P = bpfmap("m"), bpfprogram("p")
SELECTOR = {"matchLabels": {"bpf": "yes"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}

CORPUS: list[tuple[str, dict[str, Any]]] = [
    *[(f"valid-{i}", {**M, "spec": spec}) for i, spec in enumerate(VALID_MAPS)],
    *[(f"crds-{case}", bpfmap("m", **spec)) for case, spec, _ in INVALID_MAPS],
    *[(f"crds-{case}", bpfprogram("p", **spec)) for case, spec, _ in INVALID_PROGRAMS],
    # issue 11's findings
    ("reclaimpolicy-typo", bpfmap("m", reclaimpolicy="Retain")),
    ("adopts-typo", bpfmap("m", adopts="/sys/fs/bpf/tc/globals/x")),
    ("metadata-list", {**M, "metadata": ["x"]}),
    ("node-selector-string", bpfmap("m", nodeSelector="foo")),
    ("tc-list", bpfprogram("p", attach={"tc": ["x"]})),
    ("netns-number", bpfprogram("p", attach=tc(networkNamespace=5))),
    ("dotted-name", with_meta(M, name="flow.counts")),
    ("dotted-name-with-pin-name", with_meta(bpfmap("m", pinName="flow_counts"), name="flow.counts")),
    ("long-name", with_meta(M, name="a" * 129)),
    ("long-name-with-pin-name", with_meta(bpfmap("m", pinName="a"), name="a" * 129)),
    # decoding
    ("unknown-root", {**M, "specs": {}}),
    ("unknown-nested", bpfmap("m", nodeSelector={"matchExpressions": [{"key": "k", "operator": "Exists", "x": 1}]})),
    ("unknown-status", {**M, "status": {"nodes": {"selected": 1, "redy": 1}}}),
    ("unknown-metadata", with_meta(M, name="m", labelz={})),
    ("metadata-name-number", with_meta(M, name=5)),
    ("metadata-labels-string", with_meta(M, name="m", labels="x")),
    ("metadata-generation-string", with_meta(M, name="m", generation="x")),
    ("api-version", {**M, "apiVersion": f"{GROUP}/v1"}),
    ("kind", {**M, "kind": "BpfProgram"}),
    # what a create stores
    ("defaults", bpfprogram("p", attach=tc())),
    ("null-defaulted", bpfmap("m", reclaimPolicy=None, flags=None)),
    ("null-required", bpfmap("m", keySize=None)),
    ("null-map-value", bpfprogram("p", maps={"a": None, "b": "x"})),
    ("status-ignored", {**M, "status": {"phases": {"n": "Broken"}}}),
    ("everything", bpfmap("m", pinName="p", adopt="/sys/fs/bpf/x", reclaimPolicy="Retain", nodeSelector=SELECTOR)),
    # metadata
    ("no-name", with_meta(M)),
    ("name-upper", with_meta(M, name="Flow")),
    ("name-dots", with_meta(M, name="a..b")),
    ("name-254", with_meta(M, name="a" * 254)),
    ("label-key", with_meta(M, name="m", labels={"a b": "c"})),
    ("label-value", with_meta(M, name="m", labels={"a": "x" * 64})),
    ("finalizer", with_meta(M, name="m", finalizers=["a b"])),
    ("full-metadata", with_meta(M, name="m", labels={"app.kubernetes.io/name": "x"}, finalizers=["bpfshare.io/c"])),
    # the structural schema
    ("spec-null", {**M, "spec": None}),
    ("spec-string", {**M, "spec": "x"}),
    ("key-string", bpfmap("m", keySize="4")),
    ("key-bool", bpfmap("m", keySize=True)),
    ("key-float", bpfmap("m", keySize=4.5)),
    ("max-entries-int64", bpfmap("m", maxEntries=2**63)),
    ("flags-string", bpfmap("m", flags="NoPrealloc")),
    ("flags-repeated", bpfmap("m", flags=["NoPrealloc", "NoPrealloc"])),
    ("flags-too-many", bpfmap("m", flags=["NoPrealloc"] * 10)),
    ("flag-null", bpfmap("m", flags=[None])),
    ("type-kernel-spelling", bpfmap("m", type="BPF_MAP_TYPE_HASH")),
    ("pin-name-newline", bpfmap("m", pinName="flow\n")),
    ("pin-name-129", bpfmap("m", pinName="p" * 129)),
    ("adopt-runes", bpfmap("m", adopt="/sys/fs/bpf/" + "ä" * 4084)),
    ("adopt-too-long", bpfmap("m", adopt="/sys/fs/bpf/" + "ä" * 4085)),
    ("adopt-outside-bpffs", bpfmap("m", adopt="/etc/passwd")),
    ("adopt-nul", bpfmap("m", adopt="/sys/fs/bpf/a\0b")),
    ("adopt-elsewhere", bpfmap("m", adopt="/run/bpffs/x")),
    ("label-value-int", bpfmap("m", nodeSelector={"matchLabels": {"a": 5}})),
    ("expression-int", bpfmap("m", nodeSelector={"matchExpressions": [7]})),
    (
        "expressions-cel-items",
        bpfmap(
            "m",
            nodeSelector={
                "matchExpressions": [
                    {"key": "a", "operator": "Exists", "values": ["x"]},
                    {"key": "b", "operator": "NotIn"},
                ]
            },
        ),
    ),
    ("interfaces-long-and-repeated", bpfprogram("p", attach=tc(interfaces=["a" * 16, "b", "b"]))),
    ("interface-space", bpfprogram("p", attach=tc(interfaces=["a b"]))),
    ("netns-empty", bpfprogram("p", attach=tc(networkNamespace=""))),
    ("path-and-inline-empty", bpfprogram("p", bytecode={"path": "", "inline": ""})),
    ("inline-empty", bpfprogram("p", bytecode={"inline": ""})),
    ("inline-standard-base64", bpfprogram("p", bytecode={"inline": "ab/+"})),
    ("cgroup-nul", bpfprogram("p", attach={"cgroup": {"path": "/a\0", "type": "egress"}})),
    ("cgroup-type-null", bpfprogram("p", attach={"cgroup": {"path": "/", "type": None}})),
    ("attach-xdp", bpfprogram("p", attach={"xdp": {"interfaces": ["eth0"]}})),
    ("program-missing", without(P, "spec", "program")),
    ("maps-list", bpfprogram("p", maps=["a"])),
    ("maps-dotted-key", bpfprogram("p", maps={"a.b": "m"})),
    ("maps-too-many", bpfprogram("p", maps={f"m{i}": "x" for i in range(65)})),
]


def server_create(cp: ControlPlane, kind: str, text: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{cp.server}/apis/{GROUP}/{VERSION}/{PLURALS[kind]}?dryRun=All&fieldValidation=Strict",
        data=text.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {cp.token}"},
    )
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def server_fields(status: int, body: dict[str, Any]) -> set[str]:
    """The fields the API server names: the causes of a 422, the fields a 400's message names."""
    if status == 422:
        return {"" if c.get("field") == "<nil>" else c["field"] for c in body["details"]["causes"]}
    assert status == 400, body
    message = body["message"]
    version = re.search(r'in version "([^"]*)" cannot be handled', message)
    if "does not match the expected API version" in message or (version and version.group(1) != VERSION):
        return {"apiVersion"}  # (decoded as another version, whose schema knows no field at all)
    named = set(re.findall(r'(?:unknown|duplicate) field "([^"]+)"', message))
    named |= {f"metadata.{m}" for m in re.findall(r"Go struct field ObjectMeta\.(\w+)", message)}
    if "Go value of type v1.ObjectMeta" in message:
        named.add("metadata")
    assert named, message
    return named


def ours(tmp_path: Path, kind: str, text: str) -> tuple[dict[str, Any] | None, set[str], bool]:
    """What bpfshare makes of the same text: the stored object, the fields, and whether it stopped
    at decoding (as the API server's 400)."""
    path = tmp_path / "object.json"
    path.write_text(text)
    (doc,) = list(manifests.read([path]))
    if doc.error is not None:
        return None, {doc.error.split(": ")[0]}, True
    result = validate(doc.body, kind)
    decoding = any(e.kind in ("unknown", "decode") for e in result.errors)
    return result.obj, {e.path for e in result.errors}, decoding


def covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))


def check(cp: ControlPlane, tmp_path: Path, kind: str, text: str) -> None:
    status, body = server_create(cp, kind, text)
    stored, fields, decoding = ours(tmp_path, kind, text)
    if status == 201:
        assert fields == set(), f"the API server accepts it, bpfshare refuses {fields}"
        assert stored is not None and stored["spec"] == body["spec"], "a different spec stored (defaults?)"
        return
    named = server_fields(status, body)
    assert fields, f"the API server refuses it ({body['message']}), bpfshare accepts it"
    if status == 422:
        assert not decoding and fields == named, body["message"]
    else:  # Go's decoder stops at the first bad value; bpfshare names them all
        assert decoding, body["message"]
        assert all(any(covers(n, f) for f in fields) for n in named), (named, fields, body["message"])
        assert all(any(covers(n, f) for n in named) for f in fields) or named == {"metadata"}, (named, fields)


def kind_of(case: str, obj: dict[str, Any]) -> str:
    """Where the object is sent: its kind's resource (a BpfProgram's body to bpfmaps for "kind")."""
    return "BpfMap" if case == "kind" else str(obj["kind"])


@pytest.mark.parametrize(("case", "obj"), CORPUS, ids=[c for c, _ in CORPUS])
def test_the_api_server_and_bpfshare_agree(crds: ControlPlane, tmp_path: Path, case: str, obj: dict[str, Any]) -> None:
    check(crds, tmp_path, kind_of(case, obj), json.dumps(obj))


def test_a_field_given_twice(crds: ControlPlane, tmp_path: Path) -> None:
    """kubectl keeps the last of two YAML keys silently; the API server refuses a JSON field given
    twice, and so does bpfshare for either (a Retain above a Delete must not quietly lose)."""
    text = json.dumps(M).replace('"type"', '"reclaimPolicy": "Retain", "reclaimPolicy": "Delete", "type"')
    status, body = server_create(crds, "BpfMap", text)
    assert (status, server_fields(status, body)) == (400, {"spec.reclaimPolicy"})
    _, fields, _ = ours(tmp_path, "BpfMap", text)
    assert fields == {"spec.reclaimPolicy"}


YAML_CASES = [
    ("float-integral", "BpfMap", "valueSize: 8.0"),
    ("yes-is-true", "BpfMap", "keySize: yes"),
    ("hex", "BpfMap", "maxEntries: 0x10"),
    ("date-label", "BpfMap", "nodeSelector: {matchLabels: {since: 2026-01-01}}"),
    ("number-key", "BpfMap", "nodeSelector: {matchLabels: {1: x}}"),
    ("null", "BpfMap", "reclaimPolicy: ~"),
]


@pytest.mark.parametrize(("case", "kind", "line"), YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_yaml_as_kubectl_sends_it(crds: ControlPlane, tmp_path: Path, case: str, kind: str, line: str) -> None:
    """The YAML door: `kubectl create --dry-run=server` and `bpfshare apply -f` read the same file alike."""
    spec = {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 16}
    key = line.split(":")[0]
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items() if k != key)
    text = f"apiVersion: {GROUP}/{VERSION}\nkind: {kind}\nmetadata: {{name: m}}\nspec:\n{body}  {line}\n"
    path = tmp_path / "object.yaml"
    path.write_text(text)
    run = crds.kubectl("create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", str(path), check=False)
    (doc,) = list(manifests.read([path]))
    result = validate(doc.body, kind)
    if run.returncode == 0:
        assert result.errors == () and result.obj is not None
        assert result.obj["spec"] == json.loads(run.stdout)["spec"]
    else:
        assert result.errors, run.stderr
        assert all(e.path in run.stderr for e in result.errors if e.path), (run.stderr, result.errors)


def test_the_corpus_covers_both_answers() -> None:
    """Not a corpus of one kind: the test above would pass if everything were refused by both."""
    accepted = [case for case, obj in CORPUS if not validate(obj, kind_of(case, obj)).errors]
    assert len(accepted) >= 10 and len(CORPUS) - len(accepted) >= 50
