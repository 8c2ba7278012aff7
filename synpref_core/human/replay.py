"""Replay of real human labels: submits the labels recorded in the bundled datasets through the
app's HTTP API, logging in as one account per recorded annotator, as a person would.

    synpref replay-humans --url http://127.0.0.1:8765 --dataset pandalm \\
        --data data/pandalm/testset-v1.json --credentials .synpref/replay-accounts.json
    synpref replay-humans --dataset hh-rlhf --credentials .synpref/replay-accounts.json

This is a replay, not annotation: every verdict it posts is a label a human gave when the
dataset was made, and it says so (the accounts' note, every rationale). It reads the labels from
the dataset files only and reaches the app only over HTTP (login form, ``GET /api/items``, the
verdict form with the session's CSRF token); it never touches the store.

Accounts and the labels they replay:

- ``pandalm``: ``pandalm-annotator1``..``3`` replay PandaLM's ``annotator1``..``3`` (1 / 2: that
  response is better, 0: tie, replayed as undecidable);
- ``llmbar``: ``llmbar-expert`` replays LLMBar's expert ``label`` (1 / 2);
- ``hh-rlhf``: ``hh-rlhf-crowd`` replays the crowd worker's choice (the record's ``chosen``
  dialogue is the better one). Dialogues are split as ingestion splits them (the ``hh-rlhf``
  adapter), and the prompt is the last human turn, as the item page shows it.

An item is matched to its record by the prompt and the two response texts (whitespace
collapsed), never by the store's chosen side: a pair stored with its sides swapped (label
noise) is answered with the recorded label, i.e. "the stored rejected side is better". Items of
other datasets are skipped and counted. Dataset files are JSON (``.json``) or JSON lines
(``.jsonl``), optionally gzipped (``.gz``); a directory stands for the files of that dataset's
kind under it.
"""

from __future__ import annotations

import gzip
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from synpref_core.config import SourceSpec
from synpref_core.human.web import shown_prompt
from synpref_core.ingest.formats import hh_rlhf
from synpref_core.ingest.readers import RowError

ACCOUNTS = {
    "pandalm": {f"pandalm-annotator{i}": f"annotator{i}" for i in (1, 2, 3)},
    "llmbar": {"llmbar-expert": "label"},
    "hh-rlhf": {"hh-rlhf-crowd": "chosen"},
}
FILE_PATTERNS = {"pandalm": "*.json", "llmbar": "*.json", "hh-rlhf": "*.jsonl*"}
NOTE = "replay of real human labels: {dataset} {column}"
LOGIN_COOKIE = "synpref_login_csrf"


class ReplayError(RuntimeError):
    """The replay cannot go on: the message names the dataset file, account or HTTP status."""


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _key(prompt: str, a: str, b: str) -> tuple[str, frozenset[str]]:
    return _norm(prompt), frozenset((_norm(a), _norm(b)))


@dataclass(frozen=True)
class Record:
    first: str  # response 1 as the dataset names it
    labels: dict[str, Any]  # column → recorded label


def load_records(dataset: str, paths: list[str]) -> dict[tuple, Record]:
    """Recorded labels keyed by (prompt, {response 1, response 2})."""
    if dataset not in ACCOUNTS:
        raise ReplayError(f"unknown dataset {dataset!r}; choose one of {', '.join(ACCOUNTS)}")
    files = [f for p in paths for f in _files(Path(p), FILE_PATTERNS[dataset])]
    records: dict[tuple, Record] = {}
    for path in files:
        for raw in _read(path):
            texts = _texts(dataset, raw, path) if isinstance(raw, dict) else None
            if texts is None:
                continue  # not a pair (ingest quarantines it too)
            prompt, first, second = texts
            if dataset == "hh-rlhf":
                labels = {"chosen": "1"}  # response 1 is the dialogue the crowd chose
            else:
                labels = {c: raw.get(c) for c in ACCOUNTS[dataset].values()}
            records.setdefault(_key(prompt, first, second), Record(first, labels))
    if not records:
        raise ReplayError(f"no {dataset} records in {', '.join(paths)}")
    return records


def _files(path: Path, pattern: str) -> list[Path]:
    if path.is_dir():
        return sorted(path.rglob(pattern))
    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    return [path]


