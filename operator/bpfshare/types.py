"""Kernel enumerations (from include/uapi/linux/bpf.h) and the few kernel vocabularies every layer
shares (``Direction``), as pure data.

Kept apart from the syscall layer so that object parsing and planning can name map and program
types without touching the kernel. Names follow cilium/ebpf's spelling (Hash, PercpuArray, ...),
which is also what the BpfMap resource's ``spec.type`` accepts.
"""

from __future__ import annotations

import enum
from typing import Literal, TypeVar, cast

# The two hooks of a network device that tc (clsact) and tcx programs attach to.
Direction = Literal["ingress", "egress"]


class MapType(enum.IntEnum):
    Unspec = 0
    Hash = 1
    Array = 2
    ProgArray = 3
    PerfEventArray = 4
    PercpuHash = 5
    PercpuArray = 6
    StackTrace = 7
    CgroupArray = 8
    LruHash = 9
    LruPercpuHash = 10
    LpmTrie = 11
    ArrayOfMaps = 12
    HashOfMaps = 13
    DevMap = 14
    SockMap = 15
    CpuMap = 16
    XskMap = 17
    SockHash = 18
    CgroupStorage = 19
    ReuseportSockArray = 20
    PercpuCgroupStorage = 21
    Queue = 22
    Stack = 23
    SkStorage = 24
    DevMapHash = 25
    StructOps = 26
    RingBuf = 27
    InodeStorage = 28
    TaskStorage = 29
    BloomFilter = 30
    UserRingBuf = 31
    CgrpStorage = 32
    Arena = 33

    @classmethod
    def parse(cls, name: str) -> MapType:
        """Accept ``Hash``, ``hash``, ``BPF_MAP_TYPE_HASH`` or ``percpu_hash``."""
        key = name.removeprefix("BPF_MAP_TYPE_").replace("_", "").lower()
        for member in cls:
            if member.name.lower() == key:
                return member
        raise ValueError(f"unknown map type {name!r}")


IntEnumT = TypeVar("IntEnumT", bound=enum.IntEnum)


def member_or_number(kind: type[IntEnumT], value: int) -> IntEnumT:
    """``kind(value)``, or the bare number for a value newer than this code (a map or program type
    added by a later kernel), which the kernel may report and must not make reading fail.

    Typed as ``kind`` on purpose: an IntEnum member and its number compare, hash and format alike,
    so readers need not narrow. Only ``.name`` is missing: read it as ``getattr(x, "name", x)``.
    """
    try:
        return kind(value)
    except ValueError:
        return cast(IntEnumT, value)


# Map types whose values are other maps (the kernel needs an inner map as a template to create one).
MAP_IN_MAP_TYPES = frozenset({MapType.ArrayOfMaps, MapType.HashOfMaps})


class MapFlag(enum.IntFlag):
    NoPrealloc = 1 << 0
    NoCommonLru = 1 << 1
    NumaNode = 1 << 2
    Rdonly = 1 << 3
    Wronly = 1 << 4
    StackBuildId = 1 << 5
    ZeroSeed = 1 << 6
    RdonlyProg = 1 << 7
    WronlyProg = 1 << 8
    Clone = 1 << 9
    Mmapable = 1 << 10
    PreserveElems = 1 << 11
    InnerMap = 1 << 12
    Link = 1 << 13
    PathFd = 1 << 14
    VtypeBtfObjFd = 1 << 15
    TokenFd = 1 << 16
    Segv_on_fault = 1 << 17
    NoUserConv = 1 << 18

    @classmethod
    def parse_names(cls, names: list[str]) -> MapFlag:
        value = cls(0)
        for name in names:
            key = name.removeprefix("BPF_F_").replace("_", "").lower()
            for member in cls:
                if member.name and member.name.replace("_", "").lower() == key:
                    value |= member
                    break
            else:
                raise ValueError(f"unknown map flag {name!r}")
        return value

    @classmethod
    def names(cls, value: int) -> list[str]:
        out = [m.name for m in cls if m.name and value & m.value]
        rest = value & ~sum(m.value for m in cls)
        if rest:
            out.append(hex(rest))
        return out


class ProgType(enum.IntEnum):
    Unspec = 0
    SocketFilter = 1
    Kprobe = 2
    SchedCls = 3
    SchedAct = 4
    Tracepoint = 5
    Xdp = 6
    PerfEvent = 7
    CgroupSkb = 8
    CgroupSock = 9
    LwtIn = 10
    LwtOut = 11
    LwtXmit = 12
    SockOps = 13
    SkSkb = 14
    CgroupDevice = 15
    SkMsg = 16
    RawTracepoint = 17
    CgroupSockAddr = 18
    LwtSeg6local = 19
    LircMode2 = 20
    SkReuseport = 21
    FlowDissector = 22
    CgroupSysctl = 23
    RawTracepointWritable = 24
    CgroupSockopt = 25
    Tracing = 26
    StructOps = 27
    Ext = 28
    Lsm = 29
    SkLookup = 30
    Syscall = 31
    Netfilter = 32


