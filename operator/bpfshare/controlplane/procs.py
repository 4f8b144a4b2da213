"""Background processes of the control plane: launch detached, recognise by pid, stop, free ports.

psutil does the process work: finding a pid's process, its start time, executable and state,
signalling only a process that is still the one we looked at, and waiting for it to exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.build import tail

PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessRecord:
    """Enough to find a process again and be sure it is still the one we started."""

    name: str
    pid: int
    start_time: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    exe: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]), pid=int(data["pid"]), start_time=int(data["start_time"]), exe=str(data["exe"])
        )


def start_ticks(proc: psutil.Process) -> int:
    """When ``proc`` started, in clock ticks since boot.

    psutil's create_time is in seconds since the epoch: the start since boot plus the boot time,
    which the kernel moves whenever the clock is set. Taking the boot time away again gives a value
    that a clock step does not change, so a record in state.json matches its process days later.
    """
    return round((proc.create_time() - psutil.boot_time()) * CLOCK_TICKS)


def find(record: ProcessRecord) -> psutil.Process | None:
    """The recorded process if it is alive (not a zombie), with the same start time and executable name.

    pid and start time identify a process since boot; the name guards against anything odd. The full
    path is not compared: ``cluster build --force`` moves and deletes the binaries of running processes
    (psutil then reads the path without its `` (deleted)`` suffix). A zombie that is our child (the
    pytest fixture's processes are) is reaped on the way.
    """
    try:
        proc = psutil.Process(record.pid)
        if start_ticks(proc) != record.start_time:
            return None
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            with contextlib.suppress(psutil.TimeoutExpired):
                proc.wait(timeout=0)  # collects it if it is our child, else leaves it to its parent
            return None
        exe = proc.exe()
    except psutil.Error:  # gone (NoSuchProcess, ZombieProcess) or not ours to look at (AccessDenied)
        return None
    return proc if Path(exe).name == Path(record.exe).name else None


def is_ours(record: ProcessRecord) -> bool:
    return find(record) is not None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # SIGKILL, not SIGTERM: a kube-apiserver whose etcd is going away too takes ~20 s to shut down.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def launch(name: str, argv: list[str], log: Path, *, die_with_parent: bool = False) -> ProcessRecord:
    """Start ``argv`` in its own session, output appended to ``log``, detached from our terminal.

    ``die_with_parent``: the process gets SIGKILL when the thread that started it exits
    (``PR_SET_PDEATHSIG``), so that a killed pytest does not leave it behind.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    # The start time is the fork's, so it is the same before and after exec.
    start_time = start_ticks(psutil.Process(proc.pid))
    return ProcessRecord(name=name, pid=proc.pid, start_time=start_time, exe=str(Path(argv[0]).resolve()))


def stop(record: ProcessRecord, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the pid is still the process we started.

    psutil refuses to signal a pid that has been reused since ``find`` looked at it.
    """
    proc = find(record)
    if proc is None:
        return
    try:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:  # not even SIGKILL ended it (a process stuck in the kernel): give up
        return


# Ports this process has handed out. A port is free when asked for, but taken only when its user (a
# process started later) binds it: until then the kernel may hand the same port out again, and two agents
# started one after the other got the same liveness port (one of them could never serve).
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so that they differ), none handed out
    before by this process."""
    socks = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)  # held until all are chosen: a port given back is not chosen twice
            port = int(sock.getsockname()[1])
            if port not in _handed_out:
                ports.append(port)
        _handed_out.update(ports)
        return ports
    finally:
        for sock in socks:
            sock.close()


def wait_ready(
    processes: Mapping[str, ProcessRecord],
    log: Callable[[str], Path],
    name: str,
    deadline: float,
    ready: Callable[[], bool],
    *,
    also: tuple[str, ...] = (),
    interval: float = 0.25,
) -> None:
    """Poll ``ready`` until it holds; fail, with the last lines of its log, as soon as ``name`` (or one
    of ``also``, started before it) exits, or at ``deadline``."""
    while True:
        for proc in (name, *also):
            if not is_ours(processes[proc]):
                raise ControlPlaneError(f"{proc} exited during startup; last lines of {log(proc)}:\n{tail(log(proc))}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"{name} did not become ready in time; last lines of {log(name)}:\n{tail(log(name))}"
            )
        time.sleep(interval)
