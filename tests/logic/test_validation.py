"""api/schema.py: an object checked from the CRD itself, as the API server checks a create.

The same objects go to a real kube-apiserver in tests/controlplane/test_validation_parity.py; here
are the rules one by one (decoding, defaults, the structural schema, when the CEL rules run, what
they report), the agent's door (objects as the API server returns them), and that no malformed
object ever gets anything but a ResourceError naming a field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfshare.api import schema
from bpfshare.api.resources import ResourceError, parse_map, parse_program
from bpfshare.api.schema import BLOCKING, INCOMPLETE, UNKNOWN, Crd, FieldError, validate
from tests.logic.test_resources import MAP, PROG, with_spec

REPO = Path(__file__).resolve().parents[2]
PACKAGE_CRDS = REPO / "operator" / "bpfshare" / "api" / "crds"


def errors(obj: Any, kind: str = "BpfMap") -> list[str]:
    return [str(e) for e in validate(obj, kind).errors]


def paths(obj: Any, kind: str = "BpfMap") -> list[str]:
    return [e.path for e in validate(obj, kind).errors]


def test_the_package_carries_the_crds_it_validates_with() -> None:
    """api/crds/ is what the agent image has (no controlplane/ there): the same bytes as crds/."""
    shipped = sorted(p.name for p in PACKAGE_CRDS.glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    for name in shipped:
        assert (PACKAGE_CRDS / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"operator/bpfshare/api/crds/{name} differs from crds/{name}: copy crds/*.yaml there"
        )
    assert sorted(schema.crds()) == ["BpfMap", "BpfMapState", "BpfProgram", "BpfProgramState"]


# -- 1. decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "unknown"),
    [
        ({"reclaimpolicy": "Retain"}, ["spec.reclaimpolicy"]),  # the typo that lost a map's contents
        ({"adopts": "/sys/fs/bpf/tc/globals/x"}, ["spec.adopts"]),  # the typo that made a new, empty map
        ({"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Exists", "value": "x"}]}}, None),
        ({"nodeSelector": {"matchLabel": {"a": "b"}}}, ["spec.nodeSelector.matchLabel"]),
    ],
)
def test_unknown_fields_are_refused_naming_them(changes: dict[str, Any], unknown: list[str] | None) -> None:
    obj = with_spec(MAP, **changes)
    expected = unknown or ["spec.nodeSelector.matchExpressions[0].value"]
    assert errors(obj) == [f"{p}: unknown field" for p in expected]
    with pytest.raises(ResourceError) as info:
        parse_map(obj)
    assert str(info.value) == "BpfMap flow-counts: " + "; ".join(f"{p}: unknown field" for p in expected)


def test_unknown_fields_anywhere_in_the_object() -> None:
    obj = copy.deepcopy(MAP)
    obj["specs"] = {}
    obj["metadata"]["labelz"] = {}
    obj["status"] = {"nodes": {"selected": 1, "redy": 1}}
    assert [(e.path, e.kind) for e in validate(obj, "BpfMap").errors] == [
        ("metadata.labelz", UNKNOWN),
        ("specs", UNKNOWN),
        ("status.nodes.redy", UNKNOWN),
    ]
    prog = with_spec(PROG, attach={"tc": {"interfaces": ["eth0"], "direction": "ingress", "prio": 2}})
    assert errors(prog, "BpfProgram") == ["spec.attach.tc.prio: unknown field"]


def test_a_map_of_values_takes_any_key() -> None:
    prog = with_spec(PROG, maps={"any_object_map": "flow-counts", "x.y": "a.b"})
    assert errors(prog, "BpfProgram") == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (["x"], "metadata: must be an object, not a list"),
        ("flow-counts", "metadata: must be an object, not 'flow-counts'"),
        ({"name": 5}, "metadata.name: must be a string, not 5"),
        ({"name": "m", "labels": "x"}, "metadata.labels: must be an object of strings, not 'x'"),
        ({"name": "m", "labels": {"a": 5}}, "metadata.labels.a: must be a string, not 5"),
        ({"name": "m", "generation": "x"}, "metadata.generation: must be an integer, not 'x'"),
        ({"name": "m", "finalizers": "f"}, "metadata.finalizers: must be a list, not 'f'"),
        ({"name": "m", "creationTimestamp": "yesterday"}, "metadata.creationTimestamp: must be an RFC 3339 time"),
    ],
)
def test_metadata_must_decode_as_object_meta(metadata: Any, message: str) -> None:
    obj = {**MAP, "metadata": metadata}
    assert errors(obj)[0].startswith(message)
    assert len(errors(obj)) == 1  # nothing else is checked: the API server answers 400 here


def test_the_api_version_and_kind() -> None:
    assert errors({**MAP, "apiVersion": "bpfshare.io/v1"}) == [
        "apiVersion: must be bpfshare.io/v1alpha1, not 'bpfshare.io/v1'"
    ]
    assert errors({k: v for k, v in MAP.items() if k != "apiVersion"}) == [
        "apiVersion: must be bpfshare.io/v1alpha1, not null"
    ]
    assert errors({**MAP, "kind": "BpfProgram"}) == ["kind: must be BpfMap, not 'BpfProgram'"]


@pytest.mark.parametrize("value", [5, "x", None, ["a"], True])
def test_an_object_that_is_not_an_object(value: Any) -> None:
    result = validate(value, "BpfMap")
    assert result.obj is None and [e.path for e in result.errors] == [""]
    with pytest.raises(ResourceError, match=r"^BpfMap: must be an object"):
        parse_map(value)


def test_json_values_as_kubectl_sends_them() -> None:
    """An integral float is the integer kubectl sends; beyond int64 a number is no integer."""
    assert validate(with_spec(MAP, valueSize=8.0), "BpfMap").obj["spec"]["valueSize"] == 8  # type: ignore[index]
    assert "spec.maxEntries: must be an integer, not 9223372036854775808" in errors(with_spec(MAP, maxEntries=2**63))
    assert errors(with_spec(MAP, maxEntries=float("nan")))[0].startswith("spec.maxEntries: nan is not a number")
    assert errors({**MAP, "metadata": {"name": "m", "labels": {1: "x"}}})[0] == (
        "metadata.labels: the key 1 is not a string"
    )


# -- 2. what a create stores: status dropped, nulls pruned, defaults -------------------------------------


def test_defaults_are_applied_as_the_api_server_applies_them() -> None:
    stored = validate(MAP, "BpfMap").obj
    assert stored is not None and stored["spec"]["reclaimPolicy"] == "Delete"
    assert "reclaimPolicy" not in MAP["spec"]  # the caller's object is not changed
    tc = {"tc": {"interfaces": ["eth0"], "direction": "ingress"}}
    prog = validate(with_spec(PROG, attach=tc), "BpfProgram").obj
    assert prog is not None and prog["spec"]["attach"]["tc"]["priority"] == 1


def test_a_null_is_pruned_then_defaulted_or_missing() -> None:
    obj = copy.deepcopy(MAP)
    obj["spec"]["reclaimPolicy"] = None
    obj["spec"]["flags"] = None
    stored = validate(obj, "BpfMap").obj
    assert stored is not None and stored["spec"]["reclaimPolicy"] == "Delete" and "flags" not in stored["spec"]
    obj["spec"]["keySize"] = None
    assert paths(obj)[0] == "spec.keySize"


def test_status_is_dropped_as_a_create_drops_it() -> None:
    """A create ignores the status given (the controller writes it; a typo in it is still named, see
    above) and stores the CRD's default, observedGeneration 0, which kstatus reads as not yet observed."""
    obj = {**MAP, "status": {"ready": "0/1", "nodes": "x"}}
    result = validate(obj, "BpfMap")
    assert result.errors == () and result.obj is not None and result.obj["status"] == {"observedGeneration": 0}


