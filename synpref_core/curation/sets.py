"""Stage 1's sets as stages: D_gold, D_silver, flip candidates and undecided after a round.

A set is the union of pair stages, in precedence order, less the pairs humans have since
decided: a pair appears once (the first input holding its id, or its parent's, wins), and a pair
whose id, or whose parent's id, is in an ``exclude`` stage is left out of every input but that
stage itself, so a human verdict overrides an LLM
one even when humans swapped the sides (the swapped pair has a new id and names the original as
``parent_id``). An input may be narrowed to the pairs a judged stage gave some outcomes (the
round's agree → silver, disagree → flip candidates) and restamped with a status, who decided and
the round; the judges' votes then go into the evidence.

    silver = run(SetStage(SetConfig(inputs=[
        SetInput(stage=previous_silver),
        SetInput(stage=attributed, judged=judged, outcomes=["agree"], status="silver", round=2),
    ], exclude=[human_gold], out=".../round-2/silver")), executor)

One output shard per input file; every input row is accounted for in the counts: ``input_rows
= rows + not_selected + excluded + duplicates``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from synpref_core import schema
from synpref_core.config import StrictModel
from synpref_core.curation.consistency import _judge_votes
from synpref_core.io import fs as fsio
from synpref_core.schema import Status, fingerprint
from synpref_core.stages import (
    Manifest,
    ShardResult,
    Stage,
    load_manifest,
    manifest_uri,
    part_name,
    read_stage,
    stage_identity,
)


class SetInput(StrictModel):
    """One input of a set: a pair stage, optionally narrowed by judge outcomes and restamped."""

    stage: str = Field(description="A pair stage.")
    judged: str | None = Field(None, description="A judged stage over `stage`'s pairs.")
    outcomes: list[str] | None = Field(
        None, description="Keep pairs the judges gave these outcomes (needs `judged`)."
    )
    statuses: list[Status] | None = Field(None, description="Keep pairs with these statuses.")
    status: Status | None = Field(None, description="Restamp the status; None: keep it.")
    decided_by: str | None = Field(None, description="Restamp who decided; None: keep it.")
    round: int | None = Field(None, ge=0, description="Restamp the round; None: keep it.")


class SetConfig(StrictModel):
    inputs: list[SetInput] = Field(min_length=1, description="In precedence order.")
    exclude: list[str] = Field(
        default_factory=list, description="Pair stages whose ids (and parents' ids) are left out."
    )
    out: str = Field(description="Output stage directory.")


class SetStage(Stage):
    name = "set"

    def __init__(self, config: SetConfig):
        self.settings = config
        manifests = {
            uri: load_manifest(uri)
            for spec in config.inputs
            for uri in (spec.stage, spec.judged)
            if uri is not None
        }
        for spec in config.inputs:
            if spec.outcomes is not None and spec.judged is None:
                raise ValueError(f"{spec.stage}: `outcomes` needs a `judged` stage")
        self.inputs = [manifests[spec.stage].require_pairs(self.name) for spec in config.inputs]
        self.excluded = [load_manifest(uri).require_pairs(self.name) for uri in config.exclude]
        parents: list[Manifest] = [*manifests.values(), *self.excluded]
        super().__init__(
            out=config.out,
            config=config.model_dump(mode="json"),
            config_hash=stage_identity(self.name, config, {"out"}, parents),
            parents=[m.uri for m in parents],
        )

    def schemas(self) -> dict[str, str]:
        return {"data": fingerprint(schema.PAIR_SCHEMA)}

    def plan(self) -> list[dict[str, Any]]:
        return [
            {"input": i, "path": fsio.join(m.dir, entry["path"]), "rows": entry["rows"]}
            for i, m in enumerate(self.inputs)
            for entry in m.entries("data")
        ]

    def _excluded(self) -> set[str]:
        """Ids humans decided, with their parents' ids."""
        excluded: set[str] = set()
        for manifest in self.excluded:
            excluded |= _ids(read_stage(manifest.uri, ["pair_id", "parent_id"]))
        return excluded

    def _select(
        self, spec: dict[str, Any], excluded: set[str], seen: set[str]
    ) -> tuple[pa.Table, dict[str, int], dict[str, list[dict]]]:
        """One input file's rows in the set (before restamping), its counts and the votes."""
        settings = self.settings.inputs[spec["input"]]
        if _where(settings.stage) in {_where(uri) for uri in self.settings.exclude}:
            excluded = set()  # an exclude stage that is also an input is not excluded from itself
        table = _read(spec["path"], schema.PAIR_SCHEMA.names)
        counts = {"input_rows": table.num_rows}
        keep = pa.array([True] * table.num_rows, pa.bool_())
        if settings.statuses is not None:
            keep = pc.and_(keep, pc.is_in(table["status"], pa.array(settings.statuses)))
        votes: dict[str, list[dict]] = {}
        if settings.judged is not None:
            judged = read_stage(settings.judged, ["pair_id", "outcome", "votes"])
            if settings.outcomes is not None:
                judged = judged.filter(pc.is_in(judged["outcome"], pa.array(settings.outcomes)))
            votes = dict(
                zip(judged["pair_id"].to_pylist(), judged["votes"].to_pylist(), strict=True)
            )
            keep = pc.and_(keep, pc.is_in(table["pair_id"], pa.array(list(votes), pa.string())))
        table = table.filter(keep)
        counts["not_selected"] = counts["input_rows"] - table.num_rows
        ids, parents = table["pair_id"].to_pylist(), table["parent_id"].to_pylist()
        seen = set(seen)  # and the rows kept above in this file: a pair appears once here too
        human, duplicate = [], []
        for i, p in zip(ids, parents, strict=True):
            human.append(i in excluded or (p is not None and p in excluded))
            duplicate.append(not human[-1] and (i in seen or (p is not None and p in seen)))
            if not (human[-1] or duplicate[-1]):
                seen |= {i} if p is None else {i, p}
        counts["excluded"], counts["duplicates"] = sum(human), sum(duplicate)
        keep = pa.array([not (h or d) for h, d in zip(human, duplicate, strict=True)], pa.bool_())
        table = table.filter(keep)
        return table, counts, votes

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        excluded, seen = self._excluded(), set()
        for earlier in self.plan()[:index]:  # the ids earlier shards keep (sets are small)
            seen |= _ids(self._select(earlier, excluded, seen)[0])
        table, counts, votes = self._select(spec, excluded, seen)
        settings = self.settings.inputs[spec["input"]]
        table = _restamp(table, settings, votes, self.run_id)
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), schema.PAIR_SCHEMA) as writer:
            writer.write(table)
        counts["rows"] = table.num_rows
        return {
            "shard": index,
            "files": [{"path": rel, "kind": "data", "rows": writer.rows, "bytes": writer.size()}],
            "counts": counts,
        }


