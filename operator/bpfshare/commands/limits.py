"""``--max-bytecode-bytes`` and ``--map-memory-budget``: the node's input limits, shared by
``bpfshare apply/delete`` and ``bpfshare agent`` so that both refuse the same resources."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bpfshare.engine.node import Limits

F = TypeVar("F", bound=Callable[..., Any])

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_SHIFTS = {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}


def parse_quantity(text: str) -> int:
    """Bytes from ``1073741824``, ``64Mi`` or ``1Gi`` (Kubernetes' binary suffixes)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with Ki, Mi, Gi or Ti)")
    return int(match.group(1)) << _SHIFTS[match.group(2)]


if TYPE_CHECKING:
    _ParamType = click.ParamType[int]
else:  # click before 8.2 has no generic ParamType
    _ParamType = click.ParamType


class _Quantity(_ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_quantity(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def limits_options(func: F) -> F:
    defaults = Limits()
    func = click.option(
        "--max-bytecode-bytes",
        type=_Quantity(),
        default=str(defaults.max_bytecode_bytes),
        show_default="64Mi",
        help="largest bytecode file or ConfigMap a BpfProgram may use",
    )(func)
    func = click.option(
        "--map-memory-budget",
        type=_Quantity(),
        default=str(defaults.map_memory_budget),
        show_default="1Gi",
        help="most memory one BpfMap may take: (key + value) x entries, per CPU for per-CPU maps",
    )(func)
    return func


def limits_from(max_bytecode_bytes: int, map_memory_budget: int) -> Limits:
    return Limits(max_bytecode_bytes=max_bytecode_bytes, map_memory_budget=map_memory_budget)
