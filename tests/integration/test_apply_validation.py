"""`bpfshare apply/delete -f` refuses what the API server refuses, on the real kernel, and a refused
document costs nothing else: issue 11's findings, through the real engine on a private bpffs.

- `reclaimpolicy: Retain` (a typo) used to be ignored: the map fell back to Delete and its contents
  went with `delete -f`. Now the document is refused and the map, with its contents, stays.
- `adopts:` (a typo of adopt) used to create a new, empty map. Now nothing is created.
- One bad document used to stop the whole file. Now the others converge and the exit status says not all did.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.netenv import NetnsPair
from tests.integration.test_apply import bpfmap, tc_program
from tests.integration.test_sharing import bpfshare, counters, filters_on

pytestmark = pytest.mark.kernel


class Files:
    """Run `bpfshare VERB -f FILE` on YAML text, against one pin root."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root, self.tmp, self.runs = root, tmp, 0

    def run(self, verb: str, *docs: dict[str, Any] | str) -> tuple[int, dict[str, Any], str]:
        self.runs += 1
        path = self.tmp / f"objects-{self.runs}.yaml"
        path.write_text("---\n".join(d if isinstance(d, str) else yaml.safe_dump(d) for d in docs))
        proc = bpfshare(verb, "-f", str(path), "--pin-root", str(self.root), "-o", "json", check=False)
        assert "Traceback" not in proc.stderr, proc.stderr
        out = {i["name"]: i.get("status", {"nodes": [{"removed": True}]})["nodes"][0] for i in json.loads(proc.stdout)}
        return proc.returncode, out, proc.stderr.replace(str(path), "FILE")


@pytest.fixture
def files(bpffs: Path, tmp_path: Path) -> Files:
    return Files(bpffs / "bpfshare", tmp_path)


def typo(doc: dict[str, Any], field: str, value: Any) -> str:
    return yaml.safe_dump({**doc, "spec": {**doc["spec"], field: value}})


def line(text: str, needle: str) -> int:
    """The 1-based line of the first line of text holding needle."""
    return next(i for i, row in enumerate(text.splitlines(), 1) if needle in row)


def write_counter(pin: Path, key: int, value: int) -> None:
    key_bytes = [str(b) for b in key.to_bytes(4, "little")]
    value_bytes = [str(b) for b in value.to_bytes(8, "little")]
    subprocess.run(
        ["bpftool", "map", "update", "pinned", str(pin), "key", *key_bytes, "value", *value_bytes], check=True
    )


def test_a_reclaim_policy_typo_is_refused_and_the_map_keeps_its_contents(files: Files) -> None:
    status, out, _ = files.run("apply", bpfmap(reclaimPolicy="Retain"))
    assert status == 0 and out["flow-counts"]["phase"] == "Ready"
    pin = Path(out["flow-counts"]["pinPath"])
    write_counter(pin, 1, 9)

    mistyped = typo(bpfmap(), "reclaimpolicy", "Retain")  # no reclaimPolicy: the default would be Delete
    status, out, err = files.run("delete", mistyped)
    assert status == 1 and out == {}
    at = line(mistyped, "reclaimpolicy")
    assert err == f"bpfshare: error: FILE:{at}: document 1: BpfMap flow-counts: spec.reclaimpolicy: unknown field\n"
    assert pin.exists() and counters(pin)[1] == 9

    status, out, err = files.run("apply", mistyped)
    assert status == 1 and out == {} and "spec.reclaimpolicy: unknown field" in err
    assert counters(pin)[1] == 9  # not re-created, not touched

    status, out, _ = files.run("delete", bpfmap(reclaimPolicy="Retain"))
    assert status == 0 and pin.exists() and counters(pin)[1] == 9


def test_an_adopt_typo_creates_no_map(files: Files, bpffs: Path) -> None:
    mistyped = typo(bpfmap(), "adopts", str(bpffs / "tc" / "globals" / "shared_counts"))
    status, out, err = files.run("apply", mistyped)
    assert status == 1 and out == {}
    at = line(mistyped, "adopts")
    assert err == f"bpfshare: error: FILE:{at}: document 1: BpfMap flow-counts: spec.adopts: unknown field\n"
    assert not (files.root / "maps" / "flow-counts").exists()


def test_one_bad_document_does_not_stop_the_others(files: Files, bpf_objects: Any, netns_pair: NetnsPair) -> None:
    program = tc_program(bpf_objects["flow_counter"], netns_pair)
    bad = "apiVersion: bpfshare.io/v1alpha1\nkind: BpfProgram\nmetadata: [x]\n"
    not_yaml = "kind: BpfMap\nspec: {unclosed\n"
    status, out, err = files.run("apply", bpfmap(), bad, not_yaml, program)
    assert status == 1
    at = yaml.safe_dump(bpfmap()).count("\n") + 1 + 3  # after the first document and the separator
    assert err.startswith(
        f"bpfshare: error: FILE:{at}: document 2: BpfProgram: metadata: must be an object, not a list\n"
        "bpfshare: error: FILE:"
    )
    assert "document 3: invalid YAML" in err
    assert out["flow-counts"]["phase"] == "Ready" and out["count-ingress"]["phase"] == "Ready"
    assert filters_on(netns_pair) == [out["count-ingress"]["programId"]]

    # delete -f of the same file: the valid documents are removed, the refused ones touch nothing
    status, out, _ = files.run("delete", bpfmap(), bad, program)
    assert status == 1 and out == {"flow-counts": {"removed": True}, "count-ingress": {"removed": True}}
    assert filters_on(netns_pair) == [] and not (files.root / "maps" / "flow-counts").exists()


def test_an_invalid_change_leaves_the_applied_resource_as_it_was(files: Files) -> None:
    status, out, _ = files.run("apply", bpfmap())
    map_id = out["flow-counts"]["mapId"]
    status, out, err = files.run("apply", bpfmap(keySize=8))  # an Array's key is a u32: the CRD's rule
    assert status == 1 and out == {}
    assert "BpfMap flow-counts: spec.keySize: keySize must be 4 for Array" in err
    status, out, _ = files.run("apply", bpfmap())
    assert status == 0 and out["flow-counts"]["mapId"] == map_id  # the same map, never re-created


def test_adopt_is_confined_to_the_nodes_bpffs(files: Files, bpffs: Path, tmp_path: Path) -> None:
    """The CRD allows only /sys/fs/bpf; with --pin-root on another bpffs mount, that mount plays its
    part (tests/integration/test_apply.py adopts from it), and any other place is refused, named as written."""
    for outside in ("/etc/passwd", str(tmp_path / "not-bpffs")):
        status, out, err = files.run("apply", bpfmap(adopt=outside))
        assert status == 1 and out == {}
        assert f"BpfMap flow-counts: spec.adopt: {outside!r} does not match ^/sys/fs/bpf(" in err, err
    status, out, _ = files.run("apply", bpfmap(adopt=str(bpffs / "not-yet")))
    assert status == 0 and out["flow-counts"]["phase"] == "Pending"  # on the mount: valid, waits for the pin
    assert str(bpffs / "not-yet") in out["flow-counts"]["message"]
