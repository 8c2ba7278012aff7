#!/usr/bin/env bash
# The Prefect UI in one terminal (`make ui`): a local Prefect server with the UI on
# http://127.0.0.1:4200 (server.sh), a worker on the `synpref` process pool (worker.sh) and every
# deployment of prefect.yaml registered on that server; Ctrl-C stops the server and the worker
# (and the flow runs the worker started).
#
# Environment: SYNPREF_UI_PORT (default 4200) the server's port; SYNPREF_UI_LOGS (default
# .synpref/ui) where server.log and worker.log go; PREFECT_HOME as for server.sh (the server's
# database, default ~/.prefect). To use a shared server instead, run only worker.sh and
# `prefect deploy` with PREFECT_API_URL set to it (see README, "The Prefect UI").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PREFECT="prefect"
PYTHON="python3"
if [[ -x "$ROOT/.venv/bin/prefect" ]]; then
    PREFECT="$ROOT/.venv/bin/prefect"
    PYTHON="$ROOT/.venv/bin/python"
fi

PORT="${SYNPREF_UI_PORT:-4200}"
UI="http://127.0.0.1:$PORT"
export PREFECT_API_URL="$UI/api"   # the worker and `prefect deploy` talk to this server
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
LOGS="${SYNPREF_UI_LOGS:-$ROOT/.synpref/ui}"
mkdir -p "$LOGS"

answers() {   # GET $PREFECT_API_URL$1 returns 2xx
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
        "$PREFECT_API_URL$1" >/dev/null 2>&1
}

if answers /health; then
    echo "error: a Prefect server already answers on $UI; stop it, or set SYNPREF_UI_PORT" >&2
    exit 1
fi

PIDS=()
stop() {   # the worker first (it talks to the server as it stops), then the server
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[$i]}"   # leads its own process group: stop the group (flow runs included)
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do   # 10 s to stop (an idle worker takes longer: then KILL)
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap 'stop; echo "stopped the Prefect server and worker"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# setsid: each child in its own session and process group (its group id is its pid), so that
# stopping it stops what it started too, and Ctrl-C reaches only this script, which stops them.
setsid bash infra/prefect/server.sh --host 127.0.0.1 --port "$PORT" >"$LOGS/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
echo "starting the Prefect server on $UI (log: $LOGS/server.log)"
for i in $(seq 1 180); do
    answers /health && break
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "error: the Prefect server exited:" >&2
        tail -n 30 "$LOGS/server.log" >&2
        exit 1
    fi
    if [[ $i -eq 180 ]]; then
        echo "error: the Prefect server is not healthy after 180 s:" >&2
        tail -n 30 "$LOGS/server.log" >&2
        exit 1
    fi
    sleep 1
done

setsid bash infra/prefect/worker.sh >"$LOGS/worker.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
echo "starting a worker on the synpref pool (log: $LOGS/worker.log)"
for i in $(seq 1 120); do   # the worker creates the pool the deployments name
    answers /work_pools/synpref && break
    if ! kill -0 "$WORKER" 2>/dev/null || [[ $i -eq 120 ]]; then
        echo "error: no synpref work pool (worker exited or 120 s passed):" >&2
        tail -n 30 "$LOGS/worker.log" >&2
        exit 1
    fi
    sleep 1
done

echo "registering the deployments of infra/prefect/prefect.yaml"
"$PREFECT" --no-prompt deploy --prefect-file infra/prefect/prefect.yaml --all \
    >"$LOGS/deploy.log" 2>&1 || {
    echo "error: prefect deploy failed:" >&2
    tail -n 40 "$LOGS/deploy.log" >&2
    exit 1
}

cat <<EOF

Prefect UI: $UI   (server and worker are up; deployments registered)

Start a Stage 1 round: Deployments -> stage1-round -> Run -> Custom run. The form shows the
flow's defaults (bundled hh-rlhf pool, PandaLM + LLMBar seed gold, local Ray, MLflow on SQLite,
recorded human labels replayed); change fields or keep them, then Submit. The run appears under
Runs with its logs and a rounds table; each run adds one round after the last finished one.
Or, from another terminal:
  PREFECT_API_URL=$PREFECT_API_URL $PREFECT deployment run stage1-round/stage1-round

Results: <out>/rounds/round-NNN.json and <out>/stage1.json (default out: .synpref/stage1;
synpref report .synpref/stage1), the sets under <out>/round-N/, metrics and RMs in MLflow.
Logs: $LOGS/server.log, $LOGS/worker.log. Ctrl-C stops the server and the worker.
EOF

# Until Ctrl-C, or until the server or the worker exits on its own.
set +e
wait -n "$SERVER" "$WORKER"
status=$?
set -e
echo "error: the Prefect server or worker exited ($status); see $LOGS" >&2
exit 1
