"""The audit log against real stores (SQLite and PostgreSQL): chaining, tamper detection, checkpoints, export,
purge, erasure, review state, concurrency and store faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.audit import (
    AuditEvent,
    AuditLog,
    AuditNotFoundError,
    AuditStoreError,
    AuditUnavailableError,
    ExportFormatError,
    RecordQuery,
    WouldBlock,
    verify_export,
)
from governance.audit import log as log_module
from governance.audit.backends import open_backend
from governance.audit.chain import canonical_json, sha256_hex
from governance.audit.config import AuditConfig
from governance.audit.records import event_record
from governance.audit.signing import public_pem
from governance.audit.store import AuditBackend
from governance.types import VerifyReport
from tests.conftest import AuditStoreHandle, audit_config

CALLER = {"key_id": "k1", "role": "frontend"}
REVIEWER = {"key_id": "r1", "role": "reviewer"}


async def write(log: AuditLog, n: int, endpoint: str = "/v1/search", **extra: Any) -> list[str]:
    ids = []
    for i in range(n):
        event = AuditEvent(
            endpoint=endpoint,
            request={"query": f"blue towel {i}", "k": 3},
            output={"items": [{"id": f"it{i}", "score": 0.5}]},
            retrieved=[{"id": f"it{i}", "score": 0.5}],
            explanation=[{"id": f"it{i}", "method": "query_match", "summary": "matched 'towel'"}],
            caller=CALLER,
            latency_ms=float(i + 1),
            **extra,
        )
        ids.append(await log.record(event))
    return ids


@pytest.fixture
async def log(audit_store: AuditStoreHandle) -> Any:
    audit = AuditLog(audit_store.config)
    await audit.start()
    yield audit
    await audit.stop()


def reopen(audit_store: AuditStoreHandle) -> AuditLog:
    fresh = AuditLog(audit_store.config)
    fresh.open()
    return fresh


def seq_of(audit_store: AuditStoreHandle, record_id: str) -> int:
    return int(audit_store.execute("SELECT seq FROM audit_records WHERE id = ?", (record_id,))[0][0])


async def test_records_chain_and_verify(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 10)
    report = log.verify()
    assert isinstance(report, VerifyReport)
    assert report.ok, report
    assert report.count == 10
    assert report.checkpoints == 2  # every 4 records
    assert report.checkpoints_ok
    first = log.get(ids[0])
    second = log.get(ids[1])
    assert first is not None
    assert second is not None
    assert first.body is not None
    assert second.body is not None
    assert first.body["prev_hash"] == "0" * 64
    assert second.body["prev_hash"] == first.hash
    for key in ("endpoint", "caller", "request_hash", "request", "models", "retrieved", "output", "explanation"):
        assert key in first.body
    assert first.body["ai_generated"] is True
    assert first.body["review"] == {"state": "not_required", "reason": None}


async def test_edited_field_is_named(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 6)
    audit_store.execute(
        "UPDATE audit_records SET body = replace(body, 'blue towel 2', 'red towel 2') WHERE id = ?", (ids[2],)
    )
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert report.reason is not None
    assert report.reason.startswith("changed")


async def test_edited_and_rehashed_record_is_named(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 3)  # below the first checkpoint, so only the chain can tell
    stored = log.get(ids[1])
    assert stored is not None
    assert stored.body is not None
    forged = {**stored.body, "output": {"items": []}}
    audit_store.execute(
        "UPDATE audit_records SET body = ?, hash = ? WHERE id = ?",
        (canonical_json(forged).decode(), sha256_hex(canonical_json(forged)), ids[1]),
    )
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[1]
    assert report.reason is not None
    assert report.reason.startswith("changed")


def spaced(body: dict[str, Any]) -> str:
    """The same JSON with the json module's default spacing."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


