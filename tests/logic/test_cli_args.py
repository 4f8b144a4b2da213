"""The ``bpfshare`` command line without a kernel: help, versions and every argument error that is
caught before anything touches the node, through ``bpfshare.cli.main`` (what the console script
runs), so exit statuses and the one-line ``bpfshare: error: ...`` form are the user's."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from bpfshare import cli

NODE_LEVEL = ["load", "apply", "delete", "get", "agent"]  # SPEC: --pin-root on every node-level command


class Run:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


Bpfshare = Callable[..., Run]


@pytest.fixture
def bpfshare(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Bpfshare:
    """Run ``bpfshare ARGS...`` in this process; the pin root is a private directory, never the host's."""
    monkeypatch.setenv("BPFSHARE_PIN_ROOT", str(tmp_path / "pins"))

    def run(*args: str) -> Run:
        monkeypatch.setattr(sys, "argv", ["bpfshare", *args])
        capsys.readouterr()
        try:
            cli.main()
            status = 0
        except SystemExit as exc:
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


def test_help_lists_every_command(bpfshare: Bpfshare) -> None:
    for flag in ("--help", "-h"):
        run = bpfshare(flag)
        assert run.status == 0
        commands = run.out.split("Commands:", 1)[1]
        listed = [line.split()[0] for line in commands.strip().splitlines()]
        assert listed == sorted(cli.SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_command_has_help(bpfshare: Bpfshare, command: str) -> None:
    run = bpfshare(command, "-h")
    assert run.status == 0, run.err
    assert run.out.startswith("Usage: ") and f" {command} " in run.out.splitlines()[0]
    if command in NODE_LEVEL:
        assert "--pin-root DIR" in run.out and cli.DEFAULT_PIN_ROOT in run.out


def test_load_help_shows_every_attach_form(bpfshare: Bpfshare) -> None:
    out = " ".join(bpfshare("load", "--help").out.split())
    for form in ("tc:IFACE:ingress|egress[@NETNS]", "tcx:IFACE:ingress|egress[@NETNS]", "cgroup:DIR:TYPE"):
        assert form in out
    assert "--program TEXT" in out and "[required]" in out and "OBJMAP=PIN" in out


def test_version_is_the_packages(bpfshare: Bpfshare) -> None:
    run = bpfshare("--version")
    assert run.status == 0 and run.out.strip().endswith(f"version {version('bpfshare')}")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["inspect"], "Missing argument 'OBJ.o'"),
        (["inspect", "/nonexistent/x.o"], "does not exist"),
        (["load", "x.o"], "Missing option '--program'"),
        (["load", "x.o", "--program", "p", "--map", "shared_counts"], "expected OBJMAP=PIN (or OBJMAP=id:N)"),
        (["load", "x.o", "--program", "p", "--map", "=/sys/fs/bpf/x"], "expected OBJMAP=PIN"),
        (["load", "x.o", "--program", "p", "--map", "m="], "expected OBJMAP=PIN"),
        (["apply"], "Missing option '-f' / '--filename'"),
        (["apply", "-f", "/nonexistent.yaml"], "does not exist"),
        (["apply", "-f", ".", "-o", "xml"], "'xml' is not one of 'yaml', 'json'"),
        (["delete", "-f", "/nonexistent.yaml"], "does not exist"),
        (["get", "everything"], "'everything' is not one of 'all', 'maps', 'programs'"),
        (["get", "-o", "wide"], "'wide' is not one of 'table', 'json', 'yaml'"),
    ],
)
def test_usage_errors_exit_2_with_usage(bpfshare: Bpfshare, args: list[str], words: str) -> None:
    run = bpfshare(*args)
    assert run.status == 2, (run.out, run.err)
    assert "Usage: " in run.err and words in run.err
    assert run.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--map", "m=/sys/fs/bpf/a", "--map", "m=/sys/fs/bpf/b"],
            "--map m given twice",
        ),
        (["--attach", "tc:eth0:sideways"], "attach 'tc:eth0:sideways': direction must be ingress or egress"),
        (["--attach", "cgroup:/:egress", "--attach", "xdp:eth0"], "attach 'xdp:eth0': kind must be tc, tcx or cgroup"),
    ],
)
def test_load_checks_its_arguments_before_reading_the_object(bpfshare: Bpfshare, args: list[str], message: str) -> None:
    """The object does not exist: the error is about the arguments, so they were checked first."""
    run = bpfshare("load", "/nonexistent/x.o", "--program", "p", *args)
    assert run.status == 1
    assert run.err.startswith(f"bpfshare: error: {message}") and len(run.err.splitlines()) == 1
    assert run.out == ""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_MAP = """\
apiVersion: bpfshare.io/v1alpha1
kind: BpfMap
metadata: {name: flow-counts}
spec: {type: Hash, keySize: yes, valueSize: 8, maxEntries: 1024}
"""


