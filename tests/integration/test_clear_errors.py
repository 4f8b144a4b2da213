"""Errors that name the cause, end to end through `bpfshare load` on the real kernel: the cgroup and
the holder of a conflict, the kernel's map rules before any map is made, interface names that
cannot exist, pins that are directories or have a '.', and cgroup paths as bpftool users write them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpfshare.kernel.cgroup import cgroup2_root
from tests.fixtures.objects import BpfObjects, CompileBpf

pytestmark = pytest.mark.kernel

BPFSHARE = [sys.executable, "-m", "bpfshare"]


def bpfshare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BPFSHARE, *args], capture_output=True, text=True, timeout=120)


def load(obj: Path, program: str, pin_root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return bpfshare("load", str(obj), "--program", program, "--pin-root", str(pin_root), "--json", *extra)


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a refused command (no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("bpfshare: error: ")
    return line.removeprefix("bpfshare: error: ")


def cgroup_prog_ids(cgroup: Path) -> list[int]:
    """What bpftool (not bpfshare) says runs on the cgroup itself."""
    cmd = ["bpftool", "-j", "cgroup", "show", str(cgroup)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    shown: list[dict[str, int]] = json.loads(out) if out.strip() else []  # nothing attached: no output
    return [p["id"] for p in shown]


def test_an_absolute_cgroup_path_inside_the_mount_is_taken(
    bpf_objects: BpfObjects, bpffs: Path, cgroup_dir: Path
) -> None:
    """`--attach cgroup:/sys/fs/cgroup/.../x:egress`, as bpftool users write it, means /x."""
    proc = load(
        bpf_objects["cgroup_counter_mapdef"], "count_cgroup_egress", bpffs, "--attach", f"cgroup:{cgroup_dir}:egress"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    [attachment] = result["attachments"]
    assert attachment["target"] == f"cgroup:/{cgroup_dir.name}:egress"
    assert cgroup_prog_ids(cgroup_dir) == [result["programId"]]


def test_a_cgroup_path_outside_the_mount_is_refused_naming_it(
    bpf_objects: BpfObjects, bpffs: Path, tmp_path: Path
) -> None:
    proc = load(
        bpf_objects["cgroup_counter_mapdef"], "count_cgroup_egress", bpffs, "--attach", f"cgroup:{tmp_path}:egress"
    )
    root = cgroup2_root()
    assert refused(proc) == (
        f"cgroup path {str(tmp_path)!r} is outside the cgroup v2 mount {root}: give a path inside it ({root}/...) "
        "or one relative to it"
    )
    assert not (bpffs / "loads").exists()  # refused before anything was loaded


FOREIGN = """
SEC("cgroup_skb/egress")
int foreign_allow(struct __sk_buff *skb)
{
    return 1;
}
char _license[] SEC("license") = "GPL";
"""


def test_a_program_bpftool_attached_exclusively_is_named_and_kept(
    bpf_objects: BpfObjects, compile_bpf: CompileBpf, bpffs: Path, cgroup_dir: Path
) -> None:
    """bpftool attaches without BPF_F_ALLOW_MULTI by default: the kernel's EPERM then means
    "exclusive here", which the message says, naming the cgroup; the foreign program stays."""
    foreign = bpffs / "foreign"
    subprocess.run(["bpftool", "prog", "load", str(compile_bpf(FOREIGN)), str(foreign)], check=True)
    subprocess.run(["bpftool", "cgroup", "attach", str(cgroup_dir), "egress", "pinned", str(foreign)], check=True)
    try:
        [foreign_id] = cgroup_prog_ids(cgroup_dir)
        proc = load(
            bpf_objects["cgroup_counter_mapdef"],
            "count_cgroup_egress",
            bpffs / "bpfshare",
            "--attach",
            f"cgroup:{cgroup_dir.name}:egress",
        )
        message = refused(proc)
        assert message.startswith(
            f"cgroup /{cgroup_dir.name}: another program is attached there exclusively (by another tool, without "
            "BPF_F_ALLOW_MULTI): bpfshare does not replace it"
        ), message
        assert " fd " not in message
        assert cgroup_prog_ids(cgroup_dir) == [foreign_id]
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(cgroup_dir), "egress", "pinned", str(foreign)], check=False)


BAD_TRIE = """
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 16);
} routes SEC(".maps");

SEC("tc")
int route(struct __sk_buff *skb)
{
    __u32 key = 0;
    return bpf_map_lookup_elem(&routes, &key) ? 1 : 0;
}
char _license[] SEC("license") = "GPL";
"""


def test_a_map_that_breaks_the_kernels_rules_is_named_before_it_is_made(compile_bpf: CompileBpf, bpffs: Path) -> None:
    message = refused(load(compile_bpf(BAD_TRIE), "route", bpffs))
    assert message == (
        "creating map 'routes' (LpmTrie, key 4, value 4, max entries 16): LpmTrie needs keySize 5 to 260 (a 4-byte "
        "prefix length, then 1 to 256 bytes of data), not 4; LpmTrie needs the NoPrealloc flag (a trie allocates "
        "its nodes as they are inserted)"
    )


@pytest.mark.parametrize("kind", ["tc", "tcx"])
def test_an_interface_name_over_15_characters_is_too_long(bpf_objects: BpfObjects, bpffs: Path, kind: str) -> None:
    name = "eth0-uplink-0001"  # 16 characters
    proc = load(bpf_objects["flow_counter"], "count_ingress", bpffs, "--attach", f"{kind}:{name}:ingress")
    assert refused(proc) == (f"interface {name!r} is 16 characters, longer than the kernel's 15 characters (IFNAMSIZ)")
    assert not (bpffs / "loads").exists()


def test_binding_a_directory_or_a_dotted_path_is_explained(bpf_objects: BpfObjects, bpffs: Path) -> None:
    (bpffs / "tc" / "globals").mkdir(parents=True)
    obj = bpf_objects["flow_counter"]
    directory = refused(load(obj, "count_ingress", bpffs, "--map", f"shared_counts={bpffs}/tc/globals"))
    assert directory.endswith(
        f"BPF_OBJ_GET: Permission denied (EACCES) ({bpffs}/tc/globals is a directory, not a pinned map (name the "
        "pin inside it))"
    ), directory
    dotted = refused(load(obj, "count_ingress", bpffs, "--map", f"shared_counts={bpffs}/tc.v1/shared_counts"))
    assert dotted.endswith(f"(bpffs refuses names containing '.': 'tc.v1' in {bpffs})"), dotted


def test_a_deep_cgroup_path_is_attached_through_a_pin_that_fits(
    bpf_objects: BpfObjects, bpffs: Path, cgroup_dir: Path
) -> None:
    from tests.fixtures.netenv import remove_cgroup

    levels = [cgroup_dir / ("level-" + "d" * 54)]
    for _ in range(3):
        levels.append(levels[-1] / ("level-" + "d" * 54))
    try:
        levels[-1].mkdir(parents=True)
        proc = load(
            bpf_objects["cgroup_counter_mapdef"],
            "count_cgroup_egress",
            bpffs,
            "--attach",
            f"cgroup:{levels[-1]}:egress",
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        [attachment] = result["attachments"]
        assert Path(attachment["pinPath"]).name.startswith("cgroup~")
        assert cgroup_prog_ids(levels[-1]) == [result["programId"]]
        Path(attachment["pinPath"]).unlink()  # detach before the cgroups go
    finally:
        for level in reversed(levels):
            if level.exists():
                remove_cgroup(level, cgroup2_root())
