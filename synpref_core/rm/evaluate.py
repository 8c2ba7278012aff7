"""Evaluate a reward model on a benchmark (DESIGN §5): ingest, score with the model, judge.

:func:`evaluate` ingests benchmark files with the real ingest pipeline (no decontamination),
scores both responses of every pair with the RM, hands the scored pairs to the benchmark's scorer
(``rm/benchmarks.py``) and writes ``OUT/eval.json`` and ``OUT/scores.parquet``. ``synpref eval``
is the command line, ``flows/evaluate.py`` the Prefect flow; ``rm/report.py`` renders and logs
the result.

Scoring is :func:`synpref_core.rm.scoring.score_table` (length-bucketed batches under a token
budget), which reports each forward pass, so a progress bar follows it without changing a number.
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
from synpref_core.rm.eval_results import DtypeComparison, EvalResult
from synpref_core.rm.model import trained_max_length

NEAR_TIE = 0.01  # |p − 0.5| below this: a decision the model barely makes

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


def no_pairs_reason(fmt: str, counts: dict[str, int]) -> str:
    """Why an input gave no pairs, from its ingest counts: 'no pairs as llmbar: 3 of 3 rows
    quarantined (missing_field 3)'."""
    reasons = sorted(
        (value, key.removeprefix("quarantined."))
        for key, value in counts.items()
        if key.startswith("quarantined.")
    )
    detail = ", ".join(f"{code} {n}" for n, code in reversed(reasons))
    read = counts.get("input_rows", 0)
    if not read:
        return f"no pairs as {fmt}: no rows read"
    return (
        f"no pairs as {fmt}: {counts.get('quarantined', 0)} of {read} rows quarantined ({detail})"
    )


