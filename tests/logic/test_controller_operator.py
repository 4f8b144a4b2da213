"""The controller's kopf registry: one daemon (on the peering object, without a finalizer) and no
handler that would make kopf write to users' objects (no change handlers, no event handlers)."""

from __future__ import annotations

from kubernetes import client

from bpfshare.controller.operator import PEERING_PLURAL, Controller, build_registry, random_priority
from bpfshare.credentials import ApiCredentials


def test_the_only_daemon_is_on_the_peering_object_and_holds_no_finalizer() -> None:
    registry = build_registry(
        Controller(client.ApiClient(client.Configuration())), ApiCredentials(client.Configuration()), "p"
    )
    (daemon,) = registry._spawning.get_all_handlers()
    assert daemon.selector is not None and daemon.selector.any_name == PEERING_PLURAL
    assert daemon.requires_finalizer is False
    assert registry._changing.get_all_handlers() == []  # no progress, diff base or finalizer on any object
    assert registry._watching.get_all_handlers() == []
    assert registry._indexing.get_all_handlers() == []


def test_priorities_are_random_and_positive() -> None:
    drawn = {random_priority() for _ in range(100)}
    assert len(drawn) == 100 and min(drawn) >= 1
