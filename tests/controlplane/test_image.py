"""``bpfshare cluster image``: the agent image built from the Dockerfile and imported into a containerd."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane import image as img
from tests.fixtures.kernel import REPO


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


def test_added_cas_go_into_the_base_and_its_key(tmp_path: Path) -> None:
    """A host behind a TLS-inspecting proxy trusts its CA; the base must too, or pip cannot verify PyPI."""
    cas_dir = tmp_path / "cas"
    (cas_dir / "corp").mkdir(parents=True)
    (cas_dir / "corp" / "proxy.crt").write_bytes(b"PEM-1")
    (cas_dir / "README").write_text("not a certificate")
    cas = img.local_cas(cas_dir)
    assert cas == {"corp/proxy.crt": b"PEM-1"}
    assert img.local_cas(tmp_path / "missing") == {}

    rootfs = tmp_path / "rootfs"
    img.install_cas(rootfs, cas)
    assert (rootfs / "usr/local/share/ca-certificates/corp/proxy.crt").read_bytes() == b"PEM-1"

    key = img.base_key(cas)
    assert img.base_key({}) != key, "adding a CA must build a new base"
    assert img.base_key({"corp/proxy.crt": b"PEM-2"}) != key, "a renewed CA must build a new base"
