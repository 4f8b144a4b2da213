"""The ``bpfshare`` command line.

Subcommands live in their own modules and are imported only when invoked, so that ``bpfshare
inspect`` does not pay for importing pyroute2, kopf or the Kubernetes client.

``cluster`` and ``demo`` run the local control plane (``bpfshare.controlplane``), which is for
development: it and what it needs come with the ``dev`` extra, and the agent image has neither.
Without them those two commands say so in one line instead of failing on an import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bpfshare.errors import BpfshareError

DEFAULT_PIN_ROOT = "/sys/fs/bpf/bpfshare"

# name -> "module:attribute" of a click command; each module imports its heavy dependencies itself.
SUBCOMMANDS: dict[str, str] = {
    "cluster": "bpfshare.controlplane.cli:cluster",
    "inspect": "bpfshare.commands.inspect:inspect",
    "load": "bpfshare.commands.load:load",
    "apply": "bpfshare.commands.apply:apply",
    "delete": "bpfshare.commands.apply:delete",
    "get": "bpfshare.commands.get:get",
    "agent": "bpfshare.commands.agent:agent",
    "controller": "bpfshare.commands.controller:controller",
    "demo": "bpfshare.commands.demo:demo",
}

# Commands that need the local control plane, and the modules it takes: bpfshare.controlplane itself
# (not in the agent image) and the `dev` extra's packages (pyproject.toml), by import name.
DEV_COMMANDS = frozenset({"cluster", "demo"})
DEV_MODULES = ("bpfshare.controlplane", "cryptography", "psutil")
DEV_INSTALL_HINT = "install bpfshare[dev] (from a checkout: pip install -e '.[dev]', or scripts/install.sh)"


class DevExtraMissing(BpfshareError):
    """A development command was run in an installation without the ``dev`` extra."""


def missing_dev_modules() -> list[str]:
    """The modules of DEV_MODULES that this installation cannot import."""
    return [name for name in DEV_MODULES if importlib.util.find_spec(name) is None]


def _unavailable(name: str, missing: list[str]) -> click.Command:
    """Stands in for a development command: any arguments, one clear error."""
    message = f"`bpfshare {name}` needs the local control plane, which is not installed (no {', '.join(missing)}): "
    message += DEV_INSTALL_HINT

    def fail(**_: object) -> None:
        raise DevExtraMissing(message)

    return click.Command(
        name,
        callback=fail,
        help=f"Not installed: needs the dev extra. {message}",
        short_help="(not installed: needs bpfshare[dev])",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
    )


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            if cmd_name in DEV_COMMANDS and (missing := missing_dev_modules()):
                return _unavailable(cmd_name, missing)
            module, attr = SUBCOMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command), SUBCOMMANDS[cmd_name]
            return command
        return super().get_command(ctx, cmd_name)


F = TypeVar("F", bound=Callable[..., Any])


def pin_root_option(func: F) -> F:
    """``--pin-root DIR`` on a node-level command; falls back to the group's option, then the default."""

    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
        if value:
            return value
        root = ctx.find_root()
        return str((root.obj or {}).get("pin_root") or DEFAULT_PIN_ROOT)

    return click.option(
        "--pin-root",
        metavar="DIR",
        default=None,
        callback=callback,
        help=f"bpffs directory under which bpfshare pins (default {DEFAULT_PIN_ROOT})",
    )(func)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--pin-root",
    metavar="DIR",
    envvar="BPFSHARE_PIN_ROOT",
    default=None,
    help=f"bpffs directory under which bpfshare pins (default {DEFAULT_PIN_ROOT})",
)
@click.version_option(package_name="bpfshare")
@click.pass_context
def cli(ctx: click.Context, pin_root: str | None) -> None:
    """Share pinned eBPF maps between tc, tcx and cgroup programs."""
    ctx.obj = {"pin_root": pin_root}


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BpfshareError as exc:
        click.echo(f"bpfshare: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
