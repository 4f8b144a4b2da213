"""Build the agent image from the project's Dockerfile with buildah and import it into a containerd.

No container registry is reachable, so the Dockerfile's base (``python:3.11-slim-bookworm``) is
replaced by a local stand-in: a debootstrapped Debian bookworm with python3, pip and venv, committed
into buildah's storage under ``cache_root()/images/buildah`` once per recipe (the tag carries the
recipe's hash, as ``build.py`` keys the Go binaries). The agent image keeps the reference the
deploy/ manifests use (read from deploy/base/kustomization.yaml), so ``kubectl apply -k deploy/``
runs unchanged with ``imagePullPolicy: IfNotPresent``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.build import Progress, _fmt, _locked, stderr_progress, tail
from bpfshare.controlplane.paths import cache_root

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-pip", "python3-venv", "ca-certificates")
BASE_NAME = "localhost/bpfshare/python-base"
# Applied to the debootstrapped tree so it behaves like python:3.11-slim: pip may install into the
# system Python (no PEP 668 marker), `python` is python3, and apt sees the updates and security suites.
BASE_FIXUP = (
    "rm -f usr/lib/python3*/EXTERNALLY-MANAGED && ln -sf python3 usr/bin/python"
    " && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/*"
)
SOURCES = (
    f"deb {MIRROR} {SUITE} main\n"
    f"deb {MIRROR} {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
BASE_CONFIG: tuple[str, ...] = ("--env", "LANG=C.UTF-8", "--cmd", "python3")
# Certificate authorities the host's administrator added (update-ca-certificates reads them from here).
# A machine behind a TLS-inspecting proxy, as this project's machines are, trusts the proxy's CA only
# through them: without them pip in the build cannot verify PyPI. The base trusts them too, as the host
# does; a base built elsewhere trusts only Debian's.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def images_dir() -> Path:
    return cache_root() / "images"


def buildah_args() -> list[str]:
    """buildah with its storage under our cache, so warm rebuilds reuse the base and the layers."""
    root = images_dir() / "buildah"
    return ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]


def local_cas(directory: Path = LOCAL_CA_DIR) -> dict[str, bytes]:
    """The host's added CA certificates (relative path -> PEM), as update-ca-certificates finds them."""
    if not directory.is_dir():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.crt")) if p.is_file()}


def base_key(cas: dict[str, bytes] | None = None) -> str:
    """The recipe's hash: a changed package list, fix-up or added CA builds a new base."""
    cas = local_cas() if cas is None else cas
    recipe = json.dumps([SUITE, MIRROR, BASE_PACKAGES, BASE_FIXUP, SOURCES, BASE_CONFIG])
    digest = hashlib.sha256(recipe.encode())
    for name, pem in sorted(cas.items()):
        digest.update(b"\0" + name.encode() + b"\0" + pem)
    return digest.hexdigest()[:10]


def install_cas(rootfs: Path, cas: dict[str, bytes]) -> None:
    """Copy the host's added CAs into rootfs's /usr/local/share/ca-certificates (then update-ca-certificates)."""
    for name, pem in cas.items():
        target = rootfs / "usr" / "local" / "share" / "ca-certificates" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pem)


def base_image() -> str:
    return f"{BASE_NAME}:3.11-{SUITE}-{base_key()}"


def image_reference(repo_root: Path) -> str:
    """``docker.io/<name>:<tag>`` of the agent image, from deploy/base/kustomization.yaml's images."""
    import yaml

    path = repo_root / "deploy" / "base" / "kustomization.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ControlPlaneError(f"cannot read the image name from {path}: {exc}") from exc
    images = doc.get("images") if isinstance(doc, dict) else None
    for entry in images or []:
        if isinstance(entry, dict) and "agent" in str(entry.get("name", "")):
            name = str(entry.get("newName") or entry["name"])
            tag = entry.get("newTag")
            if not tag:
                raise ControlPlaneError(f"{path}: image {name} has no newTag")
            return f"{normalize(name)}:{tag}"
    raise ControlPlaneError(f"{path}: no `images:` entry for the agent image")


