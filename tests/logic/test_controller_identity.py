"""The controller's name in kopf's peering, whatever uid it runs as."""

from __future__ import annotations

import os

import pytest

from bpfshare.controller.operator import peering_identity


def test_identity_is_the_pod_name_from_the_downward_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "bpfshare-controller-7cc9654995-kr4xp")
    assert peering_identity() == "bpfshare-controller-7cc9654995-kr4xp"


def test_a_uid_without_a_passwd_entry_still_gets_an_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's controller uid (65532) has no passwd entry: kopf's own fallback raised KeyError there."""
    import getpass

    def no_user() -> str:
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_user)
    assert peering_identity().startswith(f"uid{os.getuid()}@")
