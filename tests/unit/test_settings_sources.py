"""One source per setting: the sections hold the defaults, ``configs/default.toml`` and the dataclasses agree.

Each default is declared once, in a settings section. The TOML file is its documented copy, and each retrieval
dataclass takes its section's values and has no defaults of its own. These checks fail on any drift: a key in
one place and not the other, a different value, a dataclass default, or a field no section fills.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from inspect import signature
from typing import Any

import pytest
from pydantic import SecretStr

from app.settings import PROJECT_ROOT, DriftSettings, Settings
from bench.hotpath import batcher_config
from evals.suite import EncoderSpec
from governance.drift import DriftConfig
from retrieval.answers import AnswerConfig
from retrieval.answers.grounding import ExtractiveConfig, SupportConfig
from retrieval.answers.local_model import LocalGeneratorConfig
from retrieval.answers.remote import OpenAIConfig
from retrieval.batcher import BatcherConfig
from retrieval.encoder import EncoderConfig
from retrieval.index import IndexSpec
from retrieval.knowledge import ChunkingConfig
from retrieval.recommend import RecommenderConfig
from retrieval.settings import (
    SUPPORT_FIELDS,
    AnswerSettings,
    EncoderBatcherSettings,
    EncoderSettings,
    ExtractiveSettings,
    GeneratorBatcherSettings,
    IndexBatcherSettings,
    IndexSettings,
    KnowledgeSettings,
    LocalGeneratorSettings,
    OpenAISettings,
    RecommenderSettings,
    Section,
)

DEFAULT_TOML = PROJECT_ROOT / "configs" / "default.toml"

PAIRS: list[tuple[type[Any], type[Any]]] = [
    (EncoderSettings, EncoderConfig),
    (EncoderBatcherSettings, BatcherConfig),
    (IndexBatcherSettings, BatcherConfig),
    (GeneratorBatcherSettings, BatcherConfig),
    (IndexSettings, IndexSpec),
    (RecommenderSettings, RecommenderConfig),
    (KnowledgeSettings, ChunkingConfig),
    (ExtractiveSettings, ExtractiveConfig),
    (AnswerSettings, AnswerConfig),
    (LocalGeneratorSettings, LocalGeneratorConfig),
    (OpenAISettings, OpenAIConfig),
    (DriftSettings, DriftConfig),
]

# Section keys a dataclass takes grouped into one nested dataclass field: field -> {section key: nested field}.
NESTED: dict[type[Section], dict[str, Mapping[str, str]]] = {AnswerSettings: {"support": SUPPORT_FIELDS}}


def _leaves(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def disagreements(documented: Mapping[str, Any], defaults: Settings) -> list[str]:
    """Where documented TOML data and the sections' defaults differ, one line each (empty when they agree)."""
    doc = _leaves(documented)
    declared = _leaves(defaults.model_dump(mode="json"))
    problems = [f"{key}: in the TOML file but not a setting" for key in sorted(doc.keys() - declared.keys())]
    problems += [f"{key}: a setting missing from the TOML file" for key in sorted(declared.keys() - doc.keys())]
    problems += [
        f"{key}: the TOML file says {doc[key]!r}, the section {declared[key]!r}"
        for key in sorted(doc.keys() & declared.keys())
        if doc[key] != declared[key]
    ]
    return problems


def _own_defaults(config: type[Any]) -> list[str]:
    return [
        f"{config.__name__}.{f.name}: has a default of its own"
        for f in fields(config)
        if f.default is not MISSING or f.default_factory is not MISSING
    ]


def _as_config_value(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Section):
        return value.to_config()  # type: ignore[attr-defined]
    return value


