#!/usr/bin/env bash
# A Prefect worker on the `synpref` process work pool (`make worker`); creates the pool if missing.
#
# Needs a Prefect server: infra/prefect/server.sh on this machine (the default API URL below),
# or PREFECT_API_URL set (environment or Prefect profile) to a shared one. Register the
# deployments once, from the repository root, with PREFECT_API_URL set there too (else the CLI
# talks to a temporary API of its own):
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   prefect deploy --prefect-file infra/prefect/prefect.yaml --all
# Flow runs are subprocesses of this worker: they run in this checkout (SYNPREF_REPO, read by the
# pull step of prefect.yaml) with this worker's environment, so export what the flows need
# before starting it (AWS credentials for s3:// URIs, RAY_AUTH_MODE/RAY_AUTH_TOKEN for a cluster).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFECT="prefect"
if [[ -x "$ROOT/.venv/bin/prefect" ]]; then
    PREFECT="$ROOT/.venv/bin/prefect"
fi

CONFIG="$("$PREFECT" config view)"   # settings from the environment and the Prefect profile
if [[ -z "${PREFECT_API_URL:-}" ]] && ! grep '^PREFECT_API_URL=' <<<"$CONFIG" >/dev/null; then
    export PREFECT_API_URL="http://127.0.0.1:4200/api"
fi
export SYNPREF_REPO="${SYNPREF_REPO:-$ROOT}"
# `--with-healthcheck` starts a web server, on all interfaces by Prefect's default: loopback
# unless configured otherwise. Flow runs start their local Ray on loopback (ensure_ray).
if ! grep '^PREFECT_WORKER_WEBSERVER_HOST=' <<<"$CONFIG" >/dev/null; then
    export PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1"
fi

if ! "$PREFECT" work-pool inspect synpref >/dev/null 2>&1; then
    "$PREFECT" work-pool create synpref --type process
fi
exec "$PREFECT" worker start --pool synpref --type process "$@"
