"""`bpfshare apply/delete -f` with malformed files, without a kernel (``--dry-run``): every bad
document is a field error with its file, line and number, never a traceback; the others are still
handled; the exit status is 1 whenever a document was refused.

The findings of issue 11 are here as they were reported: `metadata: [x]`, `nodeSelector: foo`,
`attach: {tc: [x]}`, `networkNamespace: 5`, a List of numbers, a scalar document, invalid YAML, and
the typos the API server refuses but apply used to ignore (`reclaimpolicy`, `adopts`).
tests/integration/test_apply_validation.py applies the same on a real kernel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.logic.test_cli_args import Bpfshare, bpfshare  # noqa: F401  (the fixture)

GOOD_MAP: dict[str, Any] = {
    "apiVersion": "bpfshare.io/v1alpha1",
    "kind": "BpfMap",
    "metadata": {"name": "good"},
    "spec": {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 16},
}
MAP = """\
apiVersion: bpfshare.io/v1alpha1
kind: BpfMap
metadata: {name: flow-counts}
spec:
  type: Hash
  keySize: 4
  valueSize: 8
  maxEntries: 16
"""
PROGRAM = """\
apiVersion: bpfshare.io/v1alpha1
kind: BpfProgram
metadata: {name: count}
spec:
  bytecode: {path: /opt/x.o}
  program: count_ingress
  attach: {tc: {interfaces: [eth0], direction: ingress}}
