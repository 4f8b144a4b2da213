"""The agent's one credential source (bpfshare.credentials.ApiCredentials), for both of its API
clients: the kubernetes client (its state objects, events, ConfigMap reads and the watch of its own
Node) and kopf (the watches of BpfMaps and BpfPrograms, through its login handler). Against the real
kube-apiserver, with its static admin token and with real service-account tokens that rotate."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kubernetes import client

from bpfshare.agent.nodewatch import NodeWatch
from bpfshare.controlplane.run import ControlPlane
from bpfshare.credentials import ApiCredentials, jwt_claims, relogin_time
from bpfshare.errors import BpfshareError

REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- when kopf logs in again: pure logic --------------------------------------------------------------


def test_relogin_at_85_percent_of_a_tokens_lifetime() -> None:
    issued = NOW.timestamp()
    token = jwt({"iat": issued, "exp": issued + 3600, "sub": "system:serviceaccount:a:b"})
    assert relogin_time(token, NOW) == at(issued + 0.85 * 3600)


def test_relogin_at_warnafter_for_tokens_the_server_extended() -> None:
    """A pod's token may say it expires in a year while the server wants a new one after an hour."""
    issued = NOW.timestamp()
    claims = {"iat": issued, "exp": issued + 365 * 86400, "kubernetes.io": {"warnafter": issued + 3607}}
    assert relogin_time(jwt(claims), NOW) == at(issued + 3607)


def test_relogin_never_sooner_than_a_minute() -> None:
    """A token that was not rotated in time must not make kopf log in in a loop."""
    issued = NOW.timestamp() - 3000
    token = jwt({"iat": issued, "exp": issued + 3000})  # expires now
    assert relogin_time(token, NOW) == NOW + timedelta(minutes=1)
    assert relogin_time(jwt({"exp": NOW.timestamp() + 600}), NOW) == NOW + timedelta(minutes=9)  # no iat


@pytest.mark.parametrize(
    "token",
    ["3a0f1c9e2b7d4e5f", "a.b.c", "a.!!!.c", jwt({"sub": "no exp"}), jwt({"exp": "tomorrow"}), "e30.WzFd.x"],
)
def test_tokens_without_an_expiry_have_no_relogin_time(token: str) -> None:
    assert relogin_time(token, NOW) is None  # kopf logs in again on 401 only


def test_jwt_claims() -> None:
    assert jwt_claims(jwt({"exp": 5, "iss": "x"})) == {"exp": 5, "iss": "x"}
    assert jwt_claims("not-a-jwt") is None
    assert jwt_claims("e30.WzFd.x") is None  # the payload is a JSON list, not claims


def test_no_credentials_at_all_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BpfshareError, match="no credentials for the API server"):
        ApiCredentials.load(environ={"KUBECONFIG": str(tmp_path / "absent")}, service_account_dir=tmp_path)


# -- both clients, one source, the real API server -----------------------------------------------------


def whoami_kubernetes_client(credentials: ApiCredentials) -> str:
    from kubernetes import client

    with credentials.api_client() as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(REVIEW)
    return str(review.status.user_info.username)


def whoami_kopf(info: kopf.ConnectionInfo) -> str:
    """A request as kopf makes it (its APIContext): an aiohttp session with the connection info's
    headers, TLS context and proxy settings."""

    async def review() -> str:
        connector = aiohttp.TCPConnector(ssl=info.as_ssl_context())
        async with (
            aiohttp.ClientSession(connector=connector, headers=info.as_http_headers(), trust_env=info.trust_env) as s,
            s.post(f"{info.server}/apis/authentication.k8s.io/v1/selfsubjectreviews", json=REVIEW) as response,
        ):
            response.raise_for_status()
            return str((await response.json())["status"]["userInfo"]["username"])

    return asyncio.run(review())


@pytest.mark.cluster
def test_kubeconfig_credentials_serve_both_clients(control_plane: ControlPlane) -> None:
    credentials = ApiCredentials.load(environ={"KUBECONFIG": str(control_plane.kubeconfig)})
    info = credentials.connection_info()
    assert info.server == control_plane.server and info.insecure is False
    assert info.token == control_plane.token and info.expiration is None  # a static token: kopf keeps it
    assert whoami_kubernetes_client(credentials) == whoami_kopf(info) == "bpfshare-admin"
    with credentials.api_client() as api:  # the Node watch's list, through the same client
        assert NodeWatch(client.CoreV1Api(api), "no-such-node", lambda *_: None).list() is None


@pytest.fixture
def service_account(control_plane: ControlPlane) -> Iterator[str]:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "serviceaccount", name, "-n", "default")
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "serviceaccount", name, "-n", "default", "--ignore-not-found", check=False)


def mount_token(directory: Path, token: str) -> None:
    """Replace the token file in one step, as kubelet's atomic writer does."""
    tmp = directory / f".token-{uuid.uuid4().hex}"
    tmp.write_text(token)
    os.replace(tmp, directory / "token")


@pytest.mark.cluster
def test_service_account_token_rotation_reaches_both_clients(
    control_plane: ControlPlane, service_account: str, tmp_path: Path
) -> None:
    """In a pod: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA. kubelet replaces the token
    file; the writes' client re-reads it within a minute, and kopf's next login gets the new one."""

    def token() -> str:
        return control_plane.kubectl(
            "create", "token", service_account, "-n", "default", "--duration=10m"
        ).stdout.strip()

    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    shutil.copy(control_plane.ca_file, mounted / "ca.crt")
    first, second = token(), token()
    assert first != second
    mount_token(mounted, first)
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, "KUBECONFIG": "/nonexistent"}
    credentials = ApiCredentials.load(environ=environ, service_account_dir=mounted)
    user = f"system:serviceaccount:default:{service_account}"

    info = credentials.connection_info()
    assert info.server == control_plane.server and info.token == first
    claims = jwt_claims(first) or {}
    assert info.expiration == at(claims["iat"] + 0.85 * (claims["exp"] - claims["iat"]))  # 8.5 minutes on
    assert whoami_kubernetes_client(credentials) == whoami_kopf(info) == user

    mount_token(mounted, second)
    deadline = time.monotonic() + 90  # the kubernetes client re-reads the file once a minute
    while (info := credentials.connection_info()).token != second:
        assert time.monotonic() < deadline, "the rotated token never reached the login handler"
        time.sleep(1)
    header = credentials.configuration.auth_settings()["BearerToken"]["value"]
    assert header == f"bearer {second}"  # what the writes and the Node watch send
    assert whoami_kubernetes_client(credentials) == whoami_kopf(info) == user
