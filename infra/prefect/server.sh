#!/usr/bin/env bash
# Local Prefect server with the UI on http://127.0.0.1:4200 (`make server`), listening on
# loopback only unless PREFECT_SERVER_API_HOST says otherwise.
#
# Flows run without it too (Prefect's ephemeral API, same database under PREFECT_HOME, default
# ~/.prefect), so runs made before the server started show up in the UI. Deployments and
# workers need it: they talk to PREFECT_API_URL=http://127.0.0.1:4200/api.
# At scale: run this on a shared host with PREFECT_SERVER_API_HOST=0.0.0.0,
# PREFECT_SERVER_UI_API_URL=http://<host>:4200/api (the URL browsers use) and, for Postgres,
# PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@db:5432/prefect.
# prefect 3.8.8 needs fastapi<0.151 (pinned in pyproject.toml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFECT="prefect"
if [[ -x "$ROOT/.venv/bin/prefect" ]]; then
    PREFECT="$ROOT/.venv/bin/prefect"
fi

export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# Loopback unless configured otherwise (here, in the environment or in the Prefect profile).
if ! "$PREFECT" config view | grep '^PREFECT_SERVER_API_HOST=' >/dev/null; then
    export PREFECT_SERVER_API_HOST="127.0.0.1"
fi
exec "$PREFECT" server start "$@"
