"""Shared pinned maps: reuse after the check, refusal that touches nothing, concurrent loaders."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from bpfshare.errors import IncompatibleMapError, KernelError
from bpfshare.kernel import pins
from bpfshare.kernel.maps import Map
from bpfshare.kernel.pins import NotOnBpffsError, ensure_pin_dir, get_or_create_pinned, is_bpffs
from bpfshare.spec import MapSpec
from bpfshare.types import MapType
from tests.kernel.asm import read_u64, u32, u64

pytestmark = pytest.mark.kernel

SPEC = MapSpec(name="flow_counts", type=MapType.Hash, key_size=4, value_size=8, max_entries=1024)


def test_create_then_reuse(bpffs: Path) -> None:
    path = bpffs / "tc" / "globals" / "flow_counts"
    first, reused = get_or_create_pinned(SPEC, path, "map flow_counts")
    with first:
        assert not reused and path.exists()
        first.update(u32(1), u64(5))
        map_id = first.info().id
    second, reused = get_or_create_pinned(SPEC, path, "map flow_counts")
    with second:
        assert reused and second.info().id == map_id
        assert read_u64(second.lookup(u32(1))) == 5


def test_refused_reuse_leaves_existing_map_untouched(bpffs: Path) -> None:
    path = bpffs / "flow_counts"
    live, _ = get_or_create_pinned(SPEC, path, "setup")
    with live:
        live.update(u32(9), u64(99))
        before_id = live.info().id
    other = MapSpec(name="flow_counts", type=MapType.Array, key_size=8, value_size=8, max_entries=16)
    with pytest.raises(IncompatibleMapError) as exc:
        get_or_create_pinned(other, path, f"map 'flow_counts' pinned at {path}")
    assert exc.value.differences == [
        "Type: Hash changed to Array",
        "KeySize: 4 changed to 8",
        "MaxEntries: 1024 changed to 16",
    ]
    assert str(path) in str(exc.value)
    with Map.from_pin(path) as after:
        assert after.info().id == before_id
        assert dict(after.items()) == {u32(9): u64(99)}


def _racer(spec: MapSpec, path: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    live, reused = get_or_create_pinned(spec, Path(path), "race")
    results.put((live.info().id, reused))
    live.close()


def test_concurrent_loaders_converge_on_one_map(bpffs: Path) -> None:
    n = 8
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    path = bpffs / "race" / "shared"
    procs = [ctx.Process(target=_racer, args=(SPEC, str(path), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=30) for _ in range(n)]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    ids = {map_id for map_id, _ in answers}
    assert len(ids) == 1, answers
    assert sum(1 for _, reused in answers if not reused) == 1  # exactly one creator
    with Map.from_pin(path) as pinned:
        assert pinned.info().id in ids


def test_eexist_then_reuse(bpffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader that found no pin, but lost the pin race: it drops its map and reuses the winner's."""
    path = bpffs / "m"
    winner, _ = get_or_create_pinned(SPEC, path, "winner")
    real_open = pins._open_existing
    calls: list[int] = []

    def late_open(p: Path, subject: str) -> Map | None:
        calls.append(1)
        return None if len(calls) == 1 else real_open(p, subject)  # first look: "not there yet"

    monkeypatch.setattr(pins, "_open_existing", late_open)
    with winner:
        live, reused = get_or_create_pinned(SPEC, path, "loser")
        with live:
            assert reused and live.info().id == winner.info().id
    assert len(calls) == 2


def test_enoent_after_eexist_retries(bpffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pin existed at pin time but was removed before we could open it: create again."""
    path = bpffs / "m"
    first, _ = get_or_create_pinned(SPEC, path, "first")
    first_id = first.info().id
    first.close()
    real_open = pins._open_existing
    calls: list[int] = []

    def racing_open(p: Path, subject: str) -> Map | None:
        calls.append(1)
        if len(calls) == 1:
            return None  # misses the pin -> create -> EEXIST
        if len(calls) == 2:
            p.unlink()  # ...and then someone unpins it
        return real_open(p, subject)

    monkeypatch.setattr(pins, "_open_existing", racing_open)
    live, reused = get_or_create_pinned(SPEC, path, "retry")
    with live:
        assert not reused and live.info().id != first_id
        with Map.from_pin(path) as pinned:
            assert pinned.info().id == live.info().id


def test_ensure_pin_dir(bpffs: Path, tmp_path: Path) -> None:
    assert is_bpffs(bpffs) and not is_bpffs(tmp_path) and not is_bpffs(tmp_path / "missing")
    nested = ensure_pin_dir(bpffs / "a" / "b" / "c")
    assert nested.is_dir() and is_bpffs(nested)
    ensure_pin_dir(nested)  # idempotent
    with pytest.raises(NotOnBpffsError, match="not on a bpffs mount"):
        ensure_pin_dir(tmp_path / "pins")
    assert not (tmp_path / "pins").exists()
    with pytest.raises(NotOnBpffsError):
        get_or_create_pinned(SPEC, tmp_path / "pins" / "m", "map m")


def test_names_with_dots_are_refused_clearly(bpffs: Path) -> None:
    """bpffs reserves '.' in names and answers a bare EPERM; say so."""
    with pytest.raises(KernelError, match=r"bpffs refuses names containing '\.'"):
        ensure_pin_dir(bpffs / "v1.2" / "maps")
    with pytest.raises(KernelError, match=r"refuses names containing '\.' \('\.tmp'\)"):
        get_or_create_pinned(SPEC, bpffs / ".tmp", "map m")


def test_replace_pin_of_a_name_too_long_for_the_temporary_suffix(bpffs: Path) -> None:
    """A pin name near NAME_MAX cannot take ``_tmp<pid>``: the temporary pin is named by a digest,
    still ending in ``_tmp<pid>`` (how stale ones are found)."""
    from bpfshare.kernel.pins import NAME_MAX, replace_pin, temporary_pin_name

    name = "m" * NAME_MAX
    assert temporary_pin_name("short") == f"short_tmp{os.getpid()}"
    tmp = temporary_pin_name(name)
    assert len(tmp) <= NAME_MAX and tmp.endswith(f"_tmp{os.getpid()}")
    pins_dir = bpffs / "links"
    with Map.create(SPEC) as first, Map.create(SPEC) as second:
        replace_pin(first, pins_dir / name)
        replace_pin(second, pins_dir / name)
        with Map.from_pin(pins_dir / name) as pinned:
            assert pinned.info().id == second.info().id
    assert [p.name for p in pins_dir.iterdir()] == [name]
