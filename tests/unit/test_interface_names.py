"""Interface names the kernel would never accept (net/core/dev.c dev_valid_name), said before any lookup."""

from __future__ import annotations

import pytest

from bpfshare.kernel.netns import interface_name_problem


@pytest.mark.parametrize("name", ["eth0", "veth-a.100", "x" * 15, "br_0@x"])
def test_valid_names(name: str) -> None:
    assert interface_name_problem(name) == ""


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x" * 16, f"interface {'x' * 16!r} is 16 characters, longer than the kernel's 15 characters (IFNAMSIZ)"),
        ("ethernet-uplink-0", "interface 'ethernet-uplink-0' is 17 characters, longer than the kernel's 15"),
        ("čaj" * 3 + "abcd", "is 16 bytes in UTF-8, longer than the kernel's 15"),  # 13 characters
        ("", "an interface name cannot be empty"),
        ("..", "'..' cannot be an interface name"),
        ("eth0:1", "interface 'eth0:1': the kernel refuses ':' in interface names"),
        ("a/b c", "interface 'a/b c': the kernel refuses ' ', '/' in interface names"),
    ],
)
def test_invalid_names(name: str, problem: str) -> None:
    assert problem in interface_name_problem(name)
