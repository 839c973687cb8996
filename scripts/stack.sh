#!/usr/bin/env bash
# `make up` / `make down`: the Airflow UI (airflow standalone: API server, scheduler,
# dag-processor, triggerer on SQLite + LocalExecutor) and the MLflow UI, on the same local state.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
RUN_DIR="$PIPELINE_STATE_DIR/run"
AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
mkdir -p "$RUN_DIR"

start() {  # name, command...: start in its own process group, remember the group id
  local name="$1"; shift
  if [[ -f "$RUN_DIR/$name.pid" ]] && kill -0 -- "-$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    echo "$name already running (process group $(cat "$RUN_DIR/$name.pid"))"; return
  fi
  # A new session (setsid(2) through Python: macOS has no setsid command), so `down` stops the group.
  python -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" >"$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

wait_http() {  # url, seconds
  for _ in $(seq "$2"); do
    python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null && return 0
    sleep 1
  done
  return 1
}

case "${1:-}" in
  up)
    airflow_init >"$RUN_DIR/airflow-init.log" 2>&1 || { cat "$RUN_DIR/airflow-init.log"; exit 1; }
    airflow dags reserialize >/dev/null 2>&1 || true
    mkdir -p "$PIPELINE_STATE_DIR/mlflow"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start mlflow mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --workers 1 --backend-store-uri "sqlite:///$PIPELINE_STATE_DIR/mlflow/mlflow.db" \
      --default-artifact-root "file://$PIPELINE_STATE_DIR/mlflow/artifacts"
    AIRFLOW__API__PORT="$AIRFLOW_PORT" start airflow airflow standalone
    echo "waiting for Airflow on :$AIRFLOW_PORT and MLflow on :$MLFLOW_PORT ..."
    wait_http "http://127.0.0.1:$AIRFLOW_PORT/api/v2/version" 180 || { tail -30 "$RUN_DIR/airflow.log"; exit 1; }
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120 || { tail -30 "$RUN_DIR/mlflow.log"; exit 1; }
    password_file="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
    echo
    echo "Airflow UI  http://127.0.0.1:$AIRFLOW_PORT   login: admin / $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$password_file" 2>/dev/null || echo "see $password_file")"
    echo "MLflow UI   http://127.0.0.1:$MLFLOW_PORT"
    echo "Reports     http://127.0.0.1:$AIRFLOW_PORT/pipeline/   (gate and drift reports, Data Docs; also under Browse)"
    echo "Drift trend http://127.0.0.1:$AIRFLOW_PORT/pipeline/mlflow/drift-trend   (every day's drift figures, MLflow charts)"
    if [[ -f "$PIPELINE_STATE_DIR/run-summary.json" ]]; then  # the last `make run`'s links, on this UI
      echo "Last run:"
      python -c "import json, sys; from jobs.shared.links import render; \
print('\n'.join(render(json.load(open(sys.argv[1])).get('links', {}), sys.argv[2])))" \
        "$PIPELINE_STATE_DIR/run-summary.json" "http://127.0.0.1:$AIRFLOW_PORT"
    fi
    echo "Logs        $RUN_DIR/*.log      Stop with: make down"
    ;;
  down)
    for name in airflow mlflow; do
      if [[ -f "$RUN_DIR/$name.pid" ]]; then
        pgid="$(cat "$RUN_DIR/$name.pid")"
        kill -INT -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        rm -f "$RUN_DIR/$name.pid"
        echo "stopped $name"
      fi
    done
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