def pair_problems(section: type[Any], config: type[Any]) -> list[str]:
    """How a section and its dataclass disagree, one line each (empty when they agree).

    The dataclass's fields must be the section's fields (nested ones grouped, see ``NESTED``) plus the runtime
    values ``to_config`` takes as arguments; none may have a default; ``to_config`` must build the dataclass from
    the section's values.
    """
    nested = NESTED.get(section, {})
    grouped = {key for keys in nested.values() for key in keys}
    runtime = set(signature(section.to_config).parameters) - {"self"}
    takes = (set(section.model_fields) - grouped) | set(nested) | runtime
    has = {f.name for f in fields(config)}
    problems = [f"{config.__name__}.{name}: no field of {section.__name__} fills it" for name in sorted(has - takes)]
    problems += [f"{section.__name__}.{name}: {config.__name__} does not take it" for name in sorted(takes - has)]
    problems += _own_defaults(config)
    instance = section()
    built = instance.to_config()
    if type(built) is not config:
        return [*problems, f"{section.__name__}.to_config() builds {type(built).__name__}, not {config.__name__}"]
    for name in sorted(set(section.model_fields) & has):
        if getattr(built, name) != _as_config_value(getattr(instance, name)):
            problems.append(f"{config.__name__}.{name}: to_config() gives {getattr(built, name)!r}")
    for name, keys in nested.items():
        for key, field in keys.items():
            if getattr(getattr(built, name), field) != getattr(instance, key):
                problems.append(f"{config.__name__}.{name}.{field}: to_config() does not take {key}")
    return problems


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The sections' defaults, whatever ``CANDOR_...`` variables the environment holds."""
    for name in list(os.environ):
        if name.startswith("CANDOR_"):
            monkeypatch.delenv(name)
    return Settings()


@pytest.fixture
def documented() -> dict[str, Any]:
    """``configs/default.toml`` as data."""
    return tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))


def test_the_toml_file_documents_every_setting_with_its_default(documented: dict[str, Any], defaults: Settings) -> None:
    assert disagreements(documented, defaults) == []


def test_a_changed_extra_or_missing_toml_key_is_reported(documented: dict[str, Any], defaults: Settings) -> None:
    documented["batching"]["encoder"]["max_queue"] = 1024
    documented["index"]["nprobe"] = 8
    del documented["answers"]["extractive"]["max_sentences"]
    assert disagreements(documented, defaults) == [
        "index.nprobe: in the TOML file but not a setting",
        "answers.extractive.max_sentences: a setting missing from the TOML file",
        "batching.encoder.max_queue: the TOML file says 1024, the section 512",
    ]


@pytest.mark.parametrize(("section", "config"), PAIRS, ids=[s.__name__ for s, _ in PAIRS])
def test_each_dataclass_takes_its_sections_values_and_has_no_defaults(section: type[Any], config: type[Any]) -> None:
    assert pair_problems(section, config) == []


def test_the_support_thresholds_fill_support_config() -> None:
    assert {f.name for f in fields(SupportConfig)} == set(SUPPORT_FIELDS.values())
    assert _own_defaults(SupportConfig) == []


def test_a_dataclass_that_drifted_from_its_section_is_reported() -> None:
    @dataclass
    class Drifted:
        chunk_tokens: int
        overlap_tokens: int = 32
        min_chars: int = 0

    assert pair_problems(KnowledgeSettings, Drifted) == [
        "Drifted.min_chars: no field of KnowledgeSettings fills it",
        "Drifted.overlap_tokens: has a default of its own",
        "Drifted.min_chars: has a default of its own",
        "KnowledgeSettings.to_config() builds ChunkingConfig, not Drifted",
    ]


def test_service_and_suite_sections_build_the_cores_dataclasses(defaults: Settings) -> None:
    # Their subclasses add keys only they read (request limits, the weights hash a suite insists on).
    assert defaults.index.to_config() == IndexSettings().to_config()
    assert defaults.knowledge.to_config() == KnowledgeSettings().to_config()
    assert defaults.answers.to_config() == AnswerSettings().to_config()
    assert defaults.generator.local.to_config() == LocalGeneratorSettings().to_config()
    assert EncoderSpec(expect_version="sha256:x").to_config() == EncoderSettings().to_config()


def test_the_benchmarks_copy_of_the_encoder_batcher_defaults_agrees() -> None:
    section = EncoderBatcherSettings()
    assert batcher_config(section.max_batch_size, concurrency=1) == section.to_config()
