#!/usr/bin/env bash
# `make run`: generate a month of transactions into the local lake, then run every DAG through
# Airflow (`airflow dags test`, one DAG after the other, in the order the Assets chain them)
# and print a summary. Safe to run again: ingestion skips what its ledger has seen, every
# other step replaces its partitions.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

# Date arithmetic in Python (the venv's), not GNU date: the same on Linux and macOS.
days_before() { python -c 'import datetime as d, sys; print(d.date.fromisoformat(sys.argv[1]) - d.timedelta(days=int(sys.argv[2])))' "$1" "$2"; }
END_DATE="${PIPELINE_DEMO_END_DATE:-$(python -c 'import datetime as d; print(d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1))')}"
DAYS="${PIPELINE_DEMO_DAYS:-30}"
ROWS_PER_DAY="${PIPELINE_DEMO_ROWS_PER_DAY:-3400}"
START_DATE="$(days_before "$END_DATE" $((DAYS - 1)))"
SCORE_FROM="$(days_before "$END_DATE" 6)"

step() { printf '\n==> %s\n' "$*"; }
dag() {
  local dag_id="$1"; shift
  local log="$PIPELINE_STATE_DIR/logs/$dag_id.log"
  mkdir -p "$(dirname "$log")"
  step "airflow dags test $dag_id $END_DATE $*  (log: $log)"
  if ! airflow dags test "$dag_id" "$END_DATE" "$@" >"$log" 2>&1; then
    echo "DAG $dag_id failed. Job errors from its log:" >&2
    grep -E "ERROR|Exception|exited with code" "$log" | tail -20 >&2 || tail -40 "$log" >&2
    exit 1
  fi
  grep -oE "Gate verdict.*|DRIFT: .*|No drift: .*" "$log" | sed 's/ \[.*//' || true
}

# `airflow dags test` of a DAG with a deadline fails after a successful run (apache/airflow#73428):
# the deadline is for the scheduler (make up, the stack), not for this one-DAG-after-the-other run.
unset PIPELINE_PREDICTIONS_DEADLINE_MINUTES

step "state folder: $PIPELINE_STATE_DIR"
mkdir -p "$PIPELINE_STATE_DIR/logs"
airflow_init >"$PIPELINE_STATE_DIR/logs/airflow-init.log" 2>&1 || { cat "$PIPELINE_STATE_DIR/logs/airflow-init.log"; exit 1; }
airflow dags reserialize >/dev/null 2>&1 || { airflow dags list-import-errors; exit 1; }

step "generating $DAYS days x $ROWS_PER_DAY transactions ($START_DATE .. $END_DATE) into the raw zone"
python -m jobs generate --date "$END_DATE" --days "$DAYS" --rows-per-day "$ROWS_PER_DAY" 2>&1 | grep -v '^::' | tail -1

dag ingest_transactions
dag build_features -c "{\"start_date\": \"$START_DATE\"}"
dag train_model
dag deploy_model
dag score_transactions -c "{\"start_date\": \"$SCORE_FROM\"}"
dag monitor_drift

# The chain ran every consumer itself: the provisional runs `dags test` left for a scheduler would
# only replay it, all at once, on the first `make up` (plugins/pipeline/queues.py).
step "settling the asset queues"
python -m pipeline.queues

step "summary"
python -m jobs summary --date "$END_DATE" 2>/dev/null | grep -v '^::'
