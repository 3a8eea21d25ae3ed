"""Settings layering and API key storage."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.auth import KeyStore
from app.settings import PROJECT_ROOT, load_settings
from retrieval.encoder import load_encoder
from retrieval.settings import EncoderSettings


def test_the_documented_defaults_as_a_config_file_change_nothing() -> None:
    assert load_settings(PROJECT_ROOT / "configs" / "default.toml") == load_settings()


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "prod.toml"
    config.write_text("[server]\nport = 9100\n[batching.encoder]\nmax_batch_size = 8\n", encoding="utf-8")
    monkeypatch.setenv("CANDOR_BATCHING__ENCODER__MAX_BATCH_SIZE", "1")
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.batching.encoder.max_batch_size == 1  # the environment wins
    assert settings.batching.encoder.max_queue == 512  # untouched keys keep their defaults


def test_invalid_values_and_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(overrides={"index": {"kind": "annoy"}})
    with pytest.raises(ValidationError):
        load_settings(overrides={"server": {"bogus": 1}})
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


def test_digest_changes_with_settings() -> None:
    assert load_settings().digest() != load_settings(overrides={"limits": {"max_k": 5}}).digest()


def test_relative_paths_resolve_against_the_project() -> None:
    settings = load_settings()
    assert settings.pack_path == PROJECT_ROOT / "data" / "demo"


def test_model_paths_resolve_against_the_project_and_empty_keeps_the_bundled_model(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={
            "encoder": {"path": "models/encoder"},
            "generator": {"local": {"path": str(tmp_path / "lm.gguf"), "cache_dir": "models/cache"}},
        }
    )
    assert settings.engine_config(show_progress=False).encoder == settings.encoder_config()
    assert settings.encoder_config().path == str(PROJECT_ROOT / "models" / "encoder")
    local = settings.local_generator_config()
    assert local.path == str(tmp_path / "lm.gguf")  # absolute: unchanged
    assert local.cache_dir == str(PROJECT_ROOT / "models" / "cache")
    defaults = load_settings()
    assert defaults.encoder_config().path == ""
    assert (defaults.local_generator_config().path, defaults.local_generator_config().cache_dir) == ("", "")


def test_load_encoder_uses_the_configured_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_encoder(EncoderSettings(path=str(missing), device="cpu").to_config())


def test_keys_are_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    key = store.create("frontend", label="web")
    principal = store.verify(key)
    assert principal is not None
    assert principal.role == "frontend"
    assert store.verify(key + "x") is None
    assert store.verify("Bearer nonsense") is None
    # Only a digest is kept: no column holds the secret part of the key.
    db = sqlite3.connect(tmp_path / "keys.sqlite")
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM api_keys").fetchone()
    secret = key.split("_", 2)[2]
    assert not [value for value in row if secret in str(value)]
    assert re.fullmatch("[0-9a-f]{64}", row["key_hash"])
    db.close()
    assert store.revoke(principal.key_id)
    assert store.verify(key) is None
    with pytest.raises(ValueError, match="unknown role"):
        store.create("root")  # type: ignore[arg-type]
    store.close()


def test_a_secret_with_underscores_still_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # token_urlsafe draws from an alphabet with "_" and "-"; pin a secret full of both so the
    # split into prefix, id and secret is exercised on every run, not by chance
    monkeypatch.setattr("app.auth.secrets.token_urlsafe", lambda n: "_a-b__c_")
    store = KeyStore(tmp_path / "keys.sqlite")
    key = store.create("frontend")
    assert key.endswith("__a-b__c_")
    principal = store.verify(key)
    assert principal is not None
    assert principal.key_id == key.split("_")[1]
    assert store.verify(key[:-1]) is None
    store.close()
