"""``bpfshare inspect``: JSON for the examples, clear errors for bad input.

Always invoked through the ``bpfshare`` group, never as a bare command: click (>= 8.2) caches a
command's help option from the first context it sees, so a bare invocation would leave ``inspect``
without the group's ``-h`` for every later test in the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpfshare.cli import cli
from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import read_collection
from tests.fixtures.objects import BpfObjects, CompileBpf


def test_inspect_flow_counter(bpf_objects: BpfObjects) -> None:
    path = bpf_objects["flow_counter"]
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["license"] == "GPL"
    assert out["object"] == str(path)
    assert [p["name"] for p in out["programs"]] == [
        "count_ingress",
        "count_egress",
        "count_tcx_ingress",
        "count_cgroup_ingress",
        "count_cgroup_egress",
    ]
    tcx = out["programs"][2]
    assert {k: tcx[k] for k in ("section", "type", "attachType", "maps")} == {
        "section": "tcx/ingress",
        "type": "SchedCls",
        "attachType": "TcxIngress",
        "maps": ["shared_counts"],
    }
    assert out["programs"][0]["attachType"] is None
    assert out["maps"] == [
        {
            "name": "shared_counts",
            "type": "Array",
            "keySize": 4,
            "valueSize": 8,
            "maxEntries": 4,
            "flags": [],
            "pinning": "ByName",
            "style": "btf",
            "section": ".maps",
            "loadable": True,
        }
    ]
    assert all(p["loadable"] and p["reason"] is None for p in out["programs"])


def test_inspect_styles(bpf_objects: BpfObjects) -> None:
    runner = CliRunner()
    expected = {
        "flow_counter_legacy": ("iproute2-legacy", "GlobalNS"),
        "cgroup_counter_mapdef": ("libbpf-legacy", "none"),
        "flow_counter_tc": ("btf", "ByName"),
    }
    for name, (style, pinning) in expected.items():
        result = runner.invoke(cli, ["inspect", "--compact", str(bpf_objects[name])])
        assert result.exit_code == 0, result.output
        assert len(result.output.strip().splitlines()) == 1
        (shared,) = json.loads(result.output)["maps"]
        assert (shared["style"], shared["pinning"]) == (style, pinning)
    legacy = json.loads(runner.invoke(cli, ["inspect", str(bpf_objects["flow_counter_legacy"])]).output)
    assert legacy["maps"][0]["extra"] == {"id": 0, "inner_id": 0, "inner_idx": 0}
    features = json.loads(runner.invoke(cli, ["inspect", str(bpf_objects["features"])]).output)
    rodata = next(m for m in features["maps"] if m["name"] == ".rodata")
    assert (rodata["style"], rodata["flags"], rodata["valueSize"]) == ("global-data", ["RdonlyProg"], 4)


def test_inspect_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["inspect", str(tmp_path / "nope.o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an object")
    result = runner.invoke(cli, ["inspect", str(junk)])
    assert isinstance(result.exception, ObjectError)  # bpfshare.cli.main prints it without a traceback


def bpfshare(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "bpfshare"
    fallback = [sys.executable, "-c", "from bpfshare.cli import main; main()"]
    cmd = [str(script)] if script.exists() else fallback
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def test_inspect_command_line(bpf_objects: BpfObjects, tmp_path: Path) -> None:
    proc = bpfshare("inspect", str(bpf_objects["cgroup_counter_mapdef"]))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(p["name"], p["type"], p["attachType"]) for p in out["programs"]] == [
        ("count_cgroup_ingress", "CgroupSkb", "CgroupInetIngress"),
        ("count_cgroup_egress", "CgroupSkb", "CgroupInetEgress"),
    ]
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF" + bytes(100))
    proc = bpfshare("inspect", str(junk))
    assert proc.returncode == 1
    assert proc.stderr.startswith("bpfshare: error: ") and "Traceback" not in proc.stderr


def test_inspect_reports_each_program(bpf_objects: BpfObjects) -> None:
    """One program's unsupported feature refuses that program (and what needs it), not the object."""
    result = CliRunner().invoke(cli, ["inspect", str(bpf_objects["mixed_object"])])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    programs = {p["name"]: p for p in out["programs"]}
    assert list(programs) == ["count_packets", "cc_init", "odd_one"]
    assert (programs["count_packets"]["loadable"], programs["count_packets"]["reason"]) == (True, None)
    assert programs["count_packets"]["maps"] == ["packets"]
    cc = programs["cc_init"]
    assert (cc["loadable"], cc["type"], cc["section"]) == (False, "StructOps", "struct_ops/cc_init")
    assert cc["reason"].startswith("unsupported: program 'cc_init' (section struct_ops/cc_init): a struct_ops")
    odd = programs["odd_one"]
    assert (odd["loadable"], odd["type"]) == (False, "Unspec")
    assert "section name names no program type" in odd["reason"]
    maps = {m["name"]: m for m in out["maps"]}
    assert maps["packets"]["loadable"] is True
    assert maps["mixed_cc"] == {
        "name": "mixed_cc",
        "section": ".struct_ops",
        "loadable": False,
        "reason": "unsupported: struct_ops maps (section .struct_ops)",
    }


