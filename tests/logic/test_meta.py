"""The per-program record kept in bpffs, and the fingerprint that decides whether to reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.engine.meta import META_VALUE_SIZE, ProgramMeta
from bpfshare.engine.programs import fingerprint
from bpfshare.errors import BpfshareError
from bpfshare.load.loader import MapBinding


def test_meta_round_trip() -> None:
    meta = ProgramMeta(
        fingerprint="f",
        program="count_ingress",
        digest="d",
        generation=4,
        bindings={"shared_counts": "/sys/fs/bpf/bpfshare/maps/flow-counts"},
        tc=[{"interface": "eth0", "direction": "ingress", "netns": None, "priority": 1, "handle": 1}],
    )
    raw = meta.encode()
    assert len(raw) == META_VALUE_SIZE
    assert ProgramMeta.decode(raw) == meta


def test_meta_garbage_means_unknown() -> None:
    assert ProgramMeta.decode(b"\xff\xff\x00\x00not json") == ProgramMeta()
    assert ProgramMeta.decode(b"") == ProgramMeta()


def test_meta_too_large_is_a_clear_error() -> None:
    meta = ProgramMeta(tc=[{"interface": "x" * 100}] * 1000)
    with pytest.raises(BpfshareError, match="too many attachments"):
        meta.encode()


def test_fingerprint_changes_with_what_matters() -> None:
    bind = {"m": MapBinding(pin_path=Path("/p/m"))}
    base = fingerprint("digest", "prog", bind, {"m": 7})
    assert fingerprint("digest", "prog", bind, {"m": 7}) == base
    assert fingerprint("other", "prog", bind, {"m": 7}) != base
    assert fingerprint("digest", "prog2", bind, {"m": 7}) != base
    assert fingerprint("digest", "prog", bind, {"m": 8}) != base  # the map was re-created
    assert fingerprint("digest", "prog", {"m": MapBinding(pin_path=Path("/p/n"))}, {"m": 7}) != base


def test_a_map_record_is_small_but_holds_the_longest_adopt_path() -> None:
    from bpfshare.engine.meta import MapRecord

    record = MapRecord("m", "/sys/fs/bpf/bpfshare/maps/" + "p" * 128, 42, "/sys/fs/bpf/" + "a" * 4083)
    raw = record.encode()
    assert len(raw) < META_VALUE_SIZE // 2
    assert MapRecord.decode(raw) == record
