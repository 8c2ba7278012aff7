"""MLflow tracking: one MLflow run per flow run, with the config as params, counts as metrics
and manifests as artifacts.

Embedded default: SQLite at ``.synpref/mlflow.db`` with artifacts under ``.synpref/mlartifacts``
(no server). At scale set ``tracking.tracking_uri`` to a tracking server (``http://mlflow:5000``).
MLflow is imported inside the functions so the rest of the core stays light.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synpref_core.config import DEFAULT_HOME, TrackingConfig

_MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values


def resolve_uri(cfg: TrackingConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    home = DEFAULT_HOME.resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def _experiment_id(cfg: TrackingConfig) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    artifacts = None
    uri = resolve_uri(cfg)
    if uri.startswith("sqlite:///"):  # no server: keep artifacts beside the database, not in cwd
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)


@contextmanager
def start_run(
    cfg: TrackingConfig, run_name: str, tags: dict[str, str] | None = None, nested: bool = False
) -> Iterator[Any]:
    """Start (and end) an MLflow run; yields the active ``mlflow.ActiveRun``. ``nested``: a child
    of the active run (a Stage 1 round inside its flow run)."""
    import mlflow

    mlflow.set_tracking_uri(resolve_uri(cfg))
    with mlflow.start_run(
        experiment_id=_experiment_id(cfg), run_name=run_name, tags=tags or {}, nested=nested
    ) as run:
        yield run


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested config → {"a.b.c": "value"}; lists are JSON, long values truncated."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[prefix] = text[:_MAX_PARAM_CHARS]
    return out


def log_config(config: BaseModel, name: str = "config.json") -> None:
    """Log a config as flat params and as a JSON artifact (the exact config of the run)."""
    import mlflow

    data = config.model_dump(mode="json")
    mlflow.log_params(flatten("", data, {}))
    mlflow.log_dict(data, name)


def log_counts(counts: dict[str, int], prefix: str = "") -> None:
    import mlflow

    mlflow.log_metrics({f"{prefix}{k}".replace(".", "_"): float(v) for k, v in counts.items()})


def log_manifest(manifest_uri: str, artifact_path: str = "manifests") -> None:
    """Attach a (local) manifest file to the run; for remote URIs record the URI as a tag."""
    import mlflow

    if "://" in manifest_uri and not manifest_uri.startswith("file://"):
        mlflow.set_tag(f"{artifact_path}.uri", manifest_uri)
        return
    path = Path(manifest_uri.removeprefix("file://"))
    stage = path.parent.name or "stage"
    mlflow.log_artifact(str(path), artifact_path=f"{artifact_path}/{stage}")


def log_metrics(metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(metrics)


def log_table(rows: list[dict[str, Any]], name: str) -> None:
    """A small table as a JSON artifact of the active run (a list of row objects)."""
    import mlflow

    mlflow.log_dict(rows, name)


def log_histograms(columns: dict[str, tuple[str, str]], name: str, bins: int = 40) -> None:
    """One histogram per ``label → (stage, column)`` of finished stages, in one figure artifact
    (e.g. p_best and p_gold of every pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from synpref_core.stages import read_stage

    figure, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3), squeeze=False)
    for ax, (label, (stage, column)) in zip(axes[0], columns.items(), strict=True):
        values = read_stage(stage, [column])[column].to_numpy()
        ax.hist(values, bins=bins, range=(0.0, 1.0) if column == "p" else None)
        ax.set_title(f"{label}: {column} ({len(values):,} pairs)")
    figure.tight_layout()
    mlflow.log_figure(figure, name)
    plt.close(figure)
