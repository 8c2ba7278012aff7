"""The human verification web app (FastAPI, server-rendered, every asset served by the app).

    synpref annotate-ui --db sqlite:///.synpref/human.db          # http://127.0.0.1:8765
    make annotate-ui

An annotator logs in, sees the queue of their assigned items in protocol order (objective,
low-controversiality first) and, per item, the conversation, both responses in the item's seeded
order, the five attributes (editable; every edit recorded with who and when), the guideline and
tool links; records a verdict (first / second / undecidable, keys 1 / 2 / 3, Enter to submit),
a confidence, the tools used and a rationale; the page measures the time on item. Admins get
``/admin`` (``admin.py``). JSON for scripted clients: ``GET /api/me`` (name, role, CSRF token) and
``GET /api/items``; verdicts are posted to the same form endpoint a browser uses.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from sqlalchemy.orm import defer

from synpref_core.human import auth, store, verdicts
from synpref_core.human import queue as queue_
from synpref_core.human.admin import router as admin_router
from synpref_core.human.web import (
    HERE,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    AppSettings,
    AppState,
    CurrentUser,
    FormData,
    ItemId,
    LoginRequired,
    Who,
    check_csrf,
    client,
    cookie_secure,
    field,
    make_templates,
    number,
    shown_prompt,
    state,
    wants_json,
)
from synpref_core.schema import ATTRIBUTE_NAMES


def create_app(settings: AppSettings | None = None) -> FastAPI:
    """The app on ``settings.db_url`` (tables created when missing)."""
    settings = settings or AppSettings()
    app = FastAPI(
        title="synpref human verification", docs_url=None, redoc_url=None, openapi_url=None
    )
    limiter = auth.LoginLimiter(settings.login_failures, settings.login_window_s)
    app.state.human = AppState(
        settings, store.open_engine(settings.db_url), limiter, make_templates()
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.include_router(admin_router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (plain ASGI: no extra task or
    stream per request, unlike ``BaseHTTPMiddleware``)."""

    def __init__(self, app: Any):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def _login_required(request: Request, exc: Exception) -> Response:
    if request.method != "GET" or wants_json(request):
        return JSONResponse({"detail": "log in first"}, status_code=401)
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def _http_error(request: Request, exc: HTTPException) -> Response:
    if wants_json(request) or request.method != "GET":
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    page = state(request).templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail},
        status_code=exc.status_code,
    )
    return page


router = APIRouter()


def page(request: Request, name: str, who: Who | None, **context: Any) -> HTMLResponse:
    return state(request).templates.TemplateResponse(request, name, {"who": who, **context})


# -- login -------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = page(request, "login.html", None, csrf=token, next=_local(next))
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=cookie_secure(request)
    )
    return response


