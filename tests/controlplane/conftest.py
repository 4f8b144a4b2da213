"""Tests of the local control plane and the CRDs, against a real etcd + kube-apiserver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bpfshare.controlplane.run import ControlPlane

# control_plane_bin_dir, control_plane and crds come from tests/fixtures/cluster.py, which
# tests/conftest.py registers in pytest_plugins (one instance per session for every test directory).


@pytest.fixture
def name() -> str:
    """A unique object name, so that tests sharing the session's control plane never collide."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def custom(crds: ControlPlane) -> Iterator[Any]:
    """A ``kubernetes.client.CustomObjectsApi`` as the admin user."""
    from kubernetes import client

    with crds.api_client() as api_client:
        yield client.CustomObjectsApi(api_client)
