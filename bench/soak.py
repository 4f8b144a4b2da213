"""Reliability soak: the long versions of tests/reliability, with their figures, into docs/reliability.md.

Runs (as root, with the local control plane built):
- 50 in-place upgrades of a tc, a tcx and a cgroup program under continuous traffic (150 upgrades);
- 20 SIGKILLs of the agent at random points of a reconcile, under traffic;
- a 60 s API server outage under traffic;
- the object reader fuzzed with 10,000 mutated and truncated objects;
- drift repair, the node-reboot model and hostile input (the test versions).
Each figure comes from the test itself ($BPFSHARE_SOAK_RECORD); a failing run is reported as failed.

    sudo .venv/bin/python -m bench.soak [--quick] [--write docs/reliability.md]    (from the repository's root)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Section, main

SECTION = Section("soak", "Figures", doc="docs/reliability.md")


def run_pytest(selection: list[str], env: dict[str, str]) -> tuple[bool, float, str]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
        cwd=REPO,
        env={**os.environ, "BPFSHARE_REQUIRE_ALL": "1", **env},
        capture_output=True,
        text=True,
    )
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, time.monotonic() - start, tail


def report(args: argparse.Namespace) -> str:
    upgrades, kills, outage, fuzz = (3, 3, 10, 500) if args.quick else (50, 20, 60, 10_000)
    record = Path(tempfile.mkstemp(prefix="bpfshare-soak-", suffix=".jsonl")[1])
    faults = "tests/reliability/test_faults.py"
    runs = [
        (
            "upgrades under traffic",
            [f"{faults}::test_upgrades_under_traffic_drop_nothing"],
            {"BPFSHARE_FAULT_CYCLES": str(upgrades)},
        ),
        (
            "SIGKILL mid-reconcile",
            [f"{faults}::test_sigkill_mid_reconcile_never_disturbs_the_datapath"],
            {"BPFSHARE_FAULT_CYCLES": str(kills)},
        ),
        (
            "API server outage",
            [f"{faults}::test_api_server_outage_leaves_the_datapath_and_recovers"],
            {"BPFSHARE_OUTAGE_SECONDS": str(outage)},
        ),
        ("object reader fuzz", ["tests/unit/test_fuzz.py"], {"BPFSHARE_FUZZ_EXAMPLES": str(fuzz)}),
        (
            "drift repair",
            [
                f"{faults}::test_drift_is_repaired_by_the_resync_with_events",
                "tests/integration/test_apply.py::test_drift_is_repaired_without_losing_data",
            ],
            {},
        ),
        ("node reboot model", [f"{faults}::test_emptied_bpffs_recreates_maps_says_so_and_reattaches"], {}),
        ("hostile input", ["tests/reliability/test_hostile.py"], {}),
    ]
    rows = []
    for name, selection, env in runs:
        ok, seconds, tail = run_pytest(selection, {**env, "BPFSHARE_SOAK_RECORD": str(record)})
        figures = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        mine = next((f for f in figures if f["test"] == name), {})
        if name == "object reader fuzz":
            mine = {"cases": fuzz, "escaped": "none (only ObjectError)" if ok else "see pytest"}
        detail = ", ".join(f"{k} {v}" for k, v in mine.items() if k != "test") or tail
        rows.append(f"| {name} | {'passed' if ok else 'FAILED'} | {seconds:.0f} | {detail} |")
        print(rows[-1], flush=True)
    record.unlink(missing_ok=True)
    return "\n".join(
        [
            f"Command: {SECTION.command('--quick' if args.quick else '')} "
            f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel {os.uname().release}).",
            "",
            "| scenario | result | seconds | figures |",
            "|---|---|---:|---|",
            *rows,
        ]
    )


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short runs, for trying the script")


if __name__ == "__main__":
    main(SECTION, __doc__ or "", arguments, report)
