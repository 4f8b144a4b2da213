"""The engine (on the memory kernel) on objects beyond one self-contained program: a BpfProgram naming
a program bpfshare cannot load is refused at plan time with the reason while one naming a loadable
program of the same object loads; a tail-call pipeline's load pins the maps of all its programs."""

from __future__ import annotations

from bpfshare.api.status import Phase
from tests.logic.enginekit import PIN_ROOT, Node, bpfprog, obj, ready


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


def test_a_tail_call_pipeline_pins_the_maps_of_the_whole_load() -> None:
    node = Node()
    report = node.run([], [bpfprog("pipeline", program="entry", path=obj("tail_calls.o"), maps={})])
    ready(report.programs["pipeline"])
    prog_dir = PIN_ROOT / "programs" / "pipeline"
    assert node.kernel.exists(prog_dir / "maps" / "jumps") and node.kernel.exists(prog_dir / "maps" / "trail")