def _local(target: str) -> str:
    """Only same-site paths as a post-login target (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/login")
def login(request: Request, form: FormData) -> Response:
    if not auth.same_token(request.cookies.get(LOGIN_COOKIE), field(form, "csrf_token")):
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
    name, app = field(form, "username"), state(request)
    keys = [f"user:{name}", f"client:{client(request)}"]
    if wait := app.limiter.retry_after(keys):
        return JSONResponse(
            {"detail": f"too many failed logins; retry in {wait} s"},
            status_code=429,
            headers={"Retry-After": str(wait)},
        )
    with store.reading(app.engine) as session:  # the slow hash outside any write transaction
        user = auth.authenticate(session, name, field(form, "password"))
    with store.writing(app.engine) as session:
        if user is None:
            store.audit(session, None, "login_failed", f"user:{name[:64]}", {}, client(request))
        else:
            hours = timedelta(hours=app.settings.session_hours)
            token, _ = auth.open_session(session, user.id, hours)
            store.audit(session, user.id, "login", f"user:{name}", {}, client(request))
    if user is None:
        app.limiter.failed(keys)
        response = page(
            request,
            "login.html",
            None,
            csrf=field(form, "csrf_token"),
            next=_local(field(form, "next", "/")),
            error="wrong name or password",
        )
        response.status_code = 401
        return response
    response = RedirectResponse(_local(field(form, "next", "/")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request),
        max_age=int(app.settings.session_hours * 3600),
    )
    return response


@router.post("/logout")
def logout(request: Request, form: FormData, who: CurrentUser):
    check_csrf(request, form, who.csrf)
    with store.writing(state(request).engine) as session:
        auth.close_session(session, who.token)
        store.audit(session, who.user_id, "logout", f"user:{who.name}", {}, client(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- the annotator's queue and items -----------------------------------------------------------


def my_items(
    request: Request, who: Who, batch: str | None = None, texts: bool = True
) -> list[dict[str, Any]]:
    """The user's assigned items in (batch, protocol position) order, with their verdicts
    (without the pair texts when ``texts`` is false: the queue page lists, it does not show)."""
    query = (
        select(store.Item, store.Batch.name, store.Verdict)
        .join(store.Assignment, store.Assignment.item_id == store.Item.id)
        .join(store.Batch, store.Batch.id == store.Item.batch_id)
        .outerjoin(
            store.Verdict,
            (store.Verdict.item_id == store.Item.id) & (store.Verdict.user_id == who.user_id),
        )
        .where(store.Assignment.user_id == who.user_id)
        .order_by(store.Batch.id, store.Item.position)
    )
    if batch is not None:
        query = query.where(store.Batch.name == batch)
    if not texts:
        query = query.options(defer(store.Item.pair))
    with store.reading(state(request).engine) as session:
        rows = session.execute(query).all()
    return [{"item": item, "batch": name, "verdict": verdict} for item, name, verdict in rows]


def shown(item: store.Item) -> dict[str, Any]:
    """What the page shows of an item: the sides in its seeded order, never which is chosen."""
    pair = item.pair
    first, second = (
        (pair["rejected"], pair["chosen"]) if item.swapped else (pair["chosen"], pair["rejected"])
    )
    return {
        "id": item.id,
        "pair_id": item.pair_id,
        "position": item.position,
        "conversation": pair["conversation"],
        "prompt": shown_prompt(pair["conversation"]),
        "first": first,
        "second": second,
        "attributes": item.attributes,
    }


@router.get("/")
def queue(request: Request, who: CurrentUser) -> HTMLResponse:
    rows = my_items(request, who, texts=False)
    open_ = next((r["item"].id for r in rows if r["verdict"] is None), None)
    return page(request, "queue.html", who, rows=rows, next_open=open_)


@router.get("/items/{item_id}")
def item_page(request: Request, item_id: ItemId, who: CurrentUser) -> HTMLResponse:
    with store.reading(state(request).engine) as session:
        found = queue_.assigned(session, who.user_id, item_id)
        if found is None:
            raise HTTPException(404, f"item {item_id} is not assigned to you")
        item, batch, verdict = found
        nav = queue_.neighbours(session, who.user_id, item)
    return page(
        request,
        "item.html",
        who,
        item=shown(item),
        batch=batch,
        verdict=verdict,
        nav=nav,
        attribute_names=ATTRIBUTE_NAMES,
        tools=store.TOOLS,
    )


def _to_next_open(request: Request, item_id: ItemId, who: Who) -> RedirectResponse:
    """Where the verdict form sends a browser: the next item still open (or the queue)."""
    with store.reading(state(request).engine) as session:
        target = queue_.next_open(session, who.user_id, queue_.place(session, who.user_id, item_id))
    return RedirectResponse(f"/items/{target}" if target else "/", status_code=303)


def _store_call(fn: Any, *args: Any) -> Any:
    """Run a store operation in a write transaction, mapping its errors to HTTP statuses."""
    try:
        with store.writing(args[0]) as session:
            return fn(session, *args[1:])
    except verdicts.NotAssignedError as exc:
        raise HTTPException(404, str(exc)) from exc
    except store.VerdictExistsError as exc:
        raise HTTPException(409, str(exc)) from exc
    except store.StoreError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.post("/items/{item_id}/verdict")
def submit_verdict(
    request: Request,
    item_id: ItemId,
    form: FormData,
    who: CurrentUser,
) -> Response:
    check_csrf(request, form, who.csrf)
    confidence = number(form, "confidence", 0)
    _store_call(
        verdicts.record_verdict,
        state(request).engine,
        item_id,
        who.user_id,
        field(form, "verdict"),
        int(confidence),
        [str(t) for t in form.get("tools", [])],
        field(form, "rationale"),
        number(form, "seconds", 0.0),
        client(request),
    )
    if wants_json(request):
        return JSONResponse({"item_id": item_id, "recorded": True}, status_code=201)
    return _to_next_open(request, item_id, who)


@router.post("/items/{item_id}/attributes")
def edit_attributes(
    request: Request,
    item_id: ItemId,
    form: FormData,
    who: CurrentUser,
) -> Response:
    check_csrf(request, form, who.csrf)
    engine = state(request).engine

    def edit_changed(session: Any) -> int:
        item, _ = verdicts.assigned_item(session, item_id, who.user_id)
        changed = {n: field(form, n) for n in ATTRIBUTE_NAMES if n in form}
        changed = {n: v for n, v in changed.items() if v != (item.attributes.get(n) or "")}
        for name, value in changed.items():
            verdicts.edit_attribute(session, item_id, who.user_id, name, value, client(request))
        return len(changed)

    edits = _store_call(edit_changed, engine)
    if wants_json(request):
        return JSONResponse({"item_id": item_id, "edits": edits})
    return RedirectResponse(f"/items/{item_id}", status_code=303)


@router.get("/api/me")
def me(who: CurrentUser) -> dict[str, Any]:
    return {"name": who.name, "role": who.role, "csrf_token": who.csrf}


@router.get("/api/items")
def api_items(request: Request, who: CurrentUser, batch: str | None = None) -> list[dict[str, Any]]:
    rows = my_items(request, who, batch)
    return [
        {
            **shown(r["item"]),
            "batch": r["batch"],
            "verdict": r["verdict"].verdict if r["verdict"] else None,
        }
        for r in rows
    ]
