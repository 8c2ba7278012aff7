"""What every page of the verification app shares: settings, templates, the logged-in user,
form parsing and the CSRF check.

Templates are Jinja2 with autoescaping on, so pair texts (untrusted input) always render as text:
a response holding ``<script>`` or a markdown ``javascript:`` link shows as written and runs
nothing. The Content-Security-Policy allows scripts from the app itself only, never inline ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import Field
from sqlalchemy.engine import Engine

from synpref_core.config import StrictModel
from synpref_core.human import auth, store

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "synpref_session"
LOGIN_COOKIE = "synpref_login_csrf"  # double-submit token of the login form (no session yet)
MAX_BODY = 1 << 20  # bytes of a form or JSON body
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class AppSettings(StrictModel):
    """How the app runs; ``synpref annotate-ui`` builds it from its options."""

    db_url: str = Field(store.DEFAULT_DB_URL, description="SQLAlchemy URL of the store.")
    session_hours: float = Field(12.0, gt=0, description="A login lasts this long.")
    secure_cookies: bool | None = Field(
        None, description="Secure cookie flag; None: set it when the request came over HTTPS."
    )
    login_failures: int = Field(5, ge=1, description="Failed logins allowed per window.")
    login_window_s: float = Field(300.0, gt=0, description="The rate limiter's window.")


def shown_prompt(conversation: list[dict[str, str]]) -> str:
    """The prompt an item page shows: the conversation's last user turn (the replay matches
    recorded labels on exactly this text)."""
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


@dataclass
class AppState:
    settings: AppSettings
    engine: Engine
    limiter: auth.LoginLimiter
    templates: Jinja2Templates


def make_templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    return Jinja2Templates(env=env)


def state(request: Request) -> AppState:
    return request.app.state.human


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, API calls answer 401."""


@dataclass
class Who:
    user_id: int
    name: str
    role: str
    csrf: str
    token: str


def current_user(request: Request) -> Who:
    token = request.cookies.get(SESSION_COOKIE)
    with store.reading(state(request).engine) as session:
        found = auth.find_session(session, token)
    if found is None or token is None:
        raise LoginRequired()
    return Who(found.id, found.name, found.role, found.csrf, token)


def current_admin(request: Request) -> Who:
    who = current_user(request)
    if who.role != "admin":
        raise HTTPException(403, "admins only")
    return who


async def form_data(request: Request) -> dict[str, list[str]]:
    """A urlencoded form or a JSON object as {field: [values]}; other bodies are empty."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"request body over {MAX_BODY} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/x-www-form-urlencoded":
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    if kind == "application/json":
        try:
            data = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, "body is not JSON") from exc
        if not isinstance(data, dict):
            raise HTTPException(400, "body must be a JSON object")
        return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
    return {}


def field(form: dict[str, list[Any]], name: str, default: str = "") -> str:
    values = form.get(name)
    return str(values[0]) if values else default


def number(form: dict[str, list[Any]], name: str, default: float) -> float:
    try:
        value = float(field(form, name, str(default)))
    except ValueError as exc:
        raise HTTPException(400, f"{name} must be a number") from exc
    if not math.isfinite(value):
        raise HTTPException(400, f"{name} must be a finite number")
    return value


def check_csrf(request: Request, form: dict[str, list[Any]], expected: str) -> None:
    """403 unless the request carries this session's CSRF token (field or header)."""
    given = request.headers.get("x-csrf-token") or field(form, "csrf_token")
    if not auth.same_token(expected, given):
        raise HTTPException(403, "missing or wrong CSRF token")


def client(request: Request) -> str:
    return request.client.host if request.client else ""


def cookie_secure(request: Request) -> bool:
    configured = state(request).settings.secure_cookies
    return request.url.scheme == "https" if configured is None else configured


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


# Parameter types of the routes: the logged-in user, an admin, the parsed body.
CurrentUser = Annotated[Who, Depends(current_user)]
CurrentAdmin = Annotated[Who, Depends(current_admin)]
FormData = Annotated[dict[str, list[Any]], Depends(form_data)]
ItemId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="An item id.")]  # SQL BIGINT
