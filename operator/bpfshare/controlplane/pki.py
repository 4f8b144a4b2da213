"""Credentials of the local control plane: service-account key, static tokens, kubeconfig."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bpfshare.controlplane import ControlPlaneError

ADMIN_USER = "bpfshare-admin"
ADMIN_GROUP = "system:masters"
UNPRIVILEGED_USER = "bpfshare-nobody"  # authenticated, but no RBAC binding grants it anything

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def new_token() -> str:
    return secrets.token_hex(24)


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def write_token_file(path: Path, admin_token: str, unprivileged_token: str) -> None:
    """kube-apiserver's --token-auth-file: ``token,user,uid,"group1,group2"``."""
    write_private(
        path,
        f'{admin_token},{ADMIN_USER},{ADMIN_USER},"{ADMIN_GROUP}"\n'
        f"{unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n",
    )


def write_service_account_key(path: Path) -> None:
    """An RSA key that signs (and, as a private key, also verifies) service-account tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)


def serving_ca(cert_file: Path) -> str:
    """The CA that signed kube-apiserver's self-generated serving certificate.

    With ``--cert-dir`` and no certificate given, kube-apiserver writes ``apiserver.crt`` holding its
    serving certificate followed by the self-signed CA that issued it.
    """
    certs: list[str] = _PEM_CERT.findall(cert_file.read_text())
    if not certs:
        raise ControlPlaneError(f"no certificate in {cert_file}")
    return certs[-1] if certs[-1].endswith("\n") else certs[-1] + "\n"


def kubeconfig(server: str, ca_file: Path, token: str, user: str = ADMIN_USER) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "bpfshare", "cluster": {"server": server, "certificate-authority": str(ca_file)}},
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "bpfshare", "context": {"cluster": "bpfshare", "user": user}}],
        "current-context": "bpfshare",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def node_token_line(token: str, node: str) -> str:
    """The kubelet's identity in the token file: ``system:node:<name>`` in ``system:nodes``, which the
    Node authorizer and the NodeRestriction admission plugin know as that node."""
    return f'{token},system:node:{node},system:node:{node},"system:nodes"\n'


def write_client_ca_and_cert(directory: Path, common_name: str, organization: str) -> tuple[Path, Path, Path]:
    """A CA and one client certificate it signed (``CN=common_name, O=organization``): kube-apiserver
    presents it to the kubelet (``--kubelet-client-certificate``), which trusts the CA
    (``authentication.x509.clientCAFile``). Returns (ca.crt, client.crt, client.key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bpfshare-kubelet-client-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "kubelet-client-ca.crt", directory / "kubelet-client.crt", directory / "kubelet-client.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        paths[2],
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return paths
