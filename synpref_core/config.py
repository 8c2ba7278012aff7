"""Typed configuration (pydantic) and the one strict YAML loader.

Every config forbids unknown keys, so a typo in a YAML file or a Prefect form fails at once and
names the field. A stage's *identity* (what its output depends on) is its config minus the
runtime section, hashed by :func:`config_hash`; executors and tracking never change outputs.

Defaults are the embedded ones of DESIGN §7: local disk, local Ray, MLflow on SQLite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Format = Literal[
    "hh-rlhf",
    "pandalm",
    "llmbar",
    "offsetbias",
    "pairs",
    "rm-bench",
    "rmb",
    "judgebench",
    "rewardbench",
]
FORMATS: tuple[str, ...] = get_args(Format)

DEFAULT_HOME = Path(".synpref")


def _field_title(name: str, _info: object) -> str:
    return name.replace("_", " ").title()


class StrictModel(BaseModel):
    # field_title_generator: pydantic's own field titles, also on fields typed as a model (which
    # it leaves untitled), so forms label them by the field's name rather than the model's.
    model_config = ConfigDict(extra="forbid", frozen=True, field_title_generator=_field_title)


class FieldMap(StrictModel):
    """Where the ``pairs`` format finds its fields (TRL / OpenRLHF style by default).

    ``prompt`` may be ``None`` when ``chosen``/``rejected`` hold whole conversations.
    """

    prompt: str | None = Field("prompt", description="Key of the prompt: a string or messages.")
    chosen: str = Field("chosen", description="Key of the chosen side: a string or messages.")
    rejected: str = Field("rejected", description="Key of the rejected side.")


class SourceSpec(StrictModel):
    """One input dataset: its format, files, and the curation status its pairs start with."""

    format: Format
    paths: list[str] = Field(min_length=1, description="Files, globs or directories.")
    name: str | None = Field(None, description="Source name recorded on rows; default: format.")
    status: Literal["unverified", "gold"] = Field(
        "unverified", description="'gold' only for human-verified data."
    )
    fields: FieldMap = Field(FieldMap(), description="For format 'pairs' only.")
    decontaminate: bool = Field(True, description="Drop pairs overlapping benchmark prompts.")

    @property
    def source_name(self) -> str:
        return self.name or self.format


class DecontamConfig(StrictModel):
    """n-gram decontamination (DESIGN §1: drop a pair sharing any 13-gram with a benchmark)."""

    benchmarks: list[SourceSpec] = Field(
        [], description="Datasets whose prompts must not leak into training."
    )
    ngram: int = Field(13, ge=3, le=64, description="n of the shared word n-gram.")


class ValidationConfig(StrictModel):
    """Row validation: what is quarantined instead of ingested."""

    max_field_chars: int = Field(
        200_000, ge=1, description="A message or side longer than this is quarantined."
    )


class IngestConfig(StrictModel):
    """What the ingest stages read and how they clean it. Its hash names the output."""

    sources: list[SourceSpec] = Field(min_length=1, description="The datasets to ingest.")
    out: str = Field(str(DEFAULT_HOME / "ingest"), description="Output directory or URI.")
    decontamination: DecontamConfig = Field(DecontamConfig())
    validation: ValidationConfig = Field(ValidationConfig())
    shard_bytes: int = Field(
        32 * 2**20, ge=2**16, description="Uncompressed JSONL files split into ranges this big."
    )
    batch_rows: int = Field(10_000, ge=1, description="Rows per Parquet row group.")


class ExecutorConfig(StrictModel):
    """Where shards run. Never part of a stage's identity: outputs are the same everywhere."""

    kind: Literal["local", "ray"] = Field(
        "local", description="'ray': Ray tasks and actors; 'local': processes on this machine."
    )
    workers: int = Field(1, ge=1, description="Local executor: processes in parallel.")
    ray_address: str | None = Field(
        None, description="Ray cluster address (e.g. 'ray://head:10001'); None starts local Ray."
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray.")
    cpus_per_shard: float = Field(1.0, gt=0)

    @field_validator("ray_address")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None


class ActorConfig(StrictModel):
    """How a stage that holds a model spreads over Ray (never part of its identity)."""

    actors: int = Field(2, ge=1, description="Ray executor: actors, each holding one model.")
    num_gpus: float = Field(0, ge=0, description="Ray executor: GPUs each actor reserves.")


class TrackingConfig(StrictModel):
    """Where MLflow records runs, metrics and models."""

    tracking_uri: str | None = Field(
        None, description="MLflow URI; None: SQLite at .synpref/mlflow.db with local artifacts."
    )
    experiment: str = Field("synpref", description="MLflow experiment name.")


class RuntimeConfig(StrictModel):
    """Where a flow runs and records; never part of a stage's identity."""

    # Defaults are instances, not factories, so that JSON schemas (the Prefect form) carry them.
    executor: ExecutorConfig = Field(ExecutorConfig(kind="ray"), description="Where shards run.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow.")


ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message names the file and the field."""


def describe_invalid(exc: ValidationError) -> str:
    """A pydantic error on one line, naming each field: ``sources.0.status: Input should be
    'unverified' or 'gold' (got 'bogus')``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
        parts.append(f"{where}: {error['msg']}{got}"[:300])
    return "; ".join(parts)


def load_config(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read a YAML file strictly into ``model``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config: {describe_invalid(exc)}") from exc


def config_hash(config: BaseModel | dict) -> str:
    """Stable hash of a config's content (sorted JSON), 16 hex digits."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
