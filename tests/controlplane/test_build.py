"""Pure logic of the build and of process bookkeeping: no Go, no control plane."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bpfshare.controlplane import ControlPlaneError, paths, pki, procs, run
from bpfshare.controlplane import build as b


def test_k8s_go_mod_pins_every_staging_module_to_the_matching_version() -> None:
    text = b.k8s_go_mod()
    assert "module bpfshare.local/k8s\n" in text
    assert "\ngo 1.24\n" in text
    assert "require k8s.io/kubernetes v1.34.4\n" in text
    replaces = re.findall(r"^\tk8s\.io/(\S+) => k8s\.io/(\S+) (\S+)$", text, re.M)
    assert len(replaces) == 31 == len(b.STAGING_MODULES)
    assert {m for m, _, _ in replaces} == set(b.STAGING_MODULES)
    assert all(m == target and version == "v0.34.4" for m, target, version in replaces)
    for tool in ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"):
        assert f"\t{tool}\n" in text


def test_etcd_go_mod() -> None:
    text = b.etcd_go_mod()
    assert "require go.etcd.io/etcd/server/v3 v3.6.16\n" in text
    assert "tool go.etcd.io/etcd/server/v3\n" in text


def test_staging_version_follows_the_kubernetes_version() -> None:
    assert b.Versions(kubernetes="v1.35.2").staging == "v0.35.2"
    assert "k8s.io/client-go => k8s.io/client-go v0.35.2" in b.k8s_go_mod(b.Versions(kubernetes="v1.35.2"))
    with pytest.raises(ControlPlaneError):
        _ = b.Versions(kubernetes="v2.0.0").staging


def test_version_key_changes_with_every_version() -> None:
    base = b.DEFAULT_VERSIONS
    keys = {
        b.version_key(base),
        b.version_key(replace(base, kubernetes="v1.34.5")),
        b.version_key(replace(base, etcd="v3.6.17")),
        b.version_key(replace(base, go_directive="1.25")),
    }
    assert len(keys) == 4
    assert b.version_key(base) == b.version_key(b.Versions())  # and is stable
    assert b.version_key(base).startswith("k8s-v1.34.4-etcd-v3.6.16-")


def test_cache_dirs_honour_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BPFSHARE_CACHE_DIR", raising=False)
    monkeypatch.delenv("BPFSHARE_CLUSTER_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "bpfshare"
    assert b.bin_dir() == tmp_path / "xdg" / "bpfshare" / "controlplane" / b.version_key() / "bin"
    monkeypatch.setenv("BPFSHARE_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_root() == tmp_path / "c"
    assert paths.default_state_dir() == tmp_path / "c" / "cluster"
    monkeypatch.setenv("BPFSHARE_CLUSTER_DIR", str(tmp_path / "s"))
    assert paths.default_state_dir() == tmp_path / "s"


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BPFSHARE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(b, "find_go", lambda: None)
    with pytest.raises(ControlPlaneError, match="Go toolchain"):
        b.ensure_built()
    assert not (tmp_path / "controlplane" / b.version_key()).exists()


def test_a_cache_without_stamp_is_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BPFSHARE_CACHE_DIR", str(tmp_path))
    bins = b.bin_dir()
    bins.mkdir(parents=True)
    for name in b.BINARIES:
        (bins / name).write_text("#!/bin/sh\n")
        (bins / name).chmod(0o755)
    assert not b.is_built()
    (bins.parent / "stamp.json").write_text('{"key": "something-else"}')
    assert not b.is_built()
    (bins.parent / "stamp.json").write_text(f'{{"key": "{b.version_key()}"}}')
    assert b.is_built()
    assert b.ensure_built() == bins  # nothing to do, even without go


def test_process_identity_and_stop(tmp_path: Path) -> None:
    record = procs.launch("sleep", ["/bin/sleep", "60"], tmp_path / "sleep.log")
    try:
        deadline = time.monotonic() + 5
        while not procs.is_ours(record):  # between fork and exec, /proc/PID/exe is still python
            assert time.monotonic() < deadline
            time.sleep(0.02)
        impostor = replace(record, start_time=record.start_time + 1)  # same pid, another process
        assert not procs.is_ours(impostor)
        procs.stop(impostor)
        assert procs.is_ours(record), "stop() must not signal a process it cannot recognise"
        procs.stop(record, grace=5)
        assert not procs.is_ours(record)
    finally:
        subprocess.run(["kill", "-9", str(record.pid)], capture_output=True, check=False)


def test_free_ports_are_distinct() -> None:
    ports = procs.free_ports(5)
    assert len(set(ports)) == 5 and all(p > 0 for p in ports)


def test_free_ports_are_never_handed_out_twice() -> None:
    """Agents started one after the other each ask for a port that nothing binds until the agent
    runs: the kernel would offer a port again, and two agents got the same liveness port."""
    seen: set[int] = set()
    for _ in range(200):
        (port,) = procs.free_ports(1)  # given back to the kernel at once, as for an agent not yet bound
        assert port not in seen
        seen.add(port)


def test_stop_refuses_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    with pytest.raises(ControlPlaneError, match="not a bpfshare control-plane directory"):
        run.stop(tmp_path)
    assert (tmp_path / "precious").read_text() == "keep me"
    assert run.stop(tmp_path / "absent") is False


def test_start_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    with pytest.raises(ControlPlaneError, match="not empty"):
        run.start(tmp_path, tmp_path / "no-bin")
    assert (tmp_path / "precious").read_text() == "keep me"


def test_a_process_whose_binary_was_rebuilt_is_still_recognised(tmp_path: Path) -> None:
    """`cluster build --force` renames and deletes the binaries under running processes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleep = bin_dir / "etcd"
    sleep.write_bytes(Path("/bin/sleep").read_bytes())
    sleep.chmod(0o755)
    record = procs.launch("etcd", [str(sleep), "60"], tmp_path / "etcd.log")
    try:
        deadline = time.monotonic() + 5
        while not procs.is_ours(record):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        bin_dir.rename(tmp_path / "old")
        (tmp_path / "old" / "etcd").unlink()
        assert procs.is_ours(record)
        procs.stop(record, grace=5)
        assert not procs.is_ours(record)
    finally:
        subprocess.run(["kill", "-9", str(record.pid)], capture_output=True, check=False)


