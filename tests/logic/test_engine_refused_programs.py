"""The engine on an object holding programs bpfshare cannot load: a BpfProgram naming one is refused
at plan time with the reason, one naming a loadable program of the same object loads."""

from __future__ import annotations

from bpfshare.api.status import Phase
from tests.logic.enginekit import Node, bpfprog, obj, ready


def test_a_refused_program_is_an_error_naming_why_and_its_neighbour_loads() -> None:
    node = Node()
    mixed = obj("mixed_object.o")
    refused = bpfprog("cc", program="cc_init", path=mixed, maps={})
    loadable = bpfprog("count", program="count_packets", path=mixed, maps={})
    report = node.run([], [refused, loadable])
    entry = report.programs["cc"]
    assert entry.phase is Phase.Error
    assert entry.message.startswith(
        "spec.program: program 'cc_init' cannot be loaded: unsupported: program 'cc_init' (section "
        "struct_ops/cc_init): a struct_ops program"
    ), entry.message
    ready(report.programs["count"])
    assert len(node.kernel.live_programs()) == 1


def test_a_program_named_by_its_section_when_the_only_one_there_is_refused() -> None:
    report = Node().run([], [bpfprog("odd", program="mystery", path=obj("mixed_object.o"), maps={})])
    assert report.programs["odd"].phase is Phase.Error
    assert "program 'odd_one' cannot be loaded" in report.programs["odd"].message
