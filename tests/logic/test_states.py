"""The node view's vocabulary (api/states.py): state object names are valid object names, distinct for
every (resource, node) pair, readable when short, and always decode to their node (what the admission
policy checks); label values are valid label values; the body the agent applies."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfshare.api.states import (
    AGENT_FINALIZER,
    MAP_STATE,
    PROGRAM_STATE,
    label_value,
    state_body,
    state_kind_of,
    state_labels,
    state_name,
)
from bpfshare.errors import BpfshareError

# apimachinery's IsDNS1123Subdomain (object names, node names) and IsValidLabelValue.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS_LABEL = st.builds(
    lambda first, middle, last: first + middle + (last if middle else ""),
    st.sampled_from("abcz09"),
    st.text("abz09-", max_size=62),
    st.sampled_from("az9"),
).filter(lambda label: len(label) <= 63)
SUBDOMAINS = st.lists(DNS_LABEL, min_size=1, max_size=8).map(".".join).filter(lambda n: len(n) <= 253)
# Node names that leave room for a state name: a 253-character name holds the node, a dot and 12 more.
NODES = SUBDOMAINS.filter(lambda n: len(n) <= 240)

CLOUD_NODES = [
    "ip-10-0-3-7.eu-west-1.compute.internal",
    "gke-prod-europe-west4-default-pool-8f1d2c3b-x7kq",
    "aks-nodepool1-12345678-vmss000000",
    "worker-1",
    "a" * 240,
    ".".join(["a" * 63] * 3) + "." + "b" * 48,  # 240 characters, four labels
]
RESOURCES = [
    "flow-counts",
    "flow.counts",  # a dotted name: hashed, so that the name still decodes to its node
    "flow-counts.v2",
    "a",
    "x" * 253,  # as long as a name can be
    "flow-counts-" + "0" * 10,  # looks like a hashed prefix
]


def assert_valid_name(name: str) -> None:
    assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), name


def assert_valid_label_value(value: str) -> None:
    assert len(value) <= 63 and LABEL_VALUE.match(value), value


@pytest.mark.parametrize("node", CLOUD_NODES)
@pytest.mark.parametrize("resource", RESOURCES)
def test_names_are_valid_and_decode_to_their_node(resource: str, node: str) -> None:
    name = state_name(resource, node)
    assert_valid_name(name)
    first, _, rest = name.partition(".")
    assert rest == node and "." not in first
    if "." not in resource and len(resource) + 1 + len(node) <= 253:
        assert name == f"{resource}.{node}"  # readable when it can be


def test_short_names_are_readable() -> None:
    assert state_name("flow-counts", "worker-1") == "flow-counts.worker-1"
    assert (
        state_name("count-ingress", "ip-10-0-3-7.eu-west-1.compute.internal")
        == "count-ingress.ip-10-0-3-7.eu-west-1.compute.internal"
    )
    dotted = state_name("flow.counts", "worker-1")
    assert re.fullmatch(r"flow-counts-[0-9a-f]{10}\.worker-1", dotted)


def test_every_pair_of_the_examples_has_its_own_name() -> None:
    pairs = [(r, n) for r in RESOURCES for n in CLOUD_NODES]
    assert len({state_name(r, n) for r, n in pairs}) == len(pairs)


def test_a_node_name_too_long_to_hold_a_state_name_is_an_error() -> None:
    with pytest.raises(BpfshareError, match="too long"):
        state_name("m", "a" * 242)


@settings(max_examples=300, deadline=None, database=None)
@given(resource=SUBDOMAINS, node=NODES)
def test_every_pair_makes_a_valid_name_that_decodes_to_its_node(resource: str, node: str) -> None:
    name = state_name(resource, node)
    assert_valid_name(name)
    first, _, rest = name.partition(".")
    assert rest == node and "." not in first and first


@settings(max_examples=300, deadline=None, database=None)
@given(a=st.tuples(SUBDOMAINS, NODES), b=st.tuples(SUBDOMAINS, NODES))
def test_different_pairs_never_share_a_name(a: tuple[str, str], b: tuple[str, str]) -> None:
    if a != b:
        assert state_name(*a) != state_name(*b)


def test_long_and_dotted_names_with_a_common_prefix_stay_apart() -> None:
    """Their readable prefixes are cut to the same characters: the hash keeps them apart."""
    base = "r" + "x" * 240
    nodes = ("worker-1", "ip-10-0-3-7.eu-west-1.compute.internal")
    names = {state_name(base + suffix, node) for suffix in ("a", "b", ".c", "-c", ".d.e") for node in nodes}
    assert len(names) == 5 * 2


@pytest.mark.parametrize("name", [*RESOURCES, *CLOUD_NODES, "Under_Score", "trail.", "ü", ""])
def test_label_values_are_valid(name: str) -> None:
    value = label_value(name)
    assert_valid_label_value(value)
    if len(name) <= 63 and LABEL_VALUE.match(name):
        assert value == name  # kept when it is one already


@settings(max_examples=200, deadline=None, database=None)
@given(a=SUBDOMAINS, b=SUBDOMAINS)
def test_label_values_of_different_names_differ(a: str, b: str) -> None:
    assert_valid_label_value(label_value(a))
    if a != b:
        assert label_value(a) != label_value(b)


def test_labels_name_the_resource_and_the_node() -> None:
    assert state_labels(MAP_STATE, "flow-counts", "worker-1") == {
        "bpfshare.io/map": "flow-counts",
        "bpfshare.io/node": "worker-1",
    }
    long = state_labels(PROGRAM_STATE, "p", "a" * 100)
    assert long["bpfshare.io/program"] == "p" and len(long["bpfshare.io/node"]) <= 63


def test_the_body_the_agent_applies() -> None:
    status: dict[str, object] = {"phase": "Ready", "observedGeneration": 2, "programId": 7}
    body = state_body(PROGRAM_STATE, "count-ingress", "u-1", "worker-1", status)
    assert body == {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfProgramState",
        "metadata": {
            "name": "count-ingress.worker-1",
            "labels": {"bpfshare.io/program": "count-ingress", "bpfshare.io/node": "worker-1"},
            "finalizers": [AGENT_FINALIZER],
            # No blockOwnerDeletion: that needs rights on the owner's finalizers, which agents lack.
            "ownerReferences": [
                {"apiVersion": "bpfshare.io/v1alpha1", "kind": "BpfProgram", "name": "count-ingress", "uid": "u-1"}
            ],
        },
        "spec": {"node": "worker-1", "program": "count-ingress"},
        "status": status,
    }
    without_uid = state_body(MAP_STATE, "m", None, "worker-1", {})
    assert "ownerReferences" not in without_uid["metadata"]  # type: ignore[operator]
    assert state_kind_of("BpfMap") is MAP_STATE and state_kind_of("BpfProgram") is PROGRAM_STATE