def _read(path: Path) -> list[Any]:
    """The records of a JSON (a list) or JSON-lines file, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines = ".jsonl" in path.suffixes
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if lines:
                return [json.loads(line) for line in f if line.strip()]
            items = json.load(f)
    except (OSError, ValueError, EOFError) as exc:
        raise ReplayError(f"{path}: cannot read the dataset: {exc}") from exc
    return items if isinstance(items, list) else []


def _texts(dataset: str, raw: dict, path: Path) -> tuple[str, str, str] | None:
    if dataset == "hh-rlhf":
        try:
            (draft,) = hh_rlhf(raw, SourceSpec(format="hh-rlhf", paths=[str(path)]))
        except RowError:
            return None
        texts = (shown_prompt(draft["conversation"]), draft["chosen"], draft["rejected"])
    elif dataset == "pandalm":
        prompt, extra = raw.get("instruction"), raw.get("input") or ""
        if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        texts = (prompt, raw.get("response1"), raw.get("response2"))
    else:
        texts = (raw.get("input"), raw.get("output_1"), raw.get("output_2"))
    return texts if all(isinstance(t, str) for t in texts) else None


def verdict_for(label: Any, first_shown: str, record: Record) -> str | None:
    """The verdict as the page shows the sides, from a recorded label (None: no label)."""
    label = str(label).strip() if label is not None else ""
    if label == "0":
        return "undecidable"
    if label not in ("1", "2"):
        return None
    response_one_shown_first = _norm(first_shown) == _norm(record.first)
    return "first" if (label == "1") == response_one_shown_first else "second"


@dataclass
class ReplayResult:
    submitted: dict[str, int] = field(default_factory=dict)
    already: int = 0  # items that already had this account's verdict
    unmatched: int = 0  # items not from this dataset, or without a label
    refused: list[str] = field(default_factory=list)


def login(client: httpx.Client, name: str, password: str) -> str:
    """Log in through the form; the session's CSRF token."""
    client.get("/login")
    response = client.post(
        "/login",
        data={
            "username": name,
            "password": password,
            "csrf_token": client.cookies.get(LOGIN_COOKIE),
        },
    )
    if response.status_code != 303:
        raise ReplayError(f"{name}: login failed (HTTP {response.status_code})")
    return client.get("/api/me").json()["csrf_token"]


def replay(
    base_url: str,
    dataset: str,
    paths: list[str],
    credentials: dict[str, str],
    batch: str | None = None,
) -> ReplayResult:
    """Submit every recorded label the dataset holds for the items assigned to its accounts."""
    records = load_records(dataset, paths)
    accounts = {n: c for n, c in ACCOUNTS[dataset].items() if n in credentials}
    if not accounts:
        raise ReplayError(f"credentials hold none of {', '.join(ACCOUNTS[dataset])}")
    result = ReplayResult()
    for name, column in accounts.items():
        with httpx.Client(base_url=base_url, timeout=30) as client:
            csrf = login(client, name, credentials[name])
            result.submitted[name] = _replay_account(
                client, csrf, dataset, column, records, batch, result
            )
    return result


def _replay_account(client, csrf, dataset, column, records, batch, result) -> int:
    params = {"batch": batch} if batch else {}
    items = client.get("/api/items", params=params)
    if items.status_code != 200:
        raise ReplayError(f"listing items failed (HTTP {items.status_code})")
    sent = 0
    for item in items.json():
        if item["verdict"] is not None:
            result.already += 1
            continue
        record = records.get(_key(item["prompt"], item["first"], item["second"]))
        verdict = verdict_for(record.labels.get(column), item["first"], record) if record else None
        if verdict is None:
            result.unmatched += 1
            continue
        data = {
            "verdict": verdict,
            "confidence": "3",
            "seconds": "0",
            "csrf_token": csrf,
            "rationale": NOTE.format(dataset=dataset, column=column),
        }
        response = client.post(
            f"/items/{item['id']}/verdict", data=data, headers={"accept": "application/json"}
        )
        if response.status_code != 201:
            result.refused.append(f"item {item['id']}: HTTP {response.status_code}")
            continue
        sent += 1
    return sent
