"""Kill-at-any-moment durability: a process writing audit records is killed with SIGKILL at random moments;
the log it leaves always verifies, and every record whose write was acknowledged is there."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from governance.audit import AuditLog
from tests.conftest import PROJECT_ROOT, AuditStoreHandle

WRITER = """
import asyncio, dataclasses, json, sys
from pathlib import Path
from governance.audit import AuditConfig, AuditEvent, AuditLog

async def main() -> None:
    config = AuditConfig(**json.loads(sys.argv[1]))
    log = AuditLog(dataclasses.replace(config, path=Path(config.path), key_path=Path(config.key_path)))
    await log.start()
    caller = {"key_id": "k", "role": "frontend"}
    n = 0
    while True:
        ids = await asyncio.gather(*(
            log.record(AuditEvent("/v1/search", {"query": f"towel {n + i}"}, {"items": []}, caller=caller,
                                  latency_ms=1.0))
            for i in range(8)
        ))
        n += len(ids)
        # Acknowledged (committed) ids, one per line, flushed at once.
        sys.stdout.write("\\n".join(ids) + "\\n")
        sys.stdout.flush()

asyncio.run(main())
"""


def test_sigkill_at_random_moments_leaves_a_verifiable_log(audit_store: AuditStoreHandle, tmp_path: Path) -> None:
    config = audit_store.config
    # The writer process gets the whole config (AuditConfig has no defaults), paths as strings.
    args = json.dumps(dataclasses.asdict(dataclasses.replace(config, checkpoint_every=7)), default=str)
    rng = random.Random(4)
    acknowledged: list[str] = []
    for round_no in range(4):
        out = tmp_path / f"acks-{round_no}.txt"
        with out.open("wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, args],
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=handle,
                stderr=subprocess.PIPE,
            )
            # Wait until it is writing, then kill it at a random moment.
            deadline = time.monotonic() + 60
            while out.stat().st_size == 0:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "writer never acknowledged a record"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        acknowledged += [line for line in out.read_text().splitlines() if line.startswith("aud_")]
        log = AuditLog(config)
        log.open()
        try:
            report = log.verify()
            assert report.ok, (round_no, report)
            assert report.count >= len(acknowledged)
            missing = [i for i in acknowledged if log.get(i) is None]
            assert missing == [], f"acknowledged records lost: {missing[:3]}"
        finally:
            log.close()
    assert len(acknowledged) > 0
