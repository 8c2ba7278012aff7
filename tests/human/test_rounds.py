"""Stage-1 integration: a round opens a batch on its slice and goes on; the next round collects
what humans finished meanwhile as its gold stage; unfinished items are picked up later."""

from __future__ import annotations

from fastapi.testclient import TestClient

from synpref_core.human import auth, store
from synpref_core.human.app import create_app
from synpref_core.human.rounds import VerificationConfig, collect_gold, create_verification_batch
from synpref_core.human.web import AppSettings
from synpref_core.stages import load_manifest
from tests.human.conftest import PASSWORD, items_of, login


def _answer(client: TestClient, csrf: str, how_many: int) -> None:
    open_items = [i["id"] for i in items_of(client) if i["verdict"] is None][:how_many]
    for item_id in open_items:
        data = {"verdict": "first", "confidence": "4", "csrf_token": csrf}
        assert client.post(f"/items/{item_id}/verdict", data=data).status_code == 200


def test_verdicts_are_picked_up_by_the_next_round(hostile_pairs, tmp_path):
    db = f"sqlite:///{tmp_path / 'human.db'}"
    auth.create_user(store.open_engine(db), "alice", "annotator", PASSWORD)
    config = VerificationConfig(
        db_url=db,
        pairs=hostile_pairs,
        round=1,
        size=6,
        overlap=1,
        annotators=["alice"],
        gold_root=str(tmp_path / "gold"),
    )
    opened = create_verification_batch(config)
    assert (opened.name, opened.items, sum(opened.reasons.values())) == ("round-1", 6, 6)

    client = TestClient(create_app(AppSettings(db_url=db)))
    csrf = login(client, "alice")
    _answer(client, csrf, 2)
    round2 = load_manifest(collect_gold(config.model_copy(update={"round": 2})))
    assert (round2.rows, round2.counts["pending"]) == (2, 4)

    _answer(client, csrf, 2)
    round3 = load_manifest(collect_gold(config.model_copy(update={"round": 3})))
    assert (round3.rows, round3.counts["pending"]) == (4, 2)
    assert load_manifest(round2.dir).rows == 2, "an earlier round's gold stage stays as it was"

    second = create_verification_batch(config.model_copy(update={"round": 2}))
    assert second.items == 6, "the next batch draws only pairs no batch holds yet"
    assert {i["pair_id"] for i in items_of(client) if i["verdict"] is None} and len(
        {i["pair_id"] for i in items_of(client)}
    ) == 12
