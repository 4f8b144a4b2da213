"""How the agent and the controller reach the API server: one credential source for kopf and the
kubernetes client, and the backoff that outlives an API server outage.

Both drivers use it; neither imports the other (tests/logic/test_layers.py).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader

from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.credentials")

# Where a pod's service-account token and the cluster's CA are mounted (the kubernetes client's default).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiCredentials:
    """The agent's one way into the API server, shared by its two clients.

    Loaded once, the way the kubernetes client loads it: in a pod, the service account (token file, CA,
    ``KUBERNETES_SERVICE_HOST``/``PORT``); elsewhere the kubeconfig (``$KUBECONFIG`` or ~/.kube/config).
    The kubernetes client (writes, events, the initial lists, the Node watch) uses this
    ``Configuration``; kopf (the watches of BpfMaps and BpfPrograms) gets the same server, CA, client
    certificate and token through its login handler, which
    reads them from this ``Configuration`` each time kopf logs in. kopf's own login methods, which would
    load the credentials a second time, are not registered.

    Projected service-account tokens rotate: kubelet writes a new token into the file once 80% of the
    old one's lifetime has passed. The kubernetes client re-reads the file when a minute has passed
    since it last did (its refresh hook, which ``get_api_key_with_prefix`` runs), so writes always send
    a current token. kopf keeps a token until the connection info expires or a request gets 401; the
    login handler sets the expiration from the token's own claims (see :func:`relogin_time`), so kopf
    logs in again, and so reads the rotated token, before the old one is refused.
    """

    def __init__(self, configuration: client.Configuration) -> None:
        self.configuration = configuration

    @classmethod
    def load(
        cls, *, environ: Mapping[str, str] = os.environ, service_account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> ApiCredentials:
        """In a pod, its service account; else the kubeconfig (``$KUBECONFIG``, else ~/.kube/config)."""
        configuration = client.Configuration()
        try:
            InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=environ,
            ).load_and_set(configuration)
        except config.ConfigException as in_cluster:
            try:
                config.load_kube_config(config_file=environ.get("KUBECONFIG"), client_configuration=configuration)
            except (config.ConfigException, OSError) as kubeconfig:
                raise BpfshareError(
                    f"no credentials for the API server: not in a pod ({in_cluster}) and no usable kubeconfig "
                    f"({kubeconfig}); set KUBECONFIG"
                ) from None
        if getattr(configuration, "tls_server_name", None):
            log.warning("the kubeconfig's tls-server-name applies to writes only: kopf's watches verify the host")
        return cls(configuration)

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(self.configuration)

    def connection_info(self, *, trust_env: bool = False, now: datetime | None = None) -> kopf.ConnectionInfo:
        """kopf's view of these credentials, with the current token."""
        cfg = self.configuration
        # This runs the refresh hook (which re-reads a rotated token file). The value is the whole
        # Authorization header ("bearer <token>", "Basic <user:password>"), or None without a token.
        header = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        scheme: str | None
        scheme, _, token = (header or "").strip().partition(" ")
        if not token:  # no scheme given: a bare bearer token, or nothing
            scheme, token = ("Bearer", scheme) if scheme else (None, "")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token or None,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            proxy_url=cfg.proxy,
            trust_env=trust_env,
            expiration=relogin_time(token, now or datetime.now(UTC)) if token else None,
        )


RELOGIN_FRACTION = 0.85  # of a token's lifetime: kubelet has written the next one at 80%
MIN_RELOGIN_DELAY = timedelta(minutes=1)


def relogin_time(token: str, now: datetime) -> datetime | None:
    """When kopf should log in again to pick up a rotated service-account token; None if never.

    From the token's claims (a JWT; the API server checks the signature, this only reads the times):
    85% of its lifetime, or ``kubernetes.io.warnafter`` if sooner (the API server gives pods tokens that
    it accepts for a year while it expects a fresh one after ``warnafter``). Not sooner than a minute
    from now, so that a token that was not rotated in time does not make kopf log in over and over.
    A token that is not a JWT with ``exp`` (a static token, say) has no time: kopf logs in again on 401.
    """
    claims = jwt_claims(token)
    if claims is None or not isinstance(claims.get("exp"), int | float):
        return None
    expires = float(claims["exp"])
    issued = claims.get("iat")
    if isinstance(issued, int | float) and issued < expires:
        at = issued + RELOGIN_FRACTION * (expires - issued)
    else:
        at = expires - MIN_RELOGIN_DELAY.total_seconds()
    warn_after = (claims.get("kubernetes.io") or {}).get("warnafter")
    if isinstance(warn_after, int | float):
        at = min(at, float(warn_after))
    return max(datetime.fromtimestamp(at, UTC), now + MIN_RELOGIN_DELAY)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified; None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # bad base64, bad UTF-8 or bad JSON
        return None
    return claims if isinstance(claims, dict) else None


class EndlessBackoff:
    """0.5, 1, 2, 3, then 5 seconds forever; iterable afresh for every request (so not Sized)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain([0.5, 1.0, 2.0, 3.0], itertools.repeat(5.0))
