"""stage1 flow: human-in-the-loop iterative curation (DESIGN §2), as rounds a re-run resumes.

Run locally on embedded defaults, from the ``stage1`` / ``stage1-round`` deployments in the
Prefect UI (``make ui``), or from the command line:

    python -m flows.stage1                        # or: make flow-stage1 (2 rounds)
    python -m flows.stage1 --config stage1.yaml   # a Stage1FlowConfig YAML
    python -m flows.stage1 --next                 # one more round after the last finished one

Before the first round: select the pool D_un (default: half of the bundled hh-rlhf harmless), the
seed gold (PandaLM + LLMBar, less a seeded ``holdout`` share that no round ever sees, kept for
evaluation) which starts both D_gold and D_silver. Each round then:

1. trains a Bradley-Terry RM on D_silver (DeepSpeed through Ray Train), keeps the checkpoint best
   on D_gold and registers it (``synpref-stage1-rm``);
2. scores every gold pair (p = σ(r_w − r_l)): gold accuracy overall and per task category;
3. (round 1) drafts the seed gold's attributes and loads pool and gold into the LanceDB store;
4. retrieves pool neighbours of each gold pair with adaptive k (k_max for a pair the RM gets
   wrong, ⌈k_max(1 − p)⌉ otherwise), skipping gold, silver and used pairs;
5. drafts the candidates' attributes and judges them with the panel (gold few-shot, n samples per
   judge, majority per judge then over judges); calibrates the judges on a gold slice;
6. opens a human-verification batch on the judged candidates (judge disagreements and high
   controversy first) and, with ``human.wait = "replay"``, replays recorded human labels through
   the app's HTTP API; collects every verdict decided so far as gold;
7. writes the new sets as pair stages: D_gold (humans' verdicts + seed), D_silver (human gold +
   previous silver + the round's agreed pairs, less what humans decided otherwise), flip
   candidates (judges disagree) and undecided (discarded with the reason); human gold goes into
   the store for the next round's queries and few-shot examples.

MLflow: one parent run per flow run, one child run per round (gold accuracy overall and per
category, retrieval and annotation counts, judge agreement with gold, set sizes, the round's RM
as a registered version). Each finished round writes ``<out>/rounds/round-NNN.json``; a re-run
resumes after the last one that still matches the config, and a round resumes at shard
granularity. ``<out>/stage1.json`` is the run's summary (``synpref report`` renders it).

At scale: ``pairs`` an ingested stage on S3, ``runtime.executor.ray_address`` the Ray cluster,
``training`` with ``use_gpu`` and a DeepSpeed preset, ``panel.endpoints`` vLLM judges
(``infra/vllm/``), ``human.db_url`` the verification app's shared database and ``human.wait``
``none`` (people label in the app; the next round collects their verdicts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field, model_validator

from flows.ingest import bundled_ingest_config
from synpref_core import tracking
from synpref_core.annotate.panel import JudgePanel
from synpref_core.annotate.stages import AttributeConfig, JudgeConfig
from synpref_core.config import ConfigError, IngestConfig, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.gather import GatherConfig
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.curation.sets import SetConfig, SetInput
from synpref_core.curation.stage1 import (
    chain_hash,
    completed_rounds,
    gold_accuracy,
    rounds_identity,
    save_round,
)
from synpref_core.human.rounds import VerificationConfig
from synpref_core.io.lock import output_lock
from synpref_core.retrieval.embed import EmbedConfig
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.round import RoundConfig
from synpref_core.retrieval.store import StoreConfig
from synpref_core.rm.registry import ModelNotFoundError
from synpref_core.rm.scoring import ScoreConfig
from synpref_core.rm.train import TrainConfig, resolve_profile
from synpref_core.run_summary import RoundRecord, Stage1Summary, write_json
from synpref_core.stages import StageError, load_manifest
from tasks.annotate import calibrate, draft_attributes, gather, judge
from tasks.curate import build_set
from tasks.human import verify_round
from tasks.ingest import dedup, normalize
from tasks.retrieval import embed, index_embeddings, retrieve, score_gold
from tasks.select import select_pairs
from tasks.tracking import record_manifest
from tasks.train import register_rm, train_rm

STAGE1_MODEL_NAME = "synpref-stage1-rm"
BUNDLED_POOL = "hh-rlhf-harmless"
NOT_ROUND_FIELDS = {"rounds", "runtime"}  # what a round's output does not depend on


class HumanStep(StrictModel):
    """The human verification step of every round (DESIGN §2 step 4)."""

    size: int = Field(60, ge=1, description="Pairs humans verify per round.")
    overlap: int = Field(1, ge=1, description="Annotators per item.")
    annotators: list[str] = Field(
        [], description="Accounts the batch is assigned to (wait = none; replay: its accounts)."
    )
    replay: list[str] = Field(
        ["hh-rlhf"],
        description="wait = replay: the datasets whose recorded labels are replayed "
        "(those the pool comes from).",
    )
    wait: Literal["none", "replay"] = Field(
        "replay",
        description="none: open the batch and go on (people label in the app; the next round "
        "collects); replay: post recorded human labels through the app's HTTP API (demo).",
    )
    db_url: str = Field(
        "sqlite:///.synpref/stage1/human.db",
        description="The verification app's store (make annotate-ui DB=...).",
    )
    seed: int = Field(0, ge=0, description="Seeds the random part of the slice.")

    @model_validator(mode="after")
    def _who_verifies(self) -> HumanStep:
        if self.wait == "none" and not self.annotators:
            raise ValueError("wait = none needs annotators: the accounts that verify in the app")
        if self.wait == "replay" and not self.replay:
            raise ValueError("wait = replay needs replay: the datasets whose labels are replayed")
        return self


class Stage1FlowConfig(StrictModel):
    """A Stage 1 run of ``rounds`` rounds. Every default is a value, so the Prefect UI shows it."""

    rounds: int = Field(2, ge=1, description="Rounds in all; a re-run resumes after the last done.")
    pairs: str | None = Field(None, description="Ingested pair stage; None: ingest `ingest`.")
    ingest: IngestConfig = Field(bundled_ingest_config(), description="Used when pairs is None.")
    pool_on: PairFilter = Field(
        PairFilter(sources=[BUNDLED_POOL], statuses=["unverified"], split=(0.0, 0.5)),
        description="D_un, the pool searched (default: half of hh-rlhf; the demo's Stage 2 "
        "takes the other half).",
    )
    gold_on: PairFilter = Field(
        PairFilter(statuses=["gold"]), description="The seed set (starts D_gold and D_silver)."
    )
    holdout: float = Field(
        0.2, ge=0, lt=1, description="Share of the seed set held out of every round (evaluation)."
    )
    holdout_seed: int = Field(7, ge=0, description="Salt of the held-out split.")
    training: TrainConfig = Field(
        TrainConfig(max_steps=60, eval_every=20),
        description="Each round's RM; manifests and out are set by the flow.",
    )
    model_name: str = Field(STAGE1_MODEL_NAME, description="Registered name of the rounds' RMs.")
    embed_model: str = Field("minilm", description="sentence-transformers model of the store.")
    store: StoreConfig = Field(
        StoreConfig(uri=".synpref/stage1/vectors"), description="The LanceDB vector store."
    )
    retrieval: RetrievalConfig = Field(RetrievalConfig(), description="k_max, filters, few-shot.")
    panel: JudgePanel = Field(
        JudgePanel(), description="Judges; no endpoints: the round's RM as the local judge."
    )
    calibration: PairFilter = Field(
        PairFilter(split=(0.0, 0.1)), description="The gold slice the judges are measured on."
    )
    human: HumanStep | None = Field(HumanStep(), description="Human verification; None: skip.")
    train_on_gold: bool = Field(
        True, description="Human-verified pairs also train the next RM (they join D_silver)."
    )
    out: str = Field(".synpref/stage1", description="Sets, rounds, records.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


class Setup(StrictModel):
    pool: str
    seed_gold: str
    holdout: str | None


@flow(name="stage1")
def stage1_flow(config: Stage1FlowConfig = Stage1FlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Run Stage 1 up to ``config.rounds`` rounds, resuming after the last finished one.

    Args:
        config: The pool, the seed set, each round's training, retrieval, judges and humans.
    """
    return run_stage1(config, more=None)