@pytest.mark.parametrize("command", ["apply", "delete"])
def test_apply_reports_an_invalid_document_and_plans_the_others(
    bpfshare: Bpfshare, tmp_path: Path, command: str
) -> None:
    """Each document on its own: the bad one is named with its file, line and number, the good one is
    still planned (tests/integration/test_apply_validation.py applies it), the exit status is 1."""
    good = write(tmp_path, "a-good.yaml", BAD_MAP.replace("keySize: yes", "keySize: 4"))
    bad = write(tmp_path, "b-bad.yaml", BAD_MAP.replace("flow-counts", "other"))
    pins = tmp_path / "pins"
    run = bpfshare(command, "-f", str(good), "-f", str(bad), "--pin-root", str(pins), "-o", "json", "--dry-run")
    assert run.status == 1
    assert (
        run.err == f"bpfshare: error: {bad}:4: document 1: BpfMap other: spec.keySize: must be an integer, not True\n"
    )
    planned = json.loads(run.out)
    assert [(c["kind"], c["name"]) for c in planned] == ([("BpfMap", "flow-counts")] if command == "apply" else [])
    assert not pins.exists()  # a dry run


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BAD_MAP.replace("bpfshare.io/v1alpha1", "bpfshare.io/v1"),
            "1: document 1: BpfMap flow-counts: apiVersion: must be bpfshare.io/v1alpha1, not 'bpfshare.io/v1'",
        ),
        ("- just\n- a list\n", "1: document 1: must be an object (a Kubernetes resource), not a list"),
        ("kind: BpfMap\nspec: [unclosed\n", "3: document 1: invalid YAML: "),
    ],
    ids=["api-version", "not-a-mapping", "yaml-syntax"],
)
def test_apply_names_the_file_of_a_bad_document(bpfshare: Bpfshare, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "objects.yaml", text)
    run = bpfshare("apply", "-f", str(path), "--pin-root", str(tmp_path / "pins"))
    assert run.status == 1
    assert run.err.startswith(f"bpfshare: error: {path}:{message}")


def test_apply_reads_a_directory_recursively_and_lists(bpfshare: Bpfshare, tmp_path: Path) -> None:
    """Every .yaml, .yml and .json file under a directory, and the items of a v1 List, are read (the
    invalid one deep inside proves it: its error is what apply reports), and nothing else is."""
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write(tmp_path, "a-notes.txt", "not yaml: [")  # sorts first: read, it would fail
    listed = (
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "bpfshare.io/v1alpha1", "kind": "BpfProgram",'
        ' "metadata": {"name": "p"}, "spec": {"bytecode": {"path": "/x.o"}, "program": "",'
        ' "attach": {"cgroup": {"path": "/", "type": "egress"}}}}]}'
    )
    objects = write(tmp_path / "deep" / "er", "objects.json", listed)
    run = bpfshare("apply", "-f", str(tmp_path), "--pin-root", str(tmp_path / "pins"))
    assert run.status == 1
    assert (
        run.err
        == f"bpfshare: error: {objects}:1: document 1, items[0]: BpfProgram p: spec.program: must not be empty\n"
    )


def test_development_commands_say_what_to_install_when_it_is_missing(
    bpfshare: Bpfshare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "missing_dev_modules", lambda: ["cryptography", "psutil"])
    overview = bpfshare("--help").out
    for command in sorted(cli.DEV_COMMANDS):
        line = next(line for line in overview.splitlines() if line.split()[:1] == [command])
        assert "(not installed: needs bpfshare[dev])" in line
        for args in ([command], [command, "up", "--node"], [command, "--help"]):
            run = bpfshare(*args)
            assert run.status == 1 and run.out == ""
            assert run.err.startswith(
                f"bpfshare: error: `bpfshare {command}` needs the local control plane, which is not installed "
                "(no cryptography, psutil): install bpfshare[dev]"
            )
    assert bpfshare("inspect", "--help").status == 0  # the rest of the CLI is unaffected


@pytest.mark.parametrize("command", ["agent", "apply"])
def test_the_limits_are_flags_of_the_agent_and_of_apply(bpfshare: Bpfshare, command: str) -> None:
    assert (
        "--map-memory-budget" in bpfshare(command, "-h").out and "--max-bytecode-bytes" in bpfshare(command, "-h").out
    )
    run = bpfshare(command, "--map-memory-budget", "lots", *(["-f", "/dev/null"] if command == "apply" else []))
    assert run.status == 2 and "'lots' is not a size" in run.err


def test_apply_dry_run_shows_a_map_over_the_budget_as_refused(bpfshare: Bpfshare, tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(
        "apiVersion: bpfshare.io/v1alpha1\nkind: BpfMap\nmetadata: {name: big}\n"
        "spec: {type: Hash, keySize: 4, valueSize: 8, maxEntries: 1024}\n"
    )
    run = bpfshare("apply", "-f", str(path), "--dry-run", "--map-memory-budget", "4Ki", "-o", "json")
    assert run.status == 0, run.err
    assert "1024 entries x (key 4 + value 8) bytes = 12.0 KiB, more than the map memory budget of 4.0 KiB" in run.out