def reordered(body: dict[str, Any]) -> str:
    """The same JSON, compact, with the keys in reverse order."""
    return json.dumps(dict(reversed(body.items())), separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("rewrite", [spaced, reordered])
async def test_same_meaning_in_other_bytes_is_changed(
    log: AuditLog, audit_store: AuditStoreHandle, rewrite: Any
) -> None:
    """Verification hashes the stored bytes: a body rewritten with the same meaning still fails."""
    ids = await write(log, 3)  # below the first checkpoint, so only the record's own hash can tell
    [(text,)] = audit_store.execute("SELECT body FROM audit_records WHERE id = ?", (ids[1],))
    body = json.loads(text)
    other = rewrite(body)
    assert other != text
    assert json.loads(other) == body
    audit_store.execute("UPDATE audit_records SET body = ? WHERE id = ?", (other, ids[1]))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[1]
    assert report.reason == "changed"


async def test_deleted_record_is_named(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 6)
    audit_store.execute("DELETE FROM audit_records WHERE id = ?", (ids[2],))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[3]  # the record after the gap; the deleted one is gone
    assert report.reason is not None
    assert report.reason.startswith("removed")
    assert "#3" in report.reason


async def test_swapped_pair_is_named(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 6)
    a, b = seq_of(audit_store, ids[2]), seq_of(audit_store, ids[3])
    # Swap the two rows' positions: park one at a free seq, move the other, move the first back.
    audit_store.execute("UPDATE audit_records SET seq = -1 WHERE seq = ?", (a,))
    audit_store.execute("UPDATE audit_records SET seq = ? WHERE seq = ?", (a, b))
    audit_store.execute("UPDATE audit_records SET seq = ? WHERE seq = -1", (b,))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[3]
    assert report.reason == "reordered"


async def test_truncated_tail_is_named(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 6)
    audit_store.execute("DELETE FROM audit_records WHERE seq >= ?", (seq_of(audit_store, ids[4]),))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == ids[5]  # the head names the last record written
    assert report.reason is not None
    assert report.reason.startswith("truncated")


async def test_truncation_with_forged_head_is_caught_by_checkpoint(
    log: AuditLog, audit_store: AuditStoreHandle
) -> None:
    ids = await write(log, 9)
    keep = seq_of(audit_store, ids[5])  # checkpoints at 4 and 8; cut after 6 and forge the head
    last = audit_store.execute("SELECT id, hash FROM audit_records WHERE seq = ?", (keep,))[0]
    audit_store.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
    audit_store.execute("UPDATE audit_head SET seq = ?, id = ?, hash = ?", (keep, last[0], last[1]))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.reason is not None
    assert report.reason.startswith("truncated")
    assert "#8" in report.reason


async def test_forged_checkpoint_signature_fails(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    await write(log, 4)
    other = Ed25519PrivateKey.generate()
    import base64

    audit_store.execute(
        "UPDATE audit_checkpoints SET signature = ?", (base64.b64encode(other.sign(b"forged")).decode(),)
    )
    report = reopen(audit_store).verify()
    assert not report.ok
    assert not report.checkpoints_ok
    assert report.reason is not None
    assert "signature" in report.reason


async def test_export_verifies_offline_and_fails_with_another_key(log: AuditLog, tmp_path: Path) -> None:
    ids = await write(log, 9)
    out = tmp_path / "export.jsonl"
    counts = log.export(out)
    assert counts == {"records": 9, "checkpoints": 2}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "header"
    assert "BEGIN PUBLIC KEY" in lines[0]["public_key"]
    assert lines[-1]["type"] == "end"
    assert lines[-1]["head_id"] == ids[-1]
    assert "personal" not in out.read_text()
    good = verify_export(out)
    assert good.ok
    assert good.count == 9
    assert good.checkpoints == 2
    assert log.signer is not None
    assert verify_export(out, public_pem(log.signer.public)).ok
    wrong = verify_export(out, public_pem(Ed25519PrivateKey.generate().public_key()))
    assert not wrong.ok
    assert not wrong.checkpoints_ok
    assert wrong.reason is not None
    assert "signature" in wrong.reason


async def test_export_tampering_truncation_and_garbage(log: AuditLog, tmp_path: Path) -> None:
    ids = await write(log, 6)
    out = tmp_path / "export.jsonl"
    log.export(out)
    lines = out.read_text().splitlines()
    # A changed record (its body is the stored text, changed and written canonically again).
    changed = [json.loads(line) for line in lines]
    changed[3]["body"] = canonical_json({**json.loads(changed[3]["body"]), "latency_ms": 999.0}).decode()
    (tmp_path / "changed.jsonl").write_text("\n".join(json.dumps(x) for x in changed) + "\n")
    report = verify_export(tmp_path / "changed.jsonl")
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert report.reason == "changed"
    # Swapped lines.
    swapped = [*lines[:2], lines[3], lines[2], *lines[4:]]
    (tmp_path / "swapped.jsonl").write_text("\n".join(swapped) + "\n")
    report = verify_export(tmp_path / "swapped.jsonl")
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert report.reason == "reordered"
    # A deleted line.
    (tmp_path / "deleted.jsonl").write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    report = verify_export(tmp_path / "deleted.jsonl")
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert report.reason is not None
    assert report.reason.startswith("removed")
    # Cut mid-line (a copy that stopped early).
    text = out.read_text()
    (tmp_path / "cut.jsonl").write_text(text[: len(text) // 2])
    report = verify_export(tmp_path / "cut.jsonl")
    assert not report.ok
    assert report.reason is not None
    assert report.reason.startswith("truncated")
    # Garbage and missing files are clear errors, not crashes.
    (tmp_path / "garbage.jsonl").write_text("this is not json\n{}\n")
    with pytest.raises(ExportFormatError, match="not a JSON object line"):
        verify_export(tmp_path / "garbage.jsonl")
    with pytest.raises(ExportFormatError, match="cannot read"):
        verify_export(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ExportFormatError, match="empty"):
        verify_export(tmp_path / "empty.jsonl")
    # An unknown format version is refused with a clear error.
    header = json.loads(lines[0])
    (tmp_path / "v9.jsonl").write_text("\n".join([json.dumps({**header, "version": 9}), *lines[1:]]) + "\n")
    with pytest.raises(ExportFormatError, match="version 9"):
        verify_export(tmp_path / "v9.jsonl")


async def test_version_1_exports_still_verify(log: AuditLog, tmp_path: Path) -> None:
    """Exports written before format 2 carried each body as a JSON object; they verify, and changes still fail."""
    ids = await write(log, 5)
    out = tmp_path / "export.jsonl"
    log.export(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    old = [{**line, "version": 1} if line["type"] == "header" else line for line in lines]
    for line in old:
        if line["type"] == "record" and line["body"] is not None:
            line["body"] = json.loads(line["body"])
    (tmp_path / "v1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in old))
    report = verify_export(tmp_path / "v1.jsonl")
    assert report.ok, report.reason
    assert report.count == 5
    records = [line for line in old if line["type"] == "record"]
    records[2]["body"]["latency_ms"] = 999.0
    (tmp_path / "v1-changed.jsonl").write_text("".join(json.dumps(line) + "\n" for line in old))
    report = verify_export(tmp_path / "v1-changed.jsonl")
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert report.reason == "changed"


@pytest.mark.parametrize("rewrite", [spaced, reordered])
async def test_export_carries_the_stored_bytes(
    log: AuditLog, audit_store: AuditStoreHandle, tmp_path: Path, rewrite: Any
) -> None:
    """Each record line holds the stored text verbatim; the same meaning in other bytes fails offline too."""
    ids = await write(log, 3)
    out = tmp_path / "export.jsonl"
    log.export(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    stored = dict(audit_store.execute("SELECT id, body FROM audit_records"))
    records = [line for line in lines if line["type"] == "record"]
    assert [r["body"] for r in records] == [stored[i] for i in ids]
    records[1]["body"] = rewrite(json.loads(records[1]["body"]))
    (tmp_path / "rewritten.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = verify_export(tmp_path / "rewritten.jsonl")
    assert not report.ok
    assert report.first_bad_id == ids[1]
    assert report.reason == "changed"


async def test_purge_keeps_the_chain_valid(log: AuditLog, audit_store: AuditStoreHandle, tmp_path: Path) -> None:
    old = await write(log, 5)
    # Age the first five records by a year (their hashed content keeps its own timestamp; the index column moves).
    year_ago = (datetime.now(UTC) - timedelta(days=365)).timestamp()
    for record_id in old:
        audit_store.execute("UPDATE audit_records SET ts = ? WHERE id = ?", (year_ago, record_id))
    recent = await write(log, 3)
    with pytest.raises(ValueError, match="retention"):
        log.purge(datetime.now(UTC) - timedelta(days=30))
    result = log.purge(datetime.now(UTC) - timedelta(days=200))
    assert result["purged"] == 5
    assert result["last_seq"] == 5
    gone = log.get(old[0])
    assert gone is not None
    assert gone.body is None
    assert log.personal(old[0]) is None
    kept = log.get(recent[0])
    assert kept is not None
    assert kept.body is not None
    report = log.verify()
    assert report.ok, report
    assert report.count == 9
    summary = log.summary()
    assert summary.purged_before is not None
    out = tmp_path / "after-purge.jsonl"
    log.export(out)
    assert verify_export(out).ok
    # Dropping content without a purge record is caught.
    audit_store.execute("UPDATE audit_records SET body = NULL WHERE id = ?", (recent[1],))
    report = reopen(audit_store).verify()
    assert not report.ok
    assert report.first_bad_id == recent[1]


async def test_erase_removes_personal_data_and_keeps_the_chain(log: AuditLog) -> None:
    [record_id] = await log_with_personal(log)
    personal = log.personal(record_id)
    assert personal is not None
    assert {f["kind"] for f in personal["found"]} >= {"email", "phone", "card", "name"}
    stored = log.get(record_id)
    assert stored is not None
    assert stored.body is not None
    text = json.dumps(stored.body)
    for secret in ("ada@example.org", "4111 1111 1111 1111", "+44 20 7946 0958", "Lovelace"):
        assert secret not in text
    erase_id = log.erase(record_id)
    assert log.personal(record_id) is None
    erase = log.get(erase_id)
    assert erase is not None
    assert erase.body is not None
    assert erase.body["target_id"] == record_id
    assert log.verify().ok
    with pytest.raises(AuditNotFoundError):
        log.erase("aud_does_not_exist")


async def log_with_personal(log: AuditLog) -> list[str]:
    request = {
        "query": "gift for Ada Lovelace, mail ada@example.org or call +44 20 7946 0958, card 4111 1111 1111 1111",
        "context": {"user": {"name": "Ada Lovelace"}},
    }
    return [await log.record(AuditEvent("/v1/search", request, {}, caller=CALLER, latency_ms=1.0))]


async def test_review_queue_and_decisions(log: AuditLog) -> None:
    plain = await write(log, 2)
    flagged = await write(log, 2, endpoint="/v1/answers", needs_review="abstained", abstained=True)
    queue = [r.id for r in log.review_queue()]
    assert set(queue) == set(flagged)
    await log.review(flagged[0], "approve", "answer was right to abstain", REVIEWER)
    await log.review(flagged[1], "escalate", "needs a domain expert", REVIEWER)
    states = {r.id: r.review_state for r in log.review_queue()}
    assert states == {flagged[1]: "escalated"}  # escalated records stay queued until decided
    await log.review(flagged[1], "reject", "wrong", REVIEWER)
    assert log.review_queue() == []
    assert [r["record"]["decision"] for r in log.reviews_of(flagged[1])] == ["escalate", "reject"]
    with pytest.raises(AuditNotFoundError):
        await log.review("aud_nope", "approve", "", REVIEWER)
    summary = log.summary()
    answers = next(e for e in summary.endpoints if e.endpoint == "/v1/answers")
    assert answers.requests == 2
    assert answers.abstained == 2
    assert summary.abstention_rate == 1.0
    assert summary.reviews.approved == 1
    assert summary.reviews.rejected == 1
    assert summary.reviews.pending == 0
    search = next(e for e in summary.endpoints if e.endpoint == "/v1/search")
    assert search.requests == len(plain)
    assert search.latency_p50_ms == 1.5
    assert log.verify().ok
    listed = log.find(RecordQuery(kind="review", limit=10))
    assert len(listed) == 3


async def test_concurrent_writers_keep_one_chain(audit_store: AuditStoreHandle) -> None:
    """Two logs on the same store (as two replicas would be), each with many concurrent callers."""
    first, second = AuditLog(audit_store.config), AuditLog(audit_store.config)

    errors: list[BaseException] = []

    def replica(log: AuditLog, n: int) -> None:
        async def run() -> None:
            await log.start()
            try:
                await asyncio.gather(*(write(log, 5) for _ in range(n)))
            finally:
                await log.stop()

        try:
            asyncio.run(run())
        except BaseException as exc:  # a thread's failure must fail the test, not vanish
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(log, 8)) for log in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = reopen(audit_store)
    report = check.verify()
    assert report.ok, report
    assert report.count == 80
    assert report.checkpoints == 20
    seqs = [int(r[0]) for r in audit_store.execute("SELECT seq FROM audit_records ORDER BY seq")]
    assert seqs == list(range(1, 81))


async def test_async_mode_commits_in_the_background(audit_store: AuditStoreHandle) -> None:
    log = AuditLog(dataclasses.replace(audit_store.config, mode="async"))
    await log.start()
    ids = await write(log, 20)
    await log.stop()  # flushes the queue
    check = reopen(audit_store)
    assert check.verify().count == 20
    assert all(check.get(i) is not None for i in ids)


async def test_records_are_built_off_the_event_loop_and_a_bad_one_fails_alone(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id is taken as the call is recorded; redaction and bounding run in the writer's thread; a record that
    cannot be built fails its own call, and the records committed with it are chained as usual."""
    built_on: list[str] = []

    def spy(event: AuditEvent, max_text_chars: int, head: dict[str, Any]) -> Any:
        built_on.append(threading.current_thread().name)
        if event.request.get("query") == "explode":
            raise ValueError("cannot build this record")
        return event_record(event, max_text_chars, head)

    monkeypatch.setattr(log_module, "event_record", spy)

    def event(query: str) -> AuditEvent:
        return AuditEvent(endpoint="/v1/search", request={"query": query}, output={}, caller=CALLER)

    loop_thread = threading.current_thread().name
    results = await asyncio.gather(
        log.record(event("towel")), log.record(event("explode")), log.record(event("lamp")), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    assert loop_thread not in built_on
    assert len(built_on) == 3
    for record_id in (results[0], results[2]):
        assert isinstance(record_id, str)
        stored = await asyncio.to_thread(log.get, record_id)
        assert stored is not None
        assert stored.body is not None
        assert stored.body["id"] == record_id
    assert log.verify().ok
    assert log.verify().count == 2
    assert log.stats.failed == 1


async def test_locked_sqlite_fails_the_write_cleanly(tmp_path: Path) -> None:
    config = audit_config(tmp_path, busy_timeout_ms=100)
    log = AuditLog(config)
    await log.start()
    await write(log, 1)
    blocker = sqlite3.connect(config.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditUnavailableError, match="locked"):
            await write(log, 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await write(log, 1)  # the writer keeps working once the lock is gone
    assert log.verify().ok
    assert log.verify().count == 2
    await log.stop()


async def test_small_reads_run_at_once_on_sqlite_only(log: AuditLog, audit_store: AuditStoreHandle) -> None:
    ids = await write(log, 3)
    await log.review(ids[0], "approve", "fine", REVIEWER)

    def read() -> tuple[Any, ...]:
        return log.get(ids[0]), [s.id for s in log.find(RecordQuery(limit=2))], log.reviews_of(ids[0])

    if audit_store.backend != "sqlite":  # a PostgreSQL read is a network round trip: always a worker thread
        with pytest.raises(WouldBlock):
            log.read_now(read)
        return
    assert log.read_now(read) == read()  # the quick connection reads what the readers' connection reads
    # A read that is already running holds the quick connection: a second one is told to take the thread path.
    with pytest.raises(WouldBlock):
        log.read_now(lambda: log.read_now(read))
    assert log.read_now(read) == read()  # released again


async def test_a_failing_quick_read_is_retried_in_a_thread(tmp_path: Path) -> None:
    """The quick connection never waits for a lock: "database is locked" there sends the read to the thread path,
    whose connection waits as configured."""

    class Busy:
        def __init__(self, db: AuditBackend) -> None:
            self.db = db

        def __getattr__(self, name: str) -> Any:
            if name in ("get", "find"):

                def locked(*args: Any, **kwargs: Any) -> Any:
                    raise AuditStoreError("OperationalError: database is locked")

                return locked
            return getattr(self.db, name)

    def factory(config: AuditConfig) -> Any:
        db = open_backend(config)
        return Busy(db) if config.busy_timeout_ms == 0 else db

    log = AuditLog(audit_config(tmp_path), factory)
    await log.start()
    try:
        (record_id,) = await write(log, 1)
        with pytest.raises(WouldBlock):
            log.read_now(lambda: log.get(record_id))
        stored = await asyncio.to_thread(log.get, record_id)
        assert stored is not None
        assert stored.id == record_id
    finally:
        await log.stop()


async def test_corrupted_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    config = audit_config(tmp_path)
    config.path.write_bytes(b"this is not a database" * 100)
    log = AuditLog(config)
    await log.start()  # logs, does not raise
    assert log.failure is not None
    assert "audit database" in log.failure
    with pytest.raises(AuditUnavailableError, match="audit database"):
        await write(log, 1)
    await log.stop()


def test_signing_key_file_is_private(tmp_path: Path) -> None:
    from governance.audit.signing import CheckpointSigner

    signer = CheckpointSigner(tmp_path / "keys" / "k.pem")
    assert (tmp_path / "keys" / "k.pem").stat().st_mode & 0o777 == 0o600
    again = CheckpointSigner(tmp_path / "keys" / "k.pem")
    assert again.key_id == signer.key_id


async def test_summary_periods(log: AuditLog) -> None:
    await write(log, 3)
    now = datetime.now(UTC)
    everything = log.summary()
    assert everything.records == 3
    assert everything.endpoints[0].latency_p95_ms == pytest.approx(2.9)
    assert everything.abstention_rate is None
    assert log.summary(until=now - timedelta(hours=1)).records == 0
    assert log.summary(since=now - timedelta(hours=1), until=now + timedelta(hours=1)).records == 3
