"""api/manifests.py: YAML and JSON files read document by document, as kubectl reads them.

A bad document (invalid YAML, a scalar, a key given twice) spoils only itself and is named by its
file, number and line; every field keeps its line, so that apply's errors point into the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.api import manifests
from bpfshare.api.manifests import Document


def read(tmp_path: Path, text: str, name: str = "objects.yaml") -> list[Document]:
    path = tmp_path / name
    path.write_text(text)
    return list(manifests.read([path], ["BpfMapList"]))


def test_invalid_yaml_spoils_only_its_own_document(tmp_path: Path) -> None:
    docs = read(
        tmp_path,
        "kind: A\n---\nkind: B\nspec: [unclosed\n---\n# a comment only\n---\nkind: C\n",
    )
    assert [(d.index, d.line, d.body) for d in docs if d.error is None] == [
        (1, 1, {"kind": "A"}),
        (3, 8, {"kind": "C"}),
    ]
    (bad,) = [d for d in docs if d.error]
    assert (bad.index, bad.line, bad.where) == (2, 5, f"{tmp_path / 'objects.yaml'}: document 2")
    assert bad.error.startswith("invalid YAML: ")  # type: ignore[union-attr]


def test_separators_as_kubectl_splits_them(tmp_path: Path) -> None:
    docs = read(tmp_path, "---\nkind: A\n--- # next\nkind: B\n---   \n\n---\nkind: C\n...\n")
    assert [(d.index, d.line, d.body) for d in docs] == [
        (1, 2, {"kind": "A"}),
        (2, 4, {"kind": "B"}),
        (3, 8, {"kind": "C"}),
    ]


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    """kubectl would keep the last silently: a `reclaimPolicy: Delete` below a Retain would win."""
    (doc,) = read(tmp_path, "kind: BpfMap\nspec:\n  reclaimPolicy: Retain\n  reclaimPolicy: Delete\n")
    assert (doc.body, doc.line, doc.error) == (None, 4, "spec.reclaimPolicy: duplicate field")


def test_values_are_what_kubectl_sends(tmp_path: Path) -> None:
    """YAML to JSON as kubectl converts it: a date stays a string, an integral float is an integer,
    a number as a key is a string; `yes` is YAML 1.1's true (kubectl reads YAML 1.1 too)."""
    (doc,) = read(tmp_path, "a: 2026-01-01\nb: 8.0\nc: 8.5\nd: {1: x, true: y}\ne: yes\nf: 0x10\n")
    assert doc.body == {"a": "2026-01-01", "b": 8, "c": 8.5, "d": {"1": "x", "true": "y"}, "e": True, "f": 16}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a: .nan\n", "a: nan is not a number JSON can carry"),
        ("a: !!binary aGVsbG8=\n", "a: bytes is not a JSON value"),
        ("a: !custom x\n", "a: could not determine a constructor for the tag '!custom'"),
        ("? [x]\n: y\n", "the document: a key must be a string, not a collection"),
        ("a: &x [*x]\n", "a[0]: an alias refers to itself"),
    ],
)
def test_what_json_cannot_carry_is_an_error_of_its_field(tmp_path: Path, text: str, error: str) -> None:
    (doc,) = read(tmp_path, text)
    assert (doc.body, doc.error) == (None, error)


def test_an_alias_bomb_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert manifests.MAX_VALUES == 1_000_000
    monkeypatch.setattr(manifests, "MAX_VALUES", 10_000)  # the same bound, reached sooner
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]  # 10^8 values
    (doc,) = read(tmp_path, "\n".join(lines) + "\n")
    assert doc.error is not None and "more than 10000 values" in doc.error
    (over,) = read(tmp_path, "\n".join(lines[:4]) + "\n")  # 10^4 + 10^3 + ...: just over
    assert over.error is not None
    (fine,) = read(tmp_path, "\n".join(lines[:3]) + "\n")
    assert fine.error is None and len(fine.body["a2"]) == 10


def test_every_field_has_its_line(tmp_path: Path) -> None:
    text = "kind: BpfMap\nmetadata:\n  name: m\nspec:\n  flags:\n    - NoPrealloc\n    - Nope\n  nodeSelector: {}\n"
    (doc,) = read(tmp_path, text)
    assert doc.line_of("spec.flags[1]") == 7
    assert doc.line_of("spec.nodeSelector") == 8
    assert doc.line_of("spec.nodeSelector.matchLabels.a") == 8  # not in the file: its nearest parent
    assert doc.line_of("spec.pinName") == 4
    assert doc.line_of("") == 1


def test_the_items_of_a_list_are_documents_with_their_own_lines(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- kind: BpfMap\n  metadata: {name: a}\n"
        + "".join(f"- {i}\n" for i in range(1, 11))
        + "- kind: BpfMap\n  spec:\n    keySize: 4\n"
    )
    docs = read(tmp_path, text)
    assert [(d.item, d.line) for d in docs] == [(0, 4), *[(i, 5 + i) for i in range(1, 11)], (11, 16)]
    assert docs[1].body == 1 and docs[0].where.endswith(": document 1, items[0]")
    assert docs[11].line_of("spec.keySize") == 18 and docs[11].line_of("metadata") == 16
    assert read(tmp_path, "kind: BpfMapList\nitems: []\n") == []


def test_a_list_whose_items_are_not_a_list(tmp_path: Path) -> None:
    (doc,) = read(tmp_path, "apiVersion: v1\nkind: List\nitems: {a: 1}\n")
    assert (doc.line, doc.error) == (3, "items: must be a list, not an object")


def test_json_that_yaml_cannot_read(tmp_path: Path) -> None:
    """kubectl reads a file that starts with '{' as JSON: tabs, say, which YAML refuses."""
    docs = read(tmp_path, '{\n\t"kind": "BpfMap",\n\t"spec": {"keySize": 4}\n}\n{"kind": "B"}\n', "objects.json")
    assert [(d.index, d.line, d.body) for d in docs] == [
        (1, 1, {"kind": "BpfMap", "spec": {"keySize": 4}}),
        (2, 5, {"kind": "B"}),
    ]
    (dup,) = read(tmp_path, '{\t"a": 1, "a": 2}', "dup.json")
    assert dup.error == "invalid JSON: a: duplicate field"


def test_directories_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "b.yml").write_text("kind: B\n")
    (tmp_path / "d" / "a.json").write_text('{"kind": "A"}')
    (tmp_path / "d" / "notes.txt").write_text("kind: [")
    (tmp_path / "d" / "bad.yaml").write_bytes(b"kind: \xff\n")
    docs = list(manifests.read([tmp_path / "d"]))
    assert [(d.source.name, d.body) for d in docs] == [
        ("a.json", {"kind": "A"}),
        ("bad.yaml", None),
        ("b.yml", {"kind": "B"}),
    ]
    assert docs[1].error is not None and docs[1].error.startswith("cannot read: ")
