"""`make test` runs the tests marked neither kernel nor cluster with every capability dropped, so a
test that needs a capability but lacks the ``kernel`` marker fails CI, then the rest as is.

The Makefile is run with a recording ``pytest``, ``ruff`` and ``mypy`` in place of the virtual environment's
(``make -o install``: the install step is not run); the guard in tests/conftest.py is run on synthetic
/proc/self/status texts and, through setpriv, on real pytest sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import capability_sets, privileges_left

REPO = Path(__file__).resolve().parents[2]
SETPRIV = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

ALL = "000001ffffffffff"
ROOT = (
    f"Name:\tpython\nCapInh:\t0000000000000000\nCapPrm:\t{ALL}\nCapEff:\t{ALL}\nCapBnd:\t{ALL}\n"
    "CapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"
)
DROPPED = "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\nCapAmb:\t0\nNoNewPrivs:\t1\n"


def own_status() -> dict[str, int]:
    return capability_sets(Path("/proc/self/status").read_text())


# -- the guard ----------------------------------------------------------------------------------------


def test_capability_sets_reads_proc_status() -> None:
    sets = capability_sets(ROOT)
    assert sets == {
        "CapInh": 0,
        "CapPrm": (1 << 41) - 1,
        "CapEff": (1 << 41) - 1,
        "CapBnd": (1 << 41) - 1,
        "CapAmb": 0,
        "NoNewPrivs": 0,
    }
    real = own_status()
    assert {"CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs"} <= set(real)


def test_root_with_capabilities_is_refused_for_each_reason() -> None:
    left = privileges_left(capability_sets(ROOT), euid=0)
    assert any(r.startswith("CapEff is 0x1ffffffffff") for r in left)
    assert any(r.startswith("CapPrm is") for r in left)
    assert any("NoNewPrivs" in r for r in left)
    assert any(r.startswith("CapBnd is") for r in left)


def test_everything_dropped_is_accepted() -> None:
    assert privileges_left(capability_sets(DROPPED), euid=0) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("CapAmb:\t0000000000001000\n", "CapAmb is 0x1000"),  # an ambient capability survives execve
        ("CapInh:\t0000000000200000\n", "CapInh is 0x200000"),
        ("CapEff:\t0000000000000001\n", "CapEff is 0x1"),
        ("NoNewPrivs:\t0\n", "NoNewPrivs is not set"),
        ("CapBnd:\t0000000000200000\n", "CapBnd is 0x200000 and the user is root"),
    ],
)
def test_any_one_capability_left_is_refused(change: str, reason: str) -> None:
    sets = capability_sets(DROPPED + change)  # a later line wins
    assert privileges_left(sets, euid=0) == [next(r for r in privileges_left(sets, 0) if r.startswith(reason))]


def test_a_non_root_user_may_keep_a_bounding_set() -> None:
    """Only root's execve is granted the bounding set; a plain user cannot drop it (no CAP_SETPCAP)."""
    sets = capability_sets(DROPPED + f"CapBnd:\t{ALL}\n")
    assert privileges_left(sets, euid=1000) == []
    assert privileges_left(sets, euid=0) != []


