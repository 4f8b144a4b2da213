"""The pod sandbox ("pause") image, made here: no registry serves registry.k8s.io/pause to this machine.

A pod's sandbox container only holds the pod's namespaces open: a static binary that sleeps until a
signal and reaps nothing does it. It is compiled with the machine's C compiler (static, so the image
needs no libc), packed into an OCI image archive by hand (one layer, one config, one manifest), and
imported into the node's containerd under ``SANDBOX_IMAGE``, which containerd's CRI configuration
names as its sandbox image. The archive is cached per source, like the control-plane binaries.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.paths import cache_root

SANDBOX_IMAGE = "bpfshare.local/pause:1"

PAUSE_C = r"""
/* The pod sandbox: holds the pod's namespaces; exits on SIGINT or SIGTERM, as Kubernetes' pause does. */
#include <signal.h>
#include <unistd.h>
static void leave(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, leave);
    signal(SIGTERM, leave);
    for (;;) pause();
}
"""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_bytes(members: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar of ``{name: (content, mode)}`` with fixed owners and times (reproducible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (content, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(content), mode, 0, 0, 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def oci_archive(binary: bytes, reference: str) -> bytes:
    """An OCI image layout, as a tar, of one layer holding ``/pause``; the index names ``reference``."""
    layer = _tar_bytes({"pause": (binary, 0o755)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer), "size": len(layer)}
            ],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": reference.rpartition(":")[2],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    files: dict[str, tuple[bytes, int]] = {
        "oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        "index.json": (index, 0o644),
    }
    for blob in (layer, config, manifest):
        files[f"blobs/sha256/{_digest(blob).removeprefix('sha256:')}"] = (blob, 0o644)
    return _tar_bytes(files)


def compile_pause(cc: str | None = None) -> bytes:
    """The static pause binary, built from ``PAUSE_C``."""
    compiler = cc or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ControlPlaneError("a C compiler (cc or gcc) is needed to build the pod sandbox (pause) binary")
    with tempfile.TemporaryDirectory(prefix="bpfshare-pause-") as tmp:
        source, out = Path(tmp) / "pause.c", Path(tmp) / "pause"
        source.write_text(PAUSE_C)
        result = subprocess.run(
            [compiler, "-static", "-Os", "-s", "-o", str(out), str(source)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ControlPlaneError(
                f"building the static pause binary with {compiler} failed (is libc6-dev installed?): "
                f"{result.stderr.strip()}"
            )
        return out.read_bytes()


def pause_archive() -> Path:
    """The cached OCI archive of the sandbox image, built on first use."""
    key = hashlib.sha256((PAUSE_C + SANDBOX_IMAGE).encode()).hexdigest()[:10]
    path = cache_root() / "images" / f"pause-{key}.tar"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(oci_archive(compile_pause(), SANDBOX_IMAGE))
        tmp.rename(path)
    return path
