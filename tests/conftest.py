"""Shared fixtures: the real encoder and a built demo index, loaded once per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.settings import load_settings
from governance.audit import AuditConfig
from retrieval.encoder import Encoder, load_encoder
from retrieval.engine import EngineConfig, RetrievalEngine

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_PACK = PROJECT_ROOT / "data" / "demo"
SHARED_DATA = Path(os.environ.get("CANDOR_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))
FLIPKART_CSV = SHARED_DATA / "flipkart-1050" / "flipkart_com-ecommerce_sample_1050.csv"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder, and skip ``gpu`` tests where no CUDA device is visible."""
    import torch

    has_gpu = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible on this machine")
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in ("unit", "integration", "e2e"):
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


def engine_config(state_dir: Path, **overrides: Any) -> EngineConfig:
    """An engine configuration for the demo pack (the project's defaults otherwise)."""
    settings = load_settings(overrides={"paths": {"state_dir": str(state_dir), "pack": str(DEMO_PACK)}, **overrides})
    return settings.engine_config(show_progress=False)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The configured encoder (all-MiniLM-L6-v2 unless ``CANDOR_ENCODER__PATH`` names a folder) on the CPU, once."""
    enc = load_encoder(replace(load_settings().encoder_config(), device="cpu"))
    enc.warmup()
    return enc


@pytest.fixture(scope="session")
def built_state(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    """A state folder with the demo catalog embedded and its index snapshot written (built once)."""
    state = tmp_path_factory.mktemp("built-state")
    RetrievalEngine(engine_config(state), encoder=encoder).build_offline()
    return state


@pytest.fixture
def state_copy(built_state: Path, tmp_path: Path) -> Path:
    """A private copy of the built state, for tests that change it."""
    target = tmp_path / "state"
    shutil.copytree(built_state, target)
    return target


@pytest.fixture
async def engine(state_copy: Path, encoder: Encoder) -> AsyncIterator[RetrievalEngine]:
    """A started engine over a private copy of the demo index."""
    eng = RetrievalEngine(engine_config(state_copy), encoder=encoder)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


# -- audit log stores: every audit test runs against SQLite and a real PostgreSQL server --------------------------

PG_DSN = os.environ.get("CANDOR_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def audit_config(state_dir: Path, **overrides: Any) -> AuditConfig:
    """The project's default audit configuration with its store and key in ``state_dir``, then ``overrides``."""
    config = load_settings(overrides={"paths": {"state_dir": str(state_dir)}}).audit_config()
    return replace(config, **overrides)


class AuditStoreHandle:
    """An audit store for one test: its config, and raw SQL access for tampering with it."""

    def __init__(self, config: AuditConfig, dsn: str | None = None) -> None:
        self.config = config
        self.dsn = dsn

    @property
    def backend(self) -> str:
        return str(self.config.backend)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run SQL (``?`` placeholders) directly on the store, outside the audit log."""
        if self.dsn is None:
            import sqlite3

            db = sqlite3.connect(self.config.path, isolation_level=None)
            try:
                cur = db.execute(sql, params)
                return cur.fetchall()
            finally:
                db.close()
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            pg_cur = conn.execute(sql.replace("?", "%s"), params)
            return pg_cur.fetchall() if pg_cur.description else []


def postgres_reachable() -> str | None:
    """``None`` when the test PostgreSQL server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL not reachable at '{PG_DSN}' ({type(exc).__name__}: {str(exc).strip()[:120]})"


@pytest.fixture(params=["sqlite", "postgres"])
def audit_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty audit store (SQLite file, or a fresh schema on the PostgreSQL server); skips PG if unreachable."""
    import secrets

    if request.param == "sqlite":
        yield AuditStoreHandle(audit_config(tmp_path, checkpoint_every=4))
        return
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    import psycopg

    schema = f"audit_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{PG_DSN} options='-c search_path={schema}'"
    try:
        yield AuditStoreHandle(audit_config(tmp_path, backend="postgres", dsn=dsn, checkpoint_every=4), dsn)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
