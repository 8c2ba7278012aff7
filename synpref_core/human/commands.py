"""The ``synpref`` subcommands of human verification, registered on the CLI by
:func:`register_human_commands` (``synpref_core/cli.py``):

    synpref annotate-user ana ben --role annotator --credentials accounts.json
    synpref annotate-user boss --role admin
    synpref annotate-batch PAIRS --name round-1 --annotator ana --annotator ben --overlap 2
    synpref annotate-ui [--db URL] [--host 127.0.0.1] [--port 8765]
    synpref annotate-export --out .synpref/human-gold [--batch NAME]...
    synpref replay-humans --dataset pandalm --data data/pandalm/testset-v1.json --credentials F
    synpref replay-humans --dataset hh-rlhf --credentials F     # the bundled hh-rlhf test split

Bad input ends in one line on stderr and exit code 2, as everywhere in the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from synpref_core.config import describe_invalid


def _fail(message: str) -> typer.Exit:
    from synpref_core.cli import _fail as fail

    return fail(message)


DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the store (default: .synpref/human.db)."),
]


def _engine(url: str | None) -> Any:
    """The store's engine, or one line and exit 2."""
    from synpref_core.human.store import StoreError, open_engine

    try:
        return open_engine(_db(url))
    except StoreError as exc:
        raise _fail(str(exc)) from exc


def _has_accounts(engine: Any) -> bool:
    from sqlalchemy import select

    from synpref_core.human import store

    with store.reading(engine) as session:
        return session.scalar(select(store.User.id).limit(1)) is not None


def _db(url: str | None) -> str:
    from synpref_core.human.store import DEFAULT_DB_URL

    return url or DEFAULT_DB_URL


