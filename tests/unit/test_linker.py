"""bpf-to-bpf calls, relocations carried into subprograms, and what the linker refuses."""

from __future__ import annotations

import struct

import pytest

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.object import read_collection
from bpfshare.object.btf import Btf
from bpfshare.object.elf import ElfObject
from bpfshare.spec import CoreKind, RelocationKind
from bpfshare.types import MapFlag
from tests.fixtures.objects import CompileBpf
from tests.unit.bpfasm import LD_IMM64, calls, function_code, normalized

MAP = """
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");
"""

PING_PONG = (
    MAP
    + """
static __noinline int pong(int x);
static __noinline int ping(int x) {
    __u32 k = x;
    __u64 *v = bpf_map_lookup_elem(&counts, &k);
    if (v) return x > 1 ? pong(x - 1) : (int)*v;
    return 0;
}
static __noinline int pong(int x) { return x > 1 ? ping(x - 2) : 7; }
__noinline int global_helper(int x) { return x * 3; }

SEC("tc") int first(struct __sk_buff *skb) { return ping(skb->len) + pong(skb->mark); }
SEC("tc") int second(struct __sk_buff *skb) { return global_helper(skb->len) + pong(skb->len); }
SEC("xdp") int third(struct xdp_md *ctx) { return global_helper(ctx->ingress_ifindex); }
char LICENSE[] SEC("license") = "GPL";
"""
)


