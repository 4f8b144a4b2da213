"""Kernel BTF: split BTF (a module's, on vmlinux), enumerators, parameters, bitfields, INT encoding,
lookups by name and kind, and the per-process cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.errors import BpfshareError
from bpfshare.object import kernel_btf as kb
from bpfshare.object.btf import Btf, Kind
from tests.unit.btfbuild import BtfBuilder


def _vmlinux() -> BtfBuilder:
    b = BtfBuilder()
    u32 = b.int_("unsigned int", 4)
    s8 = b.int_("signed char", 1, signed=True, char=True)
    b.struct("sk_buff", 16, [("len", u32, 0), ("flags", u32, 32, 3), ("mark", u32, 35, 5), ("c", s8, 64)])
    b.enum("color", [("RED", 0), ("BLUE", 0xFFFFFFFF)])
    b.enum("sgn", [("NEG", -2)], signed=True)
    b.enum64("big", [("HUGE", 1 << 40), ("TOP", (1 << 64) - 1)])
    proto = b.func_proto(u32, [("skb", b.ptr(3)), ("n", u32)])
    b.func("bpf_thing", proto)
    return b


def test_decoders() -> None:
    btf = Btf(bytes(_vmlinux()))
    (skb,) = btf.find("sk_buff", Kind.STRUCT)
    members = btf.members(btf.type(skb))
    assert [(m.name, m.offset, m.bitfield_size) for m in members] == [
        ("len", 0, 0), ("flags", 32, 3), ("mark", 35, 5), ("c", 64, 0)
    ]  # fmt: skip
    (color,) = btf.find("color")
    assert btf.enumerators(btf.type(color)) == [("RED", 0), ("BLUE", 0xFFFFFFFF)]
    assert btf.enumerators(btf.type(btf.find("sgn")[0])) == [("NEG", -2)]
    assert btf.enumerators(btf.type(btf.find("big")[0])) == [("HUGE", 1 << 40), ("TOP", (1 << 64) - 1)]
    func = btf.type(btf.find("bpf_thing", Kind.FUNC)[0])
    assert [p.name for p in btf.params(btf.type(func.size_or_type))] == ["skb", "n"]
    enc = btf.int_encoding(btf.type(btf.find("signed char")[0]))
    assert (enc.signed, enc.char, enc.bits) == (True, True, 8)
    assert btf.find("sk_buff", Kind.UNION) == []


def test_split_btf_continues_base_ids_and_strings(tmp_path: Path) -> None:
    base_b = _vmlinux()
    mod_b = BtfBuilder(base=base_b)
    first = mod_b.next_id
    mod_t = mod_b.struct("mod_state", 8, [("len", 2, 0), ("skb", base_b.next_id - 3, 32)])  # reuses base "len"
    assert mod_t == first
    (tmp_path / "vmlinux").write_bytes(bytes(base_b))
    (tmp_path / "mymod").write_bytes(bytes(mod_b))
    kernel = kb.KernelBtf(Btf(bytes(base_b)), tmp_path)
    assert kernel.find("mod_state") == []  # modules only when asked
    (found,) = kernel.find("mod_state", Kind.STRUCT, modules=True)
    assert (found.id, found.module) == (first, "mymod")
    mod = found.btf
    assert mod.count == first + 1 and mod.type(3).kind is Kind.STRUCT  # base types through the module
    assert [m.name for m in mod.members(mod.type(first))] == ["len", "skb"]
    assert [k.module for k in kernel.find("sk_buff", modules=True)] == [""]  # base types not repeated
    assert mod.find("sk_buff") == [3]


def test_cache_and_btf_file(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux.btf"
    path.write_bytes(bytes(_vmlinux()))
    kb.use_file(path)
    try:
        first = kb.kernel_btf()
        assert kb.kernel_btf() is first
        assert first.find("sk_buff", modules=True)[0].id == 3
        kb.clear_cache()
        assert kb.kernel_btf() is not first
        kb.use_file(tmp_path / "missing")
        with pytest.raises(BpfshareError, match="missing"):
            kb.kernel_btf()
    finally:
        kb.use_file(None)
