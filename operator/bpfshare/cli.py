"""The ``bpfshare`` command line.

Subcommands live in their own modules and are imported only when invoked, so that ``bpfshare
inspect`` does not pay for importing pyroute2, kopf or the Kubernetes client.
"""

from __future__ import annotations

import importlib
import sys

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
    "demo": "bpfshare.commands.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module, attr = SUBCOMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


def pin_root_option(func):  # type: ignore[no-untyped-def]
    """``--pin-root DIR`` on a node-level command; falls back to the group's option, then the default."""

    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
        if value:
            return value
        root = ctx.find_root()
        return (root.obj or {}).get("pin_root") or DEFAULT_PIN_ROOT

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
