"""annotate flow: one pass of preference-aware LLM annotation (DESIGN §2 step 3), alone.

Run locally on embedded defaults (after ``make flow-retrieve`` has produced round 1's
candidates):

    python -m flows.annotate                        # or: make flow-annotate
    python -m flows.annotate --config annotate.yaml # an AnnotateFlowConfig YAML

Steps: gather the candidates' pair rows (a retrieval round gives ids; a pairs stage is used as
it is); draft the five attributes of pairs lacking them (human values kept; an invalid answer
repaired once, then a per-record error); judge every candidate with the panel (gold few-shot
examples from the vector store, n samples per judge at T = 0.7 in a seeded candidate order,
majority per judge, then over judges); calibrate the judges on a slice of the gold pairs
(accuracy against the human verdicts, overall, per category and per objectivity). One MLflow
run holds the config, the manifests, the outcome counts (candidates = agree + disagree +
undecided + error), the requests, tokens and cost, and the calibration; Prefect table artifacts
show the outcomes and the calibration.

**Judges.** With ``panel.endpoints`` empty (the default) the local judge server is the judge: a
stand-in for LLM judges that serves reward models over the OpenAI protocol (``judges``: name →
RM; default the latest registered RM). At scale, ``panel.endpoints`` lists vLLM servers or
hosted APIs (``infra/vllm/``), keys from the environment variables named there; the request
cache (``panel.cache_dir``) means a re-run or a resumed run never pays twice.
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

from synpref_core import tracking
from synpref_core.annotate.client import ClientConfig, EndpointDownError, check_endpoints
from synpref_core.annotate.ensemble import OUTCOMES
from synpref_core.annotate.panel import JudgePanel
from synpref_core.annotate.stages import AttributeConfig, JudgeConfig
from synpref_core.config import ConfigError, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.gather import GatherConfig
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.store import StoreConfig
from synpref_core.rm.registry import ModelNotFoundError, resolve_model
from synpref_core.rm.train import MODEL_NAME
from synpref_core.stages import StageError, load_manifest
from tasks.annotate import calibrate, draft_attributes, gather, judge
from tasks.select import select_pairs
from tasks.tracking import record_manifest


class AnnotateFlowConfig(StrictModel):
    """One annotation pass. Every default is a value, so the Prefect form shows it."""

    candidates: str = Field(
        ".synpref/retrieve/round-1/candidates",
        description="A retrieval round's candidates (ids), or a pairs stage to judge as it is.",
    )
    pairs: str = Field(
        ".synpref/retrieve/pool", description="The pairs stage holding the candidates' ids."
    )
    gold: str | None = Field(
        ".synpref/retrieve/gold", description="Gold pairs to calibrate on; None: no calibration."
    )
    calibration: PairFilter = Field(
        PairFilter(split=(0.0, 0.2)), description="The slice of `gold` the judges are measured on."
    )
    judges: dict[str, str | None] = Field(
        {"best": None},
        description="Local judges when panel.endpoints is empty: name → RM directory or "
        "models:/NAME/VERSION; None: the latest registered `model_name`.",
    )
    model_name: str = Field(MODEL_NAME, description="Registered RM used for a None judge.")
    panel: JudgePanel = Field(JudgePanel(), description="Endpoints, samples, merge rule, cache.")
    store: StoreConfig = Field(StoreConfig(), description="Vector store of the gold few-shot.")
    few_shot: RetrievalConfig = Field(RetrievalConfig(), description="few_shot: m ≤ 8 examples.")
    embed_model: str = Field("minilm", description="The store's encoder.")
    out: str = Field(".synpref/annotate", description="Gathered pairs, attributes, judgements.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


def resolve_panel(config: AnnotateFlowConfig) -> JudgePanel:
    """The panel with local judges resolved to RM directories (when no endpoint is given)."""
    panel = config.panel
    if panel.endpoints or panel.local_models:
        return panel
    cache = Path(config.out) / "rm"
    local = {
        name: resolve_model(rm, config.model_name, config.runtime.tracking, cache)
        for name, rm in config.judges.items()
    }
    return panel.model_copy(update={"local_models": local})


def preflight(config: AnnotateFlowConfig) -> None:
    """Before any work, outside Prefect: the candidates exist, and every judge endpoint answers
    (one line naming the URL of one that does not)."""
    load_manifest(config.candidates)
    if config.panel.endpoints:
        check_endpoints(
            ClientConfig(endpoints=config.panel.endpoints, cache_dir=config.panel.cache_dir)
        )


def is_pairs(uri: str) -> bool:
    return load_manifest(uri).is_pairs


@flow(name="annotate")
def annotate_flow(config: AnnotateFlowConfig = AnnotateFlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Gather, draft attributes, judge, calibrate; returns the judged manifest and counts.

    Args:
        config: Candidates, judges (endpoints or local), the store and where to write.
    """
    executor, out = config.runtime.executor, Path(config.out)
    tags = {"flow": "annotate", "prefect_flow_run_id": str(flow_run.id or "")}
    with tracking.start_run(config.runtime.tracking, "annotate", tags):
        tracking.log_config(config)
        panel = resolve_panel(config)
        pairs = config.candidates
        if not is_pairs(pairs):
            spec = GatherConfig(ids=pairs, pairs=config.pairs, out=str(out / "candidates"))
            pairs = gather(spec, executor)
        attributed = draft_attributes(
            AttributeConfig(pairs=pairs, panel=panel, out=str(out / "attributes")), executor
        )
        record_manifest(attributed, prefix="attributes.")
        judging = JudgeConfig(
            pairs=attributed,
            panel=panel,
            store=config.store,
            few_shot=config.few_shot,
            embed_model=config.embed_model,
            out=str(out / "judged"),
        )
        judged = judge(judging, executor)
        counts = record_manifest(judged, prefix="judge.")
        create_table_artifact(
            key="annotation-outcomes",
            table=[{"outcome": o, "pairs": counts.get(o, 0)} for o in OUTCOMES],
            description="Candidates by ensemble outcome (agree → silver, disagree → flip)",
        )
        calibration = None
        if config.gold is not None:
            where = config.calibration.model_dump()
            gold = select_pairs(
                SelectConfig(input=config.gold, out=str(out / "calibration-gold"), **where),
                executor,
            )
            calibration = calibrate(
                judging.model_copy(update={"pairs": gold, "out": str(out / "calibration")}),
                executor,
            )
    return {"judged": judged, "counts": counts, "calibration": calibration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="AnnotateFlowConfig YAML (default: embedded)")
    args = parser.parse_args()
    try:
        config = (
            load_config(args.config, AnnotateFlowConfig) if args.config else AnnotateFlowConfig()
        )
        preflight(config)
        summary = annotate_flow(config)
    except (ConfigError, StageError, ModelNotFoundError, EndpointDownError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    counts = summary["counts"]
    print(
        f"{counts['rows']} candidates: "
        + ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
        + f"; {counts.get('requests_sent', 0)} requests sent, "
        f"{counts.get('requests_cached', 0)} from cache"
    )
    for row in summary["calibration"] or []:
        if row["slice"] == "all":
            print(f"calibration {row['judge']}: accuracy {row['accuracy']:.3f} on {row['pairs']}")
    print(f"judged: {summary['judged']}")


if __name__ == "__main__":
    main()
