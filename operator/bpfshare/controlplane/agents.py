"""Run ``bpfshare agent`` as a process for a simulated node: the demo's, the tests' and the benchmarks'.

An ``Agent`` is one node's agent process: its node name, pin root (by default under a private bpffs
mount of its own), kubeconfig, log file, optional liveness and metrics ports, and an optional argv
prefix that runs it (``setpriv`` with fewer capabilities, ``unshare`` into namespaces of its own; the
prefix must ``exec`` the agent so that the pid stays its own). It starts in a session of its own,
so that stopping it stops the prefix's processes too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfshare.controlplane import ControlPlaneError, pki
from bpfshare.controlplane.procs import free_ports
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import WaitTimeout, poll

PROBLEM_MARKS = (" ERROR ", " WARNING ", " CRITICAL ", "Traceback")


def mount_bpffs(prefix: str = "bpfshare-agent-") -> Path:
    """A fresh bpffs mounted on a new temporary directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        path.rmdir()
        raise ControlPlaneError(f"cannot mount bpffs on {path}: {proc.stderr.strip()}")
    return path


def unmount_bpffs(path: Path) -> None:
    """Unmount (lazily: pins go with the mount) and remove a directory ``mount_bpffs`` made."""
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def token_kubeconfig(cp: ControlPlane, token: str, path: Path, user: str = "agent") -> Path:
    """A kubeconfig for ``cp`` that authenticates with ``token`` (a service account's, say)."""
    pki.write_private(path, pki.kubeconfig(cp.server, cp.ca_file, token, user))
    return path


@dataclass
class Agent:
    """One ``bpfshare agent`` process; ``start`` it, ``stop``, ``kill`` or ``restart`` it, ``close`` it."""

    node: str
    pin_root: Path
    kubeconfig: Path
    log: Path
    resync: float = 60.0
    liveness_port: int | None = None
    metrics_port: int | None = None
    prefix: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    mount: Path | None = None  # the private bpffs mount holding pin_root, unmounted by close()
    proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [*self.prefix, sys.executable, "-m", "bpfshare", "agent", "--node", self.node]
        argv += ["--pin-root", str(self.pin_root), "--resync", str(self.resync)]
        if self.liveness_port is not None:
            argv.append(f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz")
        if self.metrics_port is not None:
            argv.append(f"--metrics=127.0.0.1:{self.metrics_port}")
        return argv

    def start(self) -> None:
        if self.alive():
            raise ControlPlaneError(f"the agent of {self.node} is already running (pid {self.pid})")
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ControlPlaneError(f"the agent of {self.node} is not running")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int, timeout: float) -> bool:
        """Send ``sig`` to the agent's session; whether it exited within ``timeout``."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (the agent shuts down as on a rolling update), SIGKILL after ``grace`` seconds."""
        if self.alive() and not self._signal(signal.SIGTERM, grace):
            self._signal(signal.SIGKILL, 10.0)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: no shutdown at all."""
        if self.alive():
            self._signal(signal.SIGKILL, 10.0)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self, grace: float = 15.0) -> None:
        """Stop the agent and unmount its private bpffs (with everything pinned in it)."""
        self.stop(grace)
        if self.mount is not None:
            unmount_bpffs(self.mount)
            self.mount = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """Log lines at WARNING or above, and tracebacks."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(mark in line for mark in PROBLEM_MARKS)]

    def _get(self, port: int | None, path: str, timeout: float = 5.0) -> str:
        if port is None:
            raise ControlPlaneError(f"the agent of {self.node} was started without that endpoint ({path})")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return str(response.read().decode())

    def health(self) -> dict[str, Any]:
        """The liveness endpoint's probe values (kopf serves them once the agent has listed everything,
        and recollects them at most every 10 s)."""
        return dict(json.loads(self._get(self.liveness_port, "/healthz")))

    def metrics(self) -> str:
        """The Prometheus text of the metrics endpoint."""
        return self._get(self.metrics_port, "/metrics")

    def wait_serving(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until the liveness endpoint answers: the agent has listed everything and runs."""

        def serving() -> dict[str, Any] | None:
            if not self.alive():
                raise ControlPlaneError(f"the agent of {self.node} exited:\n{self.log_tail()}")
            try:
                return self.health()
            except (OSError, ValueError):
                return None

        try:
            return poll(serving, f"the agent of {self.node} to serve /healthz", timeout, interval=0.1)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n{self.log_tail()}") from None


def start_agent(
    node: str,
    kubeconfig: Path,
    log: Path,
    *,
    pin_root: Path | None = None,
    resync: float = 60.0,
    liveness: bool = False,
    metrics: bool = False,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    agent_class: type[Agent] = Agent,
    **extra: Any,
) -> Agent:
    """Start the agent of ``node``. Without ``pin_root`` it gets a private bpffs mount (its pin root is
    ``<mount>/bpfshare``); ``liveness`` and ``metrics`` serve those endpoints on free loopback ports.
    ``agent_class`` (an ``Agent`` subclass) and ``extra`` (its own fields) for callers that add to it.
    The caller ``close()``s it."""
    mount: Path | None = None
    if pin_root is None:
        mount = mount_bpffs(f"bpfshare-{node}-")
        pin_root = mount / "bpfshare"
    liveness_port, metrics_port = free_ports(2)
    agent = agent_class(
        node,
        pin_root,
        kubeconfig,
        log,
        resync=resync,
        liveness_port=liveness_port if liveness else None,
        metrics_port=metrics_port if metrics else None,
        prefix=prefix,
        env=dict(env or {}),
        mount=mount,
        **extra,
    )
    try:
        agent.start()
    except BaseException:
        agent.close()
        raise
    return agent
