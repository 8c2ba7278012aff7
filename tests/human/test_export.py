"""Verdicts entered over HTTP round-trip into gold shards: statuses, swapped sides, discarded
undecidable pairs, adjudication, human votes, counts that reconcile; and concurrent submissions
lose nothing."""

from __future__ import annotations

import threading

import httpx
import pyarrow.parquet as pq
from sqlalchemy import func, select

from synpref_core.config import TrackingConfig
from synpref_core.human import store
from synpref_core.human.export import GoldExportConfig, export_gold, record_export
from synpref_core.schema import pair_id
from synpref_core.stages import load_manifest
from tests.human.conftest import items_of, login

JSON = {"accept": "application/json"}


def _swapped(db_url: str) -> dict[int, bool]:
    engine = store.open_engine(db_url)  # the test peeks at the side order; the app never shows it
    with store.reading(engine) as session:
        found = dict(session.execute(select(store.Item.id, store.Item.swapped)).all())
    engine.dispose()
    return found


def _side(swapped: bool, preferred: str) -> str:
    if preferred == "undecidable":
        return preferred
    return "first" if (preferred == "chosen") != swapped else "second"


def _vote(client, item_id: int, side: str) -> None:
    data = {
        "verdict": side,
        "confidence": "5",
        "tools": ["search"],
        "rationale": "checked",
        "seconds": "30",
        "csrf_token": client.csrf,
    }
    response = client.post(f"/items/{item_id}/verdict", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text


def test_verdicts_round_trip_into_gold_shards(client_for, db_url, tmp_path):
    swapped = _swapped(db_url)
    clients = {name: client_for(name) for name in ("alice", "bob", "carol")}
    owners: dict[int, list[str]] = {}
    for name, client in clients.items():
        for item in items_of(client):
            owners.setdefault(item["id"], []).append(name)
    plan = ["chosen", "rejected", "undecidable", "split", "split-left", "pending"]
    items = sorted(owners)
    for item_id, kind in zip(items, plan, strict=False):
        first, second = owners[item_id]
        if kind == "pending":
            _vote(clients[first], item_id, _side(swapped[item_id], "chosen"))
            continue
        a, b = {"split": ("chosen", "rejected"), "split-left": ("chosen", "undecidable")}.get(
            kind, (kind, kind)
        )
        _vote(clients[first], item_id, _side(swapped[item_id], a))
        _vote(clients[second], item_id, _side(swapped[item_id], b))

    root = client_for("root")
    admin = root.get("/admin").text
    assert "Disagreements to adjudicate" in admin and f"/admin/items/{items[3]}" in admin
    ruling = {"preferred": "rejected", "note": "the second is right", "csrf_token": root.csrf}
    assert root.post(f"/admin/items/{items[3]}/adjudicate", data=ruling).status_code == 200
    again = root.post(f"/admin/items/{items[3]}/adjudicate", data=ruling)
    assert again.status_code == 409
    assert root.post(f"/admin/items/{items[0]}/adjudicate", data=ruling).status_code == 400

    engine = store.open_engine(db_url)
    uri = export_gold(engine, GoldExportConfig(out=str(tmp_path / "gold")))
    manifest = load_manifest(uri)
    rows = pq.read_table(manifest.paths()[0]).to_pylist()
    counts = manifest.counts
    assert counts["items"] == len(items) == 12
    assert counts == {
        "rows": 4,
        "items": 12,
        "gold": 3,
        "swapped": 2,
        "discarded": 1,
        "pending": 7,
        "disagreement": 1,
    }
    assert counts["gold"] + counts["discarded"] == manifest.rows == len(rows)
    assert sum(counts[k] for k in ("gold", "discarded", "pending", "disagreement")) == 12

    by_status = {r["status"]: r for r in rows if r["status"] == "discarded"}
    assert "undecidable" in by_status["discarded"]["evidence"]["note"]
    assert {r["decided_by"] for r in rows} == {"human"}
    flipped = [r for r in rows if r["parent_id"]]
    assert len(flipped) == 2
    for row in flipped:
        assert row["pair_id"] == pair_id(row["conversation"], row["chosen"], row["rejected"])
        assert row["pair_id"] != row["parent_id"] and "swapped" in row["evidence"]["note"]
    straight = [r for r in rows if r["status"] == "gold" and not r["parent_id"]]
    assert straight[0]["evidence"]["human_votes"] == [1, 1]
    adjudicated = next(r for r in flipped if "adjudicated" in r["evidence"]["note"])
    assert sorted(adjudicated["evidence"]["human_votes"]) == [0, 1]

    same = export_gold(engine, GoldExportConfig(out=str(tmp_path / "gold")))
    assert load_manifest(same) == manifest, "a re-export of the same verdicts is identical"
    run_id = record_export(uri, TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}"))
    assert run_id


def test_a_human_verdict_overrides_an_llm_one(client_for, db_url, tmp_path):
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        item = session.scalars(select(store.Item).order_by(store.Item.id)).first()
        judged = {
            "human_votes": None,
            "judge_votes": [{"judge": "j1", "vote": 0}],
            "p_best": 0.25,
            "p_gold": None,
            "note": "llm: flip candidate",
        }
        item.pair = {**item.pair, "status": "silver", "decided_by": "llm", "evidence": judged}
        item_id, swapped = item.id, item.swapped
    clients = [client_for(n) for n in ("alice", "bob", "carol")]
    for client in clients:
        if any(i["id"] == item_id for i in items_of(client)):
            _vote(client, item_id, _side(swapped, "chosen"))
    uri = export_gold(engine, GoldExportConfig(out=str(tmp_path / "gold")))
    (row,) = pq.read_table(load_manifest(uri).paths()[0]).to_pylist()
    assert (row["status"], row["decided_by"]) == ("gold", "human")
    evidence = row["evidence"]
    assert evidence["judge_votes"] == [{"judge": "j1", "vote": 0}] and evidence["p_best"] == 0.25
    assert evidence["human_votes"] == [1, 1]


def test_concurrent_submissions_lose_nothing(live, db_url):
    """Three annotators on a real server submit every item at once, twice each: every first
    submission is stored exactly once, every repeat is refused."""
    clients = []
    for name in ("alice", "bob", "carol"):
        client = httpx.Client(base_url=live.url)
        client.csrf = login(client, name)
        clients.append(client)
    barrier = threading.Barrier(len(clients))
    statuses: dict[str, list[int]] = {}

    def submit(client: httpx.Client) -> None:
        todo = [i["id"] for i in items_of(client)]
        barrier.wait()
        got = []
        for item_id in todo + todo:
            data = {"verdict": "first", "confidence": "3", "csrf_token": client.csrf}
            response = client.post(f"/items/{item_id}/verdict", data=data, headers=JSON)
            got.append(response.status_code)
        statuses[client.get("/api/me").json()["name"]] = got

    threads = [threading.Thread(target=submit, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    engine = store.open_engine(db_url)
    with store.reading(engine) as session:
        stored = session.scalar(select(func.count()).select_from(store.Verdict))
        assigned = session.scalar(select(func.count()).select_from(store.Assignment))
    accepted = sum(s.count(201) for s in statuses.values())
    refused = sum(s.count(409) for s in statuses.values())
    assert stored == assigned == accepted == refused == 24
