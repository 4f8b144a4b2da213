"""``bpfshare cluster up|env|down`` end to end, on a private state directory, and ``start`` idempotence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bpfshare.controlplane import procs, run
from bpfshare.controlplane.run import ControlPlane

pytestmark = pytest.mark.cluster

BPFSHARE = str(Path(sys.executable).with_name("bpfshare"))


def test_start_is_idempotent(control_plane: ControlPlane) -> None:
    again = run.start(control_plane.state_dir, control_plane.bin_dir)
    assert again.server == control_plane.server
    assert again.processes == control_plane.processes


def test_up_env_down(control_plane_bin_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    env = {**os.environ, "BPFSHARE_CLUSTER_DIR": str(state)}

    def bpfshare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BPFSHARE, "cluster", *args], env=env, capture_output=True, text=True, timeout=180)

    try:
        up = bpfshare("up")
        assert up.returncode == 0, up.stderr
        assert "ready at https://127.0.0.1:" in up.stderr
        records = json.loads((state / "state.json").read_text())["processes"]

        # The README's acceptance check, in a shell.
        script = f'eval "$({BPFSHARE} cluster env)" && kubectl get --raw /readyz'
        shell = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.strip() == "ok"

        again = bpfshare("up")
        assert again.returncode == 0 and "already running" in again.stderr
        assert json.loads((state / "state.json").read_text())["processes"] == records

        # A crashed apiserver: `up` notices, cleans up and starts a fresh instance.
        os.kill(records["kube-apiserver"]["pid"], signal.SIGKILL)
        restarted = bpfshare("up")
        assert restarted.returncode == 0, restarted.stderr
        assert "ready at" in restarted.stderr
        new_records = json.loads((state / "state.json").read_text())["processes"]
        assert not procs.is_ours(procs.ProcessRecord.from_json(records["etcd"]))
        records = new_records

        down = bpfshare("down")
        assert down.returncode == 0, down.stderr
        assert not state.exists()
        for record in records.values():
            assert not procs.is_ours(procs.ProcessRecord.from_json(record))

        assert bpfshare("down").returncode == 0  # nothing to do is fine
        env_out = bpfshare("env")
        assert env_out.returncode == 1 and "bpfshare cluster up" in env_out.stderr
    finally:
        if state.exists():
            run.stop(state)


def test_env_output_is_shell_syntax(control_plane: ControlPlane, tmp_path: Path) -> None:
    env = {**os.environ, "BPFSHARE_CLUSTER_DIR": str(control_plane.state_dir)}
    out = subprocess.run([BPFSHARE, "cluster", "env"], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == f"export KUBECONFIG={control_plane.kubeconfig}"
    assert lines[1] == f'export PATH={control_plane.bin_dir}:"$PATH"'
