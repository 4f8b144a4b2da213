"""Link pin names: readable (and reversible) while they fit a file name, a stable digest beyond."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from bpfshare.api.targets import AttachTarget, CgroupTarget, TcxTarget
from bpfshare.errors import BpfshareError
from bpfshare.load.attach import (
    NAME_MAX,
    HashedLinkPinError,
    is_hashed_link_pin,
    link_pin_name,
    link_pin_path,
    link_pin_target,
    target_from_link_pin,
)

DEEP = CgroupTarget("/" + "/".join(["kubepods.slice", "kubepods-burstable.slice"] + ["x" * 60] * 4), "egress")
DEEP_INGRESS = CgroupTarget(DEEP.path, "ingress")
SHORT: list[AttachTarget] = [
    CgroupTarget("/", "egress"),
    CgroupTarget("a/b.c/d", "connect4"),
    TcxTarget("eth0", "ingress", "/run/netns/x"),
    CgroupTarget("/" + "y" * 200, "egress"),  # 218 bytes spelled out: still readable
]


@pytest.mark.parametrize("target", SHORT, ids=lambda t: t.key[:30])
def test_names_that_fit_are_as_before(target: AttachTarget) -> None:
    """Existing pins must keep being found: the readable form is unchanged wherever it fits."""
    name = link_pin_name(target)
    assert name == quote(target.key, safe="@:-_").replace(".", "%2E")
    assert not is_hashed_link_pin(name)
    assert target_from_link_pin(name) == target
    assert link_pin_target(name, []) == target


def test_a_deep_cgroup_gets_a_stable_digest_that_fits() -> None:
    spelled = quote(DEEP.key, safe="@:-_").replace(".", "%2E")
    assert len(spelled) > NAME_MAX  # ENAMETOOLONG, before
    name = link_pin_name(DEEP)
    assert len(name) <= 200 and "/" not in name and "." not in name
    assert name.startswith("cgroup~") and is_hashed_link_pin(name)
    assert link_pin_name(CgroupTarget(DEEP.path, "egress")) == name  # stable: the same key, the same name
    assert link_pin_name(DEEP_INGRESS) != name  # another attach type, another pin
    assert link_pin_path(Path("/pins/p"), DEEP) == Path("/pins/p/links") / name


def test_a_hashed_name_is_matched_against_candidates() -> None:
    name = link_pin_name(DEEP)
    assert link_pin_target(name, [*SHORT, DEEP_INGRESS, DEEP]) == DEEP
    assert link_pin_target(name, SHORT) is None  # ours (is_hashed_link_pin), but of none of these
    with pytest.raises(HashedLinkPinError, match="link_pin_target"):
        target_from_link_pin(name)
    assert issubclass(HashedLinkPinError, BpfshareError)  # callers that skip unreadable names still do


@pytest.mark.parametrize("name", ["program", "cgroup:%2F:teleport", "cgroup~abc", "tc:eth0:ingress_tmp12"])
def test_names_bpfshare_does_not_make(name: str) -> None:
    assert link_pin_target(name, [DEEP]) is None
    assert not is_hashed_link_pin(name)