def test_inspect_slots_and_custom_pinning(bpf_objects: BpfObjects) -> None:
    runner = CliRunner()
    out = json.loads(runner.invoke(cli, ["inspect", str(bpf_objects["tail_calls"])]).output)
    jumps = next(m for m in out["maps"] if m["name"] == "jumps")
    assert jumps["slots"] == {"0": "stage_one", "1": "stage_two"}
    out = json.loads(runner.invoke(cli, ["inspect", str(bpf_objects["map_in_map"])]).output)
    outer = next(m for m in out["maps"] if m["name"] == "outer")
    assert outer["slots"] == {"0": "inner_a", "2": "inner_b"}
    out = json.loads(runner.invoke(cli, ["inspect", str(bpf_objects["custom_pinning"])]).output)
    assert out["maps"][0]["pinning"] == "42"  # raw: the node's bpf_pinning file resolves it at load


def test_inspect_ring_buffer_value_type(compile_bpf: CompileBpf) -> None:
    """``__type(value, T)`` on a ring buffer or perf event array documents records: size 0, as libbpf."""
    src = """
    struct event { __u64 a, b; };
    struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096);
             __type(value, struct event); } rb SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
             __type(key, int); __type(value, struct event); } perf SEC(".maps");
    SEC("tc") int p(struct __sk_buff *skb) { return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    result = CliRunner().invoke(cli, ["inspect", str(compile_bpf(src))])
    maps = {m["name"]: m for m in json.loads(result.output)["maps"]}
    assert (maps["rb"]["keySize"], maps["rb"]["valueSize"]) == (0, 0)
    assert (maps["perf"]["keySize"], maps["perf"]["valueSize"]) == (0, 0)


def test_reader_refuses_per_program(bpf_objects: BpfObjects) -> None:
    """The spec itself: what loads in ``programs``/``maps``, what does not beside them with the reason."""
    spec = read_collection(bpf_objects["mixed_object"])
    assert list(spec.programs) == ["count_packets"] and list(spec.maps) == ["packets"]
    assert list(spec.refused_programs) == ["cc_init", "odd_one"]
    assert spec.order == ("count_packets", "cc_init", "odd_one")
    assert spec.program("tc").name == "count_packets"  # by its section, as before
    with pytest.raises(UnsupportedError, match=r"^program 'odd_one' cannot be loaded: unsupported: program 'odd_one'"):
        spec.program("mystery")  # a refused program found by its section says why too
    with pytest.raises(KeyError, match=r"no program 'nope' in the object \(programs: cc_init, count_packets, odd"):
        spec.program("nope")