# -- 3. metadata --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({}, "metadata.name"),
        ({"name": "Flow_Counts"}, "metadata.name"),
        ({"name": "a..b"}, "metadata.name"),  # each dot-separated label is a DNS label
        ({"name": "a" * 254}, "metadata.name"),
        ({"name": "m", "labels": {"a b": "c"}}, "metadata.labels"),
        ({"name": "m", "labels": {"a": "x" * 64}}, "metadata.labels"),
        ({"name": "m", "annotations": {"-x": "y"}}, "metadata.annotations"),
        ({"name": "m", "finalizers": ["a b"]}, "metadata.finalizers"),
    ],
)
def test_metadata_follows_object_meta_rules(metadata: dict[str, Any], field: str) -> None:
    assert paths({**MAP, "metadata": metadata})[0] == field


def test_generate_name_is_the_api_servers_and_apply_needs_a_name() -> None:
    obj = {**MAP, "metadata": {"generateName": "flow-"}}
    assert validate(obj, "BpfMap").errors == ()  # the API server makes up the name
    with pytest.raises(ResourceError, match=r"^BpfMap: metadata\.name: required"):
        parse_map(obj)


def test_the_agent_reads_objects_as_the_api_server_returns_them() -> None:
    """Everything the API server adds (uid, managedFields, status, timestamps) is accepted."""
    body = copy.deepcopy(MAP)
    body["spec"]["reclaimPolicy"] = "Retain"
    body["metadata"] = {
        "name": "flow-counts",
        "uid": "0b5c0b5c-0000-4000-8000-000000000000",
        "resourceVersion": "4711",
        "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "deletionTimestamp": "2026-01-02T00:00:00Z",
        "deletionGracePeriodSeconds": 0,
        "finalizers": ["bpfshare.io/controller"],
        "labels": {"app.kubernetes.io/name": "flows"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "bpfshare.io/v1alpha1",
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:type": {}}},
            },
            {
                "manager": "bpfshare-controller",
                "operation": "Update",
                "subresource": "status",
                "fieldsType": "FieldsV1",
            },
        ],
    }
    body["status"] = {
        "observedGeneration": 3,
        "nodes": {"selected": 1, "ready": 1, "pending": 0, "error": 0},
        "ready": "1/1",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllNodesReady",
                "message": "1/1 nodes ready",
                "observedGeneration": 3,
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            }
        ],
    }
    parsed = parse_map(body)
    assert (parsed.meta.generation, parsed.meta.deleting, parsed.reclaim_policy) == (3, True, "Retain")


