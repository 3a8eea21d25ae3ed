"""The model registry: every trained model is a version in MLflow, and serving pins one by version or alias.

Each kind of model (``recommender``, ``encoder``, ``reader``) is one MLflow registered model (``candor-<kind>``).
A version holds its weights folder as artifacts of its training run, with the run's parameters and metrics and the
version's tags (data and code hashes, parent model, model card). The ``production`` alias names what serves;
:meth:`ModelRegistry.promote` moves it (the gate that decides whether it may is the caller's: see
``candor models promote``), and every move is kept in the registered model's ``promotions`` tag so
:meth:`ModelRegistry.rollback` can step back.

By default the registry is a local MLflow file store under the state folder; any tracking server works by URI.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from retrieval.errors import RetrievalError

ModelKind = Literal["recommender", "encoder", "reader"]
MODEL_KINDS: tuple[ModelKind, ...] = ("recommender", "encoder", "reader")
PRODUCTION = "production"
CARD_FILE = "card.json"


class RegistryError(RetrievalError):
    """A registry call failed: unknown version or alias, unreachable store, malformed entry."""


def registered_name(kind: ModelKind) -> str:
    """The MLflow registered-model name of a kind."""
    return f"candor-{kind}"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version.

    Attributes:
        kind: Which kind of model.
        version: MLflow's version number.
        run_id: The training run.
        source: Where its weights folder lives (an artifact URI).
        created_at: Registration time (epoch seconds).
        aliases: Aliases pointing at it (``production``).
        tags: Version tags (data and code hashes, parent, description, promotion facts).
        params: The training run's parameters.
        metrics: The training run's metrics (and evaluation metrics logged later).
    """

    kind: ModelKind
    version: int
    run_id: str
    source: str
    created_at: float
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``<kind>:<version>``, how responses and audit records name it."""
        return f"{self.kind}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (CLI output)."""
        return {
            "kind": self.kind,
            "version": self.version,
            "run_id": self.run_id,
            "source": self.source,
            "created_at": self.created_at,
            "aliases": list(self.aliases),
            "tags": dict(self.tags),
            "params": dict(self.params),
            "metrics": dict(self.metrics),
        }


def default_uri(state_dir: Path) -> str:
    """The local file store under the state folder."""
    return (state_dir / "registry").resolve().as_uri()


