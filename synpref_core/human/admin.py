"""The admin pages of the verification app: batches and their progress and agreement,
per-annotator throughput and agreement, disagreements to adjudicate, and the audit log.

Every route here needs an admin session (an annotator gets 403); adjudication is a POST with
the session's CSRF token, recorded once per item and audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from synpref_core.human import progress, store, verdicts
from synpref_core.human.web import (
    CurrentAdmin,
    FormData,
    ItemId,
    Who,
    check_csrf,
    client,
    field,
    state,
    wants_json,
)

router = APIRouter(prefix="/admin")
AUDIT_ROWS = 200


def _page(request: Request, name: str, who: Who, **context: Any) -> HTMLResponse:
    return state(request).templates.TemplateResponse(request, name, {"who": who, **context})


@router.get("")
def overview(request: Request, who: CurrentAdmin) -> HTMLResponse:
    with store.reading(state(request).engine) as session:
        batches, todo = progress.batch_progress(session)
        annotators = progress.annotator_stats(session)
    return _page(request, "admin.html", who, batches=batches, todo=todo, annotators=annotators)


@router.get("/items/{item_id}")
def item(request: Request, item_id: ItemId, who: CurrentAdmin) -> HTMLResponse:
    with store.reading(state(request).engine) as session:
        row = session.get(store.Item, item_id)
        if row is None:
            raise HTTPException(404, f"no item {item_id}")
        batch = session.get(store.Batch, row.batch_id)
        answers = session.execute(
            select(store.Verdict, store.User.name)
            .join(store.User, store.User.id == store.Verdict.user_id)
            .where(store.Verdict.item_id == item_id)
            .order_by(store.User.name)
        ).all()
        ruling = session.scalar(
            select(store.Adjudication).where(store.Adjudication.item_id == item_id)
        )
        edits = session.execute(
            select(store.AttributeEdit, store.User.name)
            .join(store.User, store.User.id == store.AttributeEdit.user_id)
            .where(store.AttributeEdit.item_id == item_id)
            .order_by(store.AttributeEdit.id)
        ).all()
    outcome = verdicts.decide(
        [v.preferred for v, _ in answers], batch.overlap, ruling.preferred if ruling else None
    )
    return _page(
        request,
        "admin_item.html",
        who,
        item=row,
        batch=batch,
        answers=answers,
        ruling=ruling,
        outcome=outcome,
        edits=edits,
        preferences=verdicts.PREFERENCES,
    )


@router.post("/items/{item_id}/adjudicate")
def adjudicate(
    request: Request,
    item_id: ItemId,
    form: FormData,
    who: CurrentAdmin,
) -> Response:
    check_csrf(request, form, who.csrf)
    try:
        with store.writing(state(request).engine) as session:
            verdicts.adjudicate(
                session,
                item_id,
                who.user_id,
                field(form, "preferred"),
                field(form, "note"),
                client(request),
            )
    except verdicts.NotAssignedError as exc:
        raise HTTPException(404, str(exc)) from exc
    except store.VerdictExistsError as exc:
        raise HTTPException(409, str(exc)) from exc
    except store.StoreError as exc:
        raise HTTPException(400, str(exc)) from exc
    if wants_json(request):
        return JSONResponse({"item_id": item_id, "adjudicated": True}, status_code=201)
    return RedirectResponse(f"/admin/items/{item_id}", status_code=303)


@router.get("/audit")
def audit_log(request: Request, who: CurrentAdmin) -> HTMLResponse:
    with store.reading(state(request).engine) as session:
        rows = session.execute(
            select(store.AuditEntry, store.User.name)
            .outerjoin(store.User, store.User.id == store.AuditEntry.user_id)
            .order_by(store.AuditEntry.id.desc())
            .limit(AUDIT_ROWS)
        ).all()
    return _page(request, "audit.html", who, rows=rows)
