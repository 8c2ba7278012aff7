"""The admin page's figures and the attribute edits' path into gold, over HTTP."""

from __future__ import annotations

import re

import pyarrow.parquet as pq

from synpref_core.human import store
from synpref_core.human.export import GoldExportConfig, export_gold
from synpref_core.stages import load_manifest
from tests.human.conftest import items_of


def _vote(client, item_id: int, side: str, seconds: str) -> None:
    data = {"verdict": side, "confidence": "4", "seconds": seconds, "csrf_token": client.csrf}
    assert client.post(f"/items/{item_id}/verdict", data=data).status_code == 200


def test_admin_page_shows_progress_throughput_and_agreement(client_for):
    alice, bob = client_for("alice"), client_for("bob")
    shared = sorted({i["id"] for i in items_of(alice)} & {i["id"] for i in items_of(bob)})
    for n, item_id in enumerate(shared):  # both agree; two labels in use, so α is defined
        side = "undecidable" if n % 2 else "first"
        _vote(alice, item_id, side, "20")
        _vote(bob, item_id, side, "40")
    html = client_for("root").get("/admin").text
    row = re.search(r"<tr><td>b1</td>.*?</tr>", html, flags=re.S).group(0)
    cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
    assert cells[3] == "12" and cells[4] == f"{2 * len(shared)} / 24"
    assert cells[5] == str(len(shared)) and cells[9] == "1.00"  # α: every pair agreed
    assert cells[10] == "1.00"  # κ of alice and bob
    alice_row = re.search(r"<tr><td>alice</td>.*?</tr>", html, flags=re.S).group(0)
    alice_cells = re.findall(r"<td>(.*?)</td>", alice_row, flags=re.S)
    assert alice_cells[3] == "20.0" and alice_cells[4] == "180" and alice_cells[5] == "100%"


def test_attribute_edits_reach_gold_marked_human(client_for, db_url, tmp_path):
    alice = client_for("alice")
    item = items_of(alice)[0]
    edit = {
        "objectivity": "objective",
        "annotation_guideline": "Prefer the <b>safe</b> answer.",
        "csrf_token": alice.csrf,
    }
    assert alice.post(f"/items/{item['id']}/attributes", data=edit).status_code == 200
    page = alice.get(f"/items/{item['id']}").text
    assert "Prefer the &lt;b&gt;safe&lt;/b&gt; answer." in page
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        session.get(store.Batch, 1).overlap = 1  # alice's verdict alone decides, for this test
    _vote(alice, item["id"], "undecidable", "5")
    manifest = load_manifest(export_gold(engine, GoldExportConfig(out=str(tmp_path / "g"))))
    (row,) = pq.read_table(manifest.paths()[0]).to_pylist()
    assert row["status"] == "discarded" and row["decided_by"] == "human"
    assert row["objectivity"] == {"value": "objective", "source": "human"}
    assert row["annotation_guideline"]["value"] == "Prefer the <b>safe</b> answer."
    assert row["task_category"] is None  # untouched attributes stay as stored


def test_admin_pages_render_hostile_texts_inert(client_for):
    alice = client_for("alice")
    item = next(i for i in items_of(alice) if "alert(" in i["first"] + i["second"])
    edit = {"desired_attributes": "<script>alert(9)</script>", "csrf_token": alice.csrf}
    assert alice.post(f"/items/{item['id']}/attributes", data=edit).status_code == 200
    root = client_for("root")
    for path in (f"/admin/items/{item['id']}", "/admin/audit", "/admin"):
        html = root.get(path).text
        assert "<script>alert" not in html and 'href="javascript:' not in html, path
        assert html.count("<script") == 1, path  # the app's own script only
    assert "&lt;script&gt;alert(9)" in root.get(f"/admin/items/{item['id']}").text
