"""stage2 flow: dual-RM consistency filtering of in-the-wild pairs (DESIGN §3), no humans.

Run now on embedded defaults (the bundled hh-rlhf harmless as D_wild, the latest registered best
RM, a gold RM trained on the bundled gold sets when none is registered), nightly from the
``stage2`` deployment's cron schedule, or from the Prefect UI:

    python -m flows.stage2                       # or: make flow-stage2
    python -m flows.stage2 --config stage2.yaml  # a Stage2FlowConfig YAML

Steps: select D_wild from an ingested stage; resolve the best RM and the gold RM (training and
registering a gold RM on every gold pair when none is given or registered); score every pair with
both (p_best, p_gold; Ray actors); pick the pairs with p_best ≤ 0.5 + δ, draft their attributes
and judge them with the panel (gold few-shot from the vector store, n samples per judge, majority
per judge then over judges; with no endpoint configured, the local judge server serves the two
RMs as judges: a stand-in); keep / flip / discard every pair with its reason and evidence; then,
optionally, Skywork-Reward v1's selection steps on the curated pairs. One MLflow run holds the
config, the counts by outcome and reason (in = kept + flipped + discarded + quarantined), p
histograms, the LLM requests and their cost, and the manifests; a Prefect table artifact shows
the outcomes. "Quarantined" counts the input rows of D_wild's sources that ingest set aside.

Audit (``audit_noise``, or ``synpref audit-stage2``): a seeded share of D_wild, whose labels
must be human, is flipped first and the noisy copy is curated; the curated rows are then joined
back to it and the audit's shares with bootstrap intervals logged (``curation/audit.py``).

At scale: ``wild`` an ``s3://`` pairs stage, ``runtime.executor.ray_address`` the Ray cluster
(scoring actors with ``num_gpus``), ``panel.endpoints`` vLLM judges (``infra/vllm/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from flows.ingest import bundled_ingest_config
from synpref_core import tracking
from synpref_core.annotate.panel import JudgePanel
from synpref_core.annotate.stages import AttributeConfig, JudgeConfig
from synpref_core.config import IngestConfig, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.audit import InjectNoiseConfig
from synpref_core.curation.consistency import (
    DISCARD_REASONS,
    STAGE2_STATUSES,
    ConsistencyConfig,
    needs_judge_config,
)
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.curation.v1select import (
    RmAgreesConfig,
    RmAgreesRule,
    TopFractionConfig,
    TopFractionRule,
)
from synpref_core.io.lock import output_lock
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.store import StoreConfig
from synpref_core.rm.model import check_reward_model
from synpref_core.rm.registry import ModelNotFoundError, resolve_model
from synpref_core.rm.scoring import ScoreConfig
from synpref_core.rm.train import MODEL_NAME, TrainConfig
from synpref_core.stages import StageError, load_manifest, read_stage
from tasks.annotate import draft_attributes, judge
from tasks.audit import audit_stage2, inject_noise
from tasks.curate import consistency, needs_judge, rm_agrees, score_pairs, top_fraction
from tasks.ingest import dedup, normalize
from tasks.select import select_pairs
from tasks.tracking import record_manifest
from tasks.train import register_rm, train_rm

GOLD_MODEL_NAME = "synpref-gold-rm"
BUNDLED_WILD = "hh-rlhf-harmless"


class Stage2FlowConfig(StrictModel):
    """One Stage 2 run. Every default is a value, so the Prefect form shows it."""

    wild: str | None = Field(
        None, description="D_wild: a pairs stage; None: select `wild_on` from `ingest`."
    )
    ingest: IngestConfig = Field(bundled_ingest_config(), description="Used when wild is None.")
    wild_on: PairFilter = Field(
        PairFilter(sources=[BUNDLED_WILD], statuses=["unverified"]),
        description="D_wild within the ingested pairs.",
    )
    best_rm: str | None = Field(
        None, description="Best RM: a directory or models:/NAME/VERSION; None: latest `model_name`."
    )
    model_name: str = Field(MODEL_NAME, description="Registered best RM used when best_rm is None.")
    gold_rm: str | None = Field(
        None,
        description="Gold RM: a directory or models:/NAME/VERSION; None: the latest registered "
        "`gold_model_name`, else one trained now on `gold_on` and registered.",
    )
    gold_model_name: str = Field(GOLD_MODEL_NAME, description="Registered name of gold RMs.")
    gold_on: PairFilter = Field(
        PairFilter(statuses=["gold"]), description="The gold pairs a new gold RM trains on."
    )
    min_gold_pairs: int = Field(200, ge=1, description="Fewer gold pairs: refuse to train.")
    gold_training: TrainConfig = Field(
        TrainConfig(), description="How a new gold RM trains; manifests and out are set here."
    )
    delta: float = Field(0.0, ge=0, lt=0.5, description="δ: the best RM backs p > 0.5 + δ.")
    annotate: bool = Field(
        True, description="Judge the pairs the best RM doubts; False: discard as not_annotated."
    )
    panel: JudgePanel = Field(
        JudgePanel(), description="Judges; no endpoints: the best and gold RMs as local judges."
    )
    store: StoreConfig = Field(StoreConfig(), description="Vector store of the gold few-shot.")
    few_shot: RetrievalConfig = Field(RetrievalConfig(), description="few_shot: m ≤ 8.")
    top_fraction: TopFractionRule | None = Field(
        None, description="v1: top fraction per category of the curated pairs; None: skip."
    )
    rm_agrees: RmAgreesRule | None = Field(
        None, description="v1: keep curated pairs the best RM ranks right; None: skip."
    )
    audit_noise: float | None = Field(
        None, gt=0, lt=1, description="Audit: flip this share of D_wild first; None: no audit."
    )
    audit_seed: int = Field(0, ge=0, description="Audit: salt of which pairs are flipped.")
    out: str = Field(".synpref/stage2", description="Scores, judgements and curated shards.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


def resolve_rms(config: Stage2FlowConfig, gold_pairs: str | None) -> tuple[str, str | None]:
    """(best RM dir, gold RM dir or None: train one on ``gold_pairs``), each checked to be a
    one-output reward model; one-line errors name what is wrong."""
    cache, tracking_config = Path(config.out) / "rm", config.runtime.tracking
    best = resolve_model(config.best_rm, config.model_name, tracking_config, cache)
    check_reward_model(best)
    try:
        gold = resolve_model(config.gold_rm, config.gold_model_name, tracking_config, cache)
    except ModelNotFoundError:
        if config.gold_rm is not None:
            raise
        gold = None
    if gold is not None:
        check_reward_model(gold)
    elif gold_pairs is not None:
        rows = load_manifest(gold_pairs).rows
        if rows < config.min_gold_pairs:
            raise StageError(
                f"{gold_pairs}: {rows} gold pairs, fewer than min_gold_pairs="
                f"{config.min_gold_pairs} to train a gold RM on"
            )
    return best, gold


def check_wild(uri: str) -> None:
    if not load_manifest(uri).is_pairs:
        raise StageError(f"{uri}: D_wild must be a pairs stage (its rows lack pair columns)")


@flow(name="stage2")
def stage2_flow(config: Stage2FlowConfig = Stage2FlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Score with both RMs, judge what the best RM doubts, keep / flip / discard every pair.

    Args:
        config: D_wild (or what to ingest), the two RMs, δ, the judges and the v1 steps.
    """
    executor, out = config.runtime.executor, Path(config.out)
    tags = {"flow": "stage2", "prefect_flow_run_id": str(flow_run.id or "")}
    with tracking.start_run(config.runtime.tracking, "stage2", tags):
        tracking.log_config(config)
        wild, gold_pairs, quarantined = _inputs(config, executor, out)
        if config.audit_noise is not None:  # the noisy copy becomes D_wild
            noise = InjectNoiseConfig(
                pairs=wild, fraction=config.audit_noise, seed=config.audit_seed,
                out=str(out / "noisy"),
            )  # fmt: skip
            wild = inject_noise(noise, executor)
        best, gold = resolve_rms(config, gold_pairs)
        if gold is None:
            gold = _train_gold_rm(config, gold_pairs, executor, out)
        scores = {
            role: score_pairs(
                ScoreConfig(model=rm, pairs=wild, out=str(out / f"scores-{role}")), executor
            )
            for role, rm in (("best", best), ("gold", gold))
        }
        judged = _judge_doubted(config, wild, scores["best"], best, gold, executor, out)
        curated = consistency(
            ConsistencyConfig(
                pairs=wild, best_scores=scores["best"], gold_scores=scores["gold"],
                judged=judged, delta=config.delta, out=str(out / "curated"),
            ),
            executor,
        )  # fmt: skip
        counts = record_manifest(curated, prefix="stage2.")
        counts["quarantined"] = quarantined
        tracking.log_metrics({"stage2.quarantined": float(quarantined)})
        _record_outcomes(counts, scores)
        selected = _select_v1(config, curated, best, executor, out)
        audit = (
            None if config.audit_noise is None else audit_stage2(wild, curated, config.audit_seed)
        )
    return {
        "wild": wild, "curated": curated, "selected": selected, "counts": counts,
        "judged": judged, "audit": audit,
    }  # fmt: skip


