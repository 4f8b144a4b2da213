"""The container image's build and install steps (scripts/image-build.sh, which the Dockerfile RUNs),
run on this machine into temporary directories: there is no container engine here, so this is what
keeps the Dockerfile's steps working. Also the init container's bpffs mount script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO
from tests.fixtures.kernel import require_root

SCRIPT = REPO / "scripts" / "image-build.sh"


def step(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, f"image-build.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage's output (/out in the Dockerfile): compiled objects and the wheel."""
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    out = tmp_path_factory.mktemp("image-out")
    step("bpf", str(out))
    step("wheel", str(out / "wheels"), PYTHON=sys.executable)
    return out


def test_bpf_step_builds_every_example_object_without_touching_the_tree(image_root: Path) -> None:
    objects = sorted(p.name for p in (image_root / "opt" / "bpfshare" / "bpf").iterdir())
    assert objects == sorted(f"{c.stem}.o" for c in (REPO / "bpf").glob("*.c"))
    for obj in (image_root / "opt" / "bpfshare" / "bpf").iterdir():
        assert obj.read_bytes()[:4] == b"\x7fELF"


def test_wheel_holds_the_package_and_its_entry_point(image_root: Path) -> None:
    wheels = list((image_root / "wheels").glob("bpfshare-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        assert {"bpfshare/agent/metrics.py", "bpfshare/agent/operator.py", "bpfshare/py.typed"} <= names
        assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in whl.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
        assert any("prometheus" in line.lower() for line in requires)
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "bpfshare = bpfshare.cli:main" in whl.read(entry).decode()


def test_install_step_gives_a_working_bpfshare_in_a_fresh_environment(image_root: Path, tmp_path: Path) -> None:
    """The runtime stage's install, into a new virtual environment instead of the image's Python:
    dependencies come from the package index, as in `docker build`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    step("install-wheel", str(image_root / "wheels"), PIP=str(venv / "bin" / "pip"))
    bpfshare = venv / "bin" / "bpfshare"
    objects = image_root / "opt" / "bpfshare" / "bpf"
    report = json.loads(
        subprocess.run(
            [str(bpfshare), "inspect", str(objects / "flow_counter.o")], capture_output=True, text=True, check=True
        ).stdout
    )
    assert {p["name"] for p in report["programs"]} >= {"count_ingress"}
    assert "shared_counts" in {m["name"] for m in report["maps"]}
    legacy = json.loads(
        subprocess.run(
            [str(bpfshare), "inspect", str(objects / "cgroup_counter_mapdef.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert {m["name"]: m["style"] for m in legacy["maps"]}["shared_counts"] == "libbpf-legacy"
    help_text = subprocess.run([str(bpfshare), "agent", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--metrics" in help_text and "--liveness" in help_text
    # The installed package is the wheel's, not this checkout's.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bpfshare, prometheus_client, kopf; print(bpfshare.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv))


@pytest.mark.parametrize("which", ["builder-deps", "runtime-deps"])
def test_apt_steps_name_packages_that_exist(which: str) -> None:
    """apt-get -s (simulate) resolves the packages against this Debian's lists (the image's base is
    Debian bookworm too) without installing anything."""
    if shutil.which("apt-get") is None:
        pytest.skip("not a Debian system")
    step(which, APT_GET="apt-get -s", APT_UPDATE="0")


def test_apt_step_fails_on_a_missing_package(tmp_path: Path) -> None:
    """The simulation can fail: a fake apt-get that refuses shows the step stops on apt errors."""
    fake = tmp_path / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    fake.chmod(0o755)
    proc = subprocess.run(
        [str(SCRIPT), "runtime-deps"],
        capture_output=True,
        text=True,
        env={**os.environ, "APT_GET": str(fake), "APT_UPDATE": "0"},
    )
    assert proc.returncode == 100 and "Unable to locate" in proc.stderr


def test_mount_bpffs_script_mounts_once_and_is_idempotent() -> None:
    require_root()
    target = Path(tempfile.mkdtemp(prefix="bpfshare-mount-test-"))
    script = REPO / "scripts" / "mount-bpffs.sh"
    try:
        first = subprocess.run([str(script), str(target)], capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("mounted bpffs")
        fstype = subprocess.run(["stat", "-f", "-c", "%T", str(target)], capture_output=True, text=True).stdout
        assert fstype.strip() == "bpf_fs"
        second = subprocess.run([str(script), str(target)], capture_output=True, text=True)
        assert second.returncode == 0 and second.stdout.startswith("bpffs already mounted")
        mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {target} " in line]
        assert len(mounts) == 1  # not mounted twice
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
        target.rmdir()
