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


# The build-and-import test against a private containerd is not here yet: the build fails in pip
# (PyPI's TLS is re-signed by a local CA the debootstrapped base does not trust). See the issue note.