def _inputs(config: Stage2FlowConfig, executor, out: Path) -> tuple[str, str | None, int]:
    """(D_wild, the gold pairs when a gold RM may need training, pairs quarantined at ingest)."""
    pairs, quarantined = config.wild, 0
    if pairs is None:
        with output_lock(config.ingest.out):
            pairs = dedup(config.ingest, executor, normalize(config.ingest, executor))
        quarantined = ingest_rejects(pairs, config.wild_on.sources)
        spec = SelectConfig(input=pairs, out=str(out / "wild"), **config.wild_on.model_dump())
        wild = select_pairs(spec, executor)
    else:
        wild = pairs
    check_wild(wild)
    gold_pairs = None
    if config.gold_rm is None and config.wild is None:
        spec = SelectConfig(input=pairs, out=str(out / "gold"), **config.gold_on.model_dump())
        gold_pairs = select_pairs(spec, executor)
    return wild, gold_pairs, quarantined


def ingest_rejects(pairs: str, sources: list[str] | None) -> int:
    """Input rows of D_wild's sources that ingest set aside (quarantined with a reason,
    duplicates, contaminated): they are part of Stage 2's accounting, never of its output."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rejects = read_stage(pairs, ["reason_code", "source"], kind="rejects")
    if sources is not None:
        rejects = rejects.filter(pc.is_in(rejects["source"], pa.array(sources, pa.string())))
    return rejects.num_rows


def _train_gold_rm(config: Stage2FlowConfig, gold_pairs: str | None, executor, out: Path) -> str:
    if gold_pairs is None:
        raise StageError("no gold RM is registered and no gold pairs to train one: set gold_rm")
    training = config.gold_training.model_copy(
        update={"train_manifest": gold_pairs, "gold_manifest": None, "out": str(out / "gold-rm")}
    )
    result = train_rm(training, executor)
    register_rm(result, training, config.runtime.tracking, config.gold_model_name)
    return result.best_dir


def _judge_doubted(config, wild, best_scores, best, gold, executor, out: Path) -> str | None:
    if not config.annotate:
        return None
    doubted = needs_judge(
        needs_judge_config(wild, best_scores, config.delta, str(out / "needs-judge")), executor
    )
    panel = config.panel
    if not panel.endpoints and not panel.local_models:
        panel = panel.model_copy(update={"local_models": {"best": best, "gold": gold}})
    attributed = draft_attributes(
        AttributeConfig(pairs=doubted, panel=panel, out=str(out / "attributes")), executor
    )
    record_manifest(attributed, prefix="attributes.")  # its requests and cost count too
    judging = JudgeConfig(
        pairs=attributed, panel=panel, store=config.store, few_shot=config.few_shot,
        out=str(out / "judged"),
    )  # fmt: skip
    judged = judge(judging, executor)
    record_manifest(judged, prefix="judge.")
    return judged


def _record_outcomes(counts: dict[str, int], scores: dict[str, str]) -> None:
    table = [{"outcome": s, "pairs": counts.get(s, 0)} for s in STAGE2_STATUSES]
    table += [{"outcome": f"discarded: {r}", "pairs": counts.get(f"discarded:{r}", 0)}
              for r in DISCARD_REASONS]  # fmt: skip
    table.append({"outcome": "quarantined (at ingest)", "pairs": counts["quarantined"]})
    create_table_artifact(
        key="stage2-outcomes", table=table, description="Every D_wild pair's Stage 2 outcome"
    )
    tracking.log_histograms(
        {role: (uri, "p") for role, uri in scores.items()}, "stage2_p_histograms.png"
    )


def _select_v1(config: Stage2FlowConfig, curated: str, best: str, executor, out: Path) -> str:
    """The curated pairs (kept and flipped), then the v1 steps configured; returns the last."""
    spec = SelectConfig(input=curated, out=str(out / "keep"), statuses=["kept", "flipped"])
    selected = select_pairs(spec, executor)
    if config.top_fraction is None and config.rm_agrees is None:
        return selected
    scores = score_pairs(
        ScoreConfig(model=best, pairs=selected, out=str(out / "keep-scores")), executor
    )
    if config.rm_agrees is not None:
        step = RmAgreesConfig(
            pairs=selected, scores=scores, out=str(out / "rm-agrees"),
            **config.rm_agrees.model_dump(),
        )  # fmt: skip
        selected = rm_agrees(step, executor)
        scores = score_pairs(
            ScoreConfig(model=best, pairs=selected, out=str(out / "rm-agrees-scores")), executor
        )
    if config.top_fraction is not None:
        step = TopFractionConfig(
            pairs=selected, scores=scores, out=str(out / "top-fraction"),
            **config.top_fraction.model_dump(),
        )  # fmt: skip
        selected = top_fraction(step, executor)
    record_manifest(selected, prefix="selected.")
    return selected


def preflight(config: Stage2FlowConfig) -> None:
    """What can be checked before any work, outside Prefect: given RMs and a given D_wild."""
    tracking_config, cache = config.runtime.tracking, Path(config.out) / "rm"
    for rm in (config.best_rm, config.gold_rm):
        if rm is not None and not rm.startswith("models:/"):
            check_reward_model(resolve_model(rm, "", tracking_config, cache))
    if config.wild is not None:
        check_wild(config.wild)


def main() -> None:
    from synpref_core.annotate.client import EndpointDownError
    from synpref_core.config import ConfigError
    from synpref_core.rm.model import NotARewardModelError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="Stage2FlowConfig YAML (default: embedded)")
    args = parser.parse_args()
    try:
        config = load_config(args.config, Stage2FlowConfig) if args.config else Stage2FlowConfig()
        preflight(config)
        summary = stage2_flow(config)
    except (ConfigError, StageError, NotARewardModelError, ModelNotFoundError,
            EndpointDownError) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    counts = summary["counts"]
    total = sum(counts.get(s, 0) for s in (*STAGE2_STATUSES, "quarantined"))
    print(
        f"{total} pairs: {counts['kept']} kept, {counts['flipped']} flipped, "
        f"{counts['discarded']} discarded, {counts['quarantined']} quarantined at ingest; "
        f"{counts['llm_checked']} judged by the LLM step"
    )
    print(f"curated (every pair with its status): {summary['curated']}")
    print(f"kept and flipped pairs: {summary['selected']}")
    print(f"export: synpref export {Path(summary['selected']).parent} --out stage2.parquet")


if __name__ == "__main__":
    main()
