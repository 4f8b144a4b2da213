"""Build kube-apiserver, kubectl, etcd and a node's kubelet, kube-controller-manager and kube-scheduler
from Go modules into a per-version cache.

Each binary comes from a generated wrapper module (``go.mod`` with ``tool`` directives) under the
cache directory. Kubernetes' staging modules (k8s.io/api, ...) are pinned with ``replace`` lines,
because k8s.io/kubernetes requires them at v0.0.0. ``go get -tool`` is never used: it would upgrade
k8s.io/kubernetes to the newest release.

The build goes into a temporary directory that is renamed into place only when every binary is
built, so an interrupted build never leaves a half-filled cache. A stamp file records the version key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.paths import cache_root

# The staging modules of k8s.io/kubernetes (staging/src/k8s.io/*), all released as v0.<minor>.<patch>.
STAGING_MODULES: tuple[str, ...] = (
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
    "controller-manager", "cri-api", "cri-client", "csi-translation-lib", "dynamic-resource-allocation",
    "endpointslice", "externaljwt", "kms", "kube-aggregator", "kube-controller-manager", "kube-proxy",
    "kube-scheduler", "kubectl", "kubelet", "metrics", "mount-utils", "pod-security-admission",
    "sample-apiserver", "sample-cli-plugin", "sample-controller",
)  # fmt: skip

# kube-apiserver and kubectl for every control plane; kubelet, kube-controller-manager and
# kube-scheduler for a real node (``cluster up --node``). One module, one build: the node's three
# add about a minute and a half to a cold build and share its module cache.
K8S_COMMANDS: tuple[str, ...] = ("kube-apiserver", "kubectl", "kubelet", "kube-controller-manager", "kube-scheduler")
BINARIES: tuple[str, ...] = (*K8S_COMMANDS, "etcd")
K8S_TOOLS: tuple[str, ...] = tuple(f"k8s.io/kubernetes/cmd/{name}" for name in K8S_COMMANDS)
ETCD_TOOL = "go.etcd.io/etcd/server/v3"
PROGRESS_EVERY = 30.0  # seconds between progress lines during a build

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Versions:
    kubernetes: str = "v1.34.4"
    etcd: str = "v3.6.16"
    go_directive: str = "1.24"  # of the kubernetes wrapper module (k8s.io/kubernetes v1.34 needs 1.24)

    @property
    def staging(self) -> str:
        """k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y."""
        major, minor, patch = self.kubernetes.removeprefix("v").split(".")
        if major != "1":
            raise ControlPlaneError(f"unsupported Kubernetes version {self.kubernetes}")
        return f"v0.{minor}.{patch}"


DEFAULT_VERSIONS = Versions()


def k8s_go_mod(versions: Versions = DEFAULT_VERSIONS) -> str:
    tools = "".join(f"\t{tool}\n" for tool in K8S_TOOLS)
    replaces = "".join(f"\tk8s.io/{m} => k8s.io/{m} {versions.staging}\n" for m in STAGING_MODULES)
    return (
        "module bpfshare.local/k8s\n\n"
        f"go {versions.go_directive}\n\n"
        f"require k8s.io/kubernetes {versions.kubernetes}\n\n"
        f"tool (\n{tools})\n\n"
        f"replace (\n{replaces})\n"
    )


def etcd_go_mod(versions: Versions = DEFAULT_VERSIONS) -> str:
    return f"module bpfshare.local/etcd\n\nrequire {ETCD_TOOL} {versions.etcd}\n\ntool {ETCD_TOOL}\n"


@dataclass(frozen=True)
class Step:
    what: str
    module: str  # wrapper module directory, relative to the build directory
    args: tuple[str, ...]  # go arguments; "{bin}" is replaced by the output directory


def build_steps() -> tuple[Step, ...]:
    return (
        Step("resolving Kubernetes modules", "k8s", ("mod", "tidy")),
        Step(
            "building kube-apiserver, kubectl, kubelet, kube-controller-manager and kube-scheduler",
            "k8s",
            ("build", "-o", "{bin}/", *K8S_TOOLS),
        ),
        Step("resolving etcd modules", "etcd", ("mod", "tidy")),
        Step("building etcd", "etcd", ("build", "-o", "{bin}/etcd", ETCD_TOOL)),
    )


def version_key(versions: Versions = DEFAULT_VERSIONS) -> str:
    """Names the cache directory; changes with the versions and with the recipe that builds them."""
    recipe = json.dumps([k8s_go_mod(versions), etcd_go_mod(versions), [(s.module, s.args) for s in build_steps()]])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    return f"k8s-{versions.kubernetes}-etcd-{versions.etcd}-{digest}"


def controlplane_cache(versions: Versions = DEFAULT_VERSIONS) -> Path:
    return cache_root() / "controlplane" / version_key(versions)


def bin_dir(versions: Versions = DEFAULT_VERSIONS) -> Path:
    return controlplane_cache(versions) / "bin"


def is_built(versions: Versions = DEFAULT_VERSIONS) -> bool:
    root = controlplane_cache(versions)
    try:
        stamp = json.loads((root / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("key") != version_key(versions):
        return False
    return all(os.access(root / "bin" / name, os.X_OK) for name in BINARIES)


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if os.access(fallback, os.X_OK) else None


def stderr_progress(message: str) -> None:
    print(f"bpfshare: {message}", file=sys.stderr, flush=True)


def ensure_built(
    versions: Versions = DEFAULT_VERSIONS, *, force: bool = False, progress: Progress = stderr_progress
) -> Path:
    """Return the directory holding kube-apiserver, kubectl and etcd, building them first if needed."""
    if not force and is_built(versions):
        return bin_dir(versions)
    go = find_go()
    if go is None:
        raise ControlPlaneError(
            "the Go toolchain is needed to build the local control plane (kube-apiserver, kubectl, etcd), "
            "but `go` is neither in PATH nor in /usr/local/go/bin; install Go >= 1.24 (https://go.dev/dl/)"
        )
    parent = controlplane_cache(versions).parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / ".lock"):
        if not force and is_built(versions):  # another process built it while we waited
            return bin_dir(versions)
        _build(go, versions, progress)
    return bin_dir(versions)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(go: str, versions: Versions, progress: Progress) -> None:
    final = controlplane_cache(versions)
    parent = final.parent
    for stale in parent.glob(".tmp-*"):  # left by an interrupted build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        (tmp / "k8s").mkdir()
        (tmp / "k8s" / "go.mod").write_text(k8s_go_mod(versions))
        (tmp / "etcd").mkdir()
        (tmp / "etcd" / "go.mod").write_text(etcd_go_mod(versions))
        (tmp / "bin").mkdir()
        progress(
            f"building the local control plane (Kubernetes {versions.kubernetes}, etcd {versions.etcd}) "
            f"into {final}; a cold build takes about 10 minutes on 2 cores, a warm one under a minute"
        )
        started = time.monotonic()
        for step in build_steps():
            args = [a.replace("{bin}", str(tmp / "bin")) for a in step.args]
            _run_go(go, args, tmp / step.module, tmp / "build.log", step.what, progress)
        missing = [name for name in BINARIES if not os.access(tmp / "bin" / name, os.X_OK)]
        if missing:
            raise ControlPlaneError(f"the build finished without producing {', '.join(missing)}")
        stamp = {
            "key": version_key(versions),
            "kubernetes": versions.kubernetes,
            "etcd": versions.etcd,
            "go": _go_version(go),
            "builtAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
        if final.exists():  # --force: swap the old build out only once the new one is complete
            old = parent / f".tmp-old-{final.name}-{os.getpid()}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
        progress(f"control plane built in {_fmt(time.monotonic() - started)}: {final / 'bin'}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _run_go(go: str, args: Sequence[str], cwd: Path, log: Path, what: str, progress: Progress) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(go).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    started = time.monotonic()
    progress(f"{what} ...")
    with open(log, "ab") as out:
        out.write(f"$ (cd {cwd} && go {' '.join(args)})\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [go, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            next_report = started + PROGRESS_EVERY
            while True:
                try:
                    code = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= next_report:
                        progress(f"{what}: {_fmt(time.monotonic() - started)} elapsed")
                        next_report += PROGRESS_EVERY
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        kept = log.parent.parent / "build-failed.log"
        shutil.copyfile(log, kept)
        raise ControlPlaneError(
            f"`go {' '.join(args)}` ({what}) failed with exit code {code}; full log in {kept}; last lines:\n{tail(log)}"
        )


def _go_version(go: str) -> str:
    try:
        return subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _fmt(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
