"""The annotator's queue over HTTP: protocol order, neighbours, and the form sending a browser to
the next open item, wrapping round, then back to the queue when all are done."""

from __future__ import annotations

import re

from tests.human.conftest import items_of


def test_the_queue_walks_items_in_order_and_wraps_to_open_ones(client_for):
    alice = client_for("alice")
    order = [i["id"] for i in items_of(alice)]
    assert [i["position"] for i in items_of(alice)] == sorted(
        i["position"] for i in items_of(alice)
    )
    page = alice.get(f"/items/{order[1]}").text
    assert f"item 2 of {len(order)}" in page
    assert f'id="prev" href="/items/{order[0]}"' in page
    assert f'id="next" href="/items/{order[2]}"' in page

    def submit(item_id: int) -> str:
        data = {"verdict": "undecidable", "confidence": "2", "csrf_token": alice.csrf}
        response = alice.post(f"/items/{item_id}/verdict", data=data, follow_redirects=False)
        assert response.status_code == 303
        return response.headers["location"]

    assert submit(order[1]) == f"/items/{order[2]}"
    assert submit(order[-1]) == f"/items/{order[0]}", "wraps round to the first open item"
    for item_id in order:
        if item_id not in (order[1], order[-1], order[0]):
            submit(item_id)
    assert submit(order[0]) == "/"
    queue = alice.get("/").text
    assert "All done." in queue and len(re.findall(r"<td>undecidable</td>", queue)) == len(order)
