"""Verification and export: checking the live log, writing an export file, and verifying one offline.

Both checks hash the bytes that were stored, never a re-serialisation: the live check reads each record's stored
text, and an export carries that text verbatim (a record line's ``body`` is the stored canonical JSON, as a JSON
string), so a body rewritten with the same meaning in other bytes fails as ``changed`` in either place.

Export file (JSON lines, version 2): a ``header`` (format, version, key id, public key), one ``record`` line per
record (``seq``, ``id``, ``prev_hash``, ``hash``, ``body``: the stored text, or ``null`` once purged), the signed
``checkpoint`` lines, and an ``end`` line whose signature covers the record count and the chain head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from governance.audit.chain import ChainChecker, Row, canonical_json
from governance.audit.connections import AuditConnections
from governance.audit.errors import ExportFormatError
from governance.audit.records import iso
from governance.audit.signing import load_public_pem, public_pem, signature_ok
from governance.audit.store import AuditBackend, Checkpoint
from governance.types import VerifyReport

EXPORT_FORMAT = "candor-audit-export"
EXPORT_VERSION = 2


def check_log(
    rows: Iterable[Row],
    checkpoints: Sequence[Checkpoint],
    public_key_pem: str,
    head_seq: int | None,
    head_id: str | None,
) -> VerifyReport:
    """Check a chain and its checkpoints (shared by the live log and export files).

    Args:
        rows: Records in storage order, each with its body as stored.
        checkpoints: Signed checkpoints.
        public_key_pem: The key the checkpoints must verify with.
        head_seq: The last seq the log says it wrote (``None``: unknown).
        head_id: That record's id.

    Returns:
        The verification report; ``first_bad_id`` and ``reason`` name the first failure.
    """
    public = load_public_pem(public_key_pem)
    wanted = {cp.seq for cp in checkpoints}
    seen: dict[int, tuple[str, str]] = {}
    checker = ChainChecker()
    for row in rows:
        if row.seq in wanted:
            seen[row.seq] = (row.hash, row.id)
        if not checker.feed(row):
            break
    failure = checker.finish(head_seq, head_id)
    checkpoints_ok = True
    cp_failure: tuple[str | None, str] | None = None
    for cp in checkpoints:
        if not signature_ok(public, cp.message(), cp.signature):
            checkpoints_ok = False
            cp_failure = cp_failure or (seen.get(cp.seq, ("", None))[1], f"bad signature on checkpoint #{cp.seq}")
        elif cp.seq > checker.count and failure is None:
            cp_failure = cp_failure or (None, f"truncated: signed checkpoint #{cp.seq} is past the last record")
        elif cp.seq in seen and seen[cp.seq][0] != cp.hash:
            cp_failure = cp_failure or (seen[cp.seq][1], f"changed: differs from signed checkpoint #{cp.seq}")
    first_bad, reason = (failure.record_id, failure.reason) if failure else (None, None)
    if failure is None and cp_failure is not None:
        first_bad, reason = cp_failure
    return VerifyReport(
        ok=failure is None and cp_failure is None,
        count=checker.count,
        first_bad_id=first_bad,
        reason=reason,
        checkpoints=len(checkpoints),
        checkpoints_ok=checkpoints_ok,
        checked_at=datetime.now(UTC),
    )


def verify_live(conns: AuditConnections) -> VerifyReport:
    """Check the whole live log: every record's stored bytes and link, the head, every checkpoint's signature.

    Raises:
        AuditUnavailableError: The log is not open or the store cannot be read.
    """
    pem = public_pem(conns.require_signer().public)

    def run(db: AuditBackend) -> VerifyReport:
        head_seq, head_id, _ = db.head()
        return check_log(db.rows(), db.checkpoints(), pem, head_seq, head_id)

    return conns.read(run)


def export(conns: AuditConnections, out: str | Path) -> dict[str, int]:
    """Write records (their stored text verbatim), checkpoints and the public key as JSON lines, signed at the end.

    The file appears complete or not at all.

    Personal data (kept apart from the chain) is never exported.

    Returns:
        Counts of records and checkpoints written.

    Raises:
        AuditUnavailableError: The log is not open or the store cannot be read.
    """
    signer = conns.require_signer()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")

    def run(db: AuditBackend) -> dict[str, int]:
        head_seq, head_id, head_hash = db.head()
        records = 0
        cps = [cp for cp in db.checkpoints() if cp.seq <= head_seq]
        with tmp.open("w", encoding="utf-8") as fh:
            header = {
                "type": "header",
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "exported_at": iso(time.time()),
                "key_id": signer.key_id,
                "public_key": public_pem(signer.public),
            }
            fh.write(json.dumps(header) + "\n")
            for row in db.rows():
                if row.seq > head_seq:
                    break  # appended while exporting: the next export has it
                line = {"type": "record", "seq": row.seq, "id": row.id, "prev_hash": row.prev_hash}
                line |= {"hash": row.hash, "body": row.text}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                records += 1
            for cp in cps:
                fh.write(json.dumps({"type": "checkpoint", **_checkpoint_fields(cp)}) + "\n")
            end: dict[str, Any] = {"records": records, "head_seq": head_seq, "head_id": head_id, "head_hash": head_hash}
            end["signature"] = signer.sign_bytes(canonical_json(end))
            fh.write(json.dumps({"type": "end", **end}) + "\n")
        tmp.replace(path)
        return {"records": records, "checkpoints": len(cps)}

    return conns.read(run)


def _checkpoint_fields(cp: Checkpoint) -> dict[str, Any]:
    return {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts, "key_id": cp.key_id, "signature": cp.signature}


def _read_lines(source: Path) -> tuple[list[dict[str, Any]], bool]:
    """The file's JSON object lines, and whether it ends cleanly (a last line cut mid-write is dropped).

    Raises:
        ExportFormatError: The file cannot be read, is empty, or holds a line that is not a JSON object.
    """
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"cannot read export file {source}: {exc}") from exc
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    if not lines or not lines[0].strip():
        raise ExportFormatError(f"{source} is empty")
    parsed: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines) and not complete:
                break  # the last line was cut off mid-write
            raise ExportFormatError(f"{source}:{number}: not a JSON object line ({exc})") from exc
        parsed.append(obj)
    return parsed, complete


def _record_row(obj: dict[str, Any], version: int) -> Row:
    """A record line as the checker reads it: its body is the stored text (or ``null`` once purged), never parsed.

    Version 1 exports carried the body as a JSON object; every body was stored as canonical JSON, so its canonical
    form gives back the stored bytes, and such a file still verifies.
    """
    text = obj.get("body")
    if version == 1 and isinstance(text, dict):
        text = canonical_json(text).decode()
    if text is not None and not isinstance(text, str):
        raise TypeError("a record's body must be its stored text (a JSON string) or null")
    return Row(int(obj["seq"]), str(obj["id"]), str(obj["prev_hash"]), str(obj["hash"]), text)


def verify_export(path: str | Path, public_key_pem: str | None = None) -> VerifyReport:
    """Verify an export file offline, hashing each record's stored text as exported.

    Args:
        path: The JSON-lines export.
        public_key_pem: The key to trust (default: the one in the file; pass a copy obtained out of band to
            rule out a re-signed file).

    Returns:
        The report; a file cut short fails with reason ``truncated``.

    Raises:
        ExportFormatError: The file is missing, empty, not an audit export or of an unknown format version.
    """
    source = Path(path)
    parsed, complete = _read_lines(source)
    header = parsed[0] if parsed else {}
    if header.get("type") != "header" or header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"{source}: first line is not a {EXPORT_FORMAT} header")
    version = header.get("version")
    if version not in (1, EXPORT_VERSION):
        raise ExportFormatError(
            f"{source}: export format version {version} is not supported (this release reads versions 1 and"
            f" {EXPORT_VERSION})"
        )
    key_pem = public_key_pem or header.get("public_key")
    if not isinstance(key_pem, str):
        raise ExportFormatError(f"{source}: no public key in the header")
    try:
        public = load_public_pem(key_pem)
    except ValueError as exc:
        raise ExportFormatError(f"bad public key: {exc}") from exc
    rows: list[Row] = []
    cps: list[Checkpoint] = []
    end: dict[str, Any] | None = None
    try:
        for obj in parsed[1:]:
            kind = obj.get("type")
            if kind == "record":
                rows.append(_record_row(obj, int(version)))
            elif kind == "checkpoint":
                cps.append(Checkpoint(int(obj["seq"]), obj["hash"], float(obj["ts"]), obj["key_id"], obj["signature"]))
            elif kind == "end":
                end = obj
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{source}: malformed line ({type(exc).__name__}: {exc})") from exc
    report = check_log(rows, cps, key_pem, int(end["head_seq"]) if end else None, end.get("head_id") if end else None)
    if end is not None:
        signed = {k: end.get(k) for k in ("records", "head_seq", "head_id", "head_hash")}
        if not signature_ok(public, canonical_json(signed), str(end.get("signature", ""))):
            return replace(
                report,
                ok=False,
                first_bad_id=None,
                reason="bad signature on the export's end line",
                checkpoints_ok=False,
            )
        if report.ok and rows and rows[-1].hash != end.get("head_hash"):
            return replace(
                report, ok=False, first_bad_id=rows[-1].id, reason="changed: last record differs from the end line"
            )
    if (end is None or not complete) and report.ok:
        return replace(
            report,
            ok=False,
            first_bad_id=rows[-1].id if rows else None,
            reason=f"truncated: the export ends after {report.count} record(s) without its end line",
        )
    return report
