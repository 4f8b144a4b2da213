"""CI's guard: with BPFSHARE_REQUIRE_ALL=1 a skipped test fails, so CI cannot pass by skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, require_all: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_needs_something_missing():\n"
        "    pytest.skip('no such hardware here')\n\n"
        "def test_runs():\n"
        "    assert True\n"
    )
    env = {**os.environ, "BPFSHARE_REQUIRE_ALL": require_all}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_skips.py"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def test_a_skip_fails_when_everything_is_required(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed" in proc.stdout
    assert "skipped, but BPFSHARE_REQUIRE_ALL=1 forbids skips: Skipped: no such hardware here" in proc.stdout


def test_a_skip_is_a_skip_otherwise(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "0")
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout


def test_ci_sets_it_and_runs_the_readmes_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "export BPFSHARE_REQUIRE_ALL=1" in ci
    assert "\nmake test\n" in ci and "```sh\nmake test\n```" in (REPO / "README.md").read_text()