class ModelRegistry:
    """Registered model versions in MLflow.

    Args:
        uri: Tracking and registry URI (``file:...`` for a local store, ``http(s)://...`` for a server).
        cache_dir: Where artifacts of a remote store are downloaded (local stores are read in place).
    """

    def __init__(self, uri: str, cache_dir: Path) -> None:
        self.uri = uri
        self.cache_dir = cache_dir
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs and CLI output
        if uri.startswith("file:"):
            # MLflow 3 asks for consent before it uses a file store; this registry is meant to be one.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            Path(unquote(urlparse(uri).path)).mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- writing --------------------------------------------------------------------------------------------------

    def register(
        self,
        kind: ModelKind,
        folder: Path,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        card: Mapping[str, Any],
    ) -> ModelVersion:
        """Log a trained model's folder, parameters, metrics and card as a run, and register it as a new version.

        Args:
            kind: Which kind of model.
            folder: The model's files (what serving loads).
            params: Training parameters (values are logged as text).
            metrics: Training or validation metrics.
            tags: Facts to keep on the version (``data_hash``, ``code_version``, ``parent``, ``description``...).
            card: The model card (intended use, data, limitations, metrics), stored as ``card.json``.
        """
        from mlflow.exceptions import MlflowException

        client = self._client
        name = registered_name(kind)
        try:
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            run = client.create_run(experiment_id, tags={"candor.kind": kind, **tags})
            run_id = run.info.run_id
            for key, value in params.items():
                client.log_param(run_id, key, value if isinstance(value, str) else json.dumps(value))
            for key, number in metrics.items():
                client.log_metric(run_id, key, float(number))
            client.log_artifacts(run_id, str(folder), "model")
            client.log_text(run_id, json.dumps(card, indent=1, sort_keys=True), CARD_FILE)
            client.set_terminated(run_id)
            if not client.search_registered_models(filter_string=f"name='{name}'"):
                client.create_registered_model(name)
            created = client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=dict(tags)
            )
        except MlflowException as exc:
            raise RegistryError(f"registering a {kind} failed: {exc}") from exc
        return self.get(kind, int(created.version))

    def log_metrics(self, version: ModelVersion, metrics: Mapping[str, float]) -> None:
        """Add evaluation metrics to a version's run (e.g. the gate's figures at promotion)."""
        for key, number in metrics.items():
            self._client.log_metric(version.run_id, key, float(number))

    def promote(self, version: ModelVersion, *, by: str, forced: bool, reason: str) -> ModelVersion:
        """Point ``production`` at ``version`` and record the move (who, when, forced or gated, why)."""
        name = registered_name(version.kind)
        history = self.promotions(version.kind)
        history.append({"version": version.version, "at": time.time(), "by": by, "forced": forced, "reason": reason})
        self._client.set_registered_model_alias(name, PRODUCTION, str(version.version))
        self._client.set_registered_model_tag(name, "promotions", json.dumps(history))
        self._client.set_model_version_tag(name, str(version.version), "promoted_by", by)
        self._client.set_model_version_tag(name, str(version.version), "promotion_forced", str(forced).lower())
        return self.get(version.kind, version.version)

    def rollback(self, kind: ModelKind, *, by: str) -> ModelVersion:
        """Point ``production`` back at the version promoted before the current one.

        Raises:
            RegistryError: There is no earlier promotion to go back to.
        """
        history = self.promotions(kind)
        current = self.production(kind)
        earlier = [h for h in history if current is None or int(h["version"]) != current.version]
        if current is None or not earlier:
            raise RegistryError(f"no earlier {kind} promotion to roll back to")
        target = self.get(kind, int(earlier[-1]["version"]))
        return self.promote(target, by=by, forced=False, reason=f"rollback from version {current.version}")

    # -- reading ------------------------------------------------------------------------------------------------

    def promotions(self, kind: ModelKind) -> list[dict[str, Any]]:
        """Every move of ``production``, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            model = self._client.get_registered_model(registered_name(kind))
        except MlflowException:
            return []
        raw = model.tags.get("promotions")
        return list(json.loads(raw)) if raw else []

    def versions(self, kind: ModelKind) -> list[ModelVersion]:
        """Every version of a kind, newest first."""
        found = self._client.search_model_versions(f"name='{registered_name(kind)}'")
        return sorted((self._version(kind, v) for v in found), key=lambda v: -v.version)

    def production(self, kind: ModelKind) -> ModelVersion | None:
        """The version ``production`` points at, if any."""
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_model_version_by_alias(registered_name(kind), PRODUCTION)
        except MlflowException:
            return None
        return self._version(kind, found)

    def get(self, kind: ModelKind, ref: int | str) -> ModelVersion:
        """A version by number, or by alias (``production``) or ``latest``.

        Raises:
            RegistryError: No such version.
        """
        from mlflow.exceptions import MlflowException

        name = registered_name(kind)
        text = str(ref)
        try:
            if text == "latest":
                versions = self.versions(kind)
                if not versions:
                    raise RegistryError(f"no {kind} is registered")
                return versions[0]
            if text.isdigit():
                return self._version(kind, self._client.get_model_version(name, text))
            return self._version(kind, self._client.get_model_version_by_alias(name, text))
        except MlflowException as exc:
            raise RegistryError(f"no {kind} version {text!r} in the registry") from exc

    def card(self, version: ModelVersion) -> dict[str, Any]:
        """The version's model card."""
        from mlflow.artifacts import load_text

        run = self._client.get_run(version.run_id)
        data: dict[str, Any] = json.loads(load_text(f"{run.info.artifact_uri}/{CARD_FILE}"))
        return data

    def local_path(self, version: ModelVersion) -> Path:
        """The version's weights folder on this machine (downloaded once from a remote store)."""
        parsed = urlparse(version.source)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path))
        target = self.cache_dir / version.kind / str(version.version)
        if not target.is_dir():
            from mlflow.artifacts import download_artifacts

            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            # MLflow writes the folder under its own last path component; publish it whole, by one rename.
            fetched = download_artifacts(artifact_uri=version.source, dst_path=str(partial), tracking_uri=self.uri)
            Path(fetched).rename(target)
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def _version(self, kind: ModelKind, found: Any) -> ModelVersion:
        run = self._client.get_run(found.run_id) if found.run_id else None
        return ModelVersion(
            kind=kind,
            version=int(found.version),
            run_id=str(found.run_id or ""),
            source=str(found.source),
            created_at=float(found.creation_timestamp or 0) / 1000,
            aliases=tuple(found.aliases or ()),
            tags=dict(found.tags or {}),
            params=dict(run.data.params) if run else {},
            metrics=dict(run.data.metrics) if run else {},
        )
