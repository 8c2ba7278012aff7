"""Every boundary of the verification app over HTTP (the real app, a real SQLite store):
login, sessions, who may see and change what, CSRF, rate limiting, escaping, the audit log."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from synpref_core.human import store
from synpref_core.human.web import SESSION_COOKIE
from tests.human.conftest import JS_LINK, PASSWORD, SCRIPT, items_of, login


def _verdict(client, item_id: int, verdict: str = "first", **extra):
    data = {
        "verdict": verdict,
        "confidence": "4",
        "rationale": "because",
        "seconds": "12.5",
        "csrf_token": client.csrf,
        **extra,
    }
    return client.post(f"/items/{item_id}/verdict", data=data, follow_redirects=False)


def _count(db_url: str, model) -> int:
    engine = store.open_engine(db_url)
    with store.reading(engine) as session:
        count = session.scalar(select(func.count()).select_from(model))
    engine.dispose()
    return count


@pytest.mark.parametrize("path", ["/", "/items/1", "/admin", "/admin/audit", "/admin/items/1"])
def test_pages_redirect_to_login_without_a_session(app, path):
    response = TestClient(app).get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/items"),
        ("get", "/api/me"),
        ("post", "/items/1/verdict"),
        ("post", "/items/1/attributes"),
        ("post", "/admin/items/1/adjudicate"),
        ("post", "/logout"),
    ],
)
def test_api_and_changes_answer_401_without_a_session(app, method, path):
    response = getattr(TestClient(app), method)(path, follow_redirects=False)
    assert response.status_code == 401


def test_a_forged_or_expired_cookie_is_no_session(app):
    client = TestClient(app, cookies={SESSION_COOKIE: "forged-token"})
    assert client.get("/api/me").status_code == 401


def test_wrong_password_is_401_and_login_sets_hardened_cookie(app):
    client = TestClient(app)
    client.get("/login")
    token = client.cookies.get("synpref_login_csrf")
    bad = client.post(
        "/login", data={"username": "alice", "password": "nope-nope-nope", "csrf_token": token}
    )
    assert bad.status_code == 401 and "wrong name or password" in bad.text
    good = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_login_without_its_csrf_token_is_rejected(app):
    client = TestClient(app)
    client.get("/login")
    response = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert client.get("/api/me").status_code == 401


def test_logins_are_rate_limited_per_account(app):
    client = TestClient(app)
    client.get("/login")
    token = client.cookies.get("synpref_login_csrf")
    attempt = {"username": "bob", "password": "wrong-password!", "csrf_token": token}
    statuses = [client.post("/login", data=attempt).status_code for _ in range(5)]
    assert statuses == [401] * 5
    locked = client.post("/login", data={**attempt, "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0


def test_an_annotator_sees_only_their_items(client_for, db_url):
    alice, bob = client_for("alice"), client_for("bob")
    mine, theirs = {i["id"] for i in items_of(alice)}, {i["id"] for i in items_of(bob)}
    only_bob = sorted(theirs - mine)
    assert mine and only_bob
    assert alice.get(f"/items/{only_bob[0]}").status_code == 404
    assert _verdict(alice, only_bob[0]).status_code == 404
    edit = alice.post(
        f"/items/{only_bob[0]}/attributes",
        data={"objectivity": "subjective", "csrf_token": alice.csrf},
    )
    assert edit.status_code == 404
    assert _count(db_url, store.Verdict) == 0 and _count(db_url, store.AttributeEdit) == 0


def test_a_verdict_is_never_overwritten(client_for, db_url):
    alice, bob = client_for("alice"), client_for("bob")
    shared = sorted({i["id"] for i in items_of(alice)} & {i["id"] for i in items_of(bob)})[0]
    assert _verdict(alice, shared, "first").status_code == 303
    assert _verdict(alice, shared, "second").status_code == 409  # not even by its author
    assert _verdict(bob, shared, "second").status_code == 303  # bob's own, beside alice's
    engine = store.open_engine(db_url)
    with store.reading(engine) as session:
        rows = session.execute(
            select(store.User.name, store.Verdict.verdict).join(
                store.User, store.User.id == store.Verdict.user_id
            )
        ).all()
    assert sorted(rows) == [("alice", "first"), ("bob", "second")]


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_changes_without_the_right_csrf_token_are_rejected(client_for, db_url, token):
    alice = client_for("alice")
    item = items_of(alice)[0]["id"]
    data = {"verdict": "first", "confidence": "3"}
    if token is not None:
        data["csrf_token"] = token
    assert alice.post(f"/items/{item}/verdict", data=data).status_code == 403
    edit = {"objectivity": "subjective", **({"csrf_token": token} if token is not None else {})}
    assert alice.post(f"/items/{item}/attributes", data=edit).status_code == 403
    assert alice.post("/logout", data={}).status_code == 403
    assert _count(db_url, store.Verdict) == 0 and _count(db_url, store.AttributeEdit) == 0


def test_another_sessions_csrf_token_does_not_work(client_for):
    alice, bob = client_for("alice"), client_for("bob")
    item = items_of(alice)[0]["id"]
    assert _verdict(alice, item, csrf_token=bob.csrf).status_code == 403


def test_annotators_cannot_reach_admin_pages(client_for):
    alice = client_for("alice")
    for path in ("/admin", "/admin/audit", "/admin/items/1"):
        assert alice.get(path).status_code == 403
    ruling = {"preferred": "chosen", "note": "x", "csrf_token": alice.csrf}
    assert alice.post("/admin/items/1/adjudicate", data=ruling).status_code == 403


def test_script_and_javascript_links_in_pair_texts_render_inert(client_for):
    alice = client_for("alice")
    pages = [alice.get(f"/items/{i['id']}").text for i in items_of(alice)]
    hostile = [p for p in pages if "alert(" in p]
    assert hostile, "the hostile pairs are assigned to alice"
    for html in pages:
        assert "<script>alert" not in html and 'href="javascript:' not in html
        assert html.count("<script") == 1  # the app's own /static/app.js, nothing else
    assert any("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in p for p in hostile)
    assert any("(javascript:alert(1))" in p and "&lt;a href=&#34;javascript" in p for p in pages)
    assert SCRIPT and JS_LINK  # the texts the fixture planted


def test_pages_carry_a_strict_content_security_policy(client_for):
    response = client_for("alice").get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"


def test_static_assets_are_served_by_the_app(app):
    client = TestClient(app)
    assert "keydown" in client.get("/static/app.js").text
    assert client.get("/static/app.css").status_code == 200


def test_every_change_is_audited(client_for, db_url):
    alice = client_for("alice")
    item = items_of(alice)[0]["id"]
    _verdict(alice, item)
    alice.post(
        f"/items/{item}/attributes", data={"objectivity": "subjective", "csrf_token": alice.csrf}
    )
    engine = store.open_engine(db_url)
    with store.reading(engine) as session:
        actions = [a for (a,) in session.execute(select(store.AuditEntry.action))]
        edit = session.scalar(select(store.AttributeEdit))
    assert {"create_user", "create_batch", "login", "verdict", "edit_attribute"} <= set(actions)
    assert edit.new_value == "subjective" and edit.old_value is None


def test_logout_ends_the_session(client_for):
    alice = client_for("alice")
    assert alice.post("/logout", data={"csrf_token": alice.csrf}, follow_redirects=False)
    assert alice.get("/api/me").status_code == 401


def test_bad_verdict_fields_are_400_with_a_reason(client_for):
    alice = client_for("alice")
    item = items_of(alice)[0]["id"]
    assert _verdict(alice, item, "maybe").status_code == 400
    response = _verdict(alice, item, confidence="9")
    assert response.status_code == 400 and "confidence" in response.json()["detail"]
    assert _verdict(alice, item, tools=["oracle"]).status_code == 400
    for bad in ("nan", "inf", "three"):
        assert _verdict(alice, item, confidence=bad).status_code == 400
        assert _verdict(alice, item, seconds=bad).status_code == 400
    assert _verdict(alice, item).status_code == 303, "nothing was stored by the bad ones"


def test_login_after_logout_works_again(app):
    client = TestClient(app)
    csrf = login(client, "carol")
    client.post("/logout", data={"csrf_token": csrf})
    assert login(client, "carol")


def test_login_never_redirects_off_site(app):
    client = TestClient(app)
    client.get("/login")
    token = client.cookies.get("synpref_login_csrf")
    for target in ("//evil.example/x", "https://evil.example/", "/items/1"):
        response = client.post(
            "/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": token, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == (target if target.startswith("/i") else "/")


def test_secure_cookie_flag_when_configured(db_url):
    from synpref_core.human.app import create_app
    from synpref_core.human.web import AppSettings

    response = TestClient(create_app(AppSettings(db_url=db_url, secure_cookies=True))).get("/login")
    assert "secure" in response.headers["set-cookie"].lower()


def test_logins_are_rate_limited_per_client_address(app):
    client = TestClient(app)
    client.get("/login")
    token = client.cookies.get("synpref_login_csrf")
    for name in ("u1", "u2", "u3", "u4", "u5"):  # five unknown accounts, one address
        client.post("/login", data={"username": name, "password": "x" * 12, "csrf_token": token})
    response = client.post(
        "/login", data={"username": "carol", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 429


def test_malformed_ids_and_bodies_are_client_errors(app, client_for):
    root = client_for("root")
    huge = "99999999999999999999"
    assert root.get(f"/items/{huge}").status_code == 422
    assert root.get(f"/admin/items/{huge}").status_code == 422
    data = {"verdict": "first", "confidence": "3", "csrf_token": root.csrf}
    assert root.post(f"/items/{huge}/verdict", data=data).status_code == 422
    assert root.post("/items/1/verdict", data=data).status_code == 404  # admins are not assigned
    garbage = {"content-type": "application/json", "x-csrf-token": root.csrf}
    assert root.post("/items/1/verdict", content=b"[1]", headers=garbage).status_code == 400
    assert root.post("/items/1/verdict", content=b"{", headers=garbage).status_code == 400
