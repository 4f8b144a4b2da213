"""The motivating case end to end, on the real kernel, through the `bpfshare` command line.

A map created and pinned by iproute2's tc must be shared by a cgroup program whose object declares
it in another style; bpftool confirms independently that both programs use the one map, and real
traffic raises both programs' counters in it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.netenv import NetnsPair, run

pytestmark = pytest.mark.kernel

BPFSHARE = [sys.executable, "-m", "bpfshare"]
TC_INGRESS, TC_EGRESS, CG_INGRESS, CG_EGRESS = range(4)


def bpfshare(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*BPFSHARE, *args], capture_output=True, text=True)
    if check and proc.returncode:
        pytest.fail(f"bpfshare {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def bpftool(*args: str) -> object:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []  # `cgroup show` of an empty cgroup prints nothing


def counters(pin: Path) -> list[int]:
    """The shared array's four counters, read by bpftool (not by bpfshare)."""
    entries = bpftool("map", "dump", "pinned", str(pin))
    values = [0] * 4
    for entry in entries:  # type: ignore[union-attr]
        values[_number(entry["key"], "<I")] = _number(entry["value"], "<Q")
    return values


def _number(field: object, fmt: str) -> int:
    """bpftool prints a BTF-described field as a number, otherwise as a list of hex bytes."""
    if isinstance(field, int):
        return field
    return struct.unpack(fmt, bytes(int(b, 16) for b in field))[0]  # type: ignore[union-attr]