"""

# (id, the bad document, the line it names (1-based in the document), the message after "document 2: ")
CASES = [
    ("reclaimpolicy", MAP + "  reclaimpolicy: Retain\n", 9, "BpfMap flow-counts: spec.reclaimpolicy: unknown field"),
    ("adopts", MAP + "  adopts: /sys/fs/bpf/x\n", 9, "BpfMap flow-counts: spec.adopts: unknown field"),
    ("metadata-list", MAP.replace("{name: flow-counts}", "[x]"), 3, "BpfMap: metadata: must be an object, not a list"),
    (
        "node-selector-string",
        MAP + "  nodeSelector: foo\n",
        9,
        "BpfMap flow-counts: spec.nodeSelector: must be an object, not 'foo'",
    ),
    (
        "tc-list",
        PROGRAM.replace("{tc: {interfaces: [eth0], direction: ingress}}", "{tc: [x]}"),
        7,
        "BpfProgram count: spec.attach.tc: must be an object, not a list",
    ),
    (
        "netns-number",
        PROGRAM.replace("direction: ingress}", "direction: ingress, networkNamespace: 5}"),
        7,
        "BpfProgram count: spec.attach.tc.networkNamespace: must be a string, not 5",
    ),
    ("scalar", "5\n", 1, "must be an object (a Kubernetes resource), not 5"),
    ("yaml-syntax", "kind: BpfMap\nspec: {a: [}\n", 2, "invalid YAML: "),
    (
        "duplicate-key",
        MAP + "  keySize: 8\n",
        9,
        "spec.keySize: duplicate field",
    ),
    ("no-kind", "apiVersion: bpfshare.io/v1alpha1\nmetadata: {name: x}\n", 1, "kind: required, not null"),
    (
        "unknown-kind",
        MAP.replace("kind: BpfMap", "kind: BpfMaps"),
        2,
        "kind: 'BpfMaps' is not a bpfshare.io kind (BpfMap, BpfProgram)",
    ),
    (
        "dotted-name",
        MAP.replace("flow-counts", "flow.counts"),
        3,
        "BpfMap flow.counts: metadata.name: the pin name defaults to metadata.name, and bpffs refuses '.' in a "
        "pin name: set spec.pinName",
    ),
]


def write(tmp_path: Path, *docs: str) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text("---\n".join(docs))
    return path


@pytest.mark.parametrize("command", ["apply", "delete"])
@pytest.mark.parametrize(("bad", "line", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_document_is_named_and_the_others_are_still_handled(
    bpfshare: Bpfshare,  # noqa: F811
    tmp_path: Path,
    command: str,
    bad: str,
    line: int,
    message: str,
) -> None:
    first = yaml.safe_dump(GOOD_MAP)
    third = yaml.safe_dump({**GOOD_MAP, "metadata": {"name": "also-good"}})
    path = write(tmp_path, first, bad, third)
    start = first.count("\n") + 2  # the bad document's first line (after the separator)
    run = bpfshare(command, "-f", str(path), "--dry-run", "-o", "json")
    assert run.status == 1
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert lines[0].startswith(f"bpfshare: error: {path}:{start + line - 1}: document 2: {message}"), run.err
    assert len(lines) == 1, run.err
    planned = json.loads(run.out)
    expected = {("BpfMap", "good"), ("BpfMap", "also-good")} if command == "apply" else set()
    assert {(c["kind"], c["name"]) for c in planned} == expected  # (delete: nothing is on this node)


def test_a_list_of_numbers(bpfshare: Bpfshare, tmp_path: Path) -> None:  # noqa: F811
    path = write(tmp_path, "apiVersion: v1\nkind: List\nitems: [1, 2]\n")
    run = bpfshare("apply", "-f", str(path), "--dry-run")
    assert run.status == 1
    assert run.err.splitlines() == [
        f"bpfshare: error: {path}:3: document 1, items[{i}]: must be an object (a Kubernetes resource), not {i + 1}"
        for i in range(2)
    ]


def test_every_error_of_a_document_with_its_line(bpfshare: Bpfshare, tmp_path: Path) -> None:  # noqa: F811
    bad = MAP.replace("keySize: 4", "keySize: four").replace("type: Hash", "type: hash")
    path = write(tmp_path, bad)
    run = bpfshare("apply", "-f", str(path), "--dry-run")
    assert run.status == 1
    first, second = run.err.splitlines()
    assert first.startswith(
        f"bpfshare: error: {path}:5: document 1: BpfMap flow-counts: spec.type: unsupported value 'hash' (one of: "
        "Hash, Array, ProgArray,"
    )
    assert (
        second
        == f"bpfshare: error: {path}:6: document 1: BpfMap flow-counts: spec.keySize: must be an integer, not 'four'"
    )


def test_the_same_resource_twice_is_refused_both_times(bpfshare: Bpfshare, tmp_path: Path) -> None:  # noqa: F811
    """Which one is meant, the Retain or the Delete? Neither is applied; a third resource is."""
    retain = yaml.safe_dump({**GOOD_MAP, "spec": {**GOOD_MAP["spec"], "reclaimPolicy": "Retain"}})
    other = yaml.safe_dump({**GOOD_MAP, "metadata": {"name": "other"}})
    path = write(tmp_path, yaml.safe_dump(GOOD_MAP), retain, other)
    run = bpfshare("apply", "-f", str(path), "--dry-run", "-o", "json")
    assert run.status == 1
    second = yaml.safe_dump(GOOD_MAP).count("\n") + 2
    places = f"{path}:1, {path}:{second}"
    assert run.err.splitlines() == [
        f"bpfshare: error: {path}:1: document 1: BpfMap good: defined 2 times ({places})",
        f"bpfshare: error: {path}:{second}: document 2: BpfMap good: defined 2 times ({places})",
    ]
    assert [c["name"] for c in json.loads(run.out)] == ["other"]


def test_other_kinds_are_skipped_and_do_not_fail(bpfshare: Bpfshare, tmp_path: Path) -> None:  # noqa: F811
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: objects}\n"
    path = write(tmp_path, cm, yaml.safe_dump(GOOD_MAP))
    run = bpfshare("apply", "-f", str(path), "--dry-run", "-o", "json")
    assert run.status == 0
    assert run.err == f"skipping ConfigMap in {path}: document 1 (not a bpfshare.io resource)\n"
    assert [c["name"] for c in json.loads(run.out)] == ["good"]


def test_all_valid_is_exit_status_0(bpfshare: Bpfshare, tmp_path: Path) -> None:  # noqa: F811
    docs: list[dict[str, Any]] = [GOOD_MAP, yaml.safe_load(PROGRAM)]
    path = write(tmp_path, *(yaml.safe_dump(d) for d in docs))
    run = bpfshare("apply", "-f", str(path), "--dry-run", "-o", "json")
    assert (run.status, run.err) == (0, "")