@flow(name="stage1-round")
def stage1_round_flow(config: Stage1FlowConfig = Stage1FlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Run one curation round after the last finished one (``config.rounds`` is ignored).

    Args:
        config: The pool, the seed set, the round's training, retrieval, judges and humans.
    """
    return run_stage1(config, more=1)


def run_stage1(config: Stage1FlowConfig, more: int | None) -> dict[str, Any]:
    logger = get_run_logger()
    out = Path(config.out)
    identity = rounds_identity(config, NOT_ROUND_FIELDS)
    tags = {"flow": "stage1", "prefect_flow_run_id": str(flow_run.id or "")}
    # One run per `out` at a time (two clicks on Run): the second fails at once naming the first.
    with (
        output_lock(str(out / "rounds")),
        tracking.start_run(config.runtime.tracking, "stage1", tags) as parent,
    ):
        tracking.log_config(config)
        setup = _setup(config, out)
        records = completed_rounds(out, identity)
        last = len(records) + more if more is not None else config.rounds
        if records:
            logger.info("resuming after round %d (its record matches this config)", len(records))
        for round_ in range(len(records) + 1, last + 1):
            logger.info("round %d of %d", round_, last)
            with tracking.start_run(
                config.runtime.tracking, f"stage1-round-{round_}", {**tags, "round": str(round_)},
                nested=True,
            ) as child:  # fmt: skip
                record = _round(config, setup, round_, records, identity)
                record.mlflow_run_id = child.info.run_id
            save_round(out, record)
            records.append(record)
            logger.info(
                "round %d: gold accuracy %s, %d candidates, silver %d, gold %d (%.0f s)",
                round_, _fmt(record.gold_accuracy), record.retrieval.get("candidates", 0),
                record.sizes.get("silver", 0), record.sizes.get("gold", 0), record.seconds,
            )  # fmt: skip
        summary = Stage1Summary(
            mlflow_run_id=parent.info.run_id,
            rounds=records[:last],
            gold=records[last - 1].manifests["gold"] if records else setup.seed_gold,
            silver=records[last - 1].manifests["silver"] if records else setup.seed_gold,
            best_rm=records[last - 1].rm_dir if records else None,
        )
        path = write_json(summary, out / "stage1.json")
        tracking.log_table(
            [r.model_dump(exclude={"manifests"}) for r in summary.rounds], "rounds.json"
        )
        create_table_artifact(
            key="stage1-rounds",
            table=[_round_row(r) for r in summary.rounds],
            description="Stage 1 rounds: gold accuracy, retrieval, judges, humans, set sizes",
        )
    return {"summary": str(path), "rounds": len(summary.rounds), "setup": setup.model_dump()}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _round_row(record: RoundRecord) -> dict[str, Any]:
    return {
        "round": record.round,
        "gold_accuracy": record.gold_accuracy,
        "candidates": record.retrieval.get("candidates", 0),
        **{f"judge_{k}": v for k, v in record.judge.items()},
        "human_gold": record.sizes.get("human_gold", 0),
        "gold": record.sizes.get("gold", 0),
        "silver": record.sizes.get("silver", 0),
    }


def _setup(config: Stage1FlowConfig, out: Path) -> Setup:
    """Ingest (skipped when done) and select the pool, the seed set and the held-out pairs."""
    executor = config.runtime.executor
    pairs = config.pairs
    if pairs is None:
        with output_lock(config.ingest.out):
            pairs = dedup(config.ingest, executor, normalize(config.ingest, executor))
    selected: dict[str, str | None] = {"holdout": None}
    gold = config.gold_on.model_dump()
    splits = {
        "pool": config.pool_on.model_dump(),
        "seed-gold": {**gold, "split": (0.0, 1.0 - config.holdout), "seed": config.holdout_seed},
    }
    if config.holdout > 0:
        splits["holdout"] = {
            **gold,
            "split": (1.0 - config.holdout, 1.0),
            "seed": config.holdout_seed,
        }
    for name, where in splits.items():
        selected[name] = select_pairs(
            SelectConfig(input=pairs, out=str(out / name), **where), executor
        )
        record_manifest(selected[name], prefix=f"{name}.")
    return Setup(
        pool=selected["pool"], seed_gold=selected["seed-gold"], holdout=selected["holdout"]
    )


def _panel(config: Stage1FlowConfig, rm: str) -> JudgePanel:
    panel = config.panel
    if panel.endpoints or panel.local_models:
        return panel
    return panel.model_copy(update={"local_models": {"best": rm}})


def _round(
    config: Stage1FlowConfig, setup: Setup, round_: int, records: list[RoundRecord], identity: str
) -> RoundRecord:
    clock = Laps()
    executor, out = config.runtime.executor, Path(config.out) / f"round-{round_}"
    previous = records[-1] if records else None
    gold = previous.manifests["gold"] if previous else None
    silver = previous.manifests["silver"] if previous else setup.seed_gold
    manifests: dict[str, str] = {}

    # 1. train on D_silver, keep the checkpoint best on D_gold, register it
    training = config.training.model_copy(
        update={"train_manifest": silver, "gold_manifest": gold or setup.seed_gold,
                "out": str(out / "rm")}
    )  # fmt: skip
    result = train_rm(training, executor)
    version = register_rm(result, training, config.runtime.tracking, config.model_name)
    rm = result.best_dir

    clock.lap("train")
    # 3. (round 1) the seed gold's attributes, then pool and gold into the store
    panel = _panel(config, rm)  # the round's judges: its RM when no endpoint is configured
    if gold is None:
        gold = draft_attributes(
            AttributeConfig(pairs=setup.seed_gold, panel=panel,
                            out=str(Path(config.out) / "seed-gold-attributes")),
            executor,
        )  # fmt: skip
        embedded = [
            embed(EmbedConfig(model=config.embed_model, pairs=uri,
                              out=str(Path(config.out) / "embeddings" / name)), executor)
            for name, uri in (("pool", setup.pool), ("gold", gold))
        ]  # fmt: skip
        tracking.log_counts(index_embeddings(config.store, embedded), "store.")
    manifests["gold_in"] = gold

    clock.lap("store")
    # 2. score gold: p per pair, accuracy overall and per category
    max_length = resolve_profile(training).max_length
    scores = score_gold(
        ScoreConfig(model=rm, pairs=gold, out=str(out / "gold-scores"), max_length=max_length),
        executor,
    )
    accuracy, by_category, scored = gold_accuracy(scores, gold)
    tracking.log_metrics(
        {"gold.accuracy": accuracy or 0.0, "gold.pairs": float(scored)}
        | {f"gold.accuracy.{_key(c)}": v for c, v in by_category.items()}
    )

    clock.lap("score_gold")
    # 4. adaptive retrieval from the pool
    candidates = retrieve(
        RoundConfig(scores=scores, store=config.store, retrieval=config.retrieval,
                    round=round_, out=str(out / "candidates"))
    )  # fmt: skip
    retrieval = record_manifest(candidates, prefix="retrieval.")

    clock.lap("retrieve")
    # 5. attributes, judging, calibration against gold
    pairs = gather(GatherConfig(ids=candidates, pairs=setup.pool, out=str(out / "pairs")), executor)
    attributed = draft_attributes(
        AttributeConfig(pairs=pairs, panel=panel, out=str(out / "attributes")), executor
    )
    record_manifest(attributed, prefix="attributes.")
    judging = JudgeConfig(
        pairs=attributed, panel=panel, store=config.store, few_shot=config.retrieval,
        embed_model=config.embed_model, out=str(out / "judged"),
    )  # fmt: skip
    judged = judge(judging, executor)
    judge_counts = record_manifest(judged, prefix="judge.")
    slice_ = select_pairs(
        SelectConfig(
            input=gold, out=str(out / "calibration-gold"), **config.calibration.model_dump()
        ),
        executor,
    )
    calibration = calibrate(
        judging.model_copy(update={"pairs": slice_, "out": str(out / "calibration")}), executor
    )
    judged_pairs = build_set(
        SetConfig(inputs=[SetInput(stage=attributed, judged=judged, round=round_)],
                  out=str(out / "judged-pairs")),
        executor,
    )  # fmt: skip

    clock.lap("annotate")
    # 6. humans verify a slice; every verdict decided so far becomes gold
    human: dict[str, int] = {}
    human_gold = None
    if config.human is not None:
        step = config.human
        verification = VerificationConfig(
            db_url=step.db_url, pairs=judged_pairs, round=round_, size=step.size,
            overlap=step.overlap, annotators=step.annotators, seed=step.seed, wait=step.wait,
            gold_root=str(Path(config.out) / "human-gold"),
        )  # fmt: skip
        human, human_gold = verify_round(verification, step.replay)

    clock.lap("human")
    # 7. the new sets
    agree = SetInput(stage=attributed, judged=judged, outcomes=["agree"], status="silver",
                     decided_by="llm", round=round_)  # fmt: skip
    exclude = [human_gold] if human_gold else []
    verified = [SetInput(stage=human_gold, statuses=["gold"])] if human_gold else []
    sets = {
        "gold": SetConfig(inputs=[*verified, SetInput(stage=gold)], out=str(out / "gold")),
        "silver": SetConfig(
            inputs=[*(verified if config.train_on_gold else []), SetInput(stage=silver), agree],
            exclude=exclude, out=str(out / "silver"),
        ),
        "flip_candidates": SetConfig(
            inputs=[SetInput(stage=attributed, judged=judged, outcomes=["disagree"], round=round_)],
            exclude=exclude, out=str(out / "flip-candidates"),
        ),
        "undecided": SetConfig(
            inputs=[SetInput(stage=attributed, judged=judged, outcomes=["undecided", "error"],
                             status="discarded", decided_by="llm", round=round_)],
            exclude=exclude, out=str(out / "undecided"),
        ),
    }  # fmt: skip
    sizes: dict[str, int] = {}
    for name, spec in sets.items():
        manifests[name] = build_set(spec, executor)
        sizes[name] = load_manifest(manifests[name]).rows
    sizes["human_gold"] = load_manifest(human_gold).counts.get("gold", 0) if human_gold else 0
    sizes["pool"] = load_manifest(setup.pool).rows
    tracking.log_metrics({f"sets.{k}": float(v) for k, v in sizes.items()})
    if human_gold:  # new gold queries and few-shot examples for the next round
        new_gold = build_set(
            SetConfig(inputs=[SetInput(stage=human_gold, statuses=["gold"])],
                      out=str(out / "human-gold-pairs")),
            executor,
        )  # fmt: skip
        vectors = embed(
            EmbedConfig(model=config.embed_model, pairs=new_gold, out=str(out / "embeddings")),
            executor,
        )
        index_embeddings(config.store, [vectors])
    clock.lap("sets")
    manifests |= {"candidates": candidates, "judged": judged, "judged_pairs": judged_pairs}
    return RoundRecord(
        round=round_,
        chain=chain_hash(identity, previous),
        rm_dir=rm,
        rm_version=str(version),
        gold_accuracy=accuracy,
        gold_accuracy_by_category=by_category,
        sizes=sizes,
        retrieval={k: int(v) for k, v in retrieval.items()},
        judge={k: int(judge_counts.get(k, 0)) for k in ("agree", "disagree", "undecided", "error")},
        judge_vs_gold=calibration,
        human=human,
        manifests=manifests,
        seconds=clock.total(),
        timings=clock.laps,
    )


class Laps:
    """Wall time of each step of a round (where a round's time goes: RoundRecord.timings)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 2)


def _key(category: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in category)


def _one_line(exc: Any) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def main() -> None:
    from pydantic import ValidationError

    from synpref_core.annotate.client import EndpointDownError
    from synpref_core.io.lock import LockedError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="Stage1FlowConfig YAML (default: embedded)")
    parser.add_argument("--rounds", type=int, help="overrides the config's rounds")
    parser.add_argument("--next", action="store_true", help="run one round after the last done")
    args = parser.parse_args()
    try:
        config = load_config(args.config, Stage1FlowConfig) if args.config else Stage1FlowConfig()
        if args.rounds is not None:
            config = Stage1FlowConfig.model_validate({**config.model_dump(), "rounds": args.rounds})
        result = (stage1_round_flow if args.next else stage1_flow)(config)
    except (ConfigError, StageError, ModelNotFoundError, EndpointDownError, LockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    print(f"{result['rounds']} rounds; summary: {result['summary']}")
    print(f"report: synpref report {Path(result['summary']).parent}")


if __name__ == "__main__":
    main()
