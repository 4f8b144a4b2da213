"""bpfshare.metrics without a cluster: the phase bookkeeping across partial passes, the address
parsing, and the entry counts read from real maps at scrape time."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.agent.metrics import AgentMetrics, parse_address
from bpfshare.agent.state import Snapshot
from bpfshare.api.status import Event, MapStatus, Phase
from bpfshare.engine import Report, StatusEntry
from tests.deploy.conftest import parse_metrics, sample


def snapshot(*keys: tuple[str, str], invalid: dict[tuple[str, str], str] | None = None) -> Snapshot:
    return Snapshot(
        maps=[],
        programs=[],
        labels={},
        only_programs=None,
        bodies={k: {"metadata": {"name": k[1]}} for k in keys},
        invalid=invalid or {},
    )


def scrape(metrics: AgentMetrics) -> dict:
    from prometheus_client import generate_latest

    return parse_metrics(generate_latest(metrics.registry).decode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9477", ("0.0.0.0", 9477)),
        (":9477", ("0.0.0.0", 9477)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:9477", ("::", 9477)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9477", "host:", "host:port"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


def test_phases_survive_partial_passes_and_leave_with_the_resource() -> None:
    metrics = AgentMetrics("n1", requests=lambda: 7)
    a, b, m = ("BpfProgram", "a"), ("BpfProgram", "b"), ("BpfMap", "m")
    first = Report(
        maps={"m": StatusEntry(Phase.Ready, map=MapStatus("/nonexistent"))},
        programs={"a": StatusEntry(Phase.Ready), "b": StatusEntry(Phase.Pending)},
        events=[Event("BpfProgram", "a", "Normal", "Loaded", "")],
        seconds=0.02,
    )
    metrics.observe_pass(snapshot(a, b, m), first)
    # A pass that re-checked only b (only_programs): a keeps its phase.
    metrics.observe_pass(
        snapshot(a, b, m),
        Report(
            maps={"m": StatusEntry(Phase.Ready)},
            programs={"b": StatusEntry(Phase.Error, "x")},
            events=[Event("BpfProgram", "b", "Warning", "Failed", "x")],
        ),
    )
    s = scrape(metrics)
    assert sample(s, "bpfshare_resources", kind="BpfProgram", phase="Ready") == 1
    assert sample(s, "bpfshare_resources", kind="BpfProgram", phase="Error") == 1
    assert sample(s, "bpfshare_resources", kind="BpfMap", phase="Ready") == 1
    assert sample(s, "bpfshare_program_loads_total", reason="Loaded") == 1
    assert sample(s, "bpfshare_failures_total", kind="BpfProgram") == 1
    assert sample(s, "bpfshare_reconcile_duration_seconds_count") == 2
    assert sample(s, "bpfshare_api_requests_total") == 7
    # b released (deselected), a deleted from the cluster, an unparsable resource in Error.
    bad = ("BpfMap", "bad")
    metrics.observe_pass(
        snapshot(b, m, bad, invalid={bad: "spec.keySize: required"}),
        Report(maps={"m": StatusEntry(Phase.Ready)}, released={b}),
    )
    s = scrape(metrics)
    assert sample(s, "bpfshare_resources", kind="BpfProgram", phase="Ready") == 0
    assert sample(s, "bpfshare_resources", kind="BpfProgram", phase="Error") == 0
    assert sample(s, "bpfshare_resources", kind="BpfMap", phase="Error") == 1
    # The map entry without pinPath is not Ready with a pin any more, and an unreadable pin is skipped.
    assert sample(s, "bpfshare_map_max_entries", map="m") is None


@pytest.mark.kernel
def test_entry_counts_of_real_maps(bpffs: Path) -> None:
    from bpfshare.kernel.maps import Map
    from bpfshare.spec import MapSpec
    from bpfshare.types import MapType

    specs = {
        "hash": MapSpec(name="h", type=MapType.Hash, key_size=4, value_size=4, max_entries=8),
        "array": MapSpec(name="a", type=MapType.Array, key_size=4, value_size=4, max_entries=8),
    }
    metrics = AgentMetrics("n1", entry_ttl=0)
    fields = {}
    for name, spec in specs.items():
        with Map.create(spec) as live:
            live.pin(bpffs / name)
            if name == "hash":
                for key in range(5):
                    live.update(key.to_bytes(4, "little"), b"\0" * 4)
        fields[name] = StatusEntry(Phase.Ready, map=MapStatus(str(bpffs / name)))
    metrics.observe_pass(snapshot(("BpfMap", "hash"), ("BpfMap", "array")), Report(maps=fields))
    s = scrape(metrics)
    assert sample(s, "bpfshare_map_entries", map="hash") == 5
    assert sample(s, "bpfshare_map_max_entries", map="hash") == 8
    assert sample(s, "bpfshare_map_entries", map="array") is None
    assert sample(s, "bpfshare_map_max_entries", map="array") == 8
    with Map.from_pin(bpffs / "hash") as live:
        live.delete((0).to_bytes(4, "little"))
    assert sample(scrape(metrics), "bpfshare_map_entries", map="hash") == 4  # ttl 0: read again