def load_model_checked(model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """The reward model in eval mode on ``device`` in ``dtype`` (``auto``: the scoring stage's
    defaults, :func:`~synpref_core.rm.scoring.resolve_dtype`), or an :class:`EvaluationError`
    naming the folder when it is not one."""
    from synpref_core.rm.model import load_reward_model, resolve_backbone
    from synpref_core.rm.scoring import resolve_device, resolve_dtype

    path = Path(resolve_backbone(model))
    if path.is_dir() and not (path / "config.json").is_file():
        raise EvaluationError(f"{model}: not a reward model (no config.json in the folder)")
    target = resolve_device(device)
    try:
        network, tokenizer = load_reward_model(str(path), dtype=resolve_dtype(dtype, target))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvaluationError(f"{model}: not a reward model: {first}") from exc
    return network.to(target).eval(), tokenizer


def read_pairs(stage_dir: str) -> pa.Table:
    """The pairs of an ingested benchmark, with what scoring and the scorers need."""
    from synpref_core.stages import iter_batches

    batches = list(iter_batches(stage_dir, columns=PAIR_COLUMNS))
    if not batches:
        raise EvaluationError(f"no pairs in {stage_dir}")
    return pa.Table.from_batches(batches)


def score_rewards(
    model: Any,
    tokenizer: Any,
    pairs: pa.Table,
    max_length: int,
    token_budget: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) of ``pairs`` (:func:`~synpref_core.rm.scoring.score_table`;
    ``token_budget`` None: chosen for the model's device); with ``progress``, a bar on stderr
    counts the pairs scored (responses scored / 2)."""
    from synpref_core.rm.scoring import score_table

    with tqdm(total=pairs.num_rows, desc="scoring", unit="pair", disable=not progress) as bar:
        responses = 0

        def advance(scored: int) -> None:
            nonlocal responses
            responses += scored
            bar.update(responses // 2 - bar.n)

        scores = score_table(
            model,
            tokenizer,
            pairs.column("conversation").to_pylist(),
            pairs.column("chosen").to_pylist(),
            pairs.column("rejected").to_pylist(),
            max_length,
            token_budget,
            advance,
        )
    return scores.r_chosen, scores.r_rejected


def score_with_model(
    model_dir: str,
    pairs: pa.Table,
    max_length: int,
    token_budget: int | None = None,
    progress: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> pa.Table:
    """``pairs`` less the conversation, plus ``r_chosen`` and ``r_rejected`` from the RM in
    ``model_dir``: what :func:`~synpref_core.rm.benchmarks.score_results` takes."""
    model, tokenizer = load_model_checked(model_dir, device, dtype)
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
    max_length: int | None = None,
    token_budget: int | None = None,
    progress: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    compare_dtype: bool = False,
) -> EvalResult:
    """Ingest ``paths`` as ``fmt``, score every pair with the RM in ``model_dir`` (a progress
    bar on stderr with ``progress``), and write ``out_dir/eval.json`` (the result) and
    ``out_dir/scores.parquet`` (per-pair rewards). ``max_length``: tokens per side; None:
    what the model was trained with (its ``synpref_training.json``), else 256. ``device`` and
    ``dtype`` as in the scoring stage (``auto``: CUDA in bfloat16 when there is a GPU, else
    the CPU in float32). ``compare_dtype``: also score in float32 and in bfloat16 on that
    device and report how the decisions differ (:func:`compare_dtypes`, ``dtype_comparison``).

    Raises EvaluationError for an unknown format, and the ingest errors
    (``MalformedInputError``, ``StageError``) for missing or malformed files.
    """
    check_format(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = ingest_benchmark(fmt, paths, str(out / "pairs"))
    if not counts["rows"]:
        raise EvaluationError(f"{', '.join(map(str, paths))}: {no_pairs_reason(fmt, counts)}")
    pairs = read_pairs(str(out / "pairs"))
    max_length = max_length or trained_max_length(str(model_dir))
    scored = score_with_model(
        str(model_dir), pairs, max_length, token_budget, progress, device, dtype
    )
    update: dict[str, Any] = {
        "model": str(model_dir),
        "inputs": [str(p) for p in paths],
        "ingest": counts,
    }
    if compare_dtype:
        update["dtype_comparison"] = compare_dtypes(
            str(model_dir), pairs, max_length, token_budget, progress, device
        )
    result = score_results(scored, fmt).model_copy(update=update)
    pq.write_table(scored, out / "scores.parquet")
    (out / "eval.json").write_text(json.dumps(result.json_dict(), indent=2) + "\n")
    return result


def decision_changes(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """How the pairwise decisions of ``other`` differ from ``reference`` (both arrays of
    p = σ(r_chosen − r_rejected) over the same pairs): the share that agree, the flipped ones
    (and those of them within :data:`NEAR_TIE` of a tie in the reference, and the largest
    |p − 0.5| among them), and max and mean |Δp|."""
    flipped = (reference > 0.5) != (other > 0.5)
    delta = np.abs(reference - other)
    near = np.abs(reference - 0.5) < NEAR_TIE
    return {
        "pairs": len(reference),
        "decision_agreement": float(1 - flipped.mean()) if len(reference) else None,
        "flipped": int(flipped.sum()),
        "flipped_near_ties": int((flipped & near).sum()),
        "near_tie": NEAR_TIE,
        "flipped_max_margin": (
            float(np.abs(reference[flipped] - 0.5).max()) if flipped.any() else None
        ),
        "max_abs_dp": float(delta.max()) if len(delta) else None,
        "mean_abs_dp": float(delta.mean()) if len(delta) else None,
    }


def compare_dtypes(
    model_dir: str,
    pairs: pa.Table,
    max_length: int,
    token_budget: int | None = None,
    progress: bool = False,
    device: str = "auto",
    dtypes: tuple[str, str] = ("float32", "bfloat16"),
) -> DtypeComparison:
    """Score ``pairs`` in both ``dtypes`` (the reference first) on ``device``, one model after
    the other, and compare their decisions (:func:`decision_changes`)."""
    import time

    from synpref_core.rm.scoring import preference_probability, resolve_device

    target = str(resolve_device(device))
    probabilities, seconds = [], {}
    for dtype in dtypes:
        began = time.perf_counter()
        scored = score_with_model(
            model_dir, pairs, max_length, token_budget, progress, target, dtype
        )
        seconds[dtype] = round(time.perf_counter() - began, 3)
        rewards = (scored[side].to_numpy() for side in ("r_chosen", "r_rejected"))
        probabilities.append(preference_probability(*rewards))
    return DtypeComparison(
        device=target,
        reference=dtypes[0],
        other=dtypes[1],
        seconds=seconds,
        **decision_changes(*probabilities),
    )
