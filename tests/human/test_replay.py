"""The replay of real human labels, end to end through the CLI and a real server: accounts and a
batch made with ``synpref annotate-user`` / ``annotate-batch``, PandaLM's three annotators and
LLMBar's expert labels submitted over HTTP by ``synpref replay-humans``, then exported as gold.
The exported human votes equal the ones the ingest recorded from the dataset itself."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synpref_core.cli import app as cli
from synpref_core.config import IngestConfig, SourceSpec
from synpref_core.human.web import AppSettings
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.stages import iter_batches, load_manifest
from tests.conftest import DATA
from tests.human.conftest import LiveServer

PANDALM = DATA / "pandalm" / "testset-v1.json"
LLMBAR = DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"
run = CliRunner().invoke


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("replay")
    out = {}
    for fmt, path in (("pandalm", PANDALM), ("llmbar", LLMBAR)):
        config = IngestConfig(
            sources=[SourceSpec(format=fmt, paths=[str(path)])], out=str(root / fmt)
        )
        out[fmt] = run_ingest(config, progress=False).rsplit("/", 1)[0]
    return out


def _ok(args: list[str]) -> str:
    result = run(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_replay_of_pandalm_and_llmbar_labels_round_trips_to_gold(real_pairs, tmp_path):
    db, creds = f"sqlite:///{tmp_path / 'human.db'}", tmp_path / "replay.json"
    pandalm = [f"pandalm-annotator{i}" for i in (1, 2, 3)]
    _ok(
        [
            "annotate-user",
            *pandalm,
            "--credentials",
            str(creds),
            "--db",
            db,
            "--note",
            "replay of real human labels (PandaLM)",
        ]
    )
    _ok(["annotate-user", "llmbar-expert", "--credentials", str(creds), "--db", db])
    assert set(json.loads(creds.read_text())) == {*pandalm, "llmbar-expert"}
    assert creds.stat().st_mode & 0o077 == 0
    _ok(
        [
            "annotate-batch",
            real_pairs["pandalm"],
            "--name",
            "pandalm",
            "--size",
            "30",
            "--overlap",
            "3",
            *[x for a in pandalm for x in ("--annotator", a)],
            "--db",
            db,
        ]
    )
    _ok(
        [
            "annotate-batch",
            real_pairs["llmbar"],
            "--name",
            "llmbar",
            "--size",
            "20",
            "--overlap",
            "1",
            "--annotator",
            "llmbar-expert",
            "--db",
            db,
        ]
    )

    with LiveServer(AppSettings(db_url=db)) as live:
        output = _ok(
            [
                "replay-humans",
                "--url",
                live.url,
                "--dataset",
                "pandalm",
                "--data",
                str(PANDALM),
                "--credentials",
                str(creds),
            ]
        )
        assert output.count("replayed 30 recorded human labels") == 3
        output = _ok(
            [
                "replay-humans",
                "--url",
                live.url,
                "--dataset",
                "llmbar",
                "--data",
                str(LLMBAR),
                "--credentials",
                str(creds),
            ]
        )
        assert "llmbar-expert: replayed 20 recorded human labels" in output
        again = _ok(
            [
                "replay-humans",
                "--url",
                live.url,
                "--dataset",
                "llmbar",
                "--data",
                str(LLMBAR),
                "--credentials",
                str(creds),
            ]
        )
        assert "replayed 0" in again and "already answered 20" in again

    _ok(["annotate-export", "--out", str(tmp_path / "gold"), "--no-track", "--db", db])
    manifest = load_manifest(str(tmp_path / "gold"))
    assert manifest.counts["items"] == 50 and manifest.counts["gold"] == 50
    rows = pq.read_table(manifest.paths()[0]).to_pylist()
    recorded = {
        r["pair_id"]: (r["evidence"] or {}).get("human_votes")
        for stage in real_pairs.values()
        for b in iter_batches(stage, columns=["pair_id", "evidence"])
        for r in b.to_pylist()
    }
    for row in rows:
        assert row["status"] == "gold" and row["parent_id"] is None
        expected = recorded[row["pair_id"]] or [1]  # LLMBar records no votes: its one label
        assert row["evidence"]["human_votes"] == expected


def test_cli_errors_are_one_line_with_exit_2(real_pairs, tmp_path):
    db = f"sqlite:///{tmp_path / 'human.db'}"
    bad = run(
        cli,
        [
            "annotate-batch",
            real_pairs["llmbar"],
            "--name",
            "b",
            "--annotator",
            "nobody",
            "--overlap",
            "1",
            "--db",
            db,
        ],
    )
    assert bad.exit_code == 2 and "no such annotator account: nobody" in bad.output
    overlap = run(
        cli,
        [
            "annotate-batch",
            real_pairs["llmbar"],
            "--name",
            "b",
            "--annotator",
            "x",
            "--overlap",
            "2",
            "--db",
            db,
        ],
    )
    assert overlap.exit_code == 2 and "overlap 2 exceeds" in overlap.output
    missing = run(
        cli,
        [
            "annotate-batch",
            str(tmp_path / "nope"),
            "--name",
            "b",
            "--annotator",
            "x",
            "--overlap",
            "1",
            "--db",
            db,
        ],
    )
    assert missing.exit_code == 2 and "no manifest" in missing.output
    creds = tmp_path / "creds.json"
    creds.write_text("[1, 2]")
    replay = run(
        cli,
        [
            "replay-humans",
            "--dataset",
            "pandalm",
            "--data",
            str(PANDALM),
            "--credentials",
            str(creds),
        ],
    )
    assert replay.exit_code == 2 and "credentials must be a JSON object" in replay.output
    user = run(cli, ["annotate-user", "bad name!", "--db", db])
    assert user.exit_code == 2 and "user name" in user.output
    store = run(cli, ["annotate-user", "x", "--db", "postgresql+psycopg2://u:secret@h/db"])
    assert store.exit_code == 2 and "driver is not installed" in store.output
    assert "secret" not in store.output
    ui = run(cli, ["annotate-ui", "--db", "not a url"])
    assert ui.exit_code == 2 and "is not a database URL" in ui.output
    for result in (bad, overlap, missing, replay, user, store, ui):
        assert "Traceback" not in result.output
