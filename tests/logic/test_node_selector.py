"""nodeSelector on BpfMap and BpfProgram: Kubernetes label-selector semantics, which users know from
every other resource (matchLabels and matchExpressions ANDed; In, NotIn, Exists, DoesNotExist), and
the errors that name the bad expression.

The properties are the ones the Kubernetes documentation states (a matchLabels entry equals an In
expression with one value; NotIn and DoesNotExist are the negations of In and Exists; labels the
selector does not mention do not matter), checked on generated selectors and node labels."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfshare.api.resources import NodeSelector, ResourceError, parse_map, parse_program
from tests.logic.test_resources import MAP, PROG, with_spec

WHERE = "spec.nodeSelector"
KEYS = st.sampled_from(["zone", "role", "bpfshare.io/agent", "kubernetes.io/hostname"])
VALUES = st.sampled_from(["a", "b", "edge", "", "true"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)
EXAMPLES = settings(max_examples=100, deadline=None, database=None)


def select(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    return NodeSelector.parse(selector, WHERE).matches(labels)


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}}, {"matchExpressions": []}])
def test_an_empty_selector_selects_every_node(selector: dict[str, Any] | None) -> None:
    assert select(selector, {}) and select(selector, {"zone": "a"})


@pytest.mark.parametrize(
    ("labels", "selected"),
    [
        ({"zone": "a", "role": "edge"}, True),
        ({"zone": "a", "role": "edge", "gpu": "1"}, False),  # DoesNotExist gpu
        ({"zone": "c", "role": "edge"}, False),  # zone not In [a, b]
        ({"zone": "a"}, False),  # matchLabels role=edge
        ({"zone": "b", "role": "edge", "tier": "x"}, True),  # NotIn tier [y]: present with another value
        ({"zone": "b", "role": "edge", "tier": "y"}, False),
    ],
)
def test_match_labels_and_every_expression_must_hold(labels: dict[str, str], selected: bool) -> None:
    selector = {
        "matchLabels": {"role": "edge"},
        "matchExpressions": [expr("zone", "In", "a", "b"), expr("gpu", "DoesNotExist"), expr("tier", "NotIn", "y")],
    }
    assert select(selector, labels) is selected


def test_values_are_compared_exactly() -> None:
    assert not select({"matchLabels": {"role": "Edge"}}, {"role": "edge"})
    assert not select({"matchExpressions": [expr("zone", "In", "a")]}, {"zone": "a "})
    assert select({"matchExpressions": [expr("gpu", "Exists")]}, {"gpu": ""})  # present, even empty
    assert not select({"matchLabels": {"gpu": ""}}, {})  # an empty value is still a value to match


def test_numbers_from_yaml_match_label_strings() -> None:
    """`values: [1]` or `matchLabels: {count: 3}` parse as integers in YAML; labels are strings."""
    assert select({"matchExpressions": [{"key": "rack", "operator": "In", "values": [1, 2]}]}, {"rack": "2"})
    assert select({"matchLabels": {"count": 3}}, {"count": "3"})


@EXAMPLES
@given(key=KEYS, value=VALUES, labels=LABELS)
def test_match_labels_entry_is_an_in_expression_with_one_value(key: str, value: str, labels: dict[str, str]) -> None:
    assert select({"matchLabels": {key: value}}, labels) == select(
        {"matchExpressions": [expr(key, "In", value)]}, labels
    )


@EXAMPLES
@given(key=KEYS, values=st.lists(VALUES, min_size=1, max_size=3), labels=LABELS)
def test_not_in_and_does_not_exist_negate_in_and_exists(key: str, values: list[str], labels: dict[str, str]) -> None:
    exists = select({"matchExpressions": [expr(key, "Exists")]}, labels)
    assert exists == (key in labels)
    assert select({"matchExpressions": [expr(key, "DoesNotExist")]}, labels) is not exists
    is_in = select({"matchExpressions": [expr(key, "In", *values)]}, labels)
    assert is_in == (labels.get(key) in values if key in labels else False)
    assert select({"matchExpressions": [expr(key, "NotIn", *values)]}, labels) is not is_in


@EXAMPLES
@given(
    match_labels=st.dictionaries(KEYS, VALUES, max_size=2),
    exprs=st.lists(
        st.tuples(KEYS, st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]), st.lists(VALUES, max_size=2)),
        max_size=3,
    ),
    labels=LABELS,
    extra=st.dictionaries(st.sampled_from(["unrelated", "other.io/x"]), VALUES, min_size=1),
)
def test_a_selector_is_the_and_of_its_parts_and_ignores_other_labels(
    match_labels: dict[str, str],
    exprs: list[tuple[str, str, list[str]]],
    labels: dict[str, str],
    extra: dict[str, str],
) -> None:
    expressions = [expr(k, op, *(vs if op in ("In", "NotIn") else [])) for k, op, vs in exprs]
    whole = select({"matchLabels": match_labels, "matchExpressions": expressions}, labels)
    parts = [select({"matchLabels": {k: v}}, labels) for k, v in match_labels.items()]
    parts += [select({"matchExpressions": [e]}, labels) for e in expressions]
    assert whole == all(parts)
    assert select({"matchLabels": match_labels, "matchExpressions": expressions}, {**labels, **extra}) == whole


def test_the_selector_is_kept_on_both_kinds() -> None:
    selector = {"matchLabels": {"role": "edge"}, "matchExpressions": [expr("zone", "NotIn", "c")]}
    for parsed in (
        parse_map(with_spec(MAP, nodeSelector=selector)),
        parse_program(with_spec(PROG, nodeSelector=selector)),
    ):
        assert parsed.node_selector.matches({"role": "edge", "zone": "a"})
        assert not parsed.node_selector.matches({"role": "edge", "zone": "c"})
        assert not parsed.node_selector.matches({"zone": "a"})


def test_equal_selectors_parse_equal_whatever_the_label_order() -> None:
    """The engine compares parsed resources: reordering matchLabels in YAML is no change."""
    a = NodeSelector.parse({"matchLabels": {"a": "1", "b": "2"}}, WHERE)
    b = NodeSelector.parse({"matchLabels": {"b": "2", "a": "1"}}, WHERE)
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            {"matchExpressions": [expr("a", "Exists"), expr("b", "Near", "x")]},
            "BpfMap flow-counts: spec.nodeSelector.matchExpressions[1].operator: unsupported value 'Near'",
        ),
        ({"matchExpressions": [{"key": "a"}]}, "spec.nodeSelector.matchExpressions[0].operator: required"),
        ({"matchExpressions": [expr("a", "in", "x")]}, "unsupported value 'in'"),  # case matters, as in Kubernetes
        (
            {"matchLabels": ["role=edge"]},
            "BpfMap flow-counts: spec.nodeSelector.matchLabels: must be an object, not a list",
        ),
    ],
)
def test_a_bad_selector_is_refused_naming_the_expression(selector: dict[str, Any], message: str) -> None:
    with pytest.raises(ResourceError) as info:
        parse_map(with_spec(MAP, nodeSelector=selector))
    assert message in str(info.value)


def test_a_program_selector_error_names_the_program() -> None:
    with pytest.raises(ResourceError, match=r"^BpfProgram count-ingress: spec\.nodeSelector\.matchExpressions\[0\]"):
        parse_program(with_spec(PROG, nodeSelector={"matchExpressions": [expr("a", "Sometimes")]}))
