"""Evaluate a reward model on a benchmark (DESIGN §5): ingest, score with the model, judge.

:func:`evaluate` ingests benchmark files with the real ingest pipeline (no decontamination),
scores both responses of every pair with the RM, hands the scored pairs to the benchmark's scorer
(``rm/benchmarks.py``) and writes ``OUT/eval.json`` and ``OUT/scores.parquet``. ``synpref eval``
is the command line, ``flows/evaluate.py`` the Prefect flow; ``rm/report.py`` renders and logs
the result.

Scoring runs the same length-bucketed batches as :func:`synpref_core.rm.scoring.score_table`,
one forward pass at a time, so a progress bar can follow it without changing a number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from synpref_core.rm.benchmarks import EvaluationError, check_format, score_results
from synpref_core.rm.eval_results import EvalResult
from synpref_core.rm.scoring import DEFAULT_TOKEN_BUDGET  # padded tokens per forward pass

PAIR_COLUMNS = [
    "pair_id",
    "conversation",
    "chosen",
    "rejected",
    "source_subset",
    "group_id",
    "meta",
]


def ingest_benchmark(fmt: str, paths: Sequence[str], out: str) -> dict[str, int]:
    """Ingest benchmark files into ``out`` (no decontamination); returns the ingest counts."""
    from synpref_core.config import DecontamConfig, ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import ingest_counts, run_ingest

    config = IngestConfig(
        sources=[SourceSpec(format=fmt, paths=list(paths), decontaminate=False)],
        out=out,
        decontamination=DecontamConfig(benchmarks=[]),
    )
    run_ingest(config, ExecutorConfig(kind="local", workers=1), progress=False)
    return ingest_counts(out)


def read_pairs(stage_dir: str) -> pa.Table:
    """The pairs of an ingested benchmark, with what scoring and the scorers need."""
    from synpref_core.stages import iter_batches

    batches = list(iter_batches(stage_dir, columns=PAIR_COLUMNS))
    if not batches:
        raise EvaluationError(f"no pairs in {stage_dir}")
    return pa.Table.from_batches(batches)


def encode_pairs(tokenizer: Any, pairs: pa.Table, max_length: int) -> list[list[int]]:
    """Token ids of every chosen response, then of every rejected one, each after its prompt."""
    from synpref_core.rm.model import encode

    conversations = pairs.column("conversation").to_pylist()
    return [
        *encode(tokenizer, conversations, pairs.column("chosen").to_pylist(), max_length),
        *encode(tokenizer, conversations, pairs.column("rejected").to_pylist(), max_length),
    ]


def score_rewards(
    model: Any,
    tokenizer: Any,
    pairs: pa.Table,
    max_length: int,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) of ``pairs``: the numbers ``score_table`` gives, from the batches
    it plans, one forward pass at a time; with ``progress``, a bar on stderr counts the pairs
    scored (responses scored / 2)."""
    from synpref_core.rm.scoring import plan_batches, score_sequences

    sequences = encode_pairs(tokenizer, pairs, max_length)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    rewards = np.empty(len(sequences), dtype=np.float64)
    done = 0  # responses
    with tqdm(total=pairs.num_rows, desc="scoring", unit="pair", disable=not progress) as bar:
        for batch in plan_batches(lengths, token_budget):
            batch_ids = [sequences[i] for i in batch]
            rewards[batch] = score_sequences(model, tokenizer, batch_ids, token_budget)
            done += len(batch)
            bar.update(done // 2 - bar.n)
    return rewards[: pairs.num_rows], rewards[pairs.num_rows :]


def score_with_model(
    model_dir: str,
    pairs: pa.Table,
    max_length: int,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = False,
) -> pa.Table:
    """``pairs`` less the conversation, plus ``r_chosen`` and ``r_rejected`` from the RM in
    ``model_dir``: what :func:`~synpref_core.rm.benchmarks.score_results` takes."""
    from synpref_core.rm.model import load_reward_model

    model, tokenizer = load_reward_model(model_dir)
    r_chosen, r_rejected = score_rewards(
        model, tokenizer, pairs, max_length, token_budget, progress
    )
    scored = pairs.drop_columns(["conversation"])
    scored = scored.append_column("r_chosen", pa.array(r_chosen, pa.float64()))
    return scored.append_column("r_rejected", pa.array(r_rejected, pa.float64()))


def evaluate(
    model_dir: str | Path,
    fmt: str,
    paths: Sequence[str],
    out_dir: str | Path,
    max_length: int = 256,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = False,
) -> EvalResult:
    """Ingest ``paths`` as ``fmt``, score every pair with the RM in ``model_dir`` (a progress
    bar on stderr with ``progress``), and write ``out_dir/eval.json`` (the result) and
    ``out_dir/scores.parquet`` (per-pair rewards).

    Raises EvaluationError for an unknown format, and the ingest errors
    (``MalformedInputError``, ``StageError``) for missing or malformed files.
    """
    check_format(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = ingest_benchmark(fmt, paths, str(out / "pairs"))
    pairs = read_pairs(str(out / "pairs"))
    scored = score_with_model(str(model_dir), pairs, max_length, token_budget, progress)
    result = score_results(scored, fmt).model_copy(
        update={"model": str(model_dir), "inputs": [str(p) for p in paths], "ingest": counts}
    )
    pq.write_table(scored, out / "scores.parquet")
    (out / "eval.json").write_text(json.dumps(result.json_dict(), indent=2) + "\n")
    return result
