"""The cgroup v2 root is read from mountinfo once and kept while statfs(2) says it still holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.kernel import cgroup, objects


def test_the_kept_root_holds_until_it_stops_being_cgroup2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "cg-a", tmp_path / "cg-b"
    first.mkdir()
    second.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"99 23 0:40 / {first} rw - cgroup2 none rw\n")
    cgroup2 = {first}
    reads: list[None] = []
    real_mounts = cgroup.cgroup2_mounts

    def counting_mounts(text: str | None = None) -> list[Path]:
        reads.append(None)
        return real_mounts(text)

    monkeypatch.setattr(cgroup, "MOUNTINFO", str(mountinfo))
    monkeypatch.setattr(cgroup, "PREFERRED_ROOTS", (tmp_path / "not-mounted",))
    monkeypatch.setattr(cgroup, "_kept_root", None)
    monkeypatch.setattr(cgroup, "cgroup2_mounts", counting_mounts)
    monkeypatch.setattr(objects, "fs_magic", lambda p: cgroup.CGROUP2_SUPER_MAGIC if Path(p) in cgroup2 else 0)

    assert cgroup.cgroup2_root() == first
    assert cgroup.cgroup2_root() == first
    assert len(reads) == 1, "a root that still is cgroup2 is not looked up again"

    mountinfo.write_text(f"99 23 0:40 / {second} rw - cgroup2 none rw\n")
    cgroup2 = {second}  # the first one was unmounted, a new one mounted elsewhere
    assert cgroup.cgroup2_root() == second
    assert len(reads) == 2


def test_a_preferred_root_that_becomes_cgroup2_wins_over_the_kept_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preferred, elsewhere = tmp_path / "sys-fs-cgroup", tmp_path / "elsewhere"
    preferred.mkdir()
    elsewhere.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"99 23 0:40 / {elsewhere} rw - cgroup2 none rw\n")
    cgroup2 = {elsewhere}
    monkeypatch.setattr(cgroup, "MOUNTINFO", str(mountinfo))
    monkeypatch.setattr(cgroup, "PREFERRED_ROOTS", (preferred,))
    monkeypatch.setattr(cgroup, "_kept_root", None)
    monkeypatch.setattr(objects, "fs_magic", lambda p: cgroup.CGROUP2_SUPER_MAGIC if Path(p) in cgroup2 else 0)
    assert cgroup.cgroup2_root() == elsewhere

    mountinfo.write_text(
        f"99 23 0:40 / {elsewhere} rw - cgroup2 none rw\n100 23 0:41 / {preferred} rw - cgroup2 none rw\n"
    )
    cgroup2 = {elsewhere, preferred}
    assert cgroup.cgroup2_root() == preferred


def test_an_explicit_mountinfo_is_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "_kept_root", None)
    assert cgroup.cgroup2_root("99 23 0:40 / /run/x rw - cgroup2 none rw\n") == Path("/run/x")
    assert cgroup._kept_root is None