# -- 4. the structural schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keySize": "4"}, "spec.keySize: must be an integer, not '4'"),
        ({"keySize": True}, "spec.keySize: must be an integer, not True"),
        ({"nodeSelector": "foo"}, "spec.nodeSelector: must be an object, not 'foo'"),
        ({"flags": "NoPrealloc"}, "spec.flags: must be a list, not 'NoPrealloc'"),
        ({"flags": ["NoPrealloc"] * 10}, "spec.flags: too many items: 10, at most 9"),
        ({"pinName": "p" * 129}, "spec.pinName: too long: 129 characters, at most 128"),
        ({"pinName": "flow\n"}, "spec.pinName: 'flow\\n' does not match"),  # Go's $ is the end of the text
        ({"maxEntries": 0}, "spec.maxEntries: 0 is out of range [1, 4294967295]"),
        ({"type": "hash"}, "spec.type: unsupported value 'hash' (one of: Hash, Array"),
    ],
)
def test_structural_schema_errors(changes: dict[str, Any], message: str) -> None:
    assert errors(with_spec(MAP, **changes))[0].startswith(message)


def test_lengths_count_characters_as_the_api_server_does() -> None:
    """maxLength counts runes, not bytes: 4096 characters with 'ä' fit spec.adopt (8 KiB of UTF-8)."""
    assert errors(with_spec(MAP, adopt="/sys/fs/bpf/" + "ä" * 4084)) == []
    assert paths(with_spec(MAP, adopt="/sys/fs/bpf/" + "ä" * 4085)) == ["spec.adopt", ""]


def test_a_string_reports_the_first_of_its_failures() -> None:
    """kube-openapi checks maxLength, then minLength, then pattern, and says only the first."""
    tc = {"tc": {"interfaces": ["a/b" * 6], "direction": "ingress"}}
    assert errors(with_spec(PROG, attach=tc), "BpfProgram")[0] == (
        "spec.attach.tc.interfaces[0]: too long: 18 characters, at most 15"
    )


def test_sets_refuse_a_repeated_item_once_at_its_second_place() -> None:
    tc = {"tc": {"interfaces": ["eth0", "eth1", "eth0", "eth0", "eth1"], "direction": "ingress"}}
    assert errors(with_spec(PROG, attach=tc), "BpfProgram") == [
        "spec.attach.tc.interfaces[2]: duplicate value 'eth0'",
        "spec.attach.tc.interfaces[4]: duplicate value 'eth1'",
    ]


