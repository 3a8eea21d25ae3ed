"""Hostile and generated requests at scale: how many, and how many got a 5xx or broke the documented schema.

Prints one JSON summary (and writes it with ``--out FILE``)::

    python -m bench.hostile [--examples 25] [--bodies 2000] [--out FILE]

Runs two test modules of the suite against real ``candor serve`` processes, larger than CI runs them:

- ``tests/e2e/test_schema_conformance.py`` with ``--examples`` Schemathesis examples per operation and mode
  (schema-valid and schema-violating requests, each sent with a frontend, an admin and a reviewer key, from a fresh
  random seed), every answer checked against the OpenAPI document: status code, content type, headers, body;
- ``tests/e2e/test_hostile.py``: ``--bodies`` generated hostile bodies (extremes, wrong types, nesting) plus the
  module's fixed hostile cases (deep nesting, odd cursors, float extremes, racing writes, slow explanations).

Each test adds its request counts to a tally (``CANDOR_TEST_TALLY``); the summary sums them. Goal (the reliability
issue): at least 5,000 requests, no 5xx and no schema violation.
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
from typing import Any

from bench.load import emit_report
from bench.serving import machine

GOAL_REQUESTS = 5000
MODULES = ("tests/e2e/test_schema_conformance.py", "tests/e2e/test_hostile.py")


def summarize(tally: list[dict[str, Any]], exit_code: int) -> dict[str, Any]:
    """Sum the tests' counts: requests, 5xx, schema violations, operations with a failed check.

    Args:
        tally: One entry per counting test (``test``, ``requests`` and its own counts).
        exit_code: pytest's exit status (0: every test passed, the fixed hostile cases included).
    """
    requests = sum(int(t.get("requests", 0)) for t in tally)
    server_errors = sum(int(t.get("server_errors", 0)) for t in tally)
    violations = sum(int(t.get("violations", 0)) for t in tally)
    failed_operations = sum(int(t.get("failed_operations", 0)) for t in tally)
    return {
        "requests": requests,
        "server_errors": server_errors,
        "schema_violations": violations,
        "contract_operations_failed": failed_operations,
        "tests_passed": exit_code == 0,
        "by_test": tally,
        "goals": {
            f"requests>={GOAL_REQUESTS}": requests >= GOAL_REQUESTS,
            "5xx==0": server_errors == 0 and failed_operations == 0,
            "schema_violations==0": violations == 0 and failed_operations == 0,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the two modules at the asked size, print the JSON summary and write it where ``--out`` says."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=25, help="Schemathesis examples per operation and mode")
    parser.add_argument("--bodies", type=int, default=2000, help="generated hostile bodies")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="candor-hostile-") as folder:
        tally_path = Path(folder) / "tally.jsonl"
        env = {
            **os.environ,
            "CANDOR_TEST_CONTRACT_EXAMPLES": str(args.examples),
            "CANDOR_TEST_HOSTILE_BODIES": str(args.bodies),
            "CANDOR_TEST_TALLY": str(tally_path),
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES],
            env=env,
            stdout=sys.stderr,  # stdout carries only the JSON summary
            check=False,
        )
        seconds = time.perf_counter() - started
        lines = tally_path.read_text(encoding="utf-8").splitlines() if tally_path.is_file() else []
    report = {
        "benchmark": "hostile",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench.hostile", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "workload": {"examples": args.examples, "bodies": args.bodies, "modules": list(MODULES)},
        "seconds": round(seconds, 1),
        **summarize([json.loads(line) for line in lines if line.strip()], done.returncode),
    }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
