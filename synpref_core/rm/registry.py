"""The MLflow model registry for trained reward models: log a training result and register its
best model as a new version.

    version = register_model(result, config, train_manifest, tracking_config, gold_manifest=gold)
    local = mlflow.artifacts.download_artifacts(f"models:/synpref-rm/{version}")
    AutoModelForSequenceClassification.from_pretrained(local)  # the plain HF files

Inside an active MLflow run (a flow's run) everything goes into that run, which stays open;
otherwise a run of its own is started on ``tracking_config``. The logged model and the registered
version are tagged with the training manifest, the gold manifest and the config hash, so a
version names the data it was trained and selected on.
"""

from __future__ import annotations

from pathlib import Path

from synpref_core.config import TrackingConfig, config_hash
from synpref_core.rm.train import MODEL_NAME, TrainConfig, TrainResult
from synpref_core.stages import manifest_uri

# In a run of its own the config is the run's config (top-level params, ``config.json``); in a
# flow's run those names are the flow's, so the training config goes under this prefix.
NESTED_PREFIX = "rm"


def register_model(
    result: TrainResult,
    config: TrainConfig,
    train_manifest: str,
    tracking_config: TrackingConfig,
    name: str = MODEL_NAME,
    gold_manifest: str | None = None,
) -> int:
    """Log the training (config as params, the loss/accuracy history as metrics, the training
    manifest as an artifact, the best Hugging Face directory as a logged model) and register
    it as a new version of ``name``; returns the version number.

    Logs into the active MLflow run when there is one (``tracking_config`` is then unused, and the
    run is left open); otherwise in a new run on ``tracking_config``, ended on return."""
    import mlflow

    from synpref_core import tracking

    manifest = _manifest_uri(train_manifest)
    tags = {
        "synpref.train_manifest": manifest,
        "synpref.config_hash": config_hash(config),
        "synpref.best_step": str(result.best_step),
    }
    if gold_manifest is not None:
        tags["synpref.gold_manifest"] = _manifest_uri(gold_manifest)

    if mlflow.active_run() is not None:
        mlflow.set_tags(tags)
        data = config.model_dump(mode="json")
        mlflow.log_params(tracking.flatten(NESTED_PREFIX, data, {}))
        mlflow.log_dict(data, f"{NESTED_PREFIX}/config.json")
        return _log_and_register(result, manifest, tags, name)
    with tracking.start_run(tracking_config, f"train-rm-{config_hash(config)}", tags):
        tracking.log_config(config)
        return _log_and_register(result, manifest, tags, name)


def _log_and_register(result: TrainResult, manifest: str, tags: dict[str, str], name: str) -> int:
    """Into the active run: metrics, the manifest, the logged model, then its registered version
    (whose ``run_id`` is the active run's)."""
    import mlflow
    from mlflow import MlflowClient

    from synpref_core import tracking

    for entry in result.history:
        values = {"loss": entry.loss}
        if entry.gold_accuracy is not None:
            values["gold_accuracy"] = entry.gold_accuracy
        mlflow.log_metrics(values, step=entry.step)
    summary = {"tokens_per_s": result.tokens_per_s, "steps": float(result.steps)}
    if result.best_gold_accuracy is not None:
        summary["best_gold_accuracy"] = result.best_gold_accuracy
    mlflow.log_metrics(summary)
    tracking.log_manifest(manifest)
    logged = mlflow.initialize_logged_model(name="model", model_type="reward-model", tags=tags)
    MlflowClient().log_model_artifacts(logged.model_id, result.best_dir)
    mlflow.finalize_logged_model(logged.model_id, "READY")
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return int(version.version)


def _manifest_uri(stage: str) -> str:
    """The manifest.json URI of a stage given its directory or its manifest; local paths are
    made absolute, so the tag still names the file when read from elsewhere."""
    uri = manifest_uri(stage.rstrip("/"))
    if "://" in uri:
        return uri
    return str(Path(uri).resolve())


class ModelNotFoundError(LookupError):
    """No registered reward model matches; the message says how to make one."""


def resolve_model(
    model: str | None, name: str, tracking_config: TrackingConfig, cache: Path
) -> str:
    """A local directory for ``model``: a path or hub name as given; ``models:/NAME/VERSION``
    (or None: the latest version of ``name``) downloaded once under ``cache``."""
    if model is not None and not model.startswith("models:/"):
        return model
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from synpref_core import tracking

    uri = tracking.resolve_uri(tracking_config)
    mlflow.set_tracking_uri(uri)
    if model is None:
        try:
            versions = MlflowClient().search_model_versions(f"name = '{name}'")
        except MlflowException as exc:
            raise ModelNotFoundError(f"cannot list versions of {name!r}: {exc}") from exc
        if not versions:
            raise ModelNotFoundError(
                f"no registered model {name!r} in {uri}: train one with "
                "`make flow-train-rm` (python -m flows.train_rm) or give a model directory"
            )
        model = f"models:/{name}/{max(int(v.version) for v in versions)}"
    target = Path(cache) / model.removeprefix("models:/").replace("/", "-")
    if not (target / "config.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(model, dst_path=str(target))
    return str(target.resolve())
