"""cgroup v2: root discovery, path resolution, and cgroup_skb programs attached through links."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpfshare.errors import KernelError, TargetNotFoundError
from bpfshare.kernel.abi import BPF_F_ALLOW_MULTI
from bpfshare.kernel.cgroup import CgroupPathError, cgroup2_root, open_cgroup, resolve_cgroup
from bpfshare.kernel.links import Link, LinkType, prog_attach, prog_detach, query_cgroup
from bpfshare.kernel.maps import Map
from bpfshare.kernel.objects import link_ids
from bpfshare.kernel.programs import Program
from bpfshare.types import AttachType, ProgType
from tests.fixtures.netenv import wait_for
from tests.kernel.asm import COUNTER_MAP, counter_spec, read_u64, returns, simple_spec, u32

EGRESS = AttachType.CgroupInetEgress

HYBRID = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
ELSEWHERE = "99 23 0:40 / /run/my\\040cgroups rw - cgroup2 none rw\n"


def test_cgroup2_root_discovery() -> None:
    assert cgroup2_root(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_root(PURE + HYBRID) == Path("/sys/fs/cgroup")
    assert cgroup2_root(ELSEWHERE) == Path("/run/my cgroups")
    with pytest.raises(TargetNotFoundError, match="no cgroup v2"):
        cgroup2_root("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n")


def test_resolve_relative_to_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert resolve_cgroup("/", root) == root
    assert resolve_cgroup("", root) == root
    assert resolve_cgroup("/a/b", root) == root / "a" / "b"
    assert resolve_cgroup("a/b/", root) == root / "a" / "b"
    with pytest.raises(CgroupPathError, match=r"must not contain '\.\.'"):
        resolve_cgroup("/a/../../etc", root)
    with pytest.raises(CgroupPathError, match="outside the cgroup v2 root"):
        resolve_cgroup("/escape", root)
    with pytest.raises(TargetNotFoundError, match="'/nope' not found"):
        resolve_cgroup("/nope", root)


@pytest.mark.kernel
def test_real_root_and_missing_cgroup() -> None:
    root = cgroup2_root()
    assert (root / "cgroup.procs").exists()
    with pytest.raises(TargetNotFoundError, match="relative to the cgroup v2 root"):
        open_cgroup("/bpfshare-does-not-exist")
    with pytest.raises(CgroupPathError):
        open_cgroup("/..")


def _count_prog(counter: Map, name: str) -> Program:
    spec = counter_spec(ProgType.CgroupSkb, EGRESS, ret=1, name=name)
    return Program.load(spec, spec.instructions_with_fds({"counter": counter.fd}))


@pytest.mark.kernel
def test_link_pin_update_detach(cgroup_dir: Path, bpffs: Path) -> None:
    rel = "/" + cgroup_dir.name
    allow = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="allow")
    with Program.load(allow, returns(1)) as first, Program.load(allow, returns(1), name="allow2") as second:
        with open_cgroup(rel) as cg:
            link = Link.create(first, int(cg), EGRESS)
        with link:
            info = link.info()
            assert info.type is LinkType.Cgroup and info.attach_type is EGRESS
            assert info.prog_id == first.info().id
            assert info.cgroup_id == os.stat(cgroup_dir).st_ino
            assert info.id in set(link_ids())
            link.pin(bpffs / "link")
        # Pinned: the attachment survives our fd.
        with open_cgroup(resolve_cgroup(rel)) as cg:
            assert query_cgroup(int(cg), EGRESS) == [first.info().id]
        with Link.from_pin(bpffs / "link") as pinned:
            link_id = pinned.info().id
            pinned.update(second)
            assert pinned.info().prog_id == second.info().id and pinned.info().id == link_id
            with pytest.raises(KernelError) as exc:
                pinned.update(first, old_prog=first)  # compare-and-swap against a stale program
            assert exc.value.errno == errno.EPERM
            pinned.update(first, old_prog=second)
            assert pinned.info().prog_id == first.info().id
            with open_cgroup(rel) as cg:
                assert query_cgroup(int(cg), EGRESS) == [first.info().id]
            pinned.detach()
            with open_cgroup(rel) as cg:
                assert query_cgroup(int(cg), EGRESS) == []
        with Link.from_id(link_id) as by_id:  # still pinned, now defunct
            assert by_id.info().id == link_id


@pytest.mark.kernel
def test_legacy_attach_and_query(cgroup_dir: Path) -> None:
    allow = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS)
    with Program.load(allow, returns(1)) as prog, open_cgroup(cgroup_dir) as cg:
        prog_attach(int(cg), prog.fd, EGRESS, BPF_F_ALLOW_MULTI)
        assert query_cgroup(int(cg), EGRESS) == [prog.info().id]
        assert prog.info().id in query_cgroup(int(cg), EGRESS, effective=True)
        prog_detach(int(cg), prog.fd, EGRESS)
        assert query_cgroup(int(cg), EGRESS) == []


SENDER = """
import os, socket, sys
if sys.argv[1] != "-":  # join the cgroup first: a socket belongs to its creator's cgroup
    with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    try:
        s.sendto(b"bpfshare", ("127.0.0.1", 9))
    except OSError:
        pass
