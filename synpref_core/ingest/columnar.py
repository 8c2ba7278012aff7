"""Columnar fast path of the normalize stage for ``pairs`` JSON-lines shards of plain strings.

The row path turns every line into dicts (adapter, draft, a 21-key row) and then back into
Arrow. For the commonest input at scale, ``{"prompt": str, "chosen": str, "rejected": str}``
lines, this path parses the whole shard with pyarrow's JSON reader, checks each row with the
validator's own rules and ids it as ``rows`` does, and builds the pair table from Arrow arrays.
It yields exactly the batches the row path yields (same rows, ids, rejects with reasons and raw
text); the normalize stage then decontaminates, counts and writes both alike.

:func:`pairs_batches` returns None, having written nothing, whenever a shard is not that simple
case (message lists, nulls or missing keys, blank lines, escaped surrogates, anything pyarrow
will not parse as orjson does): the caller then takes the row path for that shard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from synpref_core import schema
from synpref_core.config import SourceSpec
from synpref_core.ingest.rows import (
    USER,
    Batch,
    raw_text,
    reject_row,
    source_columns,
    user_pair_error,
    user_pair_id,
)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse(data: bytes, newlines: np.ndarray, keys: tuple[str, str, str]) -> pa.Table | None:
    """The shard's three string columns, or None if the row path must handle it."""
    if _SURROGATE_ESCAPE.search(data):  # orjson refuses lone surrogates; leave them to it
        return None
    lines = len(newlines) + (0 if not data or data.endswith(b"\n") else 1)
    try:
        table = pajson.read_json(
            pa.BufferReader(data),
            read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(data), 1)),
            parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([(k, pa.string()) for k in keys]),
                unexpected_field_behavior="ignore",
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != lines:  # blank lines: the row path numbers rows by line
        return None
    if any(table.column(k).null_count for k in keys):
        return None
    return table


def pairs_batches(
    data: bytes,
    newlines: np.ndarray,
    path: str,
    source: SourceSpec,
    run_id: str,
    max_field_chars: int,
    batch_rows: int,
) -> Iterator[Batch] | None:
    """Batches of a plain-string ``pairs`` JSON-lines shard (its bytes ``data``, with the offsets
    of their newlines), rows numbered from 0 at its start; or None if this path does not apply."""
    keys = source.fields
    if source.format != "pairs" or keys.prompt is None:
        return None
    if len({keys.prompt, keys.chosen, keys.rejected}) < 3:
        return None
    table = _parse(data, newlines, (keys.prompt, keys.chosen, keys.rejected))
    if table is None:
        return None
    columns = [table.column(k).combine_chunks() for k in (keys.prompt, keys.chosen, keys.rejected)]
    constants = source_columns(run_id, source, path)
    return _batches(data, newlines, constants, columns, source, max_field_chars, batch_rows)


def _batches(
    data: bytes,
    newlines: np.ndarray,
    constants: dict[str, str],
    columns: list[pa.Array],
    source: SourceSpec,
    max_chars: int,
    batch_rows: int,
) -> Iterator[Batch]:
    prompt_col, chosen_col, rejected_col = columns
    prompts, chosens, rejecteds = (c.to_pylist() for c in columns)
    run_id, path = constants["run_id"], constants["source_file"]
    n = len(prompts)
    for lo in range(0, n, batch_rows):
        keep: list[int] = []
        ids: list[str] = []
        bad: list[dict] = []
        for k in range(lo, min(lo + batch_rows, n)):
            p, c, r = prompts[k], chosens[k], rejecteds[k]
            error = user_pair_error(p, c, r, max_chars)
            if error is None:
                ids.append(user_pair_id(p, c, r))
                keep.append(k)
                continue
            start = int(newlines[k - 1]) + 1 if k else 0
            end = int(newlines[k]) if k < len(newlines) else len(data)
            raw = raw_text(orjson.loads(data[start:end]))
            bad.append(reject_row(run_id, source.source_name, path, k, error, raw))
        yield (
            _pair_table(keep, ids, constants, prompt_col, chosen_col, rejected_col),
            bad,
            (len(keep) + len(bad)),
        )


def _pair_table(
    keep: list[int],
    ids: list[str],
    constants: dict[str, str],
    prompt_col: pa.Array,
    chosen_col: pa.Array,
    rejected_col: pa.Array,
) -> pa.Table:
    """The PAIR_SCHEMA rows ``rows.pair_row`` would build for the kept rows, as Arrow arrays."""
    m = len(keep)
    take = pa.array(np.asarray(keep, dtype=np.int64))
    messages = pa.StructArray.from_arrays(
        [pa.array([USER] * m, pa.string()), prompt_col.take(take)], fields=list(schema.MESSAGE)
    )
    values = {
        "pair_id": pa.array(ids, pa.string()),
        "conversation": pa.ListArray.from_arrays(
            pa.array(np.arange(m + 1, dtype=np.int32)), messages, type=pa.list_(schema.MESSAGE)
        ),
        "chosen": chosen_col.take(take),
        "rejected": rejected_col.take(take),
        "source_row": take,
        **{name: pa.array([v] * m, pa.string()) for name, v in constants.items()},
    }
    return pa.Table.from_arrays(
        [values.get(f.name, pa.nulls(m, f.type)) for f in schema.PAIR_SCHEMA],
        schema=schema.PAIR_SCHEMA,
    )
