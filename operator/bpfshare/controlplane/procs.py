"""Background processes of the control plane: launch detached, recognise by pid, stop, free ports."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    """Enough to find a process again and be sure it is still the one we started."""

    name: str
    pid: int
    start_time: int  # field 22 of /proc/PID/stat, in clock ticks since boot
    exe: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),  # type: ignore[call-overload]
            start_time=int(data["start_time"]),
            exe=str(data["exe"]),
        )  # type: ignore[call-overload]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[19])


def _reap(pid: int) -> None:
    """Collect a zombie if it is our child (the pytest fixture's processes are)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_ours(record: ProcessRecord) -> bool:
    """The recorded process is alive (not a zombie), with the same start time and executable name.

    pid and start time identify a process since boot; the name guards against anything odd. The full
    path is not compared: ``cluster build --force`` moves and deletes the binaries of running processes,
    after which /proc/PID/exe reads ``<old path> (deleted)``.
    """
    _reap(record.pid)
    stat = _stat(record.pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != record.start_time:
        return False
    try:
        exe = os.readlink(f"/proc/{record.pid}/exe")
    except OSError:
        return False
    return Path(exe.removesuffix(" (deleted)")).name == Path(record.exe).name


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # SIGKILL, not SIGTERM: a kube-apiserver whose etcd is going away too takes ~20 s to shut down.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def launch(name: str, argv: list[str], log: Path, *, die_with_parent: bool = False) -> ProcessRecord:
    """Start ``argv`` in its own session, output appended to ``log``, detached from our terminal."""
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
    stat = _stat(proc.pid)
    start_time = stat[1] if stat else 0
    return ProcessRecord(name=name, pid=proc.pid, start_time=start_time, exe=str(Path(argv[0]).resolve()))


def stop(record: ProcessRecord, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the pid is still the process we started."""
    if not is_ours(record):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_ours(record):
                return
            time.sleep(0.1)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