def _where(uri: str) -> tuple[str, str]:
    """A stage's manifest, however the stage is spelled (its directory, a trailing slash, the
    manifest file, a relative path)."""
    fs, path = fsio.resolve(manifest_uri(uri))
    return fs.type_name, path


def _ids(table: pa.Table) -> set[str]:
    ids = set(table["pair_id"].to_pylist())
    return ids | {p for p in table["parent_id"].to_pylist() if p is not None}


def _read(path: str, columns: list[str]) -> pa.Table:
    fs, resolved = fsio.resolve(path)
    with fs.open_input_file(resolved) as f:
        return pq.read_table(f, columns=columns)


def _restamp(
    table: pa.Table, spec: SetInput, votes: dict[str, list[dict]], run_id: str
) -> pa.Table:
    n = table.num_rows
    columns: dict[str, pa.Array] = {}
    if spec.status is not None:
        columns["status"] = pa.array([spec.status] * n, pa.string())
    if spec.decided_by is not None:
        columns["decided_by"] = pa.array([spec.decided_by] * n, pa.string())
    if spec.round is not None:
        columns["round"] = pa.array([spec.round] * n, pa.int32())
    if votes:
        evidence = table["evidence"].to_pylist()
        for i, pid in enumerate(table["pair_id"].to_pylist()):
            row = dict(evidence[i] or {})
            row["judge_votes"] = _judge_votes(votes.get(pid) or [], flip=False)
            evidence[i] = row
        columns["evidence"] = pa.array(evidence, schema.EVIDENCE)
    if columns:
        columns["run_id"] = pa.array([run_id] * n, pa.string())
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table
