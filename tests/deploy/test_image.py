"""The container image's build and install steps (scripts/image-build.sh, which the Dockerfile RUNs),
run on this machine into temporary directories: there is no container engine here, so this is what
keeps the Dockerfile's steps working. Also the init container's bpffs mount script."""

from __future__ import annotations

import fnmatch
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
DEV_EXTRA = ("cryptography", "psutil")  # pyproject.toml's dev extra: the local control plane's packages
DEV_MODULES = ("bpfshare.controlplane", *DEV_EXTRA)

# Run by the image's Python: which of argv's modules are missing, and every module of the installed
# bpfshare imported (any that fails to is a module that needs what the image lacks).
IMPORT_EVERYTHING = """
import importlib, importlib.util, json, pkgutil, sys
import bpfshare
missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
imported, failed = [], {}
for module in pkgutil.walk_packages(bpfshare.__path__, "bpfshare."):
    if module.name == "bpfshare.__main__":  # runs the command line
        continue
    try:
        importlib.import_module(module.name)
        imported.append(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
print(json.dumps({"missing": missing, "imported": imported, "failed": failed}))
"""


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
        # The local control plane is for development: not in the agent's wheel.
        assert not [n for n in names if n.startswith("bpfshare/controlplane")]
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in whl.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
        assert any("prometheus" in line.lower() for line in requires)
        for package in DEV_EXTRA:  # required only with the dev extra, which the image does not install
            (line,) = [r for r in requires if r.split()[1].lower().startswith(package)]
            assert 'extra == "dev"' in line
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "bpfshare = bpfshare.cli:main" in whl.read(entry).decode()


@pytest.fixture(scope="module")
def image_venv(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime stage's install, into a new virtual environment instead of the image's Python:
    dependencies come from the package index, as in `docker build`."""
    venv = tmp_path_factory.mktemp("image-python") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    step("install-wheel", str(image_root / "wheels"), PIP=str(venv / "bin" / "pip"))
    return venv


def test_install_step_gives_a_working_bpfshare_in_a_fresh_environment(image_root: Path, image_venv: Path) -> None:
    venv = image_venv
    bpfshare = venv / "bin" / "bpfshare"
    objects = image_root / "opt" / "bpfshare" / "bpf"
    report = json.loads(
        subprocess.run(
            [str(bpfshare), "inspect", str(objects / "flow_counter.o")],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
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
            env=clean_env(),
        ).stdout
    )
    assert {m["name"]: m["style"] for m in legacy["maps"]}["shared_counts"] == "libbpf-legacy"
    help_text = subprocess.run(
        [str(bpfshare), "agent", "--help"], capture_output=True, text=True, check=True, env=clean_env()
    ).stdout
    assert "--metrics" in help_text and "--liveness" in help_text
    # The installed package is the wheel's, not this checkout's.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bpfshare, prometheus_client, kopf; print(bpfshare.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    assert where.startswith(str(venv))
    assert_agent_only(venv)


def assert_agent_only(venv: Path) -> None:
    """What the image's Python holds: no control plane and none of the dev extra's packages, every
    module it has imports without them, and the commands that need them say so in one line."""
    python = str(venv / "bin" / "python")
    check = subprocess.run(
        [python, "-c", IMPORT_EVERYTHING, *DEV_MODULES], capture_output=True, text=True, env=clean_env()
    )
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["missing"] == list(DEV_MODULES)  # bpfshare.controlplane, cryptography, psutil
    assert report["failed"] == {}
    assert "bpfshare.agent.operator" in report["imported"] and len(report["imported"]) > 30
    for argv in (["cluster", "up"], ["cluster", "build", "--force"], ["cluster", "--help"], ["demo"]):
        assert_needs_dev_extra(venv / "bin" / "bpfshare", argv)
    overview = subprocess.run(
        [str(venv / "bin" / "bpfshare"), "--help"], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert "(not installed: needs bpfshare[dev])" in overview.stdout


def assert_needs_dev_extra(bpfshare: Path | list[str], argv: list[str], **env: str) -> None:
    command = [str(bpfshare)] if isinstance(bpfshare, Path) else bpfshare
    proc = subprocess.run([*command, *argv], capture_output=True, text=True, env=clean_env(**env), timeout=60)
    assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()  # one line
    assert line.startswith(f"bpfshare: error: `bpfshare {argv[0]}` needs the local control plane")
    assert "install bpfshare[dev]" in line


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's virtual environment or module path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def test_checkout_without_the_dev_extra_says_what_to_install(image_venv: Path) -> None:
    """This checkout's code (bpfshare.controlplane included) in a Python that has bpfshare's dependencies
    but not cryptography and psutil, as after `pip install .` without `[dev]`: the control-plane
    commands name the extra."""
    python = [str(image_venv / "bin" / "python"), "-m", "bpfshare"]
    checkout = str(REPO / "operator")
    found = subprocess.run(
        [python[0], "-c", "import bpfshare.controlplane as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=checkout),
    )
    assert found.stdout.startswith(checkout), found.stderr
    for argv in (["cluster", "up"], ["demo", "--keep"]):
        assert_needs_dev_extra(python, argv, PYTHONPATH=checkout)
    proc = subprocess.run(
        [*python, "cluster", "up"], capture_output=True, text=True, env=clean_env(PYTHONPATH=checkout)
    )
    assert "(no cryptography, psutil)" in proc.stderr


def test_dockerignore_keeps_the_control_plane_out_of_the_build_context() -> None:
    """Docker's rule: of the patterns that match a path or one of its parents, the last one decides
    (a leading ! re-includes)."""
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]

    def excluded(path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for pattern in patterns:
            include = pattern.startswith("!")
            glob = pattern.removeprefix("!").rstrip("/")
            if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
                verdict = not include
        return verdict

    assert not excluded("operator/bpfshare/agent/operator.py")
    assert not excluded("pyproject.toml") and not excluded("bpf/flow_counter.c")
    assert excluded("operator/bpfshare/controlplane/run.py")
    assert not excluded("operator/bpfshare/api/crds/bpfmap.yaml")
    assert excluded("tests/conftest.py") and excluded("operator/bpfshare/__pycache__/cli.cpython-311.pyc")


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


@pytest.mark.kernel  # mounts bpffs: CAP_SYS_ADMIN
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
