"""What reading untrusted bytes must give: a ``CollectionSpec`` the loader can rely on, or an
``ObjectError`` from an explicit check whose message says where the fault is (a section, table,
symbol, program or map, or the ELF header).

``read_untrusted`` catches ``ObjectError`` only: any other exception (a TypeError, KeyError or
IndexError out of a parser, i.e. a bug) propagates and fails the test.
"""

from __future__ import annotations

import json
import re

from bpfshare.errors import ObjectError
from bpfshare.object import read_collection
from bpfshare.object.guard import DECODER_ERRORS
from bpfshare.spec import CollectionSpec
from tests.unit.bpfasm import CALL, LD_IMM64, decode

# How the reader's messages name where the fault is: "<where>: <what>".
WHERE = r"(section [^\s:]|symbol table |relocation section |program '|map '|inner map of '|\.BTF(\.ext)?[ :])"
# Faults of the object as a whole: the ELF header and the tables every object must have.
WHOLE_OBJECT = (
    r"(not an ELF object|not a 64-bit ELF object|bad ELF data encoding|not an eBPF object|not a relocatable object"
    r"|bad section header size|bad section name string table index|the object has no |unsupported: big-endian)"
)


def says_where(message: str) -> bool:
    if re.match(WHOLE_OBJECT, message):
        return True
    feature = message.removeprefix("unsupported: ")
    if re.match(WHERE, feature):
        return True
    # "unsupported: <feature> ... in|by|for|(section ...": the feature first, then where it is used.
    return feature != message and re.search(r"[ (]" + WHERE, feature) is not None


def check_object_error(exc: ObjectError) -> None:
    """Fail unless ``exc`` comes from an explicit check and its message says where."""
    assert not isinstance(exc.__cause__, DECODER_ERRORS), f"only guard's backstop caught this: {exc}"
    assert says_where(str(exc)), f"the message does not say where the fault is: {exc}"


def check_consistent(spec: CollectionSpec) -> None:
    """What the loader relies on: relocations on ld_imm64s of known maps, calls inside the program."""
    for prog in spec.programs.values():
        code = prog.instructions
        assert len(code) % 8 == 0 and code
        insns = decode(code)
        for rel in prog.relocations:
            assert 0 <= rel.insn < len(insns) - 1
            assert insns[rel.insn].op == LD_IMM64
            assert rel.map_name in spec.maps
        for i, ins in enumerate(insns):
            if ins.op == CALL and ins.src == 1:
                assert 0 <= i + ins.imm + 1 < len(insns)
        prog.instructions_with_fds({name: 3 for name in prog.map_names})
    json.dumps(spec.describe())


def read_untrusted(data: bytes) -> CollectionSpec | ObjectError:
    """Read ``data``; check whichever outcome it has (see the module doc) and return it."""
    try:
        spec = read_collection(data)
    except ObjectError as exc:
        check_object_error(exc)
        return exc
    check_consistent(spec)
    return spec
