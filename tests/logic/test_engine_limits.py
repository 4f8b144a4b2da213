"""Bounded input (issue 11): bytecode files are regular, bounded and never block; maps fit a budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpfshare.api.resources import Bytecode
from bpfshare.api.status import Phase
from bpfshare.engine import Engine, Limits
from bpfshare.engine.bytecode import fetch
from bpfshare.errors import BpfshareError

from .enginekit import PIN_ROOT, Node, bpfmap, bpfprog, obj, ready


def test_a_fifo_is_refused_at_once_instead_of_blocking_the_node(tmp_path: Path) -> None:
    fifo = tmp_path / "object.o"
    os.mkfifo(fifo)
    with pytest.raises(BpfshareError, match=r"not a regular file \(a FIFO\)"):
        fetch(Bytecode(path=str(fifo)))


def test_a_character_device_is_refused_instead_of_read_forever() -> None:
    with pytest.raises(BpfshareError, match=r"\(path /dev/zero\): not a regular file \(a character device\)"):
        fetch(Bytecode(path="/dev/zero"))


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BpfshareError, match="not a regular file"):
        fetch(Bytecode(path=str(tmp_path)))


def test_a_file_over_the_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.o"
    big.write_bytes(Path(obj("flow_counter.o")).read_bytes() + bytes(4096))
    with pytest.raises(BpfshareError, match="larger than the 4096 byte limit"):
        fetch(Bytecode(path=str(big)), limit=4096)
    assert fetch(Bytecode(path=str(big)), limit=10 << 20).startswith(b"\x7fELF")


def test_the_engine_applies_its_bytecode_limit_to_one_program_only(tmp_path: Path) -> None:
    node = Node()
    node.engine = Engine(PIN_ROOT, "node-1", kernel=node.kernel, limits=Limits(max_bytecode_bytes=1024))
    report = node.run([bpfmap()], [bpfprog()])
    assert "larger than the 1024 byte limit" in report.programs["count-ingress"].message
    ready(report.maps["flow-counts"])


def test_a_map_over_the_memory_budget_is_refused_before_the_kernel_is_asked() -> None:
    node = Node()
    huge = bpfmap("huge", pinName="huge", maxEntries=2**31 - 1)
    report = node.run([huge, bpfmap()], [])
    entry = report.maps["huge"]
    assert entry.phase is Phase.Error
    assert "2147483647 entries x (key 4 + value 8) bytes = 24.0 GiB" in entry.message
    assert "more than the map memory budget of 1.0 GiB (agent flag --map-memory-budget)" in entry.message
    names = {view.name for i in node.kernel.live_maps() if (view := node.kernel.map_by_id(i)) is not None}
    assert "huge" not in names and not node.kernel.exists(PIN_ROOT / "maps" / "huge")


def test_per_cpu_maps_count_one_value_per_possible_cpu() -> None:
    node = Node()
    node.engine = Engine(PIN_ROOT, "node-1", kernel=node.kernel, limits=Limits(map_memory_budget=100_000))
    fits = bpfmap("fits", pinName="fits", type="PercpuArray", valueSize=8, maxEntries=4096)  # (4 + 8) x 4096
    over = bpfmap("over", pinName="over", type="PercpuArray", valueSize=8, maxEntries=8192)  # (4 + 16) x 8192
    report = node.run([fits, over], [])
    ready(report.maps["fits"])
    assert "value 8 x 2 CPUs" in report.maps["over"].message


@pytest.mark.parametrize(
    ("text", "size"), [("1073741824", 1 << 30), ("64Mi", 64 << 20), ("1Gi", 1 << 30), ("8Ki", 8192)]
)
def test_limits_take_kubernetes_binary_quantities(text: str, size: int) -> None:
    from bpfshare.commands.limits import parse_quantity

    assert parse_quantity(text) == size


@pytest.mark.parametrize("text", ["1G", "-1", "64 MiB", "lots"])
def test_a_bad_quantity_is_refused_naming_it(text: str) -> None:
    from bpfshare.commands.limits import parse_quantity

    with pytest.raises(ValueError, match="is not a size"):
        parse_quantity(text)


def test_an_unchanged_bytecode_file_is_not_read_again_and_a_rewritten_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from bpfshare.engine import bytecode

    path = tmp_path / "flow_counter.o"
    shutil.copy(obj("flow_counter.o"), path)
    node = Node()
    first = ready(node.run([bpfmap()], [bpfprog(path=str(path))]).programs["count-ingress"])
    real_fetch = bytecode.fetch

    def no_reads(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("an unchanged file was read again")

    monkeypatch.setattr(bytecode, "fetch", no_reads)
    assert (
        ready(node.run([bpfmap()], [bpfprog(path=str(path))]).programs["count-ingress"]).program_id == first.program_id
    )
    monkeypatch.setattr(bytecode, "fetch", real_fetch)
    path.write_bytes(path.read_bytes() + b"v2")  # a new version in place: size and mtime change
    report = node.run([bpfmap()], [bpfprog(path=str(path))])
    assert ready(report.programs["count-ingress"]).program_id != first.program_id
    assert ("count-ingress", "Upgraded") in [(e.name, e.reason) for e in report.events]
