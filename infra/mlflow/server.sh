#!/usr/bin/env bash
# MLflow tracking server (UI + REST API) for synpref runs.
#
# Default: the embedded store that synpref writes to when tracking.tracking_uri is unset
# (SQLite at .synpref/mlflow.db, artifacts under .synpref/mlartifacts), served on
# http://127.0.0.1:5000, so runs logged without a server show up here too.
#
# At scale, point clients at it with tracking.tracking_uri: http://<host>:5000 and switch the
# stores with MLflow's own environment variables (each maps to the `mlflow server` flag):
#   MLFLOW_BACKEND_STORE_URI=postgresql://user:pass@db:5432/mlflow   # --backend-store-uri
#   MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlartifacts             # --artifacts-destination
#   MLFLOW_HOST=0.0.0.0  MLFLOW_PORT=5000                            # --host, --port
#   MLFLOW_SERVER_ALLOWED_HOSTS=mlflow.internal:5000                 # --allowed-hosts (for a DNS name)
# Postgres needs `pip install psycopg2-binary` and S3 needs `pip install boto3` plus AWS
# credentials, on the server only: artifacts are proxied (--serve-artifacts), so clients need
# neither. MLflow has no authentication by default: keep the port on a private network.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MLFLOW="mlflow"
if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then
    MLFLOW="$ROOT/.venv/bin/mlflow"
fi

if [[ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then
    mkdir -p "$ROOT/.synpref"   # SQLite creates the file, not its directory
fi

exec "$MLFLOW" server \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$ROOT/.synpref/mlflow.db}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$ROOT/.synpref/mlartifacts}" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-127.0.0.1}" \
    --port "${MLFLOW_PORT:-5000}" \
    "$@"