def send_from_cgroup(cgroup: Path, count: int, port: int = 9) -> None:
    """A process inside ``cgroup`` sends ``count`` UDP datagrams on loopback."""
    code = (
        "import os,socket,sys;"
        f"open({str(cgroup / 'cgroup.procs')!r},'w').write(str(os.getpid()));"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"[s.sendto(b'x',('127.0.0.1',{port})) for _ in range({count})]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def tc_load(
    pair: NetnsPair, bpffs: Path, obj: Path, section: str, direction: str = "ingress"
) -> subprocess.CompletedProcess[str]:
    """iproute2's tc loads ``obj`` on if_b; TC_BPF_MNT points it at the test's own bpffs."""
    run("tc", "qdisc", "add", "dev", pair.if_b, "clsact", netns=pair.ns_b)
    cmd = [
        "nsenter",
        f"--net=/run/netns/{pair.ns_b}",
        "tc",
        "filter",
        "add",
        "dev",
        pair.if_b,
        direction,
        "bpf",
        "da",
        "obj",
        str(obj),
        "sec",
        section,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TC_BPF_MNT": str(bpffs)})


def test_map_pinned_by_tc_is_shared_by_a_cgroup_program(
    bpffs: Path, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    tc = tc_load(netns_pair, bpffs, bpf_objects["flow_counter_tc"], "classifier/ingress")
    assert tc.returncode == 0, tc.stderr
    pin = bpffs / "tc" / "globals" / "shared_counts"
    tc_map_id = bpftool("map", "show", "pinned", str(pin))["id"]  # type: ignore[index]

    cgroup_rel = cgroup_dir.name
    out = bpfshare(
        "load",
        str(bpf_objects["cgroup_counter_mapdef"]),
        "--program",
        "count_cgroup_egress",
        "--map",
        f"shared_counts={pin}",
        "--attach",
        f"cgroup:{cgroup_rel}:egress",
        "--pin-root",
        str(bpffs / "bpfshare"),
        "--json",
    )
    result = json.loads(out.stdout)
    assert result["maps"]["shared_counts"] == {"id": tc_map_id, "pinPath": str(pin), "reused": True}
    prog = bpftool("prog", "show", "id", str(result["programId"]))
    assert prog["map_ids"] == [tc_map_id]  # type: ignore[index]
    assert prog["tag"] == result["tag"]  # type: ignore[index]
    [attachment] = result["attachments"]
    assert attachment["target"] == f"cgroup:{cgroup_rel}:egress"
    cgroup_progs = bpftool("cgroup", "show", str(cgroup_dir))
    assert [p["id"] for p in cgroup_progs] == [result["programId"]]  # type: ignore[union-attr,index]

    before = counters(pin)
    netns_pair.send_udp(7)
    send_from_cgroup(cgroup_dir, 5)
    after = counters(pin)
    assert after[TC_INGRESS] - before[TC_INGRESS] >= 7
    assert after[CG_EGRESS] - before[CG_EGRESS] == 5


def test_legacy_object_that_tc_refuses_shares_its_map_with_a_btf_object(
    bpffs: Path, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    legacy = bpf_objects["flow_counter_legacy"]
    refused = tc_load(netns_pair, bpffs, legacy, "classifier/ingress")
    assert refused.returncode != 0
    assert "legacy map definitions" in refused.stderr

    root = bpffs / "bpfshare"
    first = json.loads(
        bpfshare(
            "load",
            str(legacy),
            "--program",
            "count_ingress",
            "--attach",
            f"tc:{netns_pair.if_b}:ingress@{netns_pair.ns_b}",
            "--pin-root",
            str(root),
            "--json",
        ).stdout
    )
    # PIN_GLOBAL_NS follows iproute2's convention under the pin root.
    pin = root / "tc" / "globals" / "shared_counts"
    assert first["maps"]["shared_counts"]["pinPath"] == str(pin)
    assert first["maps"]["shared_counts"]["reused"] is False
    second = json.loads(
        bpfshare(
            "load",
            str(bpf_objects["flow_counter"]),
            "--program",
            "count_cgroup_egress",
            "--map",
            f"shared_counts={pin}",
            "--attach",
            f"cgroup:{cgroup_dir.name}:egress",
            "--pin-root",
            str(root),
            "--json",
        ).stdout
    )
    map_id = first["maps"]["shared_counts"]["id"]
    assert second["maps"]["shared_counts"]["id"] == map_id
    assert bpftool("map", "show", "pinned", str(pin))["id"] == map_id  # type: ignore[index]
    assert filters_on(netns_pair) == [first["programId"]]

    netns_pair.send_udp(4)
    send_from_cgroup(cgroup_dir, 3)
    values = counters(pin)
    assert values[TC_INGRESS] >= 4
    assert values[CG_EGRESS] == 3


def pins_in(bpffs: Path) -> list[str]:
    """What is pinned in a bpffs mount, less the kernel's own iterators (maps.debug, progs.debug)."""
    return sorted(p.name for p in bpffs.iterdir() if not p.name.endswith(".debug"))


def filters_on(pair: NetnsPair) -> list[int]:
    out = run("tc", "-j", "filter", "show", "dev", pair.if_b, "ingress", netns=pair.ns_b).stdout
    return [f["options"]["prog"]["id"] for f in json.loads(out) if "options" in f]


def test_incompatible_reuse_names_every_field_and_touches_nothing(bpffs: Path, bpf_objects) -> None:
    pin = bpffs / "other"
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            str(pin),
            "type",
            "hash",
            "key",
            "8",
            "value",
            "4",
            "entries",
            "16",
            "name",
            "other",
        ],
        check=True,
    )
    subprocess.run(["bpftool", "map", "update", "pinned", str(pin), "key", *["1"] * 8, "value", *["2"] * 4], check=True)
    before = bpftool("map", "show", "pinned", str(pin))
    proc = bpfshare(
        "load",
        str(bpf_objects["cgroup_counter_mapdef"]),
        "--program",
        "count_cgroup_egress",
        "--map",
        f"shared_counts={pin}",
        "--pin-root",
        str(bpffs / "bpfshare"),
        check=False,
    )
    assert proc.returncode == 1
    for words in (
        "Type: Hash changed to Array",
        "KeySize: 8 changed to 4",
        "ValueSize: 4 changed to 8",
        "MaxEntries: 16 changed to 4",
    ):
        assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert bpftool("map", "show", "pinned", str(pin)) == before
    assert len(bpftool("map", "dump", "pinned", str(pin))) == 1  # type: ignore[arg-type]
    assert not (bpffs / "bpfshare" / "loads").exists()  # nothing loaded, nothing pinned


def test_bound_pin_that_does_not_exist_is_an_error_not_a_new_map(bpffs: Path, bpf_objects) -> None:
    proc = bpfshare(
        "load",
        str(bpf_objects["cgroup_counter_mapdef"]),
        "--program",
        "count_cgroup_egress",
        "--map",
        f"shared_counts={bpffs}/nope",
        "--pin-root",
        str(bpffs),
        check=False,
    )
    assert proc.returncode == 1
    assert f"{bpffs}/nope: no such pin" in proc.stderr
    assert pins_in(bpffs) == []


def test_verifier_rejection_carries_the_verifiers_words(bpffs: Path, compile_bpf) -> None:
    obj = compile_bpf("""
        SEC("tc")
        int reads_past_packet(struct __sk_buff *skb)
        {
            unsigned char *data = (void *)(long)skb->data;
            return data[64];          /* no bounds check against data_end */
        }
        char LICENSE[] SEC("license") = "GPL";
    """)
    proc = bpfshare("load", str(obj), "--program", "reads_past_packet", "--pin-root", str(bpffs), check=False)
    assert proc.returncode == 1
    assert "reads_past_packet" in proc.stderr
    assert "invalid access to packet" in proc.stderr


def test_missing_interface_namespace_and_cgroup_are_clear_errors(bpffs: Path, bpf_objects, netns_pair) -> None:
    obj = str(bpf_objects["flow_counter"])
    cases = [
        ("count_ingress", "tc:nosuchif0:ingress", "nosuchif0"),
        ("count_ingress", f"tc:nosuchif0:ingress@{netns_pair.ns_a}", "nosuchif0"),
        ("count_ingress", "tc:lo:ingress@bpfshare-no-such-ns", "bpfshare-no-such-ns"),
        ("count_tcx_ingress", "tcx:nosuchif0:ingress", "nosuchif0"),
        ("count_cgroup_egress", "cgroup:bpfshare-no-such-cgroup:egress", "bpfshare-no-such-cgroup"),
        ("count_cgroup_egress", "cgroup:../escape:egress", ".."),
    ]
    for program, target, words in cases:
        proc = bpfshare("load", obj, "--program", program, "--attach", target, "--pin-root", str(bpffs), check=False)
        assert proc.returncode == 1, target
        assert words in proc.stderr, (target, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_program_type_that_does_not_fit_the_attach_kind(bpffs: Path, bpf_objects) -> None:
    proc = bpfshare(
        "load",
        str(bpf_objects["flow_counter"]),
        "--program",
        "count_cgroup_egress",
        "--attach",
        "tc:lo:ingress",
        "--pin-root",
        str(bpffs),
        check=False,
    )
    assert proc.returncode == 1
    assert "tc needs a SchedCls program" in proc.stderr


def test_concurrent_loaders_converge_on_one_map(bpffs: Path, bpf_objects) -> None:
    obj = str(bpf_objects["flow_counter"])

    def load(i: int) -> dict:  # type: ignore[type-arg]
        out = bpfshare(
            "load",
            obj,
            "--program",
            "count_ingress",
            "--pin-root",
            str(bpffs),
            "--pin-dir",
            str(bpffs / f"loader{i}"),
            "--json",
        )
        return json.loads(out.stdout)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(load, range(6)))
    ids = {r["maps"]["shared_counts"]["id"] for r in results}
    assert len(ids) == 1
    assert sum(not r["maps"]["shared_counts"]["reused"] for r in results) == 1
    assert bpftool("map", "show", "pinned", str(bpffs / "shared_counts"))["id"] in ids  # type: ignore[index]


def test_global_data_and_subprograms_load_and_run(bpffs: Path, bpf_objects) -> None:
    from bpfshare.load.loader import load_program
    from bpfshare.object import read_collection

    loaded = load_program(read_collection(bpf_objects["features"]), "count_features", pin_root=bpffs)
    try:
        rodata = next(m for n, m in loaded.maps.items() if n.startswith(".rodata"))
        assert rodata.pin_path is not None and rodata.pin_path.exists()
        assert "." not in rodata.pin_path.name
        info = loaded.program.info()
        assert len(info.map_ids) == len(loaded.maps)
        loaded.program.test_run(bytes(64), repeat=3)
    finally:
        loaded.close()