def annotate_ui(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    secure_cookies: Annotated[
        bool | None,
        typer.Option(
            "--secure-cookies/--no-secure-cookies",
            help="Secure cookie flag (default: set when the request came over HTTPS).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the human verification app (annotators and admins log in with their accounts)."""
    import uvicorn

    from synpref_core.human.app import create_app
    from synpref_core.human.store import StoreError
    from synpref_core.human.web import AppSettings

    try:
        verify = create_app(AppSettings(db_url=_db(db), secure_cookies=secure_cookies))
    except StoreError as exc:
        raise _fail(str(exc)) from exc
    from synpref_core.cli import err

    err.print(f"human verification at http://{host}:{port}/ (store {_db(db)})", soft_wrap=True)
    if not _has_accounts(verify.state.human.engine):
        err.print("no accounts yet: create them with `synpref annotate-user`", soft_wrap=True)
    uvicorn.run(verify, host=host, port=port, log_level="info")


def annotate_user(
    names: Annotated[list[str], typer.Argument(help="Account names to create.")],
    role: Annotated[str, typer.Option(help="'annotator' or 'admin'.")] = "annotator",
    credentials: Annotated[
        Path | None,
        typer.Option(help="Add the generated passwords to this JSON file (mode 0600)."),
    ] = None,
    note: Annotated[str, typer.Option(help="Shown beside the account on the admin page.")] = "",
    db: DbOption = None,
) -> None:
    """Create accounts with generated passwords (printed, or written to --credentials)."""
    import secrets

    from synpref_core.human import auth, store

    saved = _read_credentials(credentials) if credentials and credentials.exists() else {}
    engine = _engine(db)
    created = {}
    try:
        for name in names:
            password = secrets.token_urlsafe(18)
            auth.create_user(engine, name, role, password, note)
            created[name] = password
    except store.StoreError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()
        if credentials and created:
            credentials.touch(mode=0o600)
            credentials.write_text(json.dumps({**saved, **created}, indent=2) + "\n")
    for name, password in created.items():
        typer.echo(f"{name} ({role})" + ("" if credentials else f": {password}"))


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(f"{path}: cannot read credentials: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _fail(f"{path}: credentials must be a JSON object of name: password")
    return data


def annotate_batch(
    pairs: Annotated[str, typer.Argument(help="A finished pair stage directory.")],
    name: Annotated[str, typer.Option(help="Unique batch name.")],
    annotator: Annotated[list[str], typer.Option(help="An annotator account; repeatable.")],
    size: Annotated[int, typer.Option(help="Pairs in the batch.")] = 100,
    overlap: Annotated[int, typer.Option(help="Annotators per item.")] = 2,
    seed: Annotated[int, typer.Option(help="Seeds the sample, sides and assignment.")] = 0,
    db: DbOption = None,
) -> None:
    """Open a verification batch: judge disagreements, high controversy, then a random sample."""
    from synpref_core.human import store
    from synpref_core.human.batches import BatchConfig, create_batch
    from synpref_core.stages import StageError

    try:
        config = BatchConfig(
            pairs=pairs, name=name, size=size, overlap=overlap, annotators=annotator, seed=seed
        )
    except ValidationError as exc:
        raise _fail(describe_invalid(exc)) from exc
    engine = _engine(db)
    try:
        summary = create_batch(engine, config)
    except (store.StoreError, StageError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()
    reasons = ", ".join(f"{k} {v}" for k, v in summary.reasons.items())
    typer.echo(
        f"batch {name}: {summary.items} items ({reasons}), {summary.assignments} assignments"
    )


def annotate_export(
    out: Annotated[str, typer.Option(help="Output gold stage directory.")],
    batch: Annotated[list[str] | None, typer.Option(help="Only these batches; repeatable.")] = None,
    track: Annotated[bool, typer.Option(help="Record the export as an MLflow run.")] = True,
    db: DbOption = None,
) -> None:
    """Export decided items as gold pair shards with a manifest (undecidable: discarded)."""
    from synpref_core.cli import _os_error, print_counts
    from synpref_core.config import TrackingConfig
    from synpref_core.human.export import GoldExportConfig, export_gold, record_export
    from synpref_core.io.lock import LockedError
    from synpref_core.stages import load_manifest

    engine = _engine(db)
    try:
        uri = export_gold(engine, GoldExportConfig(out=out, batches=batch))
    except LockedError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(_os_error(exc, out)) from exc
    finally:
        engine.dispose()
    if track:
        record_export(uri, TrackingConfig())
    print_counts(load_manifest(uri).counts, out)


def replay_humans(
    dataset: Annotated[str, typer.Option(help="'pandalm', 'llmbar' or 'hh-rlhf'.")],
    credentials: Annotated[Path, typer.Option(help="JSON of the replay accounts' passwords.")],
    data: Annotated[
        list[str] | None,
        typer.Option(help="Dataset file or directory; repeatable (default: the bundled one)."),
    ] = None,
    url: Annotated[str, typer.Option(help="The running app.")] = "http://127.0.0.1:8765",
    batch: Annotated[str | None, typer.Option(help="Only this batch.")] = None,
) -> None:
    """Replay of real human labels: submit the bundled datasets' recorded labels over HTTP."""
    import httpx

    from synpref_core.human.replay import ReplayError, replay
    from synpref_core.human.rounds import BUNDLED_REPLAY_DATA

    if data is None and dataset not in BUNDLED_REPLAY_DATA:
        raise _fail(f"unknown dataset {dataset!r}; choose one of {', '.join(BUNDLED_REPLAY_DATA)}")
    try:
        paths = data or BUNDLED_REPLAY_DATA[dataset]
        result = replay(url, dataset, paths, _read_credentials(credentials), batch)
    except ReplayError as exc:
        raise _fail(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise _fail(f"{url}: {exc}") from exc
    for name, count in result.submitted.items():
        typer.echo(f"{name}: replayed {count} recorded human labels")
    typer.echo(f"already answered {result.already}, not in {dataset} {result.unmatched}")
    if result.refused:
        raise _fail(f"{len(result.refused)} verdicts refused, first: {result.refused[0]}")


def register_human_commands(app: typer.Typer) -> None:
    """Add the human verification subcommands to the ``synpref`` CLI."""
    app.command("annotate-ui")(annotate_ui)
    app.command("annotate-user")(annotate_user)
    app.command("annotate-batch")(annotate_batch)
    app.command("annotate-export")(annotate_export)
    app.command("replay-humans")(replay_humans)
