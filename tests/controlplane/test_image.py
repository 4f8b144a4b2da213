"""``bpfshare cluster image``: the agent image built from the Dockerfile and imported into a containerd."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane import image as img
from tests.fixtures.kernel import REPO, require_root


def test_reference_from_kustomization() -> None:
    assert img.image_reference(REPO) == "docker.io/bpfshare/agent:0.1.0"


def test_reference_follows_new_name_and_tag(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "base").mkdir(parents=True)
    (tmp_path / "deploy" / "base" / "kustomization.yaml").write_text(
        "images:\n  - name: bpfshare/agent\n    newName: registry.example:5000/x/agent\n    newTag: '9.9'\n"
    )
    assert img.image_reference(tmp_path) == "registry.example:5000/x/agent:9.9"


def test_reference_without_tag_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "base").mkdir(parents=True)
    (tmp_path / "deploy" / "base" / "kustomization.yaml").write_text("images:\n  - name: bpfshare/agent\n")
    with pytest.raises(ControlPlaneError, match="no newTag"):
        img.image_reference(tmp_path)


def test_base_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    key = img.base_key()
    assert img.base_key() == key and key in img.base_image()
    monkeypatch.setattr(img, "BASE_PACKAGES", (*img.BASE_PACKAGES, "curl"))
    assert img.base_key() != key


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[str]:
    """A private containerd (own root, state and socket under tmp_path), killed after the test."""
    require_root()
    if shutil.which("containerd") is None or shutil.which("buildah") is None:
        pytest.skip("needs containerd and buildah (scripts/install.sh installs them)")
    sock = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{sock}.debug"\n[metrics]\n  address = ""\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    )
    with open(tmp_path / "containerd.log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "containerd.log").read_text()
            time.sleep(0.2)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-R", str(tmp_path / "root")], capture_output=True)


@pytest.mark.cluster
def test_image_builds_and_imports(containerd: str) -> None:
    ref = img.image_reference(REPO)
    archive = img.build_image(REPO)
    img.import_image(archive, containerd)
    listed = subprocess.run(
        ["ctr", "--address", containerd, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True
    )
    assert ref in listed.stdout.split(), listed.stdout

    b = img.buildah_args()
    config = subprocess.run(
        [*b, "inspect", "--type", "image", "--format", "{{json .OCIv1.Config.Entrypoint}}", ref],
        capture_output=True,
        text=True,
        check=True,
    )
    assert config.stdout.strip() == '["bpfshare","agent"]'
    name = f"bpfshare-test-{time.monotonic_ns()}"
    subprocess.run([*b, "from", "--name", name, ref], capture_output=True, check=True)
    try:
        script = (
            "import glob, bpfshare, importlib.util; "
            "print(len(glob.glob('/opt/bpfshare/bpf/*.o'))); "
            "print(importlib.util.find_spec('bpfshare.controlplane') is None)"
        )
        out = subprocess.run(
            [*b, "run", "--isolation", "chroot", name, "--", "python3", "-c", script],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        count, no_controlplane = out.stdout.split()
        assert int(count) > 0 and no_controlplane == "True", out.stdout
    finally:
        subprocess.run([*b, "rm", name], capture_output=True)
