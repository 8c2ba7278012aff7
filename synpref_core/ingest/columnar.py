"""Columnar fast path of the ingest stage for ``pairs`` JSON-lines shards of plain strings.

The row path turns every line into dicts (adapter, draft, a 21-key row) and then back into
Arrow. For the commonest input at scale, ``{"prompt": str, "chosen": str, "rejected": str}``
lines, this path parses the whole shard with pyarrow's JSON reader, checks rows with one lean loop
over three lists of strings, and builds the pair table from Arrow arrays. It yields exactly the
batches the row path yields (same rows, ids, rejects with reasons and raw text); the shared
``IngestStage._flush`` then decontaminates, counts and writes both alike.

:func:`pairs_batches` returns None, having read but written nothing, whenever a shard is not that
simple case (message lists, nulls or missing keys, blank lines, escaped surrogates, anything
pyarrow will not parse as orjson does): the caller then takes the row path for that shard.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from synpref_core import schema
from synpref_core.config import SourceSpec
from synpref_core.curation.validate import validate_draft
from synpref_core.ingest.readers import RowError
from synpref_core.io import fs as fsio

if TYPE_CHECKING:
    from synpref_core.ingest.pipeline import Batch, IngestStage

_USER = "user"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse(data: bytes, keys: tuple[str, str, str]) -> pa.Table | None:
    """The shard's three string columns, or None if the row path must handle it."""
    if _SURROGATE_ESCAPE.search(data):  # orjson refuses lone surrogates; leave them to it
        return None
    lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
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
    stage: IngestStage, spec: dict[str, Any], source: SourceSpec
) -> Iterator[Batch] | None:
    """Batches of a plain-string ``pairs`` JSONL shard, or None if this path does not apply."""
    keys = source.fields
    if source.format != "pairs" or not spec["path"].endswith((".jsonl", ".ndjson")):
        return None
    if keys.prompt is None or len({keys.prompt, keys.chosen, keys.rejected}) < 3:
        return None
    in_fs, inner = fsio.resolve(spec["path"])
    with in_fs.open_input_file(inner) as f:
        f.seek(spec["start"])
        data = f.read(spec["end"] - spec["start"])
    table = _parse(data, (keys.prompt, keys.chosen, keys.rejected))
    if table is None:
        return None
    columns = [table.column(k).combine_chunks() for k in (keys.prompt, keys.chosen, keys.rejected)]
    return _batches(stage, spec, source, data, columns)


def _batches(
    stage: IngestStage,
    spec: dict[str, Any],
    source: SourceSpec,
    data: bytes,
    columns: list[pa.Array],
) -> Iterator[Batch]:
    prompt_col, chosen_col, rejected_col = columns
    prompts, chosens, rejecteds = (c.to_pylist() for c in columns)
    path, first_row = spec["path"], spec["first_line"] - 1
    max_chars = stage.ingest.validation.max_field_chars
    lines: list[bytes] | None = None  # split only if some row is rejected
    constants = {
        "status": source.status,
        "decided_by": "source",
        "run_id": stage.run_id,
        "source": source.source_name,
        "source_file": path,
    }
    n = len(prompts)
    for lo in range(0, n, stage.ingest.batch_rows):
        keep: list[int] = []
        ids: list[str] = []
        bad: list[dict] = []
        for k in range(lo, min(lo + stage.ingest.batch_rows, n)):
            p, c, r = prompts[k], chosens[k], rejecteds[k]
            cs, rs = c.strip(), r.strip()
            fits = len(p) <= max_chars and len(c) <= max_chars and len(r) <= max_chars
            if p.strip() and cs and rs and cs != rs and fits:
                # the same bytes as schema.pair_id([{"role": "user", "content": p}], c, r)
                key = orjson.dumps([[[_USER, p]], c, r])
                ids.append(hashlib.blake2b(key, digest_size=16).hexdigest())
                keep.append(k)
                continue
            # A failing row: the shared validator names the reason, exactly as the row path.
            draft = {"conversation": [{"role": _USER, "content": p}], "chosen": c, "rejected": r}
            try:
                validate_draft(draft, max_chars)
            except RowError as err:
                lines = lines if lines is not None else data.split(b"\n")
                raw = orjson.dumps(orjson.loads(lines[k])).decode()
                bad.append(stage._reject(source, path, first_row + k, err.code, err.reason, raw))
                continue
            raise AssertionError(f"row {first_row + k}: fast check and validator disagree")
        m = len(keep)
        take = pa.array(np.asarray(keep, dtype=np.int64))
        messages = pa.StructArray.from_arrays(
            [pa.array([_USER] * m, pa.string()), prompt_col.take(take)],
            fields=list(schema.MESSAGE),
        )
        values = {
            "pair_id": pa.array(ids, pa.string()),
            "conversation": pa.ListArray.from_arrays(
                pa.array(np.arange(m + 1, dtype=np.int32)), messages, type=pa.list_(schema.MESSAGE)
            ),
            "chosen": chosen_col.take(take),
            "rejected": rejected_col.take(take),
            "source_row": pa.array(np.asarray(keep, dtype=np.int64) + first_row),
            **{name: pa.array([v] * m, pa.string()) for name, v in constants.items()},
        }
        chunk = pa.Table.from_arrays(
            [values.get(f.name, pa.nulls(m, f.type)) for f in schema.PAIR_SCHEMA],
            schema=schema.PAIR_SCHEMA,
        )
        yield chunk, bad, len(keep) + len(bad)