"""


@pytest.mark.kernel
def test_traffic_from_the_cgroup_is_counted(cgroup_dir: Path) -> None:
    with (
        Map.create(COUNTER_MAP) as counter,
        _count_prog(counter, "count_egress") as prog,
        open_cgroup(cgroup_dir) as cg,
        Link.create(prog, int(cg), EGRESS),
    ):
        subprocess.run([sys.executable, "-c", SENDER, str(cgroup_dir), "10"], check=True, timeout=30)
        assert wait_for(lambda: read_u64(counter.lookup(u32(0))) >= 10), read_u64(counter.lookup(u32(0)))
        seen = read_u64(counter.lookup(u32(0)))
        # Traffic from outside the cgroup is not counted.
        subprocess.run([sys.executable, "-c", SENDER, "-", "5"], check=True, timeout=30)
        assert read_u64(counter.lookup(u32(0))) == seen


# -- refusals name the cgroup and the cause ------------------------------------------------------


def _attach_through_the_loader(prog: Program, cgroup: Path, pin_dir: Path) -> str:
    """attach_program on ``cgroup`` (its path relative to the root) must fail: the message."""
    from bpfshare.api.targets import CgroupTarget
    from bpfshare.errors import BpfshareError
    from bpfshare.load.attach import attach_program

    rel = "/" + str(cgroup.relative_to(cgroup2_root()))
    spec = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="ours")
    with pytest.raises(BpfshareError) as exc:
        attach_program(prog, spec, CgroupTarget(rel, "egress"), pin_dir)
    assert not list((pin_dir / "links").glob("*")), "a refused attach left a pin"
    message = str(exc.value)
    assert " fd " not in message
    return message


@pytest.mark.kernel
def test_an_exclusive_program_of_another_tool_is_named_not_replaced(cgroup_dir: Path, bpffs: Path) -> None:
    """Another tool's program attached without BPF_F_ALLOW_MULTI (bpftool's default): EPERM,
    which means "exclusive here", not "capabilities"; it stays where it is."""
    from bpfshare.kernel.abi import BPF_F_ALLOW_OVERRIDE

    rel = "/" + cgroup_dir.name
    allow = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="foreign")
    with Program.load(allow, returns(1)) as foreign, Program.load(allow, returns(1), name="ours") as ours:
        for flags, how in ((0, "exclusively"), (BPF_F_ALLOW_OVERRIDE, "with BPF_F_ALLOW_OVERRIDE")):
            with open_cgroup(cgroup_dir) as cg:
                prog_attach(int(cg), foreign.fd, EGRESS, flags)
            try:
                message = _attach_through_the_loader(ours, cgroup_dir, bpffs / "prog")
                assert message.startswith(
                    f"cgroup {rel}: another program is attached there {how} (by another tool, without "
                    "BPF_F_ALLOW_MULTI): bpfshare does not replace it (BPF_LINK_CREATE: "
                )
                assert "EPERM" in message
                with open_cgroup(cgroup_dir) as cg:
                    assert query_cgroup(int(cg), EGRESS) == [foreign.info().id]
            finally:
                with open_cgroup(cgroup_dir) as cg:
                    prog_detach(int(cg), foreign.fd, EGRESS)


@pytest.mark.kernel
def test_an_exclusive_program_above_is_named(cgroup_dir: Path, bpffs: Path) -> None:
    from tests.fixtures.netenv import remove_cgroup

    child = cgroup_dir / "child"
    child.mkdir()
    allow = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="foreign")
    try:
        with Program.load(allow, returns(1)) as foreign, Program.load(allow, returns(1), name="ours") as ours:
            with open_cgroup(cgroup_dir) as cg:
                prog_attach(int(cg), foreign.fd, EGRESS)
            try:
                message = _attach_through_the_loader(ours, child, bpffs / "prog")
            finally:
                with open_cgroup(cgroup_dir) as cg:
                    prog_detach(int(cg), foreign.fd, EGRESS)
        assert message.startswith(
            f"cgroup /{cgroup_dir.name}/child: cgroup /{cgroup_dir.name} above it has a program attached "
            "exclusively (by another tool, without BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI), which forbids "
            "programs in the cgroups below: bpfshare does not replace it"
        )
    finally:
        remove_cgroup(child, cgroup2_root())


@pytest.mark.kernel
def test_the_kernels_64_program_limit_is_named(cgroup_dir: Path, bpffs: Path) -> None:
    specs = [simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name=f"p{i}") for i in range(65)]
    programs = [Program.load(s, returns(1)) for s in specs]
    links: list[Link] = []
    try:
        with open_cgroup(cgroup_dir) as cg:
            links = [Link.create(p, int(cg), EGRESS) for p in programs[:64]]
        message = _attach_through_the_loader(programs[64], cgroup_dir, bpffs / "prog")
        assert message.startswith(
            f"cgroup /{cgroup_dir.name} already holds 64 programs for egress, the kernel's limit (BPF_LINK_CREATE: "
        )
        assert "E2BIG" in message
    finally:
        for link in links:
            link.close()
        for prog in programs:
            prog.close()


@pytest.mark.kernel
def test_link_create_names_the_cgroup_by_path_not_fd(cgroup_dir: Path) -> None:
    """Without a label from the caller, the cgroup is named relative to the root, from the fd."""
    allow = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="foreign")
    with (
        Program.load(allow, returns(1)) as foreign,
        Program.load(allow, returns(1), name="ours") as ours,
        open_cgroup(cgroup_dir) as cg,
    ):
        prog_attach(int(cg), foreign.fd, EGRESS)
        try:
            with pytest.raises(KernelError) as exc:
                Link.create(ours, int(cg), EGRESS)
        finally:
            prog_detach(int(cg), foreign.fd, EGRESS)
    assert str(exc.value).startswith(f"cgroup /{cgroup_dir.name}: another program is attached there exclusively")
    assert exc.value.errno == errno.EPERM


@pytest.mark.kernel
def test_a_deep_cgroup_path_gets_a_link_pin_that_fits(cgroup_dir: Path, bpffs: Path) -> None:
    """A cgroup deep enough that its key, spelled out, overflows NAME_MAX (ENAMETOOLONG before):
    attached through a hashed pin name, and found again by it (the link updated, not doubled)."""
    from bpfshare.api.targets import CgroupTarget
    from bpfshare.load.attach import attach_program, is_hashed_link_pin, link_pin_path, link_pin_target
    from tests.fixtures.netenv import remove_cgroup

    levels = [cgroup_dir / ("d" * 60)]
    for _ in range(3):
        levels.append(levels[-1] / ("d" * 60))
    deep = levels[-1]
    target = CgroupTarget("/" + str(deep.relative_to(cgroup2_root())), "egress")
    pin_dir = bpffs / "prog"
    spec = simple_spec(ProgType.CgroupSkb, returns(1), EGRESS, name="ours")
    try:
        deep.mkdir(parents=True)
        with Program.load(spec, returns(1)) as first, Program.load(spec, returns(1), name="ours2") as second:
            attached = attach_program(first, spec, target, pin_dir)
            pin = link_pin_path(pin_dir, target)
            assert attached.pin_path == pin and pin.exists() and is_hashed_link_pin(pin.name)
            again = attach_program(second, spec, target, pin_dir)  # an upgrade: the same link, updated
            assert again.link_id == attached.link_id
            with open_cgroup(deep) as cg:
                assert query_cgroup(int(cg), EGRESS) == [second.info().id]
            assert [p.name for p in (pin_dir / "links").iterdir()] == [pin.name]
            assert link_pin_target(pin.name, [CgroupTarget("/", "egress"), target]) == target
            pin.unlink()  # the last reference: detached (the kernel releases the link asynchronously)
            with open_cgroup(deep) as cg:
                assert wait_for(lambda: query_cgroup(int(cg), EGRESS) == []), "still attached after unpinning"
    finally:
        for level in reversed(levels):
            if level.exists():
                remove_cgroup(level, cgroup2_root())


def test_cli_paths_absolute_inside_the_mount_or_relative_to_it(tmp_path: Path) -> None:
    """The CLI's cgroup:DIR:TYPE takes the path bpftool users write (absolute, inside the mount)
    as well as one relative to the root; a path elsewhere is refused naming the mount."""
    from bpfshare.kernel.cgroup import cgroup_relative_path

    root = tmp_path / "cgroup2"
    (root / "a" / "b").mkdir(parents=True)
    assert cgroup_relative_path(f"{root}/a/b", root) == "/a/b"
    assert cgroup_relative_path(f"{root}//a/./b/", root) == "/a/b"
    assert cgroup_relative_path(str(root), root) == "/"
    assert cgroup_relative_path(f"{root}/", root) == "/"
    assert cgroup_relative_path(f"{root}/not-yet", root) == "/not-yet"  # inside: resolved (and refused) later
    assert cgroup_relative_path("/a/b", root) == "/a/b"  # relative to the root, as resources say it
    assert cgroup_relative_path("a/b", root) == "a/b"
    assert cgroup_relative_path("/", root) == "/"
    assert cgroup_relative_path("/kubepods-nope/x", root) == "/kubepods-nope/x"  # "not found" later, as before
    for outside in (f"{tmp_path}/elsewhere", "/sys/fs/cgroup-nope/x", "/proc/1"):
        with pytest.raises(CgroupPathError) as exc:
            cgroup_relative_path(outside, root)
        assert str(exc.value) == (
            f"cgroup path {outside!r} is outside the cgroup v2 mount {root}: give a path inside it ({root}/...) "
            "or one relative to it"
        )
    with pytest.raises(CgroupPathError, match=r"must not contain '\.\.'"):
        cgroup_relative_path(f"{root}/a/../../x", root)


@pytest.mark.kernel
def test_cli_paths_on_this_node(cgroup_dir: Path) -> None:
    from bpfshare.kernel.cgroup import cgroup_relative_path

    root = cgroup2_root()  # discovered: /sys/fs/cgroup/unified on a hybrid node, /sys/fs/cgroup on pure v2
    assert cgroup_relative_path(str(cgroup_dir)) == f"/{cgroup_dir.name}"
    assert cgroup_relative_path(f"/{cgroup_dir.name}") == f"/{cgroup_dir.name}"
    if root != Path("/sys/fs/cgroup"):
        with pytest.raises(CgroupPathError, match=f"outside the cgroup v2 mount {root}"):
            cgroup_relative_path(f"/sys/fs/cgroup/{cgroup_dir.name}")