def test_map_lists_refuse_a_repeated_key() -> None:
    nodes = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["node"],
        "items": {"type": "object", "properties": {"node": {"type": "string"}, "id": {"type": "integer"}}},
    }
    crd = crd_with([], field=nodes)
    entries = [{"node": "a", "id": 1}, {"node": "b"}, {"node": "a", "id": 2}, {"node": "a"}]
    assert [str(e) for e in crd.validate(thing(b=entries)).errors] == ["spec.b[2]: duplicate entry (node='a')"]


# -- 5. the CEL rules ---------------------------------------------------------------------------------


def test_cel_rules_are_skipped_after_a_blocking_error_as_on_the_api_server() -> None:
    """A wrong type (or a missing field, an enum, too long, too many) stops the rules; a bound or a
    pattern does not. The API server says so in an error of its own, kept here as INCOMPLETE."""
    blocked = validate(with_spec(MAP, type="Array", keySize=8, valueSize="8"), "BpfMap").errors
    assert [(e.path, e.kind) for e in blocked] == [("spec.valueSize", "type"), ("", INCOMPLETE)]
    with pytest.raises(ResourceError) as info:
        parse_map(with_spec(MAP, type="Array", keySize=8, valueSize="8"))
    assert str(info.value) == "BpfMap flow-counts: spec.valueSize: must be an integer, not '8'"
    unblocked = validate(with_spec(MAP, type="Array", keySize=8, maxEntries=0), "BpfMap").errors
    assert [e.path for e in unblocked] == ["spec.maxEntries", "spec.keySize"]
    assert not {e.kind for e in unblocked} & BLOCKING


def test_rules_run_on_every_item_of_a_list() -> None:
    selector = {
        "matchExpressions": [
            {"key": "a", "operator": "Exists"},
            {"key": "b", "operator": "In"},
            {"key": "c", "operator": "DoesNotExist", "values": ["x"]},
        ]
    }
    assert paths(with_spec(MAP, nodeSelector=selector)) == [
        "spec.nodeSelector.matchExpressions[1]",
        "spec.nodeSelector.matchExpressions[2]",
    ]


def test_the_dotted_name_rule_names_metadata_name_and_says_what_to_do() -> None:
    obj = {**MAP, "metadata": {"name": "flow.counts"}}
    assert errors(obj) == [
        "metadata.name: the pin name defaults to metadata.name, and bpffs refuses '.' in a pin name: set spec.pinName"
    ]
    assert errors(with_spec(obj, pinName="flow_counts")) == []