class AttachType(enum.IntEnum):
    CgroupInetIngress = 0
    CgroupInetEgress = 1
    CgroupInetSockCreate = 2
    CgroupSockOps = 3
    SkSkbStreamParser = 4
    SkSkbStreamVerdict = 5
    CgroupDevice = 6
    SkMsgVerdict = 7
    CgroupInet4Bind = 8
    CgroupInet6Bind = 9
    CgroupInet4Connect = 10
    CgroupInet6Connect = 11
    CgroupInet4PostBind = 12
    CgroupInet6PostBind = 13
    CgroupUdp4Sendmsg = 14
    CgroupUdp6Sendmsg = 15
    LircMode2 = 16
    FlowDissector = 17
    CgroupSysctl = 18
    CgroupUdp4Recvmsg = 19
    CgroupUdp6Recvmsg = 20
    CgroupGetsockopt = 21
    CgroupSetsockopt = 22
    TraceRawTp = 23
    TraceFentry = 24
    TraceFexit = 25
    ModifyReturn = 26
    LsmMac = 27
    TraceIter = 28
    CgroupInet4Getpeername = 29
    CgroupInet6Getpeername = 30
    CgroupInet4Getsockname = 31
    CgroupInet6Getsockname = 32
    XdpDevmap = 33
    CgroupInetSockRelease = 34
    XdpCpumap = 35
    SkLookup = 36
    Xdp = 37
    SkSkbVerdict = 38
    SkReuseportSelect = 39
    SkReuseportSelectOrMigrate = 40
    PerfEvent = 41
    TraceKprobeMulti = 42
    LsmCgroup = 43
    StructOps = 44
    Netfilter = 45
    TcxIngress = 46
    TcxEgress = 47
    TraceUprobeMulti = 48
    CgroupUnixConnect = 49
    CgroupUnixSendmsg = 50
    CgroupUnixRecvmsg = 51
    CgroupUnixGetpeername = 52
    CgroupUnixGetsockname = 53
    NetkitPrimary = 54
    NetkitPeer = 55
    TraceKprobeSession = 56


# The cgroup attach types a BpfProgram's ``attach.cgroup.type`` (and the CLI's ``cgroup:DIR:TYPE``)
# accepts, by their short names.
CGROUP_ATTACH_TYPES: dict[str, AttachType] = {
    "ingress": AttachType.CgroupInetIngress,
    "egress": AttachType.CgroupInetEgress,
    "sock_create": AttachType.CgroupInetSockCreate,
    "sock_release": AttachType.CgroupInetSockRelease,
    "sock_ops": AttachType.CgroupSockOps,
    "device": AttachType.CgroupDevice,
    "bind4": AttachType.CgroupInet4Bind,
    "bind6": AttachType.CgroupInet6Bind,
    "post_bind4": AttachType.CgroupInet4PostBind,
    "post_bind6": AttachType.CgroupInet6PostBind,
    "connect4": AttachType.CgroupInet4Connect,
    "connect6": AttachType.CgroupInet6Connect,
    "sendmsg4": AttachType.CgroupUdp4Sendmsg,
    "sendmsg6": AttachType.CgroupUdp6Sendmsg,
    "recvmsg4": AttachType.CgroupUdp4Recvmsg,
    "recvmsg6": AttachType.CgroupUdp6Recvmsg,
    "getpeername4": AttachType.CgroupInet4Getpeername,
    "getpeername6": AttachType.CgroupInet6Getpeername,
    "getsockname4": AttachType.CgroupInet4Getsockname,
    "getsockname6": AttachType.CgroupInet6Getsockname,
    "sysctl": AttachType.CgroupSysctl,
    "getsockopt": AttachType.CgroupGetsockopt,
    "setsockopt": AttachType.CgroupSetsockopt,
}

# Which program type each cgroup attach type needs: used to refuse "a program type that does not fit
# its attach kind" before asking the kernel.
CGROUP_PROG_TYPE: dict[AttachType, ProgType] = {
    AttachType.CgroupInetIngress: ProgType.CgroupSkb,
    AttachType.CgroupInetEgress: ProgType.CgroupSkb,
    AttachType.CgroupInetSockCreate: ProgType.CgroupSock,
    AttachType.CgroupInetSockRelease: ProgType.CgroupSock,
    AttachType.CgroupInet4PostBind: ProgType.CgroupSock,
    AttachType.CgroupInet6PostBind: ProgType.CgroupSock,
    AttachType.CgroupSockOps: ProgType.SockOps,
    AttachType.CgroupDevice: ProgType.CgroupDevice,
    AttachType.CgroupInet4Bind: ProgType.CgroupSockAddr,
    AttachType.CgroupInet6Bind: ProgType.CgroupSockAddr,
    AttachType.CgroupInet4Connect: ProgType.CgroupSockAddr,
    AttachType.CgroupInet6Connect: ProgType.CgroupSockAddr,
    AttachType.CgroupUdp4Sendmsg: ProgType.CgroupSockAddr,
    AttachType.CgroupUdp6Sendmsg: ProgType.CgroupSockAddr,
    AttachType.CgroupUdp4Recvmsg: ProgType.CgroupSockAddr,
    AttachType.CgroupUdp6Recvmsg: ProgType.CgroupSockAddr,
    AttachType.CgroupInet4Getpeername: ProgType.CgroupSockAddr,
    AttachType.CgroupInet6Getpeername: ProgType.CgroupSockAddr,
    AttachType.CgroupInet4Getsockname: ProgType.CgroupSockAddr,
    AttachType.CgroupInet6Getsockname: ProgType.CgroupSockAddr,
    AttachType.CgroupSysctl: ProgType.CgroupSysctl,
    AttachType.CgroupGetsockopt: ProgType.CgroupSockopt,
    AttachType.CgroupSetsockopt: ProgType.CgroupSockopt,
}