def normalize(name: str) -> str:
    """The name containerd stores: docker.io/ prefixed, library/ for one-component names."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def _run(cmd: Sequence[str], log: Path, what: str, progress: Progress, cwd: Path | None = None) -> None:
    progress(f"{what} ...")
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out).returncode
        except OSError as exc:
            raise ControlPlaneError(f"`{cmd[0]}` ({what}) could not run: {exc}; run scripts/install.sh") from exc
    if code != 0:
        raise ControlPlaneError(
            f"`{' '.join(cmd)}` ({what}) failed with exit code {code}; log in {log}; last lines:\n{tail(log)}"
        )
    progress(f"{what}: done in {_fmt(time.monotonic() - started)}")


def _has_image(ref: str) -> bool:
    cmd = [*buildah_args(), "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def build_base(*, progress: Progress = stderr_progress) -> str:
    """The stand-in for python:3.11-slim-bookworm, debootstrapped once per recipe; its reference."""
    ref = base_image()
    images_dir().mkdir(parents=True, exist_ok=True)
    with _locked(images_dir() / ".lock-base"):
        if _has_image(ref):
            return ref
        log = images_dir() / "base-build.log"
        log.write_text("")
        rootfs = Path(tempfile.mkdtemp(prefix="bpfshare-rootfs-", dir=images_dir()))
        container = f"bpfshare-base-{os.getpid()}"
        try:
            include = ",".join(BASE_PACKAGES)
            _run(
                ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(rootfs), MIRROR],
                log,
                f"debootstrapping Debian {SUITE} with {include}",
                progress,
            )
            (rootfs / "etc" / "apt" / "sources.list").write_text(SOURCES)
            _run(["sh", "-c", BASE_FIXUP], log, "making it behave like python:3.11-slim", progress, cwd=rootfs)
            cas = local_cas()
            if cas:
                install_cas(rootfs, cas)
                _run(
                    ["chroot", str(rootfs), "update-ca-certificates"],
                    log,
                    f"trusting the host's {len(cas)} added CA certificate(s) ({LOCAL_CA_DIR})",
                    progress,
                )
            b = buildah_args()
            _run([*b, "from", "--name", container, "scratch"], log, "creating the base container", progress)
            try:
                mount = subprocess.run([*b, "mount", container], capture_output=True, text=True, check=True)
                _run(["cp", "-a", f"{rootfs}/.", mount.stdout.strip()], log, "copying the root filesystem", progress)
                _run([*b, "config", *BASE_CONFIG, container], log, "configuring the base", progress)
                _run([*b, "commit", "--rm", container, ref], log, f"committing {ref}", progress)
            finally:
                subprocess.run([*b, "rm", container], capture_output=True)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    return ref


def build_image(repo_root: Path, *, progress: Progress = stderr_progress) -> Path:
    """Build the Dockerfile at repo_root on the local base; an oci-archive of it, named for containerd."""
    ref = image_reference(repo_root)
    base = build_base(progress=progress)
    log = images_dir() / "agent-build.log"
    log.write_text("")
    started = time.monotonic()
    b = buildah_args()
    _run(
        [
            *b, "bud", "--isolation", "chroot", "--network", "host", "--layers",
            "--build-arg", f"PYTHON_IMAGE={base}", "-f", str(repo_root / "Dockerfile"), "-t", ref, str(repo_root),
        ],
        log,
        f"building {ref} from {repo_root / 'Dockerfile'}",
        progress,
    )  # fmt: skip
    archive = images_dir() / "agent.tar"
    archive.unlink(missing_ok=True)
    _run([*b, "push", ref, f"oci-archive:{archive}:{ref}"], log, f"exporting {archive}", progress)
    progress(f"image {ref} built in {_fmt(time.monotonic() - started)}: {archive}")
    return archive


def import_image(archive: Path, containerd_address: str, namespace: str = "k8s.io") -> None:
    """Import the archive into the containerd listening on containerd_address, in namespace."""
    cmd = ["ctr", "--address", containerd_address, "-n", namespace, "images", "import", str(archive)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ControlPlaneError(f"`ctr` could not run: {exc}; run scripts/install.sh") from exc
    if out.returncode != 0:
        raise ControlPlaneError(f"`{' '.join(cmd)}` failed: {(out.stderr or out.stdout).strip()}")
