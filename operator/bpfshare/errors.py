"""The project's error types. Only these escape the library; the CLI prints them without a traceback."""

from __future__ import annotations

import errno


class BpfshareError(Exception):
    """Base of every error bpfshare reports to a user."""


class ObjectError(BpfshareError):
    """The ELF object is malformed or uses something bpfshare does not support."""


class UnsupportedError(ObjectError):
    """A valid object uses a feature the loader does not implement (CO-RE, kfuncs, ...)."""


class KernelError(BpfshareError):
    """A bpf() or netlink call failed; carries errno and, for program loads, the verifier log."""

    def __init__(self, message: str, errno: int = 0, log: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.log = log


class VerifierError(KernelError):
    """The verifier refused a program. ``str()`` ends with the tail of its log."""


class IncompatibleMapError(BpfshareError):
    """A map to be reused differs from what the object (or resource) declares.

    ``differences`` lists every differing field, e.g. ``["Type: Hash changed to Array", ...]``.
    """

    def __init__(self, subject: str, differences: list[str]) -> None:
        self.subject = subject
        self.differences = differences
        super().__init__(f"{subject}: " + ", ".join(differences))


class MapRuleError(KernelError):
    """A map spec breaks the kernel's rules for its type (``bpfshare.spec.map_rule_violations``),
    found before the kernel was asked. A KernelError with errno EINVAL, what the kernel would have
    answered, so callers that look at the errno see the same either way.

    ``violations`` lists every broken rule, e.g. ``["Array needs keySize 4, not 8", ...]``.
    """

    def __init__(self, subject: str, violations: list[str]) -> None:
        self.subject = subject
        self.violations = violations
        super().__init__(f"{subject}: " + "; ".join(violations), errno.EINVAL)


class TargetNotFoundError(BpfshareError):
    """An interface, network namespace or cgroup named as an attach target does not exist."""


class InvalidTargetError(TargetNotFoundError):
    """A target named so that it cannot exist (an interface name the kernel would never accept)."""