def test_start_time_is_the_kernels_clock_ticks_since_boot(tmp_path: Path) -> None:
    """The record keeps field 22 of /proc/PID/stat (unchanged by clock steps), found through psutil."""
    record = procs.launch("sleep", ["/bin/sleep", "60"], tmp_path / "sleep.log")
    try:
        stat = Path(f"/proc/{record.pid}/stat").read_text()
        assert record.start_time == int(stat[stat.rindex(")") + 2 :].split()[19])
        assert procs.ProcessRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    finally:
        procs.stop(record, grace=5)


def test_a_zombie_is_not_ours_and_is_reaped(tmp_path: Path) -> None:
    record = procs.launch("true", ["/bin/true"], tmp_path / "true.log")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{record.pid}/stat").exists() and " Z " not in Path(f"/proc/{record.pid}/stat").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not procs.is_ours(record)
    assert not Path(f"/proc/{record.pid}").exists(), "our exited child is collected, not left a zombie"


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    shell = tmp_path / "stubborn"  # a shell under its own name, as the record names the binary
    shell.write_bytes(Path("/bin/sh").resolve().read_bytes())
    shell.chmod(0o755)
    argv = [str(shell), "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]
    record = procs.launch("stubborn", argv, tmp_path / "stubborn.log")
    try:
        deadline = time.monotonic() + 5
        while "ready" not in (tmp_path / "stubborn.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert procs.is_ours(record)
        started = time.monotonic()
        procs.stop(record, grace=0.5)
        assert not procs.is_ours(record)
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        subprocess.run(["kill", "-9", str(record.pid)], capture_output=True, check=False)


def test_service_account_key_is_a_private_rsa_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = tmp_path / "sa.key"
    pki.write_service_account_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