def test_every_rule_of_the_crds_evaluates_on_valid_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rule uses a CEL function the evaluator lacks: on valid objects each is evaluated and true."""
    from tests.controlplane.test_crds import VALID_MAPS

    outcomes: dict[str, set[bool | str]] = {}
    evaluate = schema.evaluate

    def recording(rule: str, self_json: str) -> bool | str:
        outcome = evaluate(rule, self_json)
        outcomes.setdefault(rule, set()).add(outcome)
        return outcome

    monkeypatch.setattr(schema, "evaluate", recording)
    objects = [("BpfMap", {**MAP, "spec": spec}) for spec in VALID_MAPS]
    objects += [("BpfMap", with_spec(MAP, adopt="/sys/fs/bpf/tc/globals/x", pinName="p"))]
    sources = ({"path": "/x.o"}, {"inline": "f0VMRg=="}, {"configMap": {"namespace": "n", "name": "o", "key": "k"}})
    targets = (
        {"tc": {"interfaces": ["eth0"], "direction": "egress"}},
        {"tcx": {"interfaces": ["eth0"], "direction": "ingress"}},
        {"cgroup": {"path": "/kubepods", "type": "egress"}},
    )
    objects += [("BpfProgram", with_spec(PROG, bytecode=b, attach=a)) for b in sources for a in targets]
    for kind, obj in objects:
        assert validate(obj, kind).errors == ()
    # The state objects' only rule is a transition rule (spec immutable): creates never evaluate it.
    every = {r["rule"] for crd in _crd_files() for r in _all_rules(crd) if "oldSelf" not in r["rule"]}
    assert set(outcomes) == every
    assert all(results == {True} for results in outcomes.values()), outcomes


def _crd_files() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(PACKAGE_CRDS.glob("*.yaml"))]


def _all_rules(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found += node.get("x-kubernetes-validations") or []
        for value in node.values():
            found += _all_rules(value)
    elif isinstance(node, list):
        for value in node:
            found += _all_rules(value)
    return found


def crd_with(rules: list[dict[str, Any]], field: dict[str, Any] | None = None) -> Crd:
    """A one-field CRD, for the rule mechanics the shipped CRDs do not use."""
    properties: dict[str, Any] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}}
    properties["spec"] = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": field or {"type": "integer"}},
        "x-kubernetes-validations": rules,
    }
    return Crd.load(
        {
            "spec": {
                "group": "example.com",
                "names": {"kind": "Thing", "plural": "things"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "schema": {"openAPIV3Schema": {"type": "object", "properties": properties}},
                    }
                ],
            }
        }
    )


def thing(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec}


def test_a_rule_that_cannot_be_evaluated_is_an_error_of_its_node() -> None:
    crd = crd_with([{"rule": "self.a == 'x'", "message": "a must be x", "fieldPath": ".a"}])
    assert crd.validate(thing(a="x")).errors == ()
    assert crd.validate(thing(a="y")).errors == (FieldError("spec.a", "a must be x"),)
    missing = crd.validate(thing(b=1)).errors
    assert [e.path for e in missing] == ["spec"]  # no such key: at the rule's node, not its fieldPath
    assert missing[0].detail.startswith("a must be x (the rule could not be evaluated: no such member")


def test_rule_message_expression_reason_and_default_message() -> None:
    crd = crd_with(
        [
            {"rule": "self.b < 10", "messageExpression": "'b is ' + string(self.b)", "reason": "FieldValueForbidden"},
            {"rule": "self.b != 11"},
            {"rule": "self.b == oldSelf.b", "message": "immutable"},  # a transition rule: not on a create
        ]
    )
    assert crd.validate(thing(b=11)).errors == (
        FieldError("spec", "b is 11", "forbidden"),
        FieldError("spec", "failed rule: self.b != 11"),
    )


def test_rules_on_a_map_s_values_and_a_quoted_field_path() -> None:
    crd = crd_with(
        [{"rule": "!has(self.b) || self.b['x.y'] > 0", "message": "positive", "fieldPath": ".b['x.y']"}],
        field={
            "type": "object",
            "additionalProperties": {
                "type": "integer",
                "x-kubernetes-validations": [{"rule": "self < 100", "message": "small"}],
            },
        },
    )
    assert [str(e) for e in crd.validate(thing(b={"x.y": 0, "z": 100})).errors] == [
        "spec.b[x.y]: positive",
        "spec.b.z: small",
    ]


def test_a_rule_is_evaluated_once_per_distinct_value() -> None:
    schema.evaluate.cache_clear()
    for _ in range(3):
        parse_map(MAP)
    info = schema.evaluate.cache_info()
    assert info.misses > 0 and info.hits == 2 * info.misses


# -- never a traceback --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _fields(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _fields(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _fields(value, (*path, i))
    return out


FULL_PROG = with_spec(
    PROG,
    bytecode={"path": "/x.o", "sha256": "a" * 64},
    nodeSelector={"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]},
)
FULL_MAP = with_spec(
    MAP, pinName="p", adopt="/sys/fs/bpf/x", reclaimPolicy="Retain", nodeSelector=FULL_PROG["spec"]["nodeSelector"]
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.data())
def test_any_value_in_any_field_is_a_resource_error_or_a_resource(data: st.DataObject) -> None:
    """`metadata: [x]`, `nodeSelector: foo`, `attach: {tc: [x]}`, `networkNamespace: 5`, and whatever
    else: a value of any JSON shape put anywhere gives a resource or a ResourceError, nothing else."""
    kind, base, parse = data.draw(
        st.sampled_from([("BpfMap", FULL_MAP, parse_map), ("BpfProgram", FULL_PROG, parse_program)])
    )
    obj = copy.deepcopy(base)
    path = data.draw(st.sampled_from(_fields(obj)))
    value = data.draw(JSON)
    if not path:
        obj = value
    else:
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    try:
        parse(obj)
    except ResourceError as exc:
        assert exc.errors and all(isinstance(e, FieldError) for e in exc.errors)
        assert str(exc).startswith(kind)


def test_warm_compiles_every_rule_of_the_crds() -> None:
    """What an agent does at start, so that its first rollout does not pay for it."""
    schema._program.cache_clear()
    schema.warm()
    every = {r["rule"] for crd in _crd_files() for r in _all_rules(crd)}
    assert schema._program.cache_info().currsize == len(every)
