"""The memory kernel keeps the kernel's rules that the engine's decisions depend on."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from bpfshare.api.targets import TcTarget, TcxTarget
from bpfshare.engine.memory_kernel import MemoryKernel
from bpfshare.errors import IncompatibleMapError, KernelError, TargetNotFoundError
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

from .enginekit import PIN_ROOT, Node, bpfmap, bpfprog, tcx

SPEC = MapSpec("counts", MapType.Array, 4, 8, 4)
PIN = PIN_ROOT / "maps" / "counts"


def test_a_map_lives_while_pinned_or_used_and_goes_with_its_contents() -> None:
    kernel = MemoryKernel()
    info, created = kernel.get_or_create_map(SPEC, PIN, "map")
    assert created and kernel.live_maps() == [info.id]
    kernel.update(PIN, bytes(4), b"x" * 8)
    kernel.pin_existing_map(PIN, PIN_ROOT / "second")
    kernel.unpin(PIN)
    assert kernel.live_maps() == [info.id], "the second pin holds it"
    kernel.unpin(PIN_ROOT / "second")
    assert kernel.live_maps() == []
    assert kernel.map_by_id(info.id) is None


def test_a_program_holds_its_maps_after_their_pins_are_gone() -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog()])
    map_id = report.maps["flow-counts"].map_id
    node.kernel.unpin(PIN_ROOT / "maps" / "flow-counts")
    assert node.kernel.map_by_id(map_id or 0) is not None


def test_an_existing_pin_is_reused_only_when_compatible() -> None:
    kernel = MemoryKernel()
    first, _ = kernel.get_or_create_map(SPEC, PIN, "map")
    again, created = kernel.get_or_create_map(SPEC, PIN, "map")
    assert (again.id, created) == (first.id, False)
    with pytest.raises(IncompatibleMapError, match="MaxEntries: 4 changed to 8"):
        kernel.get_or_create_map(MapSpec("counts", MapType.Array, 4, 8, 8), PIN, "map")
    assert kernel.map_at(PIN).id == first.id


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (PIN_ROOT / "a.b", errno.EPERM),  # bpffs refuses names with a '.'
        (Path("/tmp/not-bpffs/x"), errno.EPERM),
    ],
)
def test_pins_follow_bpffs_rules(path: Path, code: int) -> None:
    with pytest.raises(KernelError) as exc:
        MemoryKernel().get_or_create_map(SPEC, path, "map")
    assert exc.value.errno == code


def test_pinning_over_an_existing_pin_is_eexist() -> None:
    kernel = MemoryKernel()
    kernel.get_or_create_map(SPEC, PIN, "map")
    other, _ = kernel.get_or_create_map(SPEC, PIN_ROOT / "other", "map")
    with pytest.raises(KernelError) as exc:
        kernel.pin_existing_map(other.id, PIN)
    assert exc.value.errno == errno.EEXIST


def test_an_array_key_must_be_4_bytes_as_the_kernel_says() -> None:
    with pytest.raises(KernelError) as exc:
        MemoryKernel().get_or_create_map(MapSpec("a", MapType.Array, 8, 8, 4), PIN, "map")
    assert exc.value.errno == errno.EINVAL


def test_a_removed_interface_takes_its_filters_and_leaves_tcx_links_defunct() -> None:
    node = Node()
    report = node.run([bpfmap()], [bpfprog(), bpfprog("x", "count_tcx_ingress", attach=tcx("eth0"))])
    link_pin = Path(report.programs["x"].program.attachments[0].pin_path or "")  # type: ignore[union-attr]
    node.kernel.remove_interface("eth0")
    assert node.kernel.tc_filters() == {}
    assert node.kernel.current_link(link_pin, TcxTarget("eth0", "ingress")) is None
    with pytest.raises(TargetNotFoundError, match="interface eth0 not found"):
        node.kernel.tc_filter(TcTarget("eth0", "ingress"))


def test_a_fault_is_raised_once_by_the_named_operation() -> None:
    kernel = MemoryKernel()
    kernel.fail("map_at", KernelError("boom", errno.EIO))
    kernel.get_or_create_map(SPEC, PIN, "map")
    with pytest.raises(KernelError, match="boom"):
        kernel.map_at(PIN)
    assert kernel.map_at(PIN).name == "counts"


def test_unpinning_a_directory_is_refused() -> None:
    kernel = MemoryKernel()
    kernel.get_or_create_map(SPEC, PIN, "map")
    with pytest.raises(KernelError) as exc:
        kernel.unpin(PIN.parent)
    assert exc.value.errno == errno.EISDIR
    assert kernel.exists(PIN)


def test_the_kernel_object_name_is_cut_to_15_characters() -> None:
    info, _ = MemoryKernel().get_or_create_map(MapSpec("a_very_long_map_name", MapType.Array, 4, 8, 4), PIN, "m")
    assert info.name == "a_very_long_map"
