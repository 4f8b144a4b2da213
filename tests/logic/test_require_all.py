"""CI's guard: with BPFSHARE_REQUIRE_ALL=1 a skipped test fails, so CI cannot pass by skipping; and
.ci/run really sets it and runs the README's test command. Each behaviour is run, not read: pytest
in a subprocess on a small test file, .ci/run with a recording ``make`` first on PATH."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SKIPPING_TESTS = """\
import pytest

def test_needs_something_missing():
    pytest.skip('no such hardware here')

@pytest.mark.skipif(True, reason='marked away')
def test_skipped_by_marker():
    pass

@pytest.mark.xfail(reason='known bug', strict=True)
def test_known_bug():
    assert False

def test_runs():
    assert True
"""


def run_pytest(tmp_path: Path, *require_all: str | None) -> list[subprocess.CompletedProcess[str]]:
    """pytest on SKIPPING_TESTS once per value of BPFSHARE_REQUIRE_ALL (None: unset), concurrently."""
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-rA"]
    argv += ["--rootdir", str(tmp_path), str(tmp_path / "test_skips.py")]
    procs = []
    for value in require_all:
        env = {k: v for k, v in os.environ.items() if k != "BPFSHARE_REQUIRE_ALL"}
        if value is not None:
            env["BPFSHARE_REQUIRE_ALL"] = value
        procs.append(
            subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def test_a_skip_fails_when_everything_is_required(tmp_path: Path) -> None:
    [proc] = run_pytest(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout
    # A skip in the test fails it; a skip during setup (a skipif marker, a fixture's require_*) makes it
    # an error; an expected failure stays one.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in proc.stdout, proc.stdout
    assert "skipped, but BPFSHARE_REQUIRE_ALL=1 forbids skips: Skipped: no such hardware here" in proc.stdout
    assert "skipped, but BPFSHARE_REQUIRE_ALL=1 forbids skips: Skipped: marked away" in proc.stdout


def test_a_skip_is_a_skip_otherwise(tmp_path: Path) -> None:
    # Only the exact value 1 turns the guard on.
    values = (None, "yes")
    for value, proc in zip(values, run_pytest(tmp_path, *values), strict=True):
        assert proc.returncode == 0, (value, proc.stdout)
        assert "1 passed, 2 skipped, 1 xfailed" in proc.stdout, (value, proc.stdout)


def readme_test_command() -> list[str]:
    """The command of the README's code block that follows "Run the whole test suite"."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"Run the whole test suite.*?```sh\n(.*?)```", text, re.S)
    assert match, "the README no longer says how to run the whole test suite"
    lines = [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def run_ci(tmp_path: Path, make_status: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """.ci/run, from another directory and with BPFSHARE_REQUIRE_ALL unset, with a ``make`` that records
    where it ran, its arguments and BPFSHARE_REQUIRE_ALL, then exits with ``make_status``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "make.record"
    record.unlink(missing_ok=True)
    fake = bin_dir / "make"
    fake.write_text(
        "#!/bin/sh\n"
        f'{{ pwd; echo "BPFSHARE_REQUIRE_ALL=${{BPFSHARE_REQUIRE_ALL-unset}}"; printf "%s\\n" "$@"; }} > {record}\n'
        f"exit {make_status}\n"
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "BPFSHARE_REQUIRE_ALL"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(REPO / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    return proc, record.read_text().splitlines() if record.exists() else []


def test_ci_sets_it_and_runs_the_readmes_test_command(tmp_path: Path) -> None:
    command = readme_test_command()
    assert command[0] == "make"
    proc, record = run_ci(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr
    assert record, ".ci/run did not call make"
    cwd, require_all, *args = record
    assert Path(cwd).resolve() == REPO  # from the checkout, wherever CI starts it
    assert require_all == "BPFSHARE_REQUIRE_ALL=1"
    assert args == command[1:]


def test_ci_fails_when_the_tests_fail(tmp_path: Path) -> None:
    proc, record = run_ci(tmp_path, 2)
    assert record, ".ci/run did not call make"
    assert proc.returncode != 0