def run_pytest(
    tmp_path: Path, source: str, *, drop: bool, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(source)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    argv += ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path)]  # the project's markers
    argv += [*args, str(tmp_path / "test_sample.py")]
    env = {**os.environ, "BPFSHARE_NO_CAPS": "1"}
    return subprocess.run(
        (SETPRIV if drop else []) + argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


SAMPLE = """\
import os

import pytest

def test_gives_a_file_away(tmp_path):
    (tmp_path / "f").touch()
    os.chown(tmp_path / "f", 4242, 4242)  # needs CAP_CHOWN, but has no kernel marker

def test_reads_its_capabilities():
    status = open("/proc/self/status").read()
    assert "CapEff:\t0000000000000000" in status, status

@pytest.mark.kernel
def test_marked():
    pass
"""


def test_a_test_that_needs_a_capability_fails_without_the_marker(tmp_path: Path) -> None:
    """As make runs it: the unmarked test that gives a file away fails (no CAP_CHOWN), the one that
    reads its capabilities sees none, the marked one is left for the privileged part."""
    proc = run_pytest(tmp_path, SAMPLE, drop=True, args=("-m", "not kernel and not cluster"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed, 1 deselected" in proc.stdout
    assert "PermissionError" in proc.stdout and "test_gives_a_file_away" in proc.stdout


def test_kernel_or_cluster_tests_in_the_dropped_run_are_a_usage_error(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, SAMPLE, drop=True)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "selects tests marked kernel or cluster" in proc.stderr and "test_sample.py::test_marked" in proc.stderr
    assert "test_gives_a_file_away" not in proc.stderr  # only the marked ones are named


def test_the_session_refuses_to_start_while_capabilities_remain(tmp_path: Path) -> None:
    """BPFSHARE_NO_CAPS=1 without setpriv: refused exactly when this process could use a capability."""
    proc = run_pytest(tmp_path, "def test_plain():\n    pass\n", drop=False)
    if privileges_left(own_status(), os.geteuid()):
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
        assert "BPFSHARE_NO_CAPS=1 but this process can use capabilities" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the Makefile's test target -----------------------------------------------------------------------


def make_test(tmp_path: Path, pytest_args: str | None = None, **status: int) -> tuple[int, list[dict[str, Any]]]:
    """``make test`` with a virtual environment whose ruff and pytest record each call (arguments, the
    capability lines of their status, BPFSHARE_NO_CAPS) and exit with status[unprivileged|privileged]."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    for old in calls.iterdir():
        old.unlink()
    recorder = f"""#!{sys.executable}
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
record = {{
    "tool": Path(sys.argv[0]).name,
    "args": args,
    "no_caps": os.environ.get("BPFSHARE_NO_CAPS", "unset"),
    "CapEff": status["CapEff"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(),
}}
Path({str(calls)!r}, f"{{time.monotonic_ns()}}").write_text(json.dumps(record))
part = "unprivileged" if "not kernel and not cluster" in args else "privileged"
sys.exit(int(os.environ.get("FAKE_STATUS_" + part.upper(), "0")) if record["tool"] == "pytest" else 0)
"""
    for tool in ("ruff", "mypy", "pytest"):
        (venv / "bin" / tool).write_text(recorder)
        (venv / "bin" / tool).chmod(0o755)
    argv = ["make", "-s", "-o", "install", "-C", str(REPO), "test", f"VENV={venv}"]
    if pytest_args is not None:
        argv.append(f"PYTEST_ARGS={pytest_args}")
    env = {**os.environ, **{f"FAKE_STATUS_{k.upper()}": str(v) for k, v in status.items()}}
    for name in ("PYTEST_ARGS", "BPFSHARE_NO_CAPS"):  # as from a shell, not from this test session
        env.pop(name, None)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, [json.loads(p.read_text()) for p in sorted(calls.iterdir(), key=lambda p: int(p.name))]


@pytest.fixture
def make_available() -> None:
    if shutil.which("make") is None or shutil.which("setpriv") is None:
        pytest.skip("needs make and setpriv (util-linux)")


def test_make_test_runs_lint_then_unprivileged_tests_without_capabilities_then_the_rest(
    tmp_path: Path, make_available: None
) -> None:
    status, calls = make_test(tmp_path)
    assert status == 0
    assert [(c["tool"], c["args"]) for c in calls] == [
        ("ruff", ["check", "operator", "tests", "bench"]),
        ("ruff", ["format", "--check", "operator", "tests", "bench"]),
        ("mypy", ["--strict"]),
        ("pytest", ["-m", "not kernel and not cluster"]),
        ("pytest", ["-m", "kernel or cluster"]),
    ]
    unprivileged, privileged = calls[3], calls[4]
    assert unprivileged["CapEff"] == "0000000000000000" and unprivileged["NoNewPrivs"] == "1"
    assert unprivileged["no_caps"] == "1"
    # The kernel and cluster tests keep what make had (everything, as root in CI).
    assert int(privileged["CapEff"], 16) == own_status()["CapEff"]
    assert privileged["no_caps"] == "unset"


def test_make_test_passes_pytest_args_to_both_parts(tmp_path: Path, make_available: None) -> None:
    status, calls = make_test(tmp_path, "-x -k agent tests/logic", privileged=5)
    assert status == 0  # tests/logic has no kernel or cluster test: that part selecting none is fine
    assert [c["args"] for c in calls if c["tool"] == "pytest"] == [
        ["-m", "not kernel and not cluster", "-x", "-k", "agent", "tests/logic"],
        ["-m", "kernel or cluster", "-x", "-k", "agent", "tests/logic"],
    ]


@pytest.mark.parametrize(
    ("pytest_args", "statuses", "parts_run"),
    [
        (None, {"unprivileged": 1}, 1),  # a failure without capabilities stops make
        (None, {"privileged": 1}, 2),
        (None, {"privileged": 5}, 2),  # the whole suite selecting no kernel test is wrong
        ("tests/logic", {"unprivileged": 1}, 1),
        ("tests/logic", {"privileged": 2}, 2),  # only "no tests selected" is forgiven
    ],
)
def test_make_test_fails_when_a_part_fails(
    tmp_path: Path, make_available: None, pytest_args: str | None, statuses: dict[str, int], parts_run: int
) -> None:
    status, calls = make_test(tmp_path, pytest_args, **statuses)
    assert status != 0
    assert len([c for c in calls if c["tool"] == "pytest"]) == parts_run
