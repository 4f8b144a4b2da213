"""Continuous, exactly countable traffic for fault tests.

``VethTraffic`` sends UDP from namespace a to b over the veth, with ARP replaced by permanent
neighbour entries and IPv6 off, so that every frame entering b's veth is one of ours: a program
counting b's ingress must count exactly ``sent``. ``CgroupTraffic`` runs a process inside a cgroup
that sends UDP on loopback; a cgroup egress program must count exactly what it sent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fixtures.netenv import NetnsPair, run


def quiet_link(pair: NetnsPair) -> None:
    """No ARP, no IPv6 chatter on the veth: only the test's datagrams cross it."""
    for ns, ifname in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
        run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", netns=ns)
        run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1", netns=ns)
    # (/sys/class/net shows the host's namespace under nsenter: ask ip instead.)
    mac = {
        ns: json.loads(run("ip", "-j", "link", "show", "dev", ifname, netns=ns).stdout)[0]["address"]
        for ns, ifname in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b))
    }
    run(
        "ip",
        "neigh",
        "replace",
        pair.addr_b,
        "lladdr",
        mac[pair.ns_b],
        "dev",
        pair.if_a,
        "nud",
        "permanent",
        netns=pair.ns_a,
    )
    run(
        "ip",
        "neigh",
        "replace",
        pair.addr_a,
        "lladdr",
        mac[pair.ns_a],
        "dev",
        pair.if_b,
        "nud",
        "permanent",
        netns=pair.ns_b,
    )
    # b answers each datagram with ICMP port unreachable, which leaves by b's egress: not counted at
    # b's ingress. A listener would be quieter, but this keeps b free of processes.


class VethTraffic:
    def __init__(self, pair: NetnsPair, interval: float = 0.002) -> None:
        self.pair = pair
        self.interval = interval
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from bpfshare.kernel.netns import enter_netns

        with enter_netns(self.pair.ns_a), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self._stop.is_set():
                # Unconnected: the ICMP port-unreachable answers are never reported as errors.
                sock.sendto(b"bpfshare-fault-test", (self.pair.addr_b, 9))
                self.sent += 1
                time.sleep(self.interval)

    def __enter__(self) -> VethTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        time.sleep(0.1)  # let the last frames land


SENDER = """
import os, signal, socket, sys, time
open(sys.argv[1], 'w').write(str(os.getpid()))
sent = 0
stop = False
def done(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unconnected: ICMP errors are never reported
while not stop:
    s.sendto(b'x', ('127.0.0.1', 9))
    sent += 1
    time.sleep(float(sys.argv[2]))
print(sent, flush=True)
"""


class CgroupTraffic:
    """A process in ``cgroup`` sending UDP on loopback until stopped; ``sent`` after exit."""

    def __init__(self, cgroup: Path, interval: float = 0.002) -> None:
        self.cgroup = cgroup
        self.interval = interval
        self.sent = 0
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CgroupTraffic:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(self.cgroup / "cgroup.procs"), str(self.interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 5
        while str(self.proc.pid) not in (self.cgroup / "cgroup.procs").read_text().split():
            if time.monotonic() > deadline:
                raise TimeoutError("the sender never joined its cgroup")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        self.sent = int(out.strip() or 0)


def record(test: str, **figures: object) -> None:
    """For bench/soak.py: append this run's figures as a JSON line to $BPFSHARE_SOAK_RECORD, if set."""
    path = os.environ.get("BPFSHARE_SOAK_RECORD")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": test, **figures}) + "\n")


def salted_inline(obj: Path, salt: int) -> str:
    """The object's bytes with trailing padding: a new digest (so a new version to roll out) for the
    very same programs. ELF readers ignore bytes past the section header table."""
    return base64.b64encode(obj.read_bytes() + b"\0" * 8 + salt.to_bytes(8, "little")).decode()
