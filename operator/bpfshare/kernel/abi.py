"""The bpf(2) ABI as ctypes layouts: ``union bpf_attr`` and the ``bpf_*_info`` structs.

Transcribed from include/uapi/linux/bpf.h, only the commands and fields bpfshare uses. The ABI is
append-only: the kernel accepts an attr shorter than its own (the rest is zero) or longer (as long
as the extra bytes are zero), so a layout that stops early is correct on every kernel that knows
the command. ``BpfAttr`` is padded to ``ATTR_SIZE`` so that fields newer kernels add after ours are
always passed as zero.

``__aligned_u64`` fields are plain ``c_uint64``: ctypes aligns them to 8 bytes on every 64-bit ABI,
and on i386 (4-byte alignment) the offsets would be wrong, so the syscall layer refuses 32-bit.
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_char, c_int32, c_uint8, c_uint32, c_uint64

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8
# Larger than union bpf_attr on 6.18 (about 160 bytes); the surplus is zero, which the kernel allows.
ATTR_SIZE = 256


class Cmd(enum.IntEnum):
    """enum bpf_cmd."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    LINK_DETACH = 34


# Map element update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# PROG_ATTACH / LINK_UPDATE / mprog (tcx) flags.
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13

# PROG_QUERY query_flags.
BPF_F_QUERY_EFFECTIVE = 1 << 0

# OBJ_GET file_flags (also map access flags).
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4


class MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("inner_map_fd", c_uint32),
        ("numa_node", c_uint32),
        ("map_name", c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", c_uint32),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("map_extra", c_uint64),
        ("value_type_btf_obj_fd", c_int32),
        ("map_token_fd", c_int32),
    ]


class MapElemAttr(ctypes.Structure):
    """MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY and MAP_FREEZE."""

    _fields_ = [
        ("map_fd", c_uint32),
        ("key", c_uint64),
        ("value", c_uint64),  # union with next_key
        ("flags", c_uint64),
    ]


class ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", c_uint32),
        ("insn_cnt", c_uint32),
        ("insns", c_uint64),
        ("license", c_uint64),
        ("log_level", c_uint32),
        ("log_size", c_uint32),
        ("log_buf", c_uint64),
        ("kern_version", c_uint32),
        ("prog_flags", c_uint32),
        ("prog_name", c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", c_uint32),
        ("expected_attach_type", c_uint32),
        ("prog_btf_fd", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("func_info_cnt", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("line_info", c_uint64),
        ("line_info_cnt", c_uint32),
        ("attach_btf_id", c_uint32),
        ("attach_prog_fd", c_uint32),
        ("core_relo_cnt", c_uint32),
        ("fd_array", c_uint64),
        ("core_relos", c_uint64),
        ("core_relo_rec_size", c_uint32),
        ("log_true_size", c_uint32),  # out (6.4+): the log size the verifier needed
        ("prog_token_fd", c_int32),
        ("fd_array_cnt", c_uint32),
    ]


class ObjPinAttr(ctypes.Structure):
    """OBJ_PIN and OBJ_GET."""

    _fields_ = [
        ("pathname", c_uint64),
        ("bpf_fd", c_uint32),
        ("file_flags", c_uint32),
        ("path_fd", c_int32),
    ]


class ProgAttachAttr(ctypes.Structure):
    """PROG_ATTACH and PROG_DETACH."""

    _fields_ = [
        ("target_fd", c_uint32),  # union with target_ifindex
        ("attach_bpf_fd", c_uint32),
        ("attach_type", c_uint32),
        ("attach_flags", c_uint32),
        ("replace_bpf_fd", c_uint32),
        ("relative_fd", c_uint32),  # union with relative_id
        ("expected_revision", c_uint64),
    ]


class TestRunAttr(ctypes.Structure):
    __test__ = False  # not a pytest class

    _fields_ = [
        ("prog_fd", c_uint32),
        ("retval", c_uint32),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("data_in", c_uint64),
        ("data_out", c_uint64),
        ("repeat", c_uint32),
        ("duration", c_uint32),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("ctx_in", c_uint64),
        ("ctx_out", c_uint64),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class IdAttr(ctypes.Structure):
    """*_GET_NEXT_ID and *_GET_FD_BY_ID."""

    _fields_ = [
        ("start_id", c_uint32),  # union with prog_id / map_id / link_id
        ("next_id", c_uint32),
        ("open_flags", c_uint32),
    ]


class InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", c_uint32),
        ("info_len", c_uint32),
        ("info", c_uint64),
    ]


class QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", c_uint32),  # union with target_ifindex
        ("attach_type", c_uint32),
        ("query_flags", c_uint32),
        ("attach_flags", c_uint32),
        ("prog_ids", c_uint64),
        ("count", c_uint32),  # in: capacity of the arrays; out: how many there are
        ("_pad", c_uint32),
        ("prog_attach_flags", c_uint64),
        ("link_ids", c_uint64),  # 6.6+ (tcx and other mprog attach points)
        ("link_attach_flags", c_uint64),
        ("revision", c_uint64),
    ]


class LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", c_uint32),
        ("target_fd", c_uint32),  # union with target_ifindex
        ("attach_type", c_uint32),
        ("flags", c_uint32),
        # The per-kind union; for tcx (and cgroup on 6.15+) it starts with these two fields.
        ("relative_fd", c_uint32),  # union with relative_id
        ("_pad", c_uint32),
        ("expected_revision", c_uint64),
    ]


class LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ("link_fd", c_uint32),
        ("new_prog_fd", c_uint32),
        ("flags", c_uint32),
        ("old_prog_fd", c_uint32),
    ]


class LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", c_uint32)]


class BtfLoadAttr(ctypes.Structure):
    _fields_ = [
        ("btf", c_uint64),
        ("btf_log_buf", c_uint64),
        ("btf_size", c_uint32),
        ("btf_log_size", c_uint32),
        ("btf_log_level", c_uint32),
        ("btf_log_true_size", c_uint32),
        ("btf_flags", c_uint32),
        ("btf_token_fd", c_int32),
    ]


class BpfAttr(ctypes.Union):
    _fields_ = [
        ("map_create", MapCreateAttr),
        ("map_elem", MapElemAttr),
        ("prog_load", ProgLoadAttr),
        ("obj", ObjPinAttr),
        ("attach", ProgAttachAttr),
        ("test", TestRunAttr),
        ("id", IdAttr),
        ("info", InfoAttr),
        ("query", QueryAttr),
        ("link_create", LinkCreateAttr),
        ("link_update", LinkUpdateAttr),
        ("link_detach", LinkDetachAttr),
        ("btf_load", BtfLoadAttr),
        ("_raw", c_uint8 * ATTR_SIZE),
    ]


class MapInfoStruct(ctypes.Structure):
    """struct bpf_map_info."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_id", c_uint32),
        ("map_extra", c_uint64),
    ]


class ProgInfoStruct(ctypes.Structure):
    """struct bpf_prog_info. Pointer fields stay zero unless their count is set: the kernel fills
    only the arrays it is given room for."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),  # bit 0
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
    ]


class BtfInfoStruct(ctypes.Structure):
    """struct bpf_btf_info."""

    _fields_ = [
        ("btf", c_uint64),
        ("btf_size", c_uint32),
        ("id", c_uint32),
        ("name", c_uint64),
        ("name_len", c_uint32),
        ("kernel_btf", c_uint32),
    ]


class LinkInfoStruct(ctypes.Structure):
    """struct bpf_link_info: the common head, then the per-type union as raw bytes.

    Union members bpfshare reads (all at offset 16):
    cgroup {u64 cgroup_id; u32 attach_type}, tcx/netkit {u32 ifindex; u32 attach_type},
    netns {u32 netns_ino; u32 attach_type}, xdp {u32 ifindex}.
    """

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad", c_uint32),
        ("union", c_uint8 * 64),
    ]


# Checked at import so that a transcription slip fails loudly instead of corrupting calls.
assert ctypes.sizeof(MapCreateAttr) == 80, ctypes.sizeof(MapCreateAttr)
assert ProgLoadAttr.log_true_size.offset == 140
assert ProgLoadAttr.fd_array.offset == 120
assert QueryAttr.link_ids.offset == 40
assert LinkCreateAttr.expected_revision.offset == 24
assert ProgInfoStruct.attach_btf_id.offset == 224
assert MapInfoStruct.map_extra.offset == 80
assert ctypes.sizeof(BtfLoadAttr) == 40
assert ctypes.sizeof(BpfAttr) == ATTR_SIZE