def test_mutual_calls_appended_once(compile_bpf: CompileBpf) -> None:
    path = compile_bpf(PING_PONG)
    spec = read_collection(path)
    assert set(spec.programs) == {"first", "second", "third"}
    code = {
        name: function_code(path, sec, name)
        for sec, name in [
            ("tc", "first"),
            ("tc", "second"),
            ("xdp", "third"),
            (".text", "ping"),
            (".text", "pong"),
            (".text", "global_helper"),
        ]
    }

    first = spec.programs["first"].instructions
    # first, then ping and pong (each once, although they call each other), and nothing else
    assert len(first) == len(code["first"]) + len(code["ping"]) + len(code["pong"])
    starts = {name: first.find(normalized(code[name])) for name in ("ping", "pong")}
    assert normalized(first).find(normalized(code["ping"])) > 0
    assert normalized(first).find(normalized(code["pong"])) > 0
    starts = {name: normalized(first).find(normalized(code[name])) // 8 for name in ("ping", "pong")}
    # every call lands on the first instruction of ping or pong
    targets = {t for _, t in calls(first)}
    assert targets == set(starts.values())

    second = spec.programs["second"].instructions
    assert len(second) == sum(len(code[n]) for n in ("second", "global_helper", "ping", "pong"))
    third = spec.programs["third"].instructions
    assert len(third) == len(code["third"]) + len(code["global_helper"])
    assert calls(third) == [(calls(third)[0][0], len(code["third"]) // 8)]


def test_relocations_inside_subprograms(compile_bpf: CompileBpf) -> None:
    spec = read_collection(compile_bpf(PING_PONG))
    for name in ("first", "second"):
        prog = spec.programs[name]
        assert prog.map_names == ["counts"]
        (rel,) = prog.relocations
        assert rel.kind is RelocationKind.MAP_FD
        assert prog.instructions[rel.insn * 8] == LD_IMM64
        assert rel.insn >= len(function_code(compile_bpf(PING_PONG), "tc", name)) // 8
    assert spec.programs["third"].relocations == ()


def test_call_within_a_program_section(compile_bpf: CompileBpf) -> None:
    """A call from a program to a static function of its own section carries no relocation."""
    src = """
    static __noinline __attribute__((section("tc"))) int local_helper(int x) { return x + 1; }
    SEC("tc") int caller(struct __sk_buff *skb) { return local_helper(skb->len); }
    char LICENSE[] SEC("license") = "GPL";
    """
    path = compile_bpf(src)
    spec = read_collection(path)
    caller = spec.programs["caller"]
    helper = function_code(path, "tc", "local_helper")
    ((_, target),) = calls(caller.instructions)
    assert caller.instructions[target * 8 :] == helper


GLOBALS = """
__u64 first_var = 1;
static volatile __u64 second_var = 2;  /* static: relocated against the section symbol + 8 */
static volatile __u32 zeroed[3];
const volatile __u32 config[2] = {5, 6};
SEC("cgroup_skb/egress") int globals(struct __sk_buff *skb) {
    zeroed[2] = skb->len;
    return (second_var + config[1] + first_var) & 1;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_global_data_offsets(compile_bpf: CompileBpf) -> None:
    spec = read_collection(compile_bpf(GLOBALS))
    assert spec.maps[".data"].contents == struct.pack("<QQ", 1, 2)
    assert spec.maps[".rodata"].contents == struct.pack("<II", 5, 6)
    assert spec.maps[".bss"].value_size == 12 and spec.maps[".bss"].contents == bytes(12)
    refs = {(r.map_name, r.offset) for r in spec.programs["globals"].relocations}
    assert all(r.kind is RelocationKind.MAP_VALUE for r in spec.programs["globals"].relocations)
    # offsets are those of the variables (element offsets are in the load instructions)
    assert refs == {(".data", 0), (".data", 8), (".rodata", 0), (".bss", 0)}


def test_custom_data_sections_and_strings(compile_bpf: CompileBpf) -> None:
    src = """
    __u32 tuned SEC(".data.tuning") = 42;
    const volatile __u32 limit SEC(".rodata.limits") = 9;
    SEC("tc") int custom(struct __sk_buff *skb) {
        bpf_trace_printk("len %d\\n", 8, skb->len);
        return tuned + limit;
    }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert spec.maps[".data.tuning"].contents == (42).to_bytes(4, "little")
    limits = spec.maps[".rodata.limits"]
    assert (limits.flags, limits.contents) == (MapFlag.RdonlyProg, (9).to_bytes(4, "little"))
    strings = [m for m in spec.maps.values() if m.name.startswith(".rodata.str")]
    assert strings and b"len %d\n\0" in (strings[0].contents or b"")
    assert {r.map_name for r in spec.programs["custom"].relocations} == {
        ".data.tuning",
        ".rodata.limits",
        strings[0].name,
    }


def test_core_relocations_follow_linked_subprograms(compile_bpf: CompileBpf) -> None:
    """CO-RE records become relocations on linked instruction indexes, in the program and in the
    .text subprogram appended to it, with the object's BTF kept for the loader."""
    src = """
    struct task_struct { int pid; int tgid; } __attribute__((preserve_access_index));
    static __attribute__((noinline)) int sub(struct task_struct *t) { return t->tgid; }
    SEC("kprobe/do_exit") int core_prog(struct task_struct *t) { return t->pid + sub(t); }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["core_prog"]
    assert prog.local_btf is not None
    relos = prog.core_relocations
    assert [(r.kind, r.access) for r in relos] == [
        (CoreKind.FIELD_BYTE_OFFSET, "0:0"),
        (CoreKind.FIELD_BYTE_OFFSET, "0:1"),
    ]
    code = prog.instructions
    for r in relos:
        assert code[r.insn * 8] & 0x07 == 0x01  # an LDX, in the linked program
    assert relos[1].insn > relos[0].insn  # the subprogram's, after the program's own code
    local = Btf(prog.local_btf)
    assert local.name(local.type(relos[0].type_id)) == "task_struct"


def _patch_insn(path, section: str, index: int, byte: int, value: int) -> bytes:  # type: ignore[no-untyped-def]
    data = bytearray(path.read_bytes())
    sec = ElfObject(bytes(data)).by_name[section]
    data[sec.offset + index * 8 + byte] = value
    return bytes(data)


def test_unrelocated_pseudo_instructions_are_refused(compile_bpf: CompileBpf) -> None:
    src = """
    SEC("tc") int constant(struct __sk_buff *skb) {
        __u64 big;
        asm volatile("%0 = 0x1234567887654321 ll" : "=r"(big));
        return big == skb->len;
    }
    char LICENSE[] SEC("license") = "GPL";
    """
    path = compile_bpf(src)
    prog = read_collection(path).programs["constant"]
    index = prog.instructions[::8].index(LD_IMM64)
    regs = prog.instructions[index * 8 + 1]
    # src_reg := BPF_PSEUDO_MAP_FD without a relocation: a map fd the object cannot know
    patched = _patch_insn(path, "tc", index, 1, regs | 0x10)
    with pytest.raises(UnsupportedError, match="pseudo source register 1 and no relocation"):
        read_collection(patched).program("constant")
    # a call with src_reg BPF_PSEUDO_KFUNC_CALL
    src_call = """
    SEC("tc") int helper_call(struct __sk_buff *skb) { return bpf_get_prandom_u32(); }
    char LICENSE[] SEC("license") = "GPL";
    """
    path = compile_bpf(src_call)
    prog = read_collection(path).programs["helper_call"]
    index = prog.instructions[::8].index(0x85)
    with pytest.raises(UnsupportedError, match="kfunc call"):
        read_collection(_patch_insn(path, "tc", index, 1, 0x20)).program("helper_call")
    # a call whose relative target falls outside every function
    bad_target = bytearray(_patch_insn(path, "tc", index, 1, 0x10))
    with pytest.raises(ObjectError, match=r"is in no function"):
        read_collection(bytes(bad_target)).program("helper_call")


def test_a_reference_into_an_unsupported_section_refuses_that_program_only(compile_bpf: CompileBpf) -> None:
    src = """
    struct ops { int (*init)(void *); };
    SEC("struct_ops/init") int init(void *ctx) { return 0; }
    SEC(".struct_ops") struct ops my_ops = { .init = (void *)init };
    SEC("tc") int peeks(struct __sk_buff *skb) { return *(volatile int *)&my_ops; }
    SEC("tc") int plain(struct __sk_buff *skb) { return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    spec = read_collection(compile_bpf(src))
    assert list(spec.programs) == ["plain"]
    assert spec.refused_maps["my_ops"].reason == "unsupported: struct_ops maps (section .struct_ops)"
    with pytest.raises(UnsupportedError, match=r"^program 'peeks' cannot be loaded: unsupported: struct_ops maps "):
        spec.program("peeks")


def test_a_long_call_chain_is_linked_without_recursion(compile_bpf: CompileBpf) -> None:
    """Subprograms are appended depth first (libbpf's order) with an explicit stack: a chain of
    calls as long as the object's functions does not exhaust Python's stack."""
    depth = 1500
    chain = "".join(
        f"static __attribute__((noinline)) int f{n}(int x) {{ return f{n + 1}(x) + 1; }}\n" for n in range(depth)
    )
    src = f"""
    static __attribute__((noinline)) int f{depth}(int x) {{ return x; }}
    {chain}
    SEC("tc") int deep(struct __sk_buff *skb) {{ return f0(skb->len); }}
    char LICENSE[] SEC("license") = "GPL";
    """
    forward = "".join(f"static int f{n}(int x);\n" for n in range(depth + 1))
    prog = read_collection(compile_bpf(forward + src)).programs["deep"]
    assert len(prog.instructions) // 8 > depth
